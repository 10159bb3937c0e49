//! What the two stores share: the time type both encode, the row types, and every statement
//! whose text is the same on PostgreSQL and SQLite (`shared_statements!`). A backend file keeps
//! only what its database does differently: connecting, time arithmetic in the throttle
//! statements, the pruning lock, and how it finds the migrations table.

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Postgres, Sqlite, Type};
use uuid::Uuid;

use crate::audit::RecordedEvent;
use crate::domain::User;

/// A point in time as each database keeps it: `timestamptz` in PostgreSQL, integer
/// microseconds since the Unix epoch in SQLite (so comparisons there are numeric). Every time a
/// statement compares with comes from Rust as one of these, never from the database's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub DateTime<Utc>);

impl From<DateTime<Utc>> for Time {
    fn from(t: DateTime<Utc>) -> Time {
        Time(t)
    }
}

impl Type<Postgres> for Time {
    fn type_info() -> <Postgres as Database>::TypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &<Postgres as Database>::TypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Time {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Time {
    fn decode(value: <Postgres as Database>::ValueRef<'r>) -> Result<Time, BoxDynError> {
        Ok(Time(<DateTime<Utc> as Decode<Postgres>>::decode(value)?))
    }
}

impl Type<Sqlite> for Time {
    fn type_info() -> <Sqlite as Database>::TypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &<Sqlite as Database>::TypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Time {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode_by_ref(&self.0.timestamp_micros(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Time {
    fn decode(value: <Sqlite as Database>::ValueRef<'r>) -> Result<Time, BoxDynError> {
        let micros = <i64 as Decode<Sqlite>>::decode(value)?;
        DateTime::from_timestamp_micros(micros)
            .map(Time)
            .ok_or_else(|| format!("timestamp {micros} out of range").into())
    }
}

/// The public columns of a user, as every user statement returns them.
#[derive(Debug, sqlx::FromRow)]
pub struct UserRow {
    pub(super) id: Uuid,
    email: String,
    first_name: Option<String>,
    last_name: Option<String>,
    two_factor_enabled: bool,
    created_at: Time,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> User {
        User {
            id: row.id,
            email: row.email,
            first_name: row.first_name,
            last_name: row.last_name,
            two_factor_enabled: row.two_factor_enabled,
            created_at: row.created_at.0,
        }
    }
}

/// A user with the stored hash, for login.
#[derive(Debug, sqlx::FromRow)]
pub struct CredentialsRow {
    #[sqlx(flatten)]
    pub user: UserRow,
    pub password_hash: String,
    pub disabled: bool,
}

/// A user row as `authd user list` reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct UserListingRow {
    #[sqlx(flatten)]
    user: UserRow,
    disabled: bool,
    sessions: i64,
}

impl From<UserListingRow> for super::UserListing {
    fn from(row: UserListingRow) -> super::UserListing {
        super::UserListing {
            user: row.user.into(),
            disabled: row.disabled,
            sessions: row.sessions,
        }
    }
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

impl From<SessionChainRow> for super::SessionChain {
    fn from(row: SessionChainRow) -> super::SessionChain {
        super::SessionChain {
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
}

impl From<SessionInfoRow> for super::SessionInfo {
    fn from(row: SessionInfoRow) -> super::SessionInfo {
        super::SessionInfo {
            id: row.id,
            user_id: row.user_id,
            email: row.email,
            created_at: row.created_at.0,
            last_used_at: row.last_used_at.0,
            expires_at: row.expires_at.0,
            client_ip: row.client_ip,
            user_agent: row.user_agent,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct SigningKeyRow {
    kid: String,
    algorithm: String,
    public_jwk: String,
    sealed_private: Vec<u8>,
    state: String,
    created_at: Time,
    activated_at: Option<Time>,
    retired_at: Option<Time>,
    revoked_at: Option<Time>,
}

impl From<SigningKeyRow> for super::SigningKeyRecord {
    fn from(row: SigningKeyRow) -> super::SigningKeyRecord {
        super::SigningKeyRecord {
            kid: row.kid,
            algorithm: row.algorithm,
            public_jwk: row.public_jwk,
            sealed_private: row.sealed_private,
            state: row.state,
            created_at: row.created_at.0,
            activated_at: row.activated_at.map(|t| t.0),
            retired_at: row.retired_at.map(|t| t.0),
            revoked_at: row.revoked_at.map(|t| t.0),
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    id: i64,
    at: Time,
    kind: String,
    outcome: String,
    user_id: Option<Uuid>,
    email: Option<String>,
    client_ip: Option<String>,
    detail: Option<String>,
}

impl From<EventRow> for RecordedEvent {
    fn from(row: EventRow) -> RecordedEvent {
        RecordedEvent {
            id: row.id,
            at: row.at.0,
            kind: row.kind,
            outcome: row.outcome,
            user_id: row.user_id,
            email: row.email,
            client_ip: row.client_ip,
            detail: row.detail,
        }
    }
}

/// Counters are `int4` in PostgreSQL and 64-bit in SQLite: statements return them as BIGINT.
pub type Count = i64;

/// The methods whose statements read the same on both databases, written once and expanded
/// into `impl PgStore` and `impl SqliteStore` (`$db` is the sqlx database type). Parameters are
/// `$n` on both; every time is bound as a [`Time`]. Where the text must differ (time arithmetic)
/// the backend's module supplies it as a constant: `RESERVE_ATTEMPT`, `TAKE_QUOTA`.
macro_rules! shared_statements {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Applies pending migrations; returns "<version> <description>" of each one applied.
            pub async fn migrate(&self) -> Result<Vec<String>> {
                let before = self.applied_migrations().await?;
                anyhow::Context::context(MIGRATOR.run(&self.pool).await, "migration failed")?;
                Ok(MIGRATOR
                    .iter()
                    .filter(|m| !before.contains(&m.version))
                    .map(|m| format!("{} {}", m.version, m.description))
                    .collect())
            }

            /// Migrations this binary knows that the database has not applied yet.
            pub async fn pending_migrations(&self) -> Result<usize> {
                let applied = self.applied_migrations().await?;
                Ok(MIGRATOR
                    .iter()
                    .filter(|m| !applied.contains(&m.version))
                    .count())
            }

            async fn applied_migrations(&self) -> Result<Vec<i64>> {
                if !self.has_migrations_table().await? {
                    return Ok(Vec::new());
                }
                Ok(
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(&self.pool)
                        .await?,
                )
            }

            /// Pool connections: (open, idle, maximum).
            pub fn pool_usage(&self) -> (u32, u32, u32) {
                let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
                (
                    self.pool.size(),
                    idle,
                    self.pool.options().get_max_connections(),
                )
            }

            pub async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            pub async fn insert_user(&self, new: NewUser) -> Result<User> {
                let row: UserRow = sqlx::query_as(
                    "INSERT INTO users (id, email, password_hash, first_name, last_name,
                                        two_factor_enabled, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     RETURNING id, email, first_name, last_name, two_factor_enabled, created_at",
                )
                .bind(new.id)
                .bind(&new.email)
                .bind(&new.password_hash)
                .bind(&new.first_name)
                .bind(&new.last_name)
                .bind(new.two_factor_enabled)
                .bind(Time(new.created_at))
                .fetch_one(&self.pool)
                .await?;
                Ok(row.into())
            }

            pub async fn find_credentials(&self, email: &Email) -> Result<Option<Credentials>> {
                let row: Option<CredentialsRow> = sqlx::query_as(
                    "SELECT id, email, first_name, last_name, two_factor_enabled, created_at,
                            password_hash, disabled_at IS NOT NULL AS disabled
                     FROM users WHERE email = $1",
                )
                .bind(email.as_str())
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|row| Credentials {
                    user: row.user.into(),
                    password_hash: row.password_hash,
                    disabled: row.disabled,
                }))
            }

            pub async fn find_user(&self, id: Uuid) -> Result<Option<User>> {
                let row: Option<UserRow> = sqlx::query_as(
                    "SELECT id, email, first_name, last_name, two_factor_enabled, created_at
                     FROM users WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(User::from))
            }

            pub async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>> {
                let row: Option<UserRow> = sqlx::query_as(
                    "SELECT id, email, first_name, last_name, two_factor_enabled, created_at
                     FROM users WHERE email = $1",
                )
                .bind(email.as_str())
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(User::from))
            }

            pub async fn list_users(
                &self,
                query: &UserQuery,
                now: DateTime<Utc>,
            ) -> Result<Vec<super::UserListing>> {
                let rows: Vec<super::shared::UserListingRow> = sqlx::query_as(
                    r"SELECT u.id, u.email, u.first_name, u.last_name, u.two_factor_enabled,
                             u.created_at, u.disabled_at IS NOT NULL AS disabled,
                             (SELECT count(*) FROM sessions s
                              WHERE s.user_id = u.id AND s.revoked_at IS NULL
                                AND s.expires_at > $3) AS sessions
                      FROM users u
                      WHERE $1 IS NULL
                         OR u.email LIKE $1 ESCAPE '\'
                         OR lower(coalesce(u.first_name, '') || ' ' || coalesce(u.last_name, ''))
                            LIKE $1 ESCAPE '\'
                      ORDER BY u.created_at, u.id
                      LIMIT $2",
                )
                .bind(super::like_pattern(query))
                .bind(query.limit.map_or(i64::MAX, i64::from))
                .bind(Time(now))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(super::UserListing::from).collect())
            }

            pub async fn find_session_user(
                &self,
                user_id: Uuid,
                session_id: Uuid,
                kid: Option<&str>,
                now: DateTime<Utc>,
            ) -> Result<Option<User>> {
                let row: Option<UserRow> = sqlx::query_as(
                    "SELECT u.id, u.email, u.first_name, u.last_name, u.two_factor_enabled,
                            u.created_at
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
                Ok(row.map(User::from))
            }

            pub async fn set_disabled(
                &self,
                email: &Email,
                disabled: bool,
                now: DateTime<Utc>,
            ) -> Result<Option<User>> {
                let mut tx = self.pool.begin().await?;
                let row: Option<UserRow> = sqlx::query_as(
                    "UPDATE users
                     SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, $3) ELSE NULL END
                     WHERE email = $1
                     RETURNING id, email, first_name, last_name, two_factor_enabled, created_at",
                )
                .bind(email.as_str())
                .bind(disabled)
                .bind(Time(now))
                .fetch_optional(&mut *tx)
                .await?;
                if let (Some(user), true) = (&row, disabled) {
                    // Every session ends, and so does a login waiting for its code.
                    sqlx::query(
                        "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
                    )
                    .bind(user.id)
                    .bind(Time(now))
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "UPDATE otp_challenges SET retired_at = $2
                         WHERE user_id = $1 AND consumed_at IS NULL AND retired_at IS NULL",
                    )
                    .bind(user.id)
                    .bind(Time(now))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(row.map(User::from))
            }

            pub async fn delete_user(
                &self,
                email: &Email,
                counters: &[String],
            ) -> Result<Option<User>> {
                let mut tx = self.pool.begin().await?;
                let row: Option<UserRow> = sqlx::query_as(
                    "DELETE FROM users WHERE email = $1
                     RETURNING id, email, first_name, last_name, two_factor_enabled, created_at",
                )
                .bind(email.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                if row.is_some() {
                    for key in counters {
                        sqlx::query("DELETE FROM throttles WHERE key = $1")
                            .bind(key)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
                Ok(row.map(User::from))
            }

            pub async fn insert_session(
                &self,
                session: &super::NewSession,
                max_per_user: u32,
            ) -> Result<Option<u64>> {
                let mut tx = self.pool.begin().await?;
                if let Some(lock) = LOCK_SESSION_USER {
                    sqlx::query(lock)
                        .bind(session.user_id)
                        .execute(&mut *tx)
                        .await?;
                }
                let inserted = sqlx::query(
                    "INSERT INTO sessions (id, user_id, family, refresh_hash, created_at,
                                           last_used_at, expires_at, absolute_expires_at,
                                           client_ip, user_agent)
                     SELECT $1, $2, $3, $4, $5, $5, $6, $7, $8, $9 FROM users
                     WHERE id = $2 AND disabled_at IS NULL
                       AND ($10 OR two_factor_enabled = $11)",
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
            ) -> Result<Option<super::SessionChain>> {
                let row: Option<super::shared::SessionChainRow> = sqlx::query_as(
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
                Ok(row.map(super::SessionChain::from))
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
            ) -> Result<Vec<super::SessionInfo>> {
                let rows: Vec<super::shared::SessionInfoRow> = sqlx::query_as(
                    "SELECT s.id, s.user_id, u.email, s.created_at, s.last_used_at, s.expires_at,
                            s.client_ip, s.user_agent
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
                Ok(rows.into_iter().map(super::SessionInfo::from).collect())
            }

            pub async fn set_two_factor(&self, email: &Email, enabled: bool) -> Result<Option<User>> {
                let row: Option<UserRow> = sqlx::query_as(
                    "UPDATE users SET two_factor_enabled = $2 WHERE email = $1
                     RETURNING id, email, first_name, last_name, two_factor_enabled, created_at",
                )
                .bind(email.as_str())
                .bind(enabled)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(User::from))
            }

            pub async fn replace_password_hash(&self, id: Uuid, old: &str, new: &str) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
                )
                .bind(id)
                .bind(old)
                .bind(new)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            pub async fn insert_challenge(&self, challenge: &NewChallenge) -> Result<()> {
                sqlx::query(
                    "INSERT INTO otp_challenges (id, user_id, code_hash, expires_at, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(challenge.id)
                .bind(challenge.user_id)
                .bind(&challenge.code_hash)
                .bind(Time(challenge.expires_at))
                .bind(Time(challenge.created_at))
                .execute(&self.pool)
                .await?;
                Ok(())
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
                code_hash: &[u8],
                max_attempts: u32,
                now: DateTime<Utc>,
            ) -> Result<Attempt> {
                let row: Option<(bool, Count)> = sqlx::query_as(
                    "UPDATE otp_challenges
                     SET attempts = attempts + CASE WHEN code_hash = $3 THEN 0 ELSE 1 END,
                         consumed_at = CASE WHEN code_hash = $3 THEN $5 ELSE NULL END
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
                .fetch_optional(&self.pool)
                .await?;
                super::attempt_from(row, max_attempts)
            }

            async fn throttle_row(&self, key: &str) -> Result<Option<(Count, Option<DateTime<Utc>>)>> {
                let row: Option<(Count, Option<Time>)> = sqlx::query_as(
                    "SELECT CAST(failures AS BIGINT), locked_until FROM throttles WHERE key = $1",
                )
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|(failures, until)| (failures, until.map(|t| t.0))))
            }

            pub async fn reserve_attempt(
                &self,
                key: &str,
                rule: &ThrottleRule,
                now: DateTime<Utc>,
            ) -> Result<Reservation> {
                let failures: Option<Count> = sqlx::query_scalar(RESERVE_ATTEMPT)
                    .bind(key)
                    .bind(i64::from(rule.every))
                    .bind(Time(now))
                    .bind(rule.first_lock_micros)
                    .bind(rule.max_lock_micros)
                    .bind(rule.max_doublings())
                    .bind(rule.hard_limit.map(i64::from))
                    .fetch_optional(&self.pool)
                    .await?;
                match failures {
                    Some(failures) => Ok(super::granted(failures, rule)),
                    None => Ok(super::refusal(self.throttle_row(key).await?, rule, now)),
                }
            }

            pub async fn take_quota(
                &self,
                key: &str,
                max: u32,
                window_micros: i64,
                now: DateTime<Utc>,
            ) -> Result<Result<u32, DateTime<Utc>>> {
                let used: Option<Count> = sqlx::query_scalar(TAKE_QUOTA)
                    .bind(key)
                    .bind(i64::from(max))
                    .bind(Time(now))
                    .bind(window_micros)
                    .fetch_optional(&self.pool)
                    .await?;
                match used {
                    Some(used) => Ok(Ok(u32::try_from(used).unwrap_or(0))),
                    None => Ok(Err(super::window_end(self.throttle_row(key).await?, now))),
                }
            }

            pub async fn throttle_state(
                &self,
                key: &str,
                rule: &ThrottleRule,
                now: DateTime<Utc>,
            ) -> Result<Option<Reservation>> {
                Ok(super::state_of(self.throttle_row(key).await?, rule, now))
            }

            pub async fn release_attempt(&self, key: &str) -> Result<()> {
                sqlx::query(
                    "UPDATE throttles SET failures = failures - 1 WHERE key = $1 AND failures > 0",
                )
                .bind(key)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            pub async fn clear_failures(&self, key: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM throttles WHERE key = $1")
                    .bind(key)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            /// The deletes of a pruning pass, inside the caller's transaction.
            async fn delete_expired(
                conn: &mut <$db as sqlx::Database>::Connection,
                now: DateTime<Utc>,
                events_before: DateTime<Utc>,
            ) -> Result<Pruned> {
                let challenges = sqlx::query("DELETE FROM otp_challenges WHERE expires_at < $1")
                    .bind(Time(now))
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                // A session's sliding expiry is never later than its absolute one.
                let sessions = sqlx::query(
                    "DELETE FROM sessions WHERE expires_at < $1 OR revoked_at IS NOT NULL",
                )
                .bind(Time(now))
                .execute(&mut *conn)
                .await?
                .rows_affected();
                let throttles = sqlx::query(
                    "DELETE FROM throttles
                     WHERE key NOT LIKE 'otp:%' AND updated_at < $2
                       AND (locked_until IS NULL OR locked_until < $1)",
                )
                .bind(Time(now))
                .bind(Time(now - chrono::Duration::days(super::THROTTLE_MEMORY_DAYS)))
                .execute(&mut *conn)
                .await?
                .rows_affected();
                let events = sqlx::query("DELETE FROM security_events WHERE at < $1")
                    .bind(Time(events_before))
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                Ok(Pruned {
                    challenges,
                    sessions,
                    throttles,
                    events,
                    keys: 0,
                })
            }

            pub async fn insert_signing_key(&self, key: &super::NewSigningKey) -> Result<()> {
                sqlx::query(
                    "INSERT INTO signing_keys (kid, algorithm, public_jwk, sealed_private, state,
                                               created_at, activated_at)
                     VALUES ($1, $2, $3, $4, $5, $6,
                             CASE WHEN $5 = 'current' THEN $6 ELSE NULL END)",
                )
                .bind(&key.kid)
                .bind(&key.algorithm)
                .bind(&key.public_jwk)
                .bind(&key.sealed_private)
                .bind(&key.state)
                .bind(Time(key.created_at))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            pub async fn list_signing_keys(&self) -> Result<Vec<super::SigningKeyRecord>> {
                let rows: Vec<super::shared::SigningKeyRow> = sqlx::query_as(
                    "SELECT kid, algorithm, public_jwk, sealed_private, state, created_at,
                            activated_at, retired_at, revoked_at
                     FROM signing_keys ORDER BY created_at, kid",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(super::SigningKeyRecord::from).collect())
            }

            /// Makes the `next` key `kid` current and retires the current one, in one
            /// transaction; false (nothing changed) when `kid` is not `next` any more.
            pub async fn activate_signing_key(&self, kid: &str, now: DateTime<Utc>) -> Result<bool> {
                let mut tx = self.pool.begin().await?;
                let still_next: Option<String> = sqlx::query_scalar(
                    "SELECT kid FROM signing_keys WHERE kid = $1 AND state = 'next'",
                )
                .bind(kid)
                .fetch_optional(&mut *tx)
                .await?;
                if still_next.is_none() {
                    tx.rollback().await?;
                    return Ok(false);
                }
                // The old current first: at most one key is current at any moment.
                sqlx::query(
                    "UPDATE signing_keys SET state = 'retired', retired_at = $1
                     WHERE state = 'current'",
                )
                .bind(Time(now))
                .execute(&mut *tx)
                .await?;
                let activated = sqlx::query(
                    "UPDATE signing_keys SET state = 'current', activated_at = $2
                     WHERE kid = $1 AND state = 'next'",
                )
                .bind(kid)
                .bind(Time(now))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                // Another activation took this key first: leave everything as it made it.
                if activated == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                tx.commit().await?;
                Ok(true)
            }

            /// Revokes `kid` in one transaction. A current key is followed by `successor`
            /// (a `next` key promoted, or a new key inserted as current); without one, or when
            /// the chosen `next` key changed meanwhile, nothing changes and the caller reads
            /// the keys again.
            pub async fn revoke_signing_key(
                &self,
                kid: &str,
                now: DateTime<Utc>,
                successor: Option<super::Successor<'_>>,
            ) -> Result<super::Revocation> {
                use super::{Revocation, RevokedKey, Successor};
                let mut tx = self.pool.begin().await?;
                let state: Option<String> =
                    sqlx::query_scalar("SELECT state FROM signing_keys WHERE kid = $1")
                        .bind(kid)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(state) = state else {
                    tx.rollback().await?;
                    return Ok(Revocation::NoSuchKey);
                };
                if state == "revoked" {
                    tx.rollback().await?;
                    return Ok(Revocation::Done(RevokedKey {
                        previous_state: state,
                        successor: None,
                    }));
                }
                if state == "current" && successor.is_none() {
                    tx.rollback().await?;
                    return Ok(Revocation::NeedsSuccessor);
                }
                let revoked = sqlx::query(
                    "UPDATE signing_keys SET state = 'revoked', revoked_at = $2
                     WHERE kid = $1 AND state = $3",
                )
                .bind(kid)
                .bind(Time(now))
                .bind(&state)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if revoked == 0 {
                    tx.rollback().await?;
                    return Ok(Revocation::Changed);
                }
                let mut promoted = None;
                match successor.filter(|_| state == "current") {
                    None => {}
                    // Signing goes on without a gap, with a key the caller has checked opens.
                    Some(Successor::Next(next)) => {
                        let done = sqlx::query(
                            "UPDATE signing_keys SET state = 'current', activated_at = $2
                             WHERE kid = $1 AND state = 'next'",
                        )
                        .bind(next)
                        .bind(Time(now))
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        if done == 0 {
                            tx.rollback().await?;
                            return Ok(Revocation::Changed);
                        }
                        promoted = Some(next.to_owned());
                    }
                    Some(Successor::New(key)) => {
                        sqlx::query(
                            "INSERT INTO signing_keys (kid, algorithm, public_jwk, sealed_private,
                                                       state, created_at, activated_at)
                             VALUES ($1, $2, $3, $4, 'current', $5, $5)",
                        )
                        .bind(&key.kid)
                        .bind(&key.algorithm)
                        .bind(&key.public_jwk)
                        .bind(&key.sealed_private)
                        .bind(Time(key.created_at))
                        .execute(&mut *tx)
                        .await?;
                        promoted = Some(key.kid.clone());
                    }
                }
                tx.commit().await?;
                Ok(Revocation::Done(RevokedKey {
                    previous_state: state,
                    successor: promoted,
                }))
            }

            /// The key-encryption key's check value, if one was recorded.
            pub async fn kek_check_value(&self) -> Result<Option<Vec<u8>>> {
                Ok(sqlx::query_scalar("SELECT check_value FROM kek_check WHERE id = 1")
                    .fetch_optional(&self.pool)
                    .await?)
            }

            /// Records `value` as the check value unless one is there already; the one stored
            /// afterwards (the first writer's, when two race).
            pub async fn record_kek_check_value(&self, value: &[u8], now: DateTime<Utc>) -> Result<Vec<u8>> {
                sqlx::query(
                    "INSERT INTO kek_check (id, check_value, created_at) VALUES (1, $1, $2)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(value)
                .bind(Time(now))
                .execute(&self.pool)
                .await?;
                Ok(sqlx::query_scalar("SELECT check_value FROM kek_check WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?)
            }

            pub async fn signing_key_state(&self, kid: &str) -> Result<Option<String>> {
                Ok(
                    sqlx::query_scalar("SELECT state FROM signing_keys WHERE kid = $1")
                        .bind(kid)
                        .fetch_optional(&self.pool)
                        .await?,
                )
            }

            pub async fn delete_expired_retired_keys(&self, retired_before: DateTime<Utc>) -> Result<u64> {
                Ok(sqlx::query(
                    "DELETE FROM signing_keys WHERE state = 'retired' AND retired_at < $1",
                )
                .bind(Time(retired_before))
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            pub async fn insert_events(&self, events: &[SecurityEvent]) -> Result<()> {
                let mut tx = self.pool.begin().await?;
                for event in events {
                    sqlx::query(
                        "INSERT INTO security_events (at, kind, outcome, user_id, email, client_ip, detail)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(Time(event.at))
                    .bind(event.kind.as_str())
                    .bind(event.kind.outcome())
                    .bind(event.user_id)
                    .bind(&event.email)
                    .bind(event.client_ip.map(|ip| ip.to_string()))
                    .bind(&event.detail)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            pub async fn list_events(&self, query: &EventQuery) -> Result<Vec<RecordedEvent>> {
                let rows: Vec<EventRow> = sqlx::query_as(
                    "SELECT id, at, kind, outcome, user_id, email, client_ip, detail
                     FROM security_events
                     WHERE $1 IS NULL OR email = $1
                     ORDER BY at DESC, id DESC
                     LIMIT $2",
                )
                .bind(&query.email)
                .bind(i64::from(query.limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(RecordedEvent::from).collect())
            }
        }
    };
}

pub(super) use shared_statements;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_time_is_integer_microseconds_in_sqlite_and_out_of_range_values_are_refused() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let t = DateTime::from_timestamp_micros(1_764_633_600_123_456).unwrap();
        let (stored, back): (i64, Time) = sqlx::query_as("SELECT $1, $1")
            .bind(Time(t))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(stored, 1_764_633_600_123_456);
        assert_eq!(back, Time(t));
        let refused = sqlx::query_scalar::<_, Time>("SELECT $1")
            .bind(i64::MAX)
            .fetch_one(&pool)
            .await;
        assert!(refused.is_err(), "{refused:?}");
    }
}
