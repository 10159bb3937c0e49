//! Pruning: what has expired leaves the database, so nothing keyed by client input (throttle
//! rows for made-up addresses, challenges, old audit events) grows for ever.

use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;

use crate::config::AuditSettings;
use crate::error::Result;
use crate::password::PasswordHasher;
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

/// Points the hasher's dummy hash (for unknown emails) at the cost most stored hashes have.
pub async fn calibrate_dummy_hash(store: &Store, hasher: &PasswordHasher) -> Result<()> {
    let cost = store.most_common_hash_cost().await?;
    hasher.match_dummy_cost(cost.unwrap_or(hasher.cost()));
    Ok(())
}

/// Prunes every `audit.prune_interval_secs`, starting at once, until aborted, and keeps the
/// dummy hash at the stored hashes' cost. A failed pass (database down) is logged and tried
/// again at the next tick.
pub fn spawn_pruner(store: Store, audit: AuditSettings, hasher: PasswordHasher) -> JoinHandle<()> {
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
            if let Err(err) = calibrate_dummy_hash(&store, &hasher).await {
                tracing::warn!(error = %err, "cannot read the stored hash costs; will retry");
            }
        }
    })
}
