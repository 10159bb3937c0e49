//! Pruning: what has expired leaves the database, so nothing keyed by client input (throttle
//! rows for made-up addresses, challenges, old audit events) grows for ever.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::auth::Auth;

/// Prunes every `interval`, starting at once, until aborted. A failed pass (database down) is
/// logged and tried again at the next tick.
pub fn spawn_pruner(auth: Auth, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match auth.prune(false).await {
                Ok(Some(pruned)) => tracing::info!(
                    challenges = pruned.challenges,
                    account_codes = pruned.account_codes,
                    ceremonies = pruned.ceremonies,
                    sessions = pruned.sessions,
                    throttles = pruned.throttles,
                    events = pruned.events,
                    keys = pruned.keys,
                    "pruned expired rows"
                ),
                Ok(None) => tracing::debug!("another instance is pruning"),
                Err(err) => tracing::warn!(error = %err, "pruning failed; will retry"),
            }
        }
    })
}
