//! Maintenance: pruning expired rows (challenges, throttle rows, old events, retired keys).

use chrono::Utc;

use super::Auth;
use crate::error::Result;
use crate::store::Pruned;

impl Auth {
    /// One pruning pass: expired challenges, idle throttle rows, events past
    /// `audit.retention_days`. `wait`: on PostgreSQL, wait for another instance's pass to end
    /// instead of skipping (`None`) this one.
    pub async fn prune(&self, wait: bool) -> Result<Option<Pruned>> {
        let now = Utc::now();
        let events_before = now - chrono::Duration::days(i64::from(self.retention_days));
        let Some(mut pruned) = self.store.prune(now, events_before, wait).await? else {
            return Ok(None);
        };
        let horizon = i64::try_from(self.key_horizon_secs).unwrap_or(i64::MAX / 2);
        pruned.keys = self
            .store
            .delete_expired_retired_keys(now - chrono::Duration::seconds(horizon))
            .await?;
        Ok(Some(pruned))
    }
}
