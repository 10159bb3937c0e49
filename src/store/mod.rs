//! Database access: the only place with SQL. `Store` picks the backend from `database.url`:
//! PostgreSQL for production and several instances, SQLite for a single instance.

mod postgres;
mod shared;
mod sqlite;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::{EventQuery, RecordedEvent, SecurityEvent};
use crate::config::Settings;
use crate::domain::{Email, User};
use crate::error::{Error, Result};

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
    pub created_at: DateTime<Utc>,
}

/// What login needs: the public user plus the stored hash, which never leaves the core.
#[derive(Debug)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
    /// Disabled by `authd user disable`: the login fails as a wrong password would.
    pub disabled: bool,
}

/// A new login challenge: the keyed hash of the emailed code and when it dies.
#[derive(Debug)]
pub struct NewChallenge {
    pub id: Uuid,
    pub user_id: Uuid,
    pub code_hash: Vec<u8>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

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
}

/// A user as `authd user list` shows them: the API's User with two more fields.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UserListing {
    #[serde(flatten)]
    pub user: User,
    pub disabled: bool,
    /// Live sessions.
    pub sessions: i64,
}

/// A signing key about to be stored (issue 15).
#[derive(Debug, Clone)]
pub struct NewSigningKey {
    pub kid: String,
    pub algorithm: String,
    /// The public JWK, as JSON.
    pub public_jwk: String,
    /// The private half, sealed under the key-encryption key.
    pub sealed_private: Vec<u8>,
    /// `next` or `current`.
    pub state: String,
    pub created_at: DateTime<Utc>,
}

/// A stored signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub algorithm: String,
    pub public_jwk: String,
    pub sealed_private: Vec<u8>,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<NewSigningKey> for SigningKeyRecord {
    /// The row a key about to be stored becomes (activated at its creation when it is made
    /// current), for key sets built without a database.
    fn from(key: NewSigningKey) -> SigningKeyRecord {
        let activated_at = (key.state == "current").then_some(key.created_at);
        SigningKeyRecord {
            kid: key.kid,
            algorithm: key.algorithm,
            public_jwk: key.public_jwk,
            sealed_private: key.sealed_private,
            state: key.state,
            created_at: key.created_at,
            activated_at,
            retired_at: None,
            revoked_at: None,
        }
    }
}

/// What revoking a key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedKey {
    /// The key's state before (`revoked` if it already was).
    pub previous_state: String,
    /// When it was the current key: the key that signs from now on.
    pub successor: Option<String>,
}

/// What takes over from a revoked current key.
#[derive(Debug, Clone, Copy)]
pub enum Successor<'a> {
    /// This `next` key (one the key-encryption key opens).
    Next(&'a str),
    /// This new key, inserted as current.
    New(&'a NewSigningKey),
}

/// How one attempt to revoke a key ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Done(RevokedKey),
    NoSuchKey,
    /// The key is current and no successor was given: nothing changed.
    NeedsSuccessor,
    /// The key, or the chosen successor, changed meanwhile: nothing changed.
    Changed,
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

/// How a throttle key locks. Failures are consecutive: only a success (or `authd user unlock`)
/// clears them, never a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleRule {
    /// Every `every` consecutive failures lock the key.
    pub every: u32,
    /// The first lock, in microseconds; each later lock lasts twice the one before...
    pub first_lock_micros: i64,
    /// ...up to this many microseconds.
    pub max_lock_micros: i64,
    /// After this many consecutive failures the key stays locked until cleared by hand.
    pub hard_limit: Option<u32>,
}

impl ThrottleRule {
    /// Doublings after which a lock has reached `max_lock_micros`; bounds the arithmetic.
    fn max_doublings(&self) -> i64 {
        let mut doublings = 0;
        let mut lock = self.first_lock_micros.max(1);
        while lock < self.max_lock_micros && doublings < 62 {
            lock = lock.saturating_mul(2);
            doublings += 1;
        }
        doublings
    }

