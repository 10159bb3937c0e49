//! Sessions: created at login, rotated by each refresh, revoked, listed.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::common::{Count, Time, UserRow, lock_user, statements};
use crate::domain::User;
use crate::error::Result;

/// A session about to be created by a successful login.
#[derive(Debug)]
pub struct NewSession {
    pub id: Uuid,
    pub user_id: Uuid,
    /// Names the session's refresh chain: the first part of each of its refresh tokens.
    pub family: Vec<u8>,
    /// SHA-256 of the first refresh secret.
    pub refresh_hash: Vec<u8>,
    pub created_at: DateTime<Utc>,
    /// When the refresh token dies unless it is used (`session.refresh_ttl_secs`, sliding).
    pub expires_at: DateTime<Utc>,
    /// When the session dies whatever happens (`session.absolute_ttl_secs`).
    pub absolute_expires_at: DateTime<Utc>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// Whether the login passed the second step; a password-only login opens no session for a
    /// user whose second step was switched on meanwhile.
    pub after_second_step: bool,
    /// The hash a password-only login checked the password against: no session opens if the
    /// password was changed (reset) since.
    pub password_hash: Option<String>,
    /// The passkey the login was made with (alone or as its second step): it must still be
    /// the user's, and removing it ends the session.
    pub passkey_id: Option<Uuid>,
}

/// The user of a live session, as every authenticated request reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionUser {
    pub user: User,
    /// Recovery codes not used yet.
    pub recovery_codes_left: i64,
}

#[derive(sqlx::FromRow)]
struct SessionUserRow {
    #[sqlx(flatten)]
    user: UserRow,
    recovery_codes_left: Count,
}

/// A session as its refresh chain sees it: what a refresh decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionChain {
    pub id: Uuid,
    pub user_id: Uuid,
    pub email: String,
    pub generation: i64,
    pub refresh_hash: Vec<u8>,
    /// When generation − 1 was rotated out.
    pub rotated_at: Option<DateTime<Utc>>,
    /// When generation − 2 was rotated out.
    pub earlier_rotated_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub absolute_expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub user_disabled: bool,
    /// Whether the key this instance signs with (`signer_kid`) is still the current one, read
    /// in the same statement: a refresh never signs with a key revoked a moment ago.
    pub signer_current: bool,
}

/// A live session, for `GET /sessions` and `authd session list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionInfo {
    pub id: Uuid,
    pub user_id: Uuid,
    pub email: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The passkey the session signed in with (alone or as the second step), if one did.
    pub passkey_id: Option<Uuid>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct SessionChainRow {
    id: Uuid,
    user_id: Uuid,
    email: String,
    generation: i64,
    refresh_hash: Vec<u8>,
    rotated_at: Option<Time>,
    earlier_rotated_at: Option<Time>,
    expires_at: Time,
    absolute_expires_at: Time,
    revoked_at: Option<Time>,
    user_disabled: bool,
    signer_current: bool,
}

