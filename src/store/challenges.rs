//! Login challenges: the second step's one-time codes, each consumed at most once.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::common::{Count, Time, lock_user, statements};
use super::mfa::{SPEND_RECOVERY_CODE, TAKE_TOTP_STEP};
use super::passkeys::{PasskeyUse, USE_PASSKEY, use_passkey};
use crate::error::Result;

/// A new login challenge: the keyed hash of the emailed code and when it dies.
#[derive(Debug)]
pub struct NewChallenge {
    pub id: Uuid,
    pub user_id: Uuid,
    pub code_hash: Vec<u8>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The hash the login checked the password against: no challenge starts if the password
    /// was changed (reset) since, or the user was disabled.
    pub password_hash: String,
}

/// One answer to a challenge.
#[derive(Debug, Clone, Copy)]
pub enum ChallengeAnswer<'a> {
    /// The keyed hash of an emailed code: compared with the challenge's in the statement.
    Code(&'a [u8]),
    /// An authenticator app's code that matched a time step: right if no code of that step or
    /// a later one was taken before.
    AppStep(i64),
    /// The keyed hash of a recovery code: right if it is one of the user's, unused.
    RecoveryCode(&'a [u8]),
    /// A verified passkey assertion: right if its counter moved forward (taken with it).
    Passkey(PasskeyUse<'a>),
    /// An answer known to be wrong (an app's code that matches no step).
    Wrong,
}

/// The result of submitting one code to a challenge, decided atomically in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Right code: the challenge is now consumed; nobody else can use it.
    Accepted,
    /// Wrong code: one attempt used, `remaining` left.
    Rejected { remaining: u32 },
    /// Unknown, expired, consumed, retired or out of attempts.
    Dead,
}

/// Reads the row returned by the attempt statement: `(accepted, attempts)`, or none if dead.
pub(super) fn attempt_from(row: Option<(bool, i64)>, max_attempts: u32) -> Result<Attempt> {
    Ok(match row {
        None => Attempt::Dead,
        Some((true, _)) => Attempt::Accepted,
        Some((false, attempts)) => Attempt::Rejected {
            remaining: u32::try_from(i64::from(max_attempts) - attempts).unwrap_or(0),
        },
    })
}

statements! {
    pub async fn insert_challenge(&self, challenge: &NewChallenge) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        lock_user!(tx, challenge.user_id);
        let inserted = sqlx::query(
            "INSERT INTO otp_challenges (id, user_id, code_hash, expires_at, created_at)
             SELECT $1, $2, $3, $4, $5 FROM users
             WHERE id = $2 AND disabled_at IS NULL AND password_hash = $6",
        )
        .bind(challenge.id)
        .bind(challenge.user_id)
        .bind(&challenge.code_hash)
        .bind(Time(challenge.expires_at))
        .bind(Time(challenge.created_at))
        .bind(&challenge.password_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(inserted > 0)
    }

    pub async fn delete_challenge(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM otp_challenges WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn retire_challenges_except(
        &self,
        user_id: Uuid,
        keep: Uuid,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE otp_challenges SET retired_at = $3
             WHERE user_id = $1 AND id < $2 AND consumed_at IS NULL AND retired_at IS NULL",
        )
        .bind(user_id)
        .bind(keep)
        .bind(Time(now))
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM otp_challenges WHERE user_id = $1 AND expires_at < $2")
            .bind(user_id)
            .bind(Time(now - chrono::Duration::days(1)))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn challenge_is_open(
        &self,
        id: Uuid,
        user_id: Uuid,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM otp_challenges
                            WHERE id = $1 AND user_id = $2 AND consumed_at IS NULL
                              AND retired_at IS NULL AND expires_at > $4 AND attempts < $3)",
        )
        .bind(id)
        .bind(user_id)
        .bind(i64::from(max_attempts))
        .bind(Time(now))
        .fetch_one(&self.pool)
        .await?)
    }

    /// Counts or consumes in one statement. PostgreSQL's row lock and SQLite's single
    /// writer serialise concurrent submissions, and the re-checked `WHERE` means
    /// parallel guesses cannot pass `max_attempts` and a right code is accepted at most
    /// once.
    pub async fn attempt_challenge(
        &self,
        id: Uuid,
        user_id: Uuid,
        answer: ChallengeAnswer<'_>,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<Attempt> {
        let mut tx = self.pool.begin().await?;
        lock_user!(tx, user_id);
        // What the answer uses up (an app's time step, a recovery code) is used up in the
        // transaction that settles the challenge: rolled back with it when the challenge
        // turns out dead, so nothing is spent on a login that cannot finish.
        let (code_hash, checked): (&[u8], bool) = match answer {
            ChallengeAnswer::Code(hash) => (hash, false),
            ChallengeAnswer::Wrong => (&[], false),
            ChallengeAnswer::AppStep(step) => {
                let taken = sqlx::query(TAKE_TOTP_STEP)
                .bind(user_id)
                .bind(step)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                (&[], taken > 0)
            }
            ChallengeAnswer::Passkey(used) => {
                let taken = use_passkey!(used).execute(&mut *tx).await?.rows_affected();
                (&[], taken > 0)
            }
            ChallengeAnswer::RecoveryCode(hash) => {
                let used = sqlx::query(SPEND_RECOVERY_CODE)
                .bind(user_id)
                .bind(hash)
                .bind(Time(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                (&[], used > 0)
            }
        };
        let row: Option<(bool, Count)> = sqlx::query_as(
            "UPDATE otp_challenges
             SET attempts = attempts + CASE WHEN $6 OR code_hash = $3 THEN 0 ELSE 1 END,
                 consumed_at = CASE WHEN $6 OR code_hash = $3 THEN $5 ELSE NULL END
             WHERE id = $1 AND user_id = $2
               AND consumed_at IS NULL AND retired_at IS NULL
               AND expires_at > $5 AND attempts < $4
             RETURNING consumed_at IS NOT NULL AS accepted,
                       CAST(attempts AS BIGINT) AS attempts",
        )
        .bind(id)
        .bind(user_id)
        .bind(code_hash)
        .bind(i64::from(max_attempts))
        .bind(Time(now))
        .bind(checked)
        .fetch_optional(&mut *tx)
        .await?;
        let attempt = attempt_from(row, max_attempts)?;
        if attempt != Attempt::Dead {
            tx.commit().await?;
        }
        Ok(attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_rows_are_read_as_outcomes() {
        assert_eq!(attempt_from(None, 5).unwrap(), Attempt::Dead);
        assert_eq!(attempt_from(Some((true, 2)), 5).unwrap(), Attempt::Accepted);
        assert_eq!(
            attempt_from(Some((false, 2)), 5).unwrap(),
            Attempt::Rejected { remaining: 3 }
        );
    }
}
