//! The PostgreSQL store: what differs from SQLite. Every statement is shared (the topic files,
//! through `statements!`); this file keeps connecting, the lock a new session takes on its user,
//! the pruning lock and how the migrations table is found.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};

use super::PRUNE_LOCK;
use crate::config::DatabaseSettings;
use crate::error::Result;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// A pool of connections to one PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pub(super) pool: PgPool,
}

impl PgStore {
    pub(super) const MIGRATOR: &'static Migrator = &MIGRATOR;

    /// Taken before a session is created: the user row, so that a disable or delete (which update
    /// or delete it) and another login of the user wait for the new session, or it for them.
    /// An `--update` import reads each user it may change, locked until the batch commits.
    pub(super) const READ_IMPORTED_USER: &'static str =
        "SELECT id, password_hash, imported_hash_digest, first_name, last_name, two_factor_enabled,
                email_verified_at IS NOT NULL AS email_verified, disabled_at IS NOT NULL AS disabled
         FROM users WHERE email = $1 FOR NO KEY UPDATE";

    /// Nothing to take before a batch's reads: the rows are locked as they are read.
    pub(super) const TAKE_WRITE_LOCK: Option<&'static str> = None;

    pub(super) const LOCK_SESSION_USER: Option<&'static str> =
        Some("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE");

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

    pub(super) async fn has_migrations_table(&self) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Lets one instance at a time prune: an advisory lock held until the pass's transaction
    /// ends. False when another instance holds it and `wait` is false.
    pub(super) async fn take_prune_lock(conn: &mut PgConnection, wait: bool) -> Result<bool> {
        if wait {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PRUNE_LOCK)
                .execute(&mut *conn)
                .await?;
            return Ok(true);
        }
        Ok(sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(PRUNE_LOCK)
            .fetch_one(&mut *conn)
            .await?)
    }
}
