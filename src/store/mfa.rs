//! Second factors beyond the emailed code: the authenticator app's sealed secret, its last
//! accepted time step (no code works twice), the pending enrolment, and the recovery codes.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::common::{Count, Time, lock_user, statements};
use crate::error::Result;

/// What an account has of the factors in this file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaState {
    /// The sealed secret of a confirmed authenticator app.
    pub totp_secret: Option<Vec<u8>>,
    /// A sealed secret waiting for its first code, and when it stops waiting.
    pub pending: Option<(Vec<u8>, DateTime<Utc>)>,
    /// Recovery codes not used yet.
    pub recovery_codes_left: i64,
}

#[derive(sqlx::FromRow)]
struct MfaRow {
    totp_secret: Option<Vec<u8>>,
    totp_pending: Option<Vec<u8>>,
    totp_pending_expires_at: Option<Time>,
    recovery_codes_left: Count,
}

/// Takes the app's time step $2 for user $1 if no code of it or a later one was taken: one
/// statement, so of parallel submissions of one code exactly one is taken.
pub(super) const TAKE_TOTP_STEP: &str = "UPDATE users SET totp_last_step = $2
     WHERE id = $1 AND totp_secret IS NOT NULL
       AND (totp_last_step IS NULL OR totp_last_step < $2)";

/// Spends recovery code (hash) $2 of user $1 at $3, once: one statement.
pub(super) const SPEND_RECOVERY_CODE: &str = "UPDATE recovery_codes SET used_at = $3
     WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL";

/// Inside a transaction `$tx`: replaces user `$user`'s recovery codes by `$hashes`.
macro_rules! replace_codes {
    ($tx:expr, $user:expr, $hashes:expr, $now:expr) => {
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind($user)
            .execute(&mut *$tx)
            .await?;
        for hash in $hashes {
            sqlx::query(
                "INSERT INTO recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)",
            )
            .bind($user)
            .bind(hash)
            .bind(Time($now))
            .execute(&mut *$tx)
            .await?;
        }
    };
}

statements! {
    pub async fn mfa_state(&self, user_id: Uuid) -> Result<Option<MfaState>> {
        let row: Option<MfaRow> = sqlx::query_as(
            "SELECT totp_secret, totp_pending, totp_pending_expires_at,
                    (SELECT CAST(count(*) AS BIGINT) FROM recovery_codes r
                     WHERE r.user_id = u.id AND r.used_at IS NULL) AS recovery_codes_left
             FROM users u WHERE id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| MfaState {
            totp_secret: row.totp_secret,
            pending: row.totp_pending.zip(row.totp_pending_expires_at.map(|t| t.0)),
            recovery_codes_left: row.recovery_codes_left,
        }))
    }

    /// Keeps a new, unconfirmed enrolment (replacing any earlier one), unless an app is on:
    /// false then (and for no such user).
    pub async fn set_totp_pending(
        &self,
        user_id: Uuid,
        sealed: &[u8],
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE users SET totp_pending = $2, totp_pending_expires_at = $3
             WHERE id = $1 AND totp_secret IS NULL",
        )
        .bind(user_id)
        .bind(sealed)
        .bind(Time(expires_at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Confirms the pending enrolment `pending` (still the user's, not expired) with the step
    /// of its first code, and in the same transaction replaces the recovery codes, ends the
    /// user's sessions but `keep` and retires their open logins. How many sessions ended, or
    /// None when the enrolment changed, expired or was confirmed meanwhile.
    pub async fn confirm_totp(
        &self,
        user_id: Uuid,
        pending: &[u8],
        step: i64,
        recovery_hashes: &[Vec<u8>],
        keep: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        lock_user!(tx, user_id);
        let confirmed = sqlx::query(
            "UPDATE users SET totp_secret = totp_pending, totp_last_step = $3,
                              totp_pending = NULL, totp_pending_expires_at = NULL
             WHERE id = $1 AND totp_pending = $2 AND totp_pending_expires_at > $4
               AND totp_secret IS NULL",
        )
        .bind(user_id)
        .bind(pending)
        .bind(step)
        .bind(Time(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if confirmed == 0 {
            return Ok(None);
        }
        replace_codes!(tx, user_id, recovery_hashes, now);
        let ended = sqlx::query(
            "UPDATE sessions SET revoked_at = $3
             WHERE user_id = $1 AND revoked_at IS NULL AND ($2 IS NULL OR id <> $2)",
        )
        .bind(user_id)
        .bind(keep)
        .bind(Time(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE otp_challenges SET retired_at = $2
             WHERE user_id = $1 AND consumed_at IS NULL AND retired_at IS NULL",
        )
        .bind(user_id)
        .bind(Time(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(ended))
    }

    /// Accepts a code of time step `step` if no code of that step or a later one was: one
    /// statement, so of parallel submissions of one code exactly one is accepted.
    pub async fn accept_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool> {
        let done = sqlx::query(TAKE_TOTP_STEP)
            .bind(user_id)
            .bind(step)
            .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Replaces every recovery code of a user with an authenticator app.
    pub async fn replace_recovery_codes(
        &self,
        user_id: Uuid,
        recovery_hashes: &[Vec<u8>],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        lock_user!(tx, user_id);
        let enrolled: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1 AND totp_secret IS NOT NULL)",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
        if !enrolled {
            return Ok(false);
        }
        replace_codes!(tx, user_id, recovery_hashes, now);
        tx.commit().await?;
        Ok(true)
    }

    /// Removes the authenticator app, a pending enrolment and the recovery codes; with
    /// `end_sessions` (`Some(keep)`), the user's sessions but `keep`, and their open logins,
    /// end too. Whether there was an app, an enrolment or codes to remove.
    pub async fn remove_totp(
        &self,
        user_id: Uuid,
        end_sessions: Option<Option<Uuid>>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        lock_user!(tx, user_id);
        let had_app = sqlx::query(
            "UPDATE users SET totp_secret = NULL, totp_last_step = NULL, totp_pending = NULL,
                              totp_pending_expires_at = NULL
             WHERE id = $1 AND (totp_secret IS NOT NULL OR totp_pending IS NOT NULL)",
        )
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let had_codes = sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if let Some(keep) = end_sessions {
            sqlx::query(
                "UPDATE sessions SET revoked_at = $3
                 WHERE user_id = $1 AND revoked_at IS NULL AND ($2 IS NULL OR id <> $2)",
            )
            .bind(user_id)
            .bind(keep)
            .bind(Time(now))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE otp_challenges SET retired_at = $2
                 WHERE user_id = $1 AND consumed_at IS NULL AND retired_at IS NULL",
            )
            .bind(user_id)
            .bind(Time(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(had_app + had_codes > 0)
    }
}
