//! The PostgreSQL store: what differs from SQLite (see `shared.rs` for the rest).

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use uuid::Uuid;

use super::shared::{Count, CredentialsRow, EventRow, Time, UserRow, shared_statements};
use super::{
    Attempt, Credentials, NewChallenge, NewUser, PRUNE_LOCK, Pruned, Reservation, ThrottleRule,
    UserQuery,
};
use crate::audit::{EventQuery, RecordedEvent, SecurityEvent};
use crate::config::DatabaseSettings;
use crate::domain::{Email, User};
use crate::error::Result;

/// `reserve_attempt` (see `Store::reserve_attempt`): $1 key, $2 failures per lock, $3 now,
/// $4 first lock and $5 longest lock in microseconds, $6 most doublings, $7 hard limit.
/// Differs from the other backend only in its time arithmetic (timestamptz plus a float number of microseconds).
const RESERVE_ATTEMPT: &str = "INSERT INTO throttles AS t (key, failures, locked_until, updated_at)
             VALUES ($1, 1, CASE WHEN $2 = 1 THEN $3 + $4::float8 * interval '1 microsecond' END, $3)
             ON CONFLICT (key) DO UPDATE SET
                 failures = t.failures + 1,
                 locked_until = CASE WHEN (t.failures + 1) % $2 = 0
                     THEN $3 + least($4::float8 * power(2::float8, least((t.failures + 1) / $2 - 1, $6)), $5::float8)
                              * interval '1 microsecond'
                     ELSE t.locked_until END,
                 updated_at = $3
             WHERE (t.locked_until IS NULL OR t.locked_until <= $3)
               AND ($7::int8 IS NULL OR t.failures < $7)
             RETURNING CAST(failures AS BIGINT)";

/// `take_quota`: $1 key, $2 units per window, $3 now, $4 window in microseconds.
const TAKE_QUOTA: &str = "INSERT INTO throttles AS t (key, failures, locked_until, updated_at)
             VALUES ($1, 1, $3 + $4::float8 * interval '1 microsecond', $3)
             ON CONFLICT (key) DO UPDATE SET
                 failures = CASE WHEN t.locked_until IS NULL OR t.locked_until <= $3
                                 THEN 1 ELSE t.failures + 1 END,
                 locked_until = CASE WHEN t.locked_until IS NULL OR t.locked_until <= $3
                                     THEN EXCLUDED.locked_until ELSE t.locked_until END,
                 updated_at = $3
             WHERE t.locked_until IS NULL OR t.locked_until <= $3 OR t.failures < $2
             RETURNING CAST(failures AS BIGINT)";

/// Taken before a session is created: the user row, so that a disable or delete (which update
/// or delete it) and another login of the user wait for the new session, or it for them.
const LOCK_SESSION_USER: Option<&str> = Some("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE");

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A pool of connections to one PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

shared_statements!(PgStore, sqlx::Postgres);

impl PgStore {
    /// Prepares a pool without connecting, so authd starts (and reports not ready) while the database is down.
    pub fn connect_lazy(url: &str, settings: &DatabaseSettings) -> anyhow::Result<PgStore> {
        let options = PgConnectOptions::from_str(url)
            .context("database.url is not a valid postgres:// URL")?
            .application_name("authd");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
            .connect_lazy_with(options);
        Ok(PgStore { pool })
    }

    async fn has_migrations_table(&self) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub async fn prune(
        &self,
        now: DateTime<Utc>,
        events_before: DateTime<Utc>,
        wait: bool,
    ) -> Result<Option<Pruned>> {
        let mut tx = self.pool.begin().await?;
        if wait {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PRUNE_LOCK)
                .execute(&mut *tx)
                .await?;
        } else {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(PRUNE_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            if !got {
                return Ok(None);
            }
        }
        let pruned = Self::delete_expired(&mut tx, now, events_before).await?;
        tx.commit().await?;
        Ok(Some(pruned))
    }
}
