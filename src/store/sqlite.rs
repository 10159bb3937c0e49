//! The SQLite store: one file, one instance. What differs from PostgreSQL (every statement is
//! shared: the topic files, through `statements!`): the file's creation and mode, no lock for a
//! new session or for pruning, and how the migrations table is found. Writes are serialised by
//! SQLite itself, which is what makes the single-statement counting atomic.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

use crate::config::DatabaseSettings;
use crate::error::Result;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// A pool of connections to one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
}

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
    pub(super) const MIGRATOR: &'static Migrator = &MIGRATOR;

    /// SQLite has one writer at a time, but a transaction that reads first and writes later
    /// cannot wait for its write lock (SQLite refuses at once with SQLITE_BUSY): so the
    /// transactions that lock a user begin with a write that changes nothing, which takes the
    /// write lock at once (waiting `busy_timeout` for it like any write).
    /// An `--update` import reads each user it may change (the batch holds the write lock).
    pub(super) const READ_IMPORTED_USER: &'static str =
        "SELECT id, password_hash, imported_hash_digest, first_name, last_name, two_factor_enabled,
                email_verified_at IS NOT NULL AS email_verified, disabled_at IS NOT NULL AS disabled
         FROM users WHERE email = $1";

    /// The write lock first, so that a batch's reads see what its writes will change.
    pub(super) const TAKE_WRITE_LOCK: Option<&'static str> =
        Some("UPDATE users SET email = email WHERE 0");

    pub(super) const LOCK_SESSION_USER: Option<&'static str> =
        Some("UPDATE users SET email = email WHERE id = $1");

    /// Opens (creating if needed) the database file and its directory.
    pub fn connect_lazy(url: &str, settings: &DatabaseSettings) -> anyhow::Result<SqliteStore> {
        Self::connect(url, settings, true).map(|(store, _)| store)
    }

    /// Opens the database file only if it exists: never creates it, nor its directory. With
    /// the file's absolute path (None for an in-memory database).
    pub fn connect_existing(
        url: &str,
        settings: &DatabaseSettings,
    ) -> anyhow::Result<(SqliteStore, Option<std::path::PathBuf>)> {
        Self::connect(url, settings, false)
    }

    fn connect(
        url: &str,
        settings: &DatabaseSettings,
        create: bool,
    ) -> anyhow::Result<(SqliteStore, Option<std::path::PathBuf>)> {
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
        let mut file = None;
        if !in_memory {
            let path = options.get_filename();
            if create {
                create_private_file(path)?;
            } else if !path.exists() {
                let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
                return Err(super::NoDatabase::Missing(path).into());
            }
            file = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
            .connect_lazy_with(options);
        Ok((SqliteStore { pool }, file))
    }

    pub(super) async fn has_migrations_table(&self) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// One file, one instance: no lock to take, so `wait` changes nothing.
    pub(super) async fn take_prune_lock(_conn: &mut SqliteConnection, _wait: bool) -> Result<bool> {
        Ok(true)
    }
}
