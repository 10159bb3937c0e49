//! Database access: the only place with SQL. `Store` picks the backend from `database.url`:
//! PostgreSQL for production and several instances, SQLite for a single instance.

mod postgres;
mod sqlite;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::{EventQuery, RecordedEvent, SecurityEvent};
use crate::config::Settings;
use crate::domain::{Email, User};
use crate::error::Result;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A user row about to be inserted.
#[derive(Debug)]
pub struct NewUser {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub two_factor_enabled: bool,
}

/// What login needs: the public user plus the stored hash, which never leaves the core.
#[derive(Debug)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// A new login challenge: the keyed hash of the emailed code and when it dies.
#[derive(Debug)]
pub struct NewChallenge {
    pub id: Uuid,
    pub user_id: Uuid,
    pub code_hash: Vec<u8>,
    pub expires_at: DateTime<Utc>,
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

/// Filters for listing users.
#[derive(Debug, Default, Clone)]
pub struct UserQuery {
    pub search: Option<String>,
    pub limit: Option<u32>,
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// The database, whichever backend it is.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// Forwards each method to the backend; the signatures are the store's interface.
macro_rules! delegate {
    ($( $(#[$doc:meta])* pub async fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        $(
            $(#[$doc])*
            pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                match self {
                    Store::Postgres(s) => s.$name($($arg),*).await,
                    Store::Sqlite(s) => s.$name($($arg),*).await,
                }
            }
        )*
    };
}

impl Store {
    /// Prepares the store named by the settings without connecting yet, so authd can start
    /// (and report not ready) while a database server is down.
    pub fn connect_lazy(settings: &Settings) -> anyhow::Result<Store> {
        let url = settings.database_url();
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::connect_lazy(
                &url,
                &settings.database,
            )?))
        } else {
            Ok(Store::Postgres(PgStore::connect_lazy(
                &url,
                &settings.database,
            )?))
        }
    }

    /// Connects like `connect_lazy`; a SQLite database (one file, one instance) also gets its
    /// schema applied, so every command works on a fresh data directory.
    pub async fn open(settings: &Settings) -> anyhow::Result<Store> {
        let store = Store::connect_lazy(settings)?;
        match &store {
            Store::Sqlite(_) => {
                for name in store.migrate().await? {
                    tracing::info!(migration = %name, "applied migration");
                }
            }
            // Checked in the background so a database that is down does not delay start-up.
            Store::Postgres(pg) => {
                let pg = pg.clone();
                tokio::spawn(async move {
                    if let Ok(pending @ 1..) = pg.pending_migrations().await {
                        tracing::error!(
                            pending,
                            "the database schema is behind this version of authd: run `authd migrate`"
                        );
                    }
                });
            }
        }
        Ok(store)
    }

    /// Pool connections: (open, idle, maximum).
    pub fn pool_usage(&self) -> (u32, u32, u32) {
        match self {
            Store::Postgres(s) => s.pool_usage(),
            Store::Sqlite(s) => s.pool_usage(),
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Postgres(_) => Backend::Postgres,
            Store::Sqlite(_) => Backend::Sqlite,
        }
    }

    delegate! {
        /// Applies pending migrations; returns "<version> <description>" of each one applied.
        pub async fn migrate(&self) -> Result<Vec<String>>;
        /// Answers whether the database responds right now.
        pub async fn ping(&self) -> Result<()>;
        pub async fn insert_user(&self, new: NewUser) -> Result<User>;
        pub async fn find_credentials(&self, email: &Email) -> Result<Option<Credentials>>;
        pub async fn find_user(&self, id: Uuid) -> Result<Option<User>>;
        /// Users in a stable order (created_at, then id), optionally filtered and limited.
        pub async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>>;
        pub async fn set_two_factor(&self, email: &Email, enabled: bool) -> Result<Option<User>>;
        pub async fn insert_challenge(&self, challenge: &NewChallenge) -> Result<()>;
        /// Removes a challenge whose code could not be delivered.
        pub async fn delete_challenge(&self, id: Uuid) -> Result<()>;
        /// Retires every open challenge of the user except `keep`, and forgets long-dead ones.
        pub async fn retire_challenges_except(&self, user_id: Uuid, keep: Uuid) -> Result<()>;
        /// Counts a wrong code or consumes the challenge, in one statement: parallel guesses
        /// cannot pass `max_attempts` and a right code is accepted at most once.
        pub async fn attempt_challenge(&self, id: Uuid, user_id: Uuid, code_hash: &[u8], max_attempts: u32) -> Result<Attempt>;
        /// Until when `key` is locked, if it is locked now.
        pub async fn locked_until(&self, key: &str, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>>;
        /// Counts one more consecutive failure of `key`. The failure that reaches `limit` locks
        /// the key until `lock_until` and starts a new count. Returns the lock if one was set.
        pub async fn record_failure(&self, key: &str, limit: u32, now: DateTime<Utc>, lock_until: DateTime<Utc>) -> Result<Option<DateTime<Utc>>>;
        /// Forgets the failures of `key` (after a success).
        pub async fn clear_failures(&self, key: &str) -> Result<()>;
        /// Appends security events in one transaction.
        pub async fn insert_events(&self, events: &[SecurityEvent]) -> Result<()>;
        /// Security events, newest first.
        pub async fn list_events(&self, query: &EventQuery) -> Result<Vec<RecordedEvent>>;
    }
}

/// "<version> <description>" of the migrations that were not applied before.
fn newly_applied(migrator: &sqlx::migrate::Migrator, before: &[i64]) -> Vec<String> {
    migrator
        .iter()
        .filter(|m| !before.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect()
}

/// The LIKE pattern for a search: lower-cased, wildcards in the text matched literally.
fn like_pattern(query: &UserQuery) -> Option<String> {
    let text = query.search.as_deref()?.to_lowercase();
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    Some(pattern)
}

/// Reads the row returned by the attempt statement: `(accepted, attempts)`, or none if dead.
fn attempt_from(row: Option<(bool, i64)>, max_attempts: u32) -> Result<Attempt> {
    Ok(match row {
        None => Attempt::Dead,
        Some((true, _)) => Attempt::Accepted,
        Some((false, attempts)) => Attempt::Rejected {
            remaining: u32::try_from(i64::from(max_attempts) - attempts).unwrap_or(0),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_text_is_matched_literally() {
        let query = UserQuery {
            search: Some("A_b%c\\".into()),
            limit: None,
        };
        assert_eq!(like_pattern(&query).unwrap(), r"%a\_b\%c\\%");
        assert_eq!(like_pattern(&UserQuery::default()), None);
    }

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
