//! Pruning: what has expired leaves the database, so nothing keyed by client input (throttle
//! rows for made-up addresses, challenges, old audit events) grows for ever.

use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;

use crate::config::AuditSettings;
use crate::error::Result;
use crate::store::{Pruned, Store};

/// One pruning pass: expired challenges, idle throttle rows, events past
/// `audit.retention_days`. `wait`: on PostgreSQL, wait for another instance's pass to end
/// instead of skipping (`None`) this one.
pub async fn prune_once(
    store: &Store,
    audit: &AuditSettings,
    wait: bool,
) -> Result<Option<Pruned>> {
    let now = Utc::now();
    let events_before = now - chrono::Duration::days(i64::from(audit.retention_days));
    store.prune(now, events_before, wait).await
}

/// Prunes every `audit.prune_interval_secs`, starting at once, until aborted. A failed pass
/// (database down) is logged and tried again at the next tick.
pub fn spawn_pruner(store: Store, audit: AuditSettings) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(audit.prune_interval_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match prune_once(&store, &audit, false).await {
                Ok(Some(pruned)) => tracing::info!(
                    challenges = pruned.challenges,
                    throttles = pruned.throttles,
                    events = pruned.events,
                    "pruned expired rows"
                ),
                Ok(None) => tracing::debug!("another instance is pruning"),
                Err(err) => tracing::warn!(error = %err, "pruning failed; will retry"),
            }
        }
    })
}
