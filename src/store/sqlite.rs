//! The SQLite store: one file, one instance. What differs from PostgreSQL (see `shared.rs` for
//! the rest): the file's creation and mode, and time arithmetic on integer microseconds. Writes
//! are serialised by SQLite itself, which is what makes the single-statement counting atomic.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use uuid::Uuid;

use super::shared::{Count, CredentialsRow, EventRow, Time, UserRow, shared_statements};
use super::{
    Attempt, Credentials, NewChallenge, NewUser, Pruned, Reservation, ThrottleRule, UserQuery,
};
use crate::audit::{EventQuery, RecordedEvent, SecurityEvent};
use crate::config::DatabaseSettings;
use crate::domain::{Email, User};
use crate::error::Result;

/// `reserve_attempt` (see `Store::reserve_attempt`): $1 key, $2 failures per lock, $3 now,
/// $4 first lock and $5 longest lock in microseconds, $6 most doublings, $7 hard limit.
/// Differs from the other backend only in its time arithmetic (integer microseconds).
const RESERVE_ATTEMPT: &str = "INSERT INTO throttles AS t (key, failures, locked_until, updated_at)
             VALUES ($1, 1, CASE WHEN $2 = 1 THEN $3 + $4 END, $3)
             ON CONFLICT (key) DO UPDATE SET
                 failures = t.failures + 1,
                 locked_until = CASE WHEN (t.failures + 1) % $2 = 0
                     THEN $3 + min($4 * (1 << min((t.failures + 1) / $2 - 1, $6)), $5)
                     ELSE t.locked_until END,
                 updated_at = $3
             WHERE (t.locked_until IS NULL OR t.locked_until <= $3)
               AND ($7 IS NULL OR t.failures < $7)
             RETURNING CAST(failures AS BIGINT)";

/// `take_quota`: $1 key, $2 units per window, $3 now, $4 window in microseconds.
const TAKE_QUOTA: &str = "INSERT INTO throttles AS t (key, failures, locked_until, updated_at)
             VALUES ($1, 1, $3 + $4, $3)
             ON CONFLICT (key) DO UPDATE SET
                 failures = CASE WHEN t.locked_until IS NULL OR t.locked_until <= $3
                                 THEN 1 ELSE t.failures + 1 END,
                 locked_until = CASE WHEN t.locked_until IS NULL OR t.locked_until <= $3
                                     THEN excluded.locked_until ELSE t.locked_until END,
                 updated_at = $3
             WHERE t.locked_until IS NULL OR t.locked_until <= $3 OR t.failures < $2
             RETURNING CAST(failures AS BIGINT)";

/// SQLite has one writer at a time: the session's insert, the first write of its transaction,
/// already waits for a disable, a delete or another login.
const LOCK_SESSION_USER: Option<&str> = None;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A pool of connections to one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

shared_statements!(SqliteStore, sqlx::Sqlite);

/// Creates the database file, and the directories above it, readable by this user only
/// (0600 and 0700 whatever the umask): it holds password hashes. SQLite gives its -wal and
/// -shm files the database file's mode, so they are private too. An existing file or
/// directory keeps the mode its owner gave it; a database readable by others is warned about.
fn create_private_file(path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        crate::files::create_private_dir(dir)
            .and_then(|()| set_mode(dir, 0o700))
            .with_context(|| format!("cannot create the database directory {}", dir.display()))?;
    }
    match crate::files::create_private_file(path) {
        Ok(_) => set_mode(path, 0o600)
            .with_context(|| format!("cannot make the database {} private", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            warn_if_readable_by_others(path);
            Ok(())
        }
        Err(err) => {
            Err(err).with_context(|| format!("cannot create the database {}", path.display()))
        }
    }
}

/// Sets `path`'s mode exactly (the umask only ever narrows what `open` and `mkdir` give).
fn set_mode(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

fn warn_if_readable_by_others(path: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the SQLite database holds password hashes and is readable by other users: chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its directory.
    pub fn connect_lazy(url: &str, settings: &DatabaseSettings) -> anyhow::Result<SqliteStore> {
        Self::connect(url, settings, true)
    }

    /// Opens the database file only if it exists: never creates it, nor its directory.
    pub fn connect_existing(url: &str, settings: &DatabaseSettings) -> anyhow::Result<SqliteStore> {
        Self::connect(url, settings, false)
    }

    fn connect(
        url: &str,
        settings: &DatabaseSettings,
        create: bool,
    ) -> anyhow::Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .context("database.url is not a valid sqlite:// URL")?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(
                settings.acquire_timeout_secs.max(1) + 2,
            ));
        // sqlx names an in-memory database "file:sqlx-in-memory-<n>": nothing to create.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            let path = options.get_filename();
            if create {
                create_private_file(path)?;
            } else if !path.exists() {
                let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
                return Err(super::NoDatabase { path }.into());
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
            .connect_lazy_with(options);
        Ok(SqliteStore { pool })
    }

    async fn has_migrations_table(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// One file, one instance: no lock to take, so `wait` changes nothing.
    pub async fn prune(
        &self,
        now: DateTime<Utc>,
        events_before: DateTime<Utc>,
        _wait: bool,
    ) -> Result<Option<Pruned>> {
        let mut tx = self.pool.begin().await?;
        let pruned = Self::delete_expired(&mut tx, now, events_before).await?;
        tx.commit().await?;
        Ok(Some(pruned))
    }
}
