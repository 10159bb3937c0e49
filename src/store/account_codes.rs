//! Account codes: the emailed codes and links that prove an address, reset a password or confirm
//! a new address. Each is checked, counted and consumed atomically, like a login challenge, and
//! what it unlocks happens in the transaction that consumes it, so of two uses one wins.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::challenges::{Attempt, attempt_from};
use super::common::{Count, Time, UserRow, lock_user, statements, user_columns};
use crate::domain::User;
use crate::error::Result;

/// What an account code is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Proves the account's current address.
    VerifyEmail,
    /// Sets a new password.
    ResetPassword,
    /// Proves a new address and moves the account to it.
    ChangeEmail,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "verify_email",
            Purpose::ResetPassword => "reset_password",
            Purpose::ChangeEmail => "change_email",
        }
    }

    fn parse(stored: &str) -> Option<Purpose> {
        [
            Purpose::VerifyEmail,
            Purpose::ResetPassword,
            Purpose::ChangeEmail,
        ]
        .into_iter()
        .find(|p| p.as_str() == stored)
    }
}

/// A new account code: the keyed hashes of its code and link token, and when it dies.
#[derive(Debug)]
pub struct NewAccountCode {
    pub id: Uuid,
    pub user_id: Uuid,
    pub purpose: Purpose,
    /// The address the message goes to.
    pub email: String,
    pub code_hash: Vec<u8>,
    pub token_hash: Vec<u8>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// A live account code (not used, retired or expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenCode {
    pub id: Uuid,
    pub user_id: Uuid,
    pub purpose: Purpose,
    /// The address its message went to.
    pub email: String,
}

/// How [`set_password`](crate::store::Store::set_password) is allowed to set a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordTarget {
    /// By this live `reset_password` code of the user, consuming it.
    Code(Uuid),
    /// By the user (knowing the current password) or an administrator.
    User,
}

/// A new password hash for a user, and what it may replace.
#[derive(Debug, Clone, Copy)]
pub struct PasswordChange<'a> {
    pub user_id: Uuid,
    pub target: PasswordTarget,
    pub password_hash: &'a str,
    /// The hash it replaces, when it must still be that one (a change that checked it).
    pub expected: Option<&'a str>,
    /// A session of the user that stays (the one making the change); it must be live.
    pub keep: Option<Uuid>,
    /// Throttle keys cleared with it (the password locks).
    pub counters: &'a [String],
}

/// What proving an address did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressProven {
    pub user: User,
    /// Sessions that ended (an address change ends all but the confirming one).
    pub sessions_ended: u64,
}

/// What setting a password did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordReset {
    pub user: User,
    /// Sessions of the user that ended.
    pub sessions_ended: u64,
}

#[derive(sqlx::FromRow)]
struct OpenCodeRow {
    id: Uuid,
    user_id: Uuid,
    purpose: String,
    email: String,
}

fn open_code(row: Option<OpenCodeRow>) -> Option<OpenCode> {
    let row = row?;
    Some(OpenCode {
        id: row.id,
        user_id: row.user_id,
        purpose: Purpose::parse(&row.purpose)?,
        email: row.email,
    })
}

/// Inside a transaction `$tx`: ends the live sessions of `$user` but `$keep`; how many.
macro_rules! end_sessions {
    ($tx:expr, $user:expr, $keep:expr, $now:expr) => {
        sqlx::query(
            "UPDATE sessions SET revoked_at = $3
             WHERE user_id = $1 AND revoked_at IS NULL AND ($2 IS NULL OR id <> $2)",
        )
        .bind($user)
        .bind($keep)
        .bind(Time($now))
        .execute(&mut *$tx)
        .await?
        .rows_affected()
    };
}

/// `consume`: marks a live code used, once. $1 id, $2 purpose, $3 now.
const CONSUME: &str = "UPDATE account_codes SET consumed_at = $3
     WHERE id = $1 AND purpose = $2 AND consumed_at IS NULL AND retired_at IS NULL
       AND expires_at > $3
     RETURNING user_id, email";