    /// The lock the `failures`-th consecutive failure sets, if it sets one (for tests and docs).
    pub fn lock_after(&self, failures: u32) -> Option<i64> {
        if self.every == 0 || failures == 0 || !failures.is_multiple_of(self.every) {
            return None;
        }
        let doublings = i64::from(failures / self.every - 1).min(self.max_doublings());
        Some(
            self.first_lock_micros
                .saturating_mul(1 << doublings)
                .min(self.max_lock_micros),
        )
    }
}

/// The answer to asking for one more attempt under a [`ThrottleRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Go ahead: the attempt already counts as failure number `failures` until it is cleared.
    Granted { failures: u32, locked: bool },
    /// Locked until then; nothing was counted.
    Locked(DateTime<Utc>),
    /// At the hard limit: locked until an admin clears it; nothing was counted.
    Frozen,
}

/// Reads the refusal that the reservation statement returned no row for.
fn refusal(
    row: Option<(i64, Option<DateTime<Utc>>)>,
    rule: &ThrottleRule,
    now: DateTime<Utc>,
) -> Reservation {
    match row {
        Some((failures, _))
            if rule
                .hard_limit
                .is_some_and(|hard| failures >= i64::from(hard)) =>
        {
            Reservation::Frozen
        }
        Some((_, Some(until))) if until > now => Reservation::Locked(until),
        // The lock ended between the two statements: ask again in a second.
        _ => Reservation::Locked(now + chrono::Duration::seconds(1)),
    }
}

/// Whether a throttle row locks its key now (none: not locked).
fn state_of(
    row: Option<(i64, Option<DateTime<Utc>>)>,
    rule: &ThrottleRule,
    now: DateTime<Utc>,
) -> Option<Reservation> {
    let (failures, until) = row?;
    if rule
        .hard_limit
        .is_some_and(|hard| failures >= i64::from(hard))
    {
        return Some(Reservation::Frozen);
    }
    until.filter(|until| *until > now).map(Reservation::Locked)
}

/// When a used-up quota window ends (at least a second from now).
fn window_end(row: Option<(i64, Option<DateTime<Utc>>)>, now: DateTime<Utc>) -> DateTime<Utc> {
    row.and_then(|(_, until)| until)
        .filter(|until| *until > now)
        .unwrap_or(now + chrono::Duration::seconds(1))
}

fn granted(failures: i64, rule: &ThrottleRule) -> Reservation {
    let failures = u32::try_from(failures).unwrap_or(u32::MAX);
    Reservation::Granted {
        failures,
        locked: rule.lock_after(failures).is_some()
            || rule.hard_limit.is_some_and(|hard| failures >= hard),
    }
}

/// What one pruning pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// Login challenges past their expiry (dead whether used or not).
    pub challenges: u64,
    /// Sessions past either expiry, or revoked.
    pub sessions: u64,
    /// Throttle rows untouched for [`THROTTLE_MEMORY_DAYS`] that lock nothing now.
    pub throttles: u64,
    /// Security events older than `audit.retention_days`.
    pub events: u64,
    /// Retired signing keys whose every token has expired.
    pub keys: u64,
}

/// How long an idle password counter (or code-email quota) is remembered once it locks nothing.
/// Code counters (`otp:`) are never pruned: only a right code or `authd user unlock` clears one.
pub const THROTTLE_MEMORY_DAYS: i64 = 30;

/// The PostgreSQL advisory lock that lets one instance at a time prune ("authd" in ASCII).
pub const PRUNE_LOCK: i64 = 0x0061_7574_6864;

/// Filters for listing users.
#[derive(Debug, Default, Clone)]
pub struct UserQuery {
    pub search: Option<String>,
    pub limit: Option<u32>,
}

/// The SQLite file the settings name is not there, and the command may not create it.
#[derive(Debug, thiserror::Error)]
#[error(
    "no database at {}: nothing was created; point authd at yours with --config FILE, --database-url URL or AUTHD_DATABASE__URL (`authd migrate` creates one there)",
    .path.display()
)]
pub struct NoDatabase {
    pub path: std::path::PathBuf,
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
    /// schema applied, so the server works on a fresh data directory.
    pub async fn open(settings: &Settings) -> anyhow::Result<Store> {
        Store::connect_lazy(settings)?.prepare().await
    }

