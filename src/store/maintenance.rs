//! Pruning: the deletes that drop what has expired, in one transaction, one instance at a time.

use chrono::{DateTime, Utc};

use super::common::{Time, statements};
use crate::error::Result;

/// What one pruning pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// Login challenges past their expiry (dead whether used or not).
    pub challenges: u64,
    /// Emailed account codes (verification, reset, email change) past their expiry.
    pub account_codes: u64,
    /// Passkey ceremonies (options handed out, never finished) past their expiry.
    pub ceremonies: u64,
    /// Sessions past either expiry, or revoked.
    pub sessions: u64,
    /// Throttle rows untouched for [`THROTTLE_MEMORY_DAYS`] that lock nothing now.
    pub throttles: u64,
    /// Security events older than `audit.retention_days`.
    pub events: u64,
    /// Retired signing keys whose every token has expired.
    pub keys: u64,
}

/// How long an idle password counter (or code-email quota) is remembered once it locks nothing.
/// Code counters (`otp:`) are never pruned: only a right code or `authd user unlock` clears one.
pub const THROTTLE_MEMORY_DAYS: i64 = 30;

/// The PostgreSQL advisory lock that lets one instance at a time prune ("authd" in ASCII).
pub const PRUNE_LOCK: i64 = 0x0061_7574_6864;

statements! {
    /// Deletes what has expired (see [`Pruned`]) in one transaction, after taking the
    /// backend's pruning lock (`take_prune_lock`); `None` when another instance holds it and
    /// `wait` is false.
    pub async fn prune(
        &self,
        now: DateTime<Utc>,
        events_before: DateTime<Utc>,
        wait: bool,
    ) -> Result<Option<Pruned>> {
        let mut tx = self.pool.begin().await?;
        if !Self::take_prune_lock(&mut tx, wait).await? {
            return Ok(None);
        }
        let challenges = sqlx::query("DELETE FROM otp_challenges WHERE expires_at < $1")
            .bind(Time(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let account_codes = sqlx::query("DELETE FROM account_codes WHERE expires_at < $1")
            .bind(Time(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let ceremonies = sqlx::query("DELETE FROM webauthn_ceremonies WHERE expires_at < $1")
            .bind(Time(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // A session's sliding expiry is never later than its absolute one.
        let sessions = sqlx::query(
            "DELETE FROM sessions WHERE expires_at < $1 OR revoked_at IS NOT NULL",
        )
        .bind(Time(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let throttles = sqlx::query(
            "DELETE FROM throttles
             WHERE key NOT LIKE 'otp:%' AND updated_at < $2
               AND (locked_until IS NULL OR locked_until < $1)",
        )
        .bind(Time(now))
        .bind(Time(now - chrono::Duration::days(THROTTLE_MEMORY_DAYS)))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let events = sqlx::query("DELETE FROM security_events WHERE at < $1")
            .bind(Time(events_before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(Some(Pruned {
            challenges,
            account_codes,
            ceremonies,
            sessions,
            throttles,
            events,
            keys: 0,
        }))
    }
}