impl From<SessionChainRow> for SessionChain {
    fn from(row: SessionChainRow) -> SessionChain {
        SessionChain {
            id: row.id,
            user_id: row.user_id,
            email: row.email,
            generation: row.generation,
            refresh_hash: row.refresh_hash,
            rotated_at: row.rotated_at.map(|t| t.0),
            earlier_rotated_at: row.earlier_rotated_at.map(|t| t.0),
            expires_at: row.expires_at.0,
            absolute_expires_at: row.absolute_expires_at.0,
            revoked_at: row.revoked_at.map(|t| t.0),
            user_disabled: row.user_disabled,
            signer_current: row.signer_current,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct SessionInfoRow {
    id: Uuid,
    user_id: Uuid,
    email: String,
    created_at: Time,
    last_used_at: Time,
    expires_at: Time,
    client_ip: Option<String>,
    user_agent: Option<String>,
    passkey_id: Option<Uuid>,
}

impl From<SessionInfoRow> for SessionInfo {
    fn from(row: SessionInfoRow) -> SessionInfo {
        SessionInfo {
            id: row.id,
            user_id: row.user_id,
            email: row.email,
            created_at: row.created_at.0,
            last_used_at: row.last_used_at.0,
            expires_at: row.expires_at.0,
            client_ip: row.client_ip,
            user_agent: row.user_agent,
            passkey_id: row.passkey_id,
        }
    }
}

statements! {
    pub async fn find_session_user(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        kid: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionUser>> {
        let row: Option<SessionUserRow> = sqlx::query_as(
            "SELECT u.id, u.email, u.first_name, u.last_name, u.two_factor_enabled,
                    u.created_at, u.email_verified_at, u.totp_secret IS NOT NULL AS totp_enabled,
                    (SELECT CAST(count(*) AS BIGINT) FROM recovery_codes r
                     WHERE r.user_id = u.id AND r.used_at IS NULL) AS recovery_codes_left
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL
               AND s.expires_at > $3 AND u.disabled_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM signing_keys k
                               WHERE k.kid = $4 AND k.state = 'revoked')",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(Time(now))
        .bind(kid)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| SessionUser {
            user: row.user.into(),
            recovery_codes_left: row.recovery_codes_left,
        }))
    }

    pub async fn insert_session(
        &self,
        session: &NewSession,
        max_per_user: u32,
    ) -> Result<Option<u64>> {
        let mut tx = self.pool.begin().await?;
        lock_user!(tx, session.user_id);
        let inserted = sqlx::query(
            "INSERT INTO sessions (id, user_id, family, refresh_hash, created_at,
                                   last_used_at, expires_at, absolute_expires_at,
                                   client_ip, user_agent, passkey_id)
             SELECT $1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $13 FROM users
             WHERE id = $2 AND disabled_at IS NULL
               AND ($10 OR (two_factor_enabled = $11 AND totp_secret IS NULL))
               AND (CAST($12 AS TEXT) IS NULL OR password_hash = $12)
               AND ($13 IS NULL
                    OR EXISTS (SELECT 1 FROM passkeys p WHERE p.id = $13 AND p.user_id = $2))",
        )
        .bind(session.id)
        .bind(session.user_id)
        .bind(&session.family)
        .bind(&session.refresh_hash)
        .bind(Time(session.created_at))
        .bind(Time(session.expires_at.min(session.absolute_expires_at)))
        .bind(Time(session.absolute_expires_at))
        .bind(&session.client_ip)
        .bind(&session.user_agent)
        .bind(session.after_second_step)
        .bind(false)
        .bind(&session.password_hash)
        .bind(session.passkey_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        // Past the cap, the oldest live sessions go (ids are time-ordered).
        let trimmed = sqlx::query(
            "UPDATE sessions SET revoked_at = $3
             WHERE id IN (SELECT id FROM sessions
                          WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $3
                          ORDER BY id DESC LIMIT $4 OFFSET $2)",
        )
        .bind(session.user_id)
        .bind(i64::from(max_per_user))
        .bind(Time(session.created_at))
        .bind(i64::MAX)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(Some(trimmed))
    }

    pub async fn find_session_chain(
        &self,
        family: &[u8],
        signer_kid: Option<&str>,
    ) -> Result<Option<SessionChain>> {
        let row: Option<SessionChainRow> = sqlx::query_as(
            "SELECT s.id, s.user_id, u.email, s.generation, s.refresh_hash,
                    s.rotated_at, s.earlier_rotated_at, s.expires_at,
                    s.absolute_expires_at, s.revoked_at,
                    u.disabled_at IS NOT NULL AS user_disabled,
                    (CAST($2 AS TEXT) IS NULL
                     OR EXISTS (SELECT 1 FROM signing_keys k
                                WHERE k.kid = $2 AND k.state = 'current'))
                        AS signer_current
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.family = $1",
        )
        .bind(family)
        .bind(signer_kid)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(SessionChain::from))
    }

    pub async fn rotate_session(
        &self,
        id: Uuid,
        generation: i64,
        presented: &[u8],
        next: &[u8],
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sessions
             SET refresh_hash = $4, generation = generation + 1,
                 earlier_rotated_at = rotated_at, rotated_at = $5, last_used_at = $5,
                 expires_at = CASE WHEN $6 < absolute_expires_at THEN $6
                                   ELSE absolute_expires_at END
             WHERE id = $1 AND generation = $2 AND refresh_hash = $3
               AND revoked_at IS NULL AND expires_at > $5",
        )
        .bind(id)
        .bind(generation)
        .bind(presented)
        .bind(next)
        .bind(Time(now))
        .bind(Time(expires_at))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn revoke_session(
        &self,
        id: Uuid,
        user_id: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "UPDATE sessions SET revoked_at = $3
             WHERE id = $1 AND ($2 IS NULL OR user_id = $2)
               AND revoked_at IS NULL AND expires_at > $3
             RETURNING user_id",
        )
        .bind(id)
        .bind(user_id)
        .bind(Time(now))
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn revoke_user_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = $3
             WHERE user_id = $1 AND ($2 IS NULL OR id <> $2)
               AND revoked_at IS NULL AND expires_at > $3",
        )
        .bind(user_id)
        .bind(keep)
        .bind(Time(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn list_sessions(
        &self,
        user_id: Option<Uuid>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<SessionInfo>> {
        let rows: Vec<SessionInfoRow> = sqlx::query_as(
            "SELECT s.id, s.user_id, u.email, s.created_at, s.last_used_at, s.expires_at,
                    s.client_ip, s.user_agent, s.passkey_id
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE ($1 IS NULL OR s.user_id = $1) AND s.revoked_at IS NULL
               AND s.expires_at > $2
             ORDER BY s.created_at DESC, s.id DESC
             LIMIT $3",
        )
        .bind(user_id)
        .bind(Time(now))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(SessionInfo::from).collect())
    }
}