    /// Like [`Store::open`], but never creates a database: a SQLite file that is not there is
    /// [`NoDatabase`]. What the admin commands use, so that one run in the wrong directory, or
    /// with the wrong settings, says so instead of answering from an empty database it made.
    pub async fn open_existing(settings: &Settings) -> anyhow::Result<Store> {
        let url = settings.database_url();
        let store = if url.starts_with("sqlite:") {
            Store::Sqlite(SqliteStore::connect_existing(&url, &settings.database)?)
        } else {
            Store::connect_lazy(settings)?
        };
        store.prepare().await
    }

    /// Brings a SQLite schema up to date; checks a PostgreSQL one in the background.
    async fn prepare(self) -> anyhow::Result<Store> {
        match &self {
            Store::Sqlite(_) => {
                for name in self.migrate().await? {
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
        Ok(self)
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
        /// Users in a stable order (created_at, then id), optionally filtered and limited, with
        /// their disabled state and live session count.
        pub async fn list_users(&self, query: &UserQuery, now: DateTime<Utc>) -> Result<Vec<UserListing>>;
        /// The user of a live session (not revoked or expired, user not disabled), in one query:
        /// what every request with an access token reads.
        pub async fn find_session_user(&self, user_id: Uuid, session_id: Uuid, kid: Option<&str>, now: DateTime<Utc>) -> Result<Option<User>>;
        /// Disables or enables a user; disabling revokes every session of theirs in the same
        /// transaction. None when there is no such user.
        pub async fn set_disabled(&self, email: &Email, disabled: bool, now: DateTime<Utc>) -> Result<Option<User>>;
        /// Deletes a user with their sessions and challenges, and the throttle `counters` named
        /// (audit events stay), in one transaction.
        pub async fn delete_user(&self, email: &Email, counters: &[String]) -> Result<Option<User>>;
        /// Creates a session for a user who is still there and enabled (and, for a password-only
        /// login, still without a second step), holding the user row so that a concurrent
        /// disable, delete or login waits; past `max_per_user` live sessions, revokes the
        /// user's oldest. How many were revoked, or None when the user may not have a session.
        pub async fn insert_session(&self, session: &NewSession, max_per_user: u32) -> Result<Option<u64>>;
        pub async fn find_session_chain(&self, family: &[u8], signer_kid: Option<&str>) -> Result<Option<SessionChain>>;
        /// Moves a session's chain one step on, if it is still at `generation` with
        /// `presented` as its current hash and alive: one statement, so of parallel refreshes
        /// of one token exactly one rotates. The new expiry is `expires_at`, capped by the
        /// session's absolute expiry. False when another refresh (or a revocation) came first.
        pub async fn rotate_session(&self, id: Uuid, generation: i64, presented: &[u8], next: &[u8], now: DateTime<Utc>, expires_at: DateTime<Utc>) -> Result<bool>;
        /// Revokes one live session, of `user_id` when given; the user it belonged to, if it was
        /// live.
        pub async fn revoke_session(&self, id: Uuid, user_id: Option<Uuid>, now: DateTime<Utc>) -> Result<Option<Uuid>>;
        /// Revokes every live session of a user except `keep`; returns how many.
        pub async fn revoke_user_sessions(&self, user_id: Uuid, keep: Option<Uuid>, now: DateTime<Utc>) -> Result<u64>;
        /// Live sessions, of one user or of everyone, newest first.
        pub async fn list_sessions(&self, user_id: Option<Uuid>, now: DateTime<Utc>, limit: u32) -> Result<Vec<SessionInfo>>;
        /// Swaps a user's password hash for one at the configured cost, unless it changed since
        /// `old` was read. True when it was swapped.
        pub async fn replace_password_hash(&self, id: Uuid, old: &str, new: &str) -> Result<bool>;
        pub async fn set_two_factor(&self, email: &Email, enabled: bool) -> Result<Option<User>>;
        pub async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>>;
        pub async fn insert_challenge(&self, challenge: &NewChallenge) -> Result<()>;
        /// Removes a challenge whose code could not be delivered.
        pub async fn delete_challenge(&self, id: Uuid) -> Result<()>;
        /// Retires the user's open challenges started before `keep` (ids are time-ordered), and
        /// forgets long-dead ones.
        pub async fn retire_challenges_except(&self, user_id: Uuid, keep: Uuid, now: DateTime<Utc>) -> Result<()>;
        /// Whether a challenge can still take a code (not used, retired, expired or out of attempts).
        pub async fn challenge_is_open(&self, id: Uuid, user_id: Uuid, max_attempts: u32, now: DateTime<Utc>) -> Result<bool>;
        /// Counts a wrong code or consumes the challenge, in one statement: parallel guesses
        /// cannot pass `max_attempts` and a right code is accepted at most once.
        pub async fn attempt_challenge(&self, id: Uuid, user_id: Uuid, code_hash: &[u8], max_attempts: u32, now: DateTime<Utc>) -> Result<Attempt>;
        /// Reserves one attempt of `key` in one statement, before the work it guards: it is
        /// counted as a failure at once (a success clears it), and refused while the key is
        /// locked, so a burst cannot get past the limit between a check and a count. The
        /// failure that reaches a multiple of `rule.every` sets the next, doubled, lock.
        pub async fn reserve_attempt(&self, key: &str, rule: &ThrottleRule, now: DateTime<Utc>) -> Result<Reservation>;
        /// Whether `key` is locked now, without counting anything.
        pub async fn throttle_state(&self, key: &str, rule: &ThrottleRule, now: DateTime<Utc>) -> Result<Option<Reservation>>;
        /// Gives back a reserved attempt that turned out not to be a guess (a dead challenge).
        pub async fn release_attempt(&self, key: &str) -> Result<()>;
        /// Takes one unit of a windowed quota of `max` per window for `key` (the window starts
        /// with its first use); `Err(window end)` when it is used up.
        pub async fn take_quota(&self, key: &str, max: u32, window_micros: i64, now: DateTime<Utc>) -> Result<Result<u32, DateTime<Utc>>>;
        /// Forgets the failures of `key` (after a success, or `authd user unlock`).
        pub async fn clear_failures(&self, key: &str) -> Result<bool>;
        /// Deletes what has expired (see [`Pruned`]), in one transaction. On PostgreSQL one
        /// instance at a time: `None` when another holds the pruning lock and `wait` is false.
        pub async fn prune(&self, now: DateTime<Utc>, events_before: DateTime<Utc>, wait: bool) -> Result<Option<Pruned>>;
        pub async fn insert_signing_key(&self, key: &NewSigningKey) -> Result<()>;
        /// Every signing key, oldest first.
        pub async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
        /// Makes the `next` key `kid` current and retires the old current, in one transaction;
        /// false (nothing changed) when `kid` is not `next` any more.
        pub async fn activate_signing_key(&self, kid: &str, now: DateTime<Utc>) -> Result<bool>;
        /// Marks a key revoked (never accepted again), in one transaction; a current key is
        /// followed by `successor` in the same transaction (see [`Revocation`]).
        pub async fn revoke_signing_key(&self, kid: &str, now: DateTime<Utc>, successor: Option<Successor<'_>>) -> Result<Revocation>;
        /// The key-encryption key's check value, if one was recorded.
        pub async fn kek_check_value(&self) -> Result<Option<Vec<u8>>>;
        /// Records the check value unless there is one; the one stored afterwards.
        pub async fn record_kek_check_value(&self, value: &[u8], now: DateTime<Utc>) -> Result<Vec<u8>>;
        /// The state of the key `kid`; None when there is no such key.
        pub async fn signing_key_state(&self, kid: &str) -> Result<Option<String>>;
        /// Drops retired keys retired before `retired_before`: every token they signed has expired.
        pub async fn delete_expired_retired_keys(&self, retired_before: DateTime<Utc>) -> Result<u64>;
        /// Appends security events in one transaction.
        pub async fn insert_events(&self, events: &[SecurityEvent]) -> Result<()>;
        /// Security events, newest first.
        pub async fn list_events(&self, query: &EventQuery) -> Result<Vec<RecordedEvent>>;
    }
}

// What a database error means to the core, decided here so the core never sees sqlx.

/// The unique constraint that means "this email is taken". PostgreSQL reports its name;
/// SQLite reports the column instead ("UNIQUE constraint failed: users.email").
const EMAIL_UNIQUE_CONSTRAINT: &str = "users_email_key";
const EMAIL_UNIQUE_COLUMN: &str = "users.email";

fn is_email_taken(db: &dyn sqlx::error::DatabaseError) -> bool {
    db.kind() == sqlx::error::ErrorKind::UniqueViolation
        && (db.constraint() == Some(EMAIL_UNIQUE_CONSTRAINT)
            || db.message().contains(EMAIL_UNIQUE_COLUMN))
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if is_email_taken(db.as_ref()) => Error::EmailTaken,
            // A connection cut mid-handshake surfaces as a protocol error: the server is going away.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => {
                tracing::warn!(error = %err, "database unavailable");
                Error::Unavailable("database")
            }
            sqlx::Error::Database(db) if is_transient_sqlstate(db.code().as_deref()) => {
                tracing::warn!(error = %err, "database unavailable");
                Error::Unavailable("database")
            }
            _ => Error::Internal(anyhow::Error::new(err).context("database query failed")),
        }
    }
}

/// Codes that mean the database is going away, overloaded or locked, not that the query is
/// wrong: PostgreSQL SQLSTATE classes 08, 53, 57P; SQLite BUSY (5) and LOCKED (6).
fn is_transient_sqlstate(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") || c == "5" || c == "6"
    })
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
    fn each_lock_lasts_twice_the_one_before_up_to_the_cap() {
        let rule = ThrottleRule {
            every: 10,
            first_lock_micros: 300_000_000,
            max_lock_micros: 86_400_000_000,
            hard_limit: None,
        };
        assert_eq!(rule.lock_after(9), None);
        assert_eq!(rule.lock_after(10), Some(300_000_000));
        assert_eq!(rule.lock_after(11), None);
        assert_eq!(rule.lock_after(20), Some(600_000_000));
        assert_eq!(rule.lock_after(30), Some(1_200_000_000));
        assert_eq!(rule.lock_after(90), Some(76_800_000_000));
        assert_eq!(rule.lock_after(100), Some(86_400_000_000));
        assert_eq!(rule.lock_after(u32::MAX / 10 * 10), Some(86_400_000_000));
        // Under 100 guesses a day once the locks have grown: 10 per lock of at least 24 h.
        let day_of_guesses: u32 = (1..)
            .map(|n| n * 10)
            .scan(0i64, |elapsed, failures| {
                *elapsed += rule.lock_after(failures).unwrap();
                Some(*elapsed)
            })
            .take_while(|elapsed| *elapsed < 86_400_000_000)
            .count() as u32
            * 10
            + 10;
        assert!(day_of_guesses < 100, "{day_of_guesses}");
    }

    #[test]
    fn a_reservation_at_the_hard_limit_freezes_the_key() {
        let rule = ThrottleRule {
            every: 3,
            first_lock_micros: 1,
            max_lock_micros: 2,
            hard_limit: Some(3),
        };
        let now = Utc::now();
        assert_eq!(
            granted(3, &rule),
            Reservation::Granted {
                failures: 3,
                locked: true
            }
        );
        assert_eq!(
            refusal(Some((3, Some(now))), &rule, now),
            Reservation::Frozen
        );
        assert_eq!(state_of(Some((2, None)), &rule, now), None);
        assert_eq!(
            state_of(Some((3, None)), &rule, now),
            Some(Reservation::Frozen)
        );
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