statements! {
    /// Stores a code and retires the user's older live codes of the same purpose, in one
    /// transaction: only the newest message of a kind works.
    pub async fn insert_account_code(&self, code: &NewAccountCode) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        lock_user!(tx, code.user_id);
        sqlx::query(
            "UPDATE account_codes SET retired_at = $3
             WHERE user_id = $1 AND purpose = $2 AND consumed_at IS NULL AND retired_at IS NULL",
        )
        .bind(code.user_id)
        .bind(code.purpose.as_str())
        .bind(Time(code.created_at))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO account_codes (id, user_id, purpose, email, code_hash, token_hash,
                                        expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(code.id)
        .bind(code.user_id)
        .bind(code.purpose.as_str())
        .bind(&code.email)
        .bind(&code.code_hash)
        .bind(&code.token_hash)
        .bind(Time(code.expires_at))
        .bind(Time(code.created_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a code whose message could not be delivered.
    pub async fn delete_account_code(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM account_codes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The user's newest live code of `purpose` that can still take a guess.
    pub async fn open_account_code(
        &self,
        user_id: Uuid,
        purpose: Purpose,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<OpenCode>> {
        let row: Option<OpenCodeRow> = sqlx::query_as(
            "SELECT id, user_id, purpose, email FROM account_codes
             WHERE user_id = $1 AND purpose = $2 AND consumed_at IS NULL
               AND retired_at IS NULL AND expires_at > $4 AND attempts < $3
             ORDER BY id DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(purpose.as_str())
        .bind(i64::from(max_attempts))
        .bind(Time(now))
        .fetch_optional(&self.pool)
        .await?;
        Ok(open_code(row))
    }

    /// The live code a link's token belongs to.
    pub async fn find_account_code_by_token(
        &self,
        token_hash: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<OpenCode>> {
        let row: Option<OpenCodeRow> = sqlx::query_as(
            "SELECT id, user_id, purpose, email FROM account_codes
             WHERE token_hash = $1 AND consumed_at IS NULL AND retired_at IS NULL
               AND expires_at > $2",
        )
        .bind(token_hash)
        .bind(Time(now))
        .fetch_optional(&self.pool)
        .await?;
        Ok(open_code(row))
    }

    /// Checks a typed code in one statement: a wrong one uses an attempt (parallel guesses
    /// cannot pass `max_attempts`), a right one is `Accepted` but not consumed: what it unlocks
    /// consumes it (`verify_email_with`, `change_email_with`, `reset_password_with`).
    pub async fn check_account_code(
        &self,
        id: Uuid,
        code_hash: &[u8],
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<Attempt> {
        let row: Option<(bool, Count)> = sqlx::query_as(
            "UPDATE account_codes
             SET attempts = attempts + CASE WHEN code_hash = $2 THEN 0 ELSE 1 END
             WHERE id = $1 AND consumed_at IS NULL AND retired_at IS NULL
               AND expires_at > $4 AND attempts < $3
             RETURNING code_hash = $2 AS accepted, CAST(attempts AS BIGINT) AS attempts",
        )
        .bind(id)
        .bind(code_hash)
        .bind(i64::from(max_attempts))
        .bind(Time(now))
        .fetch_optional(&self.pool)
        .await?;
        attempt_from(row, max_attempts)
    }

    /// Consumes a `verify_email` or `change_email` code of `open.user_id` and marks its
    /// address proven. For a change, the account moves to the new address (`EmailTaken` if
    /// another account took it since, and then nothing changes), the user's other live codes
    /// and open logins retire, and their sessions but `keep` end. None when the code was used
    /// (by a parallel request), retired or expired, the account is disabled, or its address is
    /// no longer the one the code proves.
    pub async fn prove_address_with(
        &self,
        open: &OpenCode,
        keep: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<Option<AddressProven>> {
        let mut tx = self.pool.begin().await?;
        lock_user!(tx, open.user_id);
        let consumed: Option<(Uuid, String)> = sqlx::query_as(CONSUME)
            .bind(open.id)
            .bind(open.purpose.as_str())
            .bind(Time(now))
            .fetch_optional(&mut *tx)
            .await?;
        let Some((user_id, email)) = consumed.filter(|(user, _)| *user == open.user_id) else {
            return Ok(None);
        };
        let row: Option<UserRow> = match open.purpose {
            Purpose::ChangeEmail => {
                sqlx::query_as(concat!(
                    "UPDATE users SET email = $2, email_verified_at = $3
                     WHERE id = $1 AND disabled_at IS NULL
                     RETURNING ",
                    user_columns!()
                ))
                .bind(user_id)
                .bind(&email)
                .bind(Time(now))
                .fetch_optional(&mut *tx)
                .await?
            }
            _ => {
                sqlx::query_as(concat!(
                    "UPDATE users SET email_verified_at = coalesce(email_verified_at, $3)
                     WHERE id = $1 AND email = $2 AND disabled_at IS NULL
                     RETURNING ",
                    user_columns!()
                ))
                .bind(user_id)
                .bind(&email)
                .bind(Time(now))
                .fetch_optional(&mut *tx)
                .await?
            }
        };
        let Some(row) = row else {
            return Ok(None);
        };
        let mut sessions_ended = 0;
        if open.purpose == Purpose::ChangeEmail {
            // Codes sent to the old address (or for another new one), and logins waiting for
            // a code sent there, prove nothing any more; the sessions but the confirming one end.
            for retire in [
                "UPDATE account_codes SET retired_at = $2
                 WHERE user_id = $1 AND consumed_at IS NULL AND retired_at IS NULL",
                "UPDATE otp_challenges SET retired_at = $2
                 WHERE user_id = $1 AND consumed_at IS NULL AND retired_at IS NULL",
            ] {
                sqlx::query(retire)
                    .bind(user_id)
                    .bind(Time(now))
                    .execute(&mut *tx)
                    .await?;
            }
            sessions_ended = end_sessions!(tx, user_id, keep, now);
        }
        tx.commit().await?;
        Ok(Some(AddressProven {
            user: row.into(),
            sessions_ended,
        }))
    }

    /// Sets a user's password hash (`change`) and, in the same transaction, ends their sessions (but
    /// `keep`, which must still be live) and open logins, retires their reset and
    /// address-change codes (neither may outlive a new password) and clears the throttle
    /// `counters` (the password locks). The user's row is locked first, so a login that checked
    /// the old password opens no session afterwards. With [`PasswordTarget::Code`] a live
    /// `reset_password` code of `user_id` is consumed first (of parallel resets with one code
    /// exactly one gets here) and a disabled account is refused; with `expected`, the hash
    /// must still be that one. None (nothing changed) when any of that does not hold.
    pub async fn set_password(
        &self,
        change: &PasswordChange<'_>,
        now: DateTime<Utc>,
    ) -> Result<Option<PasswordReset>> {
        let PasswordChange {
            user_id,
            target,
            password_hash,
            expected,
            keep,
            counters,
        } = *change;
        let mut tx = self.pool.begin().await?;
        lock_user!(tx, user_id);
        if let PasswordTarget::Code(id) = target {
            let consumed: Option<(Uuid, String)> = sqlx::query_as(CONSUME)
                .bind(id)
                .bind(Purpose::ResetPassword.as_str())
                .bind(Time(now))
                .fetch_optional(&mut *tx)
                .await?;
            if consumed.is_none_or(|(owner, _)| owner != user_id) {
                return Ok(None);
            }
        }
        if let Some(keep) = keep {
            let live: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM sessions
                                WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL)",
            )
            .bind(keep)
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
            if !live {
                return Ok(None);
            }
        }
        let Some(row) = sqlx::query_as::<_, UserRow>(concat!(
            "UPDATE users SET password_hash = $2
             WHERE id = $1 AND (CAST($3 AS TEXT) IS NULL OR password_hash = $3)
               AND ($4 OR disabled_at IS NULL)
             RETURNING ",
            user_columns!()
        ))
        .bind(user_id)
        .bind(password_hash)
        .bind(expected)
        .bind(matches!(target, PasswordTarget::User))
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        for retire in [
            "UPDATE otp_challenges SET retired_at = $2
             WHERE user_id = $1 AND consumed_at IS NULL AND retired_at IS NULL",
            "UPDATE account_codes SET retired_at = $2
             WHERE user_id = $1 AND purpose IN ('reset_password', 'change_email')
               AND consumed_at IS NULL AND retired_at IS NULL",
        ] {
            sqlx::query(retire)
                .bind(user_id)
                .bind(Time(now))
                .execute(&mut *tx)
                .await?;
        }
        let sessions_ended = end_sessions!(tx, user_id, keep, now);
        for key in counters {
            sqlx::query("DELETE FROM throttles WHERE key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(PasswordReset {
            user: row.into(),
            sessions_ended,
        }))
    }

    /// Marks the user's current address proven (an administrator's word); the user, or None.
    pub async fn mark_email_verified(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<User>> {
        let row: Option<UserRow> = sqlx::query_as(concat!(
            "UPDATE users SET email_verified_at = coalesce(email_verified_at, $2) WHERE id = $1
             RETURNING ",
            user_columns!()
        ))
        .bind(user_id)
        .bind(Time(now))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(User::from))
    }

    /// When the session `id` began (its login), if it exists.
    pub async fn session_started_at(&self, id: Uuid) -> Result<Option<DateTime<Utc>>> {
        let at: Option<Time> = sqlx::query_scalar("SELECT created_at FROM sessions WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(at.map(|t| t.0))
    }
}
