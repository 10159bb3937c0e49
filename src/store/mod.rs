//! Database access: the only place with SQL. `Store` picks the backend from `database.url`:
//! PostgreSQL for production and several instances, SQLite for a single instance.
//!
//! Statements are grouped by what they are about, one file per topic (`users`, `sessions`,
//! `challenges`, `account_codes`, `throttles`, `keys`, `audit`, `maintenance`, `migrations`), each written once
//! for both databases with `statements!` (see `common.rs`); `postgres.rs` and `sqlite.rs` keep
//! only what really differs.

mod account_codes;
mod audit;
mod challenges;
mod common;
mod keys;
mod maintenance;
mod mfa;
mod migrations;
mod passkeys;
mod postgres;
mod sessions;
mod sqlite;
mod throttles;
mod transfer;
mod users;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::Settings;
use crate::domain::{Email, User};
use crate::error::{Error, Result};
use crate::events::{EventQuery, RecordedEvent, SecurityEvent};

pub use account_codes::{
    AddressProven, NewAccountCode, OpenCode, PasswordChange, PasswordReset, PasswordTarget, Purpose,
};
pub use challenges::{Attempt, ChallengeAnswer, NewChallenge};
pub use keys::{NewSigningKey, Revocation, RevokedKey, SigningKeyRecord, Successor};
pub use maintenance::{PRUNE_LOCK, Pruned, THROTTLE_MEMORY_DAYS};
pub use mfa::MfaState;
pub use passkeys::{
    Ceremony, CeremonyPurpose, FoundPasskey, NewCeremony, NewPasskey, PasskeyInsert, PasskeyRecord,
    PasskeyUse,
};
pub use postgres::PgStore;
pub use sessions::{NewSession, SessionChain, SessionInfo, SessionUser};
pub use sqlite::SqliteStore;
pub use throttles::{Reservation, ThrottleRule};
pub use transfer::{ExportCursor, ExportedUser, GivenFields, ImportCounts, ImportedUser};
pub use users::{Credentials, NewUser, UserListing, UserQuery};

/// The SQLite file the settings name is not an authd database, and the command may not make it
/// one: it is not there, or it is a file without authd's migrations (empty, or another
/// program's). Nothing is created or changed.
#[derive(Debug, thiserror::Error)]
pub enum NoDatabase {
    #[error(
        "no database at {}: nothing was created; point authd at yours with --config FILE, --database-url URL or AUTHD_DATABASE__URL (`authd migrate` creates one there)",
        .0.display()
    )]
    Missing(std::path::PathBuf),
    #[error(
        "{} is not an authd database (it has no migrations table): nothing was changed; point authd at yours with --config FILE, --database-url URL or AUTHD_DATABASE__URL",
        .0.display()
    )]
    NotAuthd(std::path::PathBuf),
}

/// Whether `path` starts with SQLite's file header (an empty file does not).
fn is_sqlite_file(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut header))
        .is_ok_and(|()| &header == b"SQLite format 3\0")
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
            let (sqlite, path) = SqliteStore::connect_existing(&url, &settings.database)?;
            // A file that is not an authd database is not made into one by a command that only
            // reads or changes rows: one that is not SQLite at all (empty, as `touch` leaves
            // it, or anything else) is refused before it is opened, since opening writes to
            // it; a SQLite database without authd's migrations once it is open.
            if let Some(path) = path
                && (!is_sqlite_file(&path) || !sqlite.has_migrations_table().await?)
            {
                return Err(NoDatabase::NotAuthd(path).into());
            }
            Store::Sqlite(sqlite)
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
        pub async fn find_session_user(&self, user_id: Uuid, session_id: Uuid, kid: Option<&str>, now: DateTime<Utc>) -> Result<Option<SessionUser>>;
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
        /// Starts a challenge, unless the user's password hash is no longer the one the login
        /// checked (or the user is disabled): false then.
        pub async fn insert_challenge(&self, challenge: &NewChallenge) -> Result<bool>;
        /// Removes a challenge whose code could not be delivered.
        pub async fn delete_challenge(&self, id: Uuid) -> Result<()>;
        /// Retires the user's open challenges started before `keep` (ids are time-ordered), and
        /// forgets long-dead ones.
        pub async fn retire_challenges_except(&self, user_id: Uuid, keep: Uuid, now: DateTime<Utc>) -> Result<()>;
        /// Whether a challenge can still take a code (not used, retired, expired or out of attempts).
        pub async fn challenge_is_open(&self, id: Uuid, user_id: Uuid, max_attempts: u32, now: DateTime<Utc>) -> Result<bool>;
        /// Counts a wrong code or consumes the challenge, in one statement: parallel guesses
        /// cannot pass `max_attempts` and a right code is accepted at most once.
        pub async fn attempt_challenge(&self, id: Uuid, user_id: Uuid, answer: ChallengeAnswer<'_>, max_attempts: u32, now: DateTime<Utc>) -> Result<Attempt>;
        /// The user's authenticator app, pending enrolment and recovery codes left.
        pub async fn mfa_state(&self, user_id: Uuid) -> Result<Option<MfaState>>;
        /// Keeps a new, unconfirmed enrolment (replacing any earlier one).
        pub async fn set_totp_pending(&self, user_id: Uuid, sealed: &[u8], expires_at: DateTime<Utc>) -> Result<bool>;
        /// Confirms the pending enrolment with its first code's step, replaces the recovery
        /// codes and ends the sessions but `keep`, in one transaction; None when it changed.
        pub async fn confirm_totp(&self, user_id: Uuid, pending: &[u8], step: i64, recovery_hashes: &[Vec<u8>], keep: Option<Uuid>, now: DateTime<Utc>) -> Result<Option<u64>>;
        /// Accepts a code of time step `step` only if no code of it or a later one was (one statement).
        pub async fn accept_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool>;
        /// Replaces the recovery codes of a user with an authenticator app; false without one.
        pub async fn replace_recovery_codes(&self, user_id: Uuid, recovery_hashes: &[Vec<u8>], now: DateTime<Utc>) -> Result<bool>;
        /// Removes the authenticator app and the recovery codes (and, with `end_sessions`
        /// = `Some(keep)`, every session but `keep` and open login); whether there was anything.
        pub async fn remove_totp(&self, user_id: Uuid, end_sessions: Option<Option<Uuid>>, now: DateTime<Utc>) -> Result<bool>;
        /// Writes a batch of imported users (emails unique within it) in one transaction; with
        /// `update`, users already there take the row's profile and hash where they differ
        /// (their sessions end when the hash changed).
        pub async fn import_users(&self, batch: &[ImportedUser], update: bool, now: DateTime<Utc>) -> Result<ImportCounts>;
        /// Up to `limit` users after `after`, in creation order, for an export.
        pub async fn export_users_page(&self, after: Option<ExportCursor>, limit: u32) -> Result<Vec<ExportedUser>>;
        /// Keeps a passkey ceremony until the browser answers.
        pub async fn insert_ceremony(&self, ceremony: &NewCeremony) -> Result<()>;
        /// Takes (deletes) a ceremony of `purpose`: of concurrent takes one gets it; None when
        /// unknown, taken, of another purpose or expired.
        pub async fn take_ceremony(&self, id: Uuid, purpose: CeremonyPurpose, now: DateTime<Utc>) -> Result<Option<Ceremony>>;
        /// The user's WebAuthn user handle, made at the first ask.
        pub async fn webauthn_handle(&self, user_id: Uuid) -> Result<Option<Uuid>>;
        /// The user's passkeys, newest first.
        pub async fn user_passkeys(&self, user_id: Uuid) -> Result<Vec<PasskeyRecord>>;
        /// How many passkeys the user has.
        pub async fn count_passkeys(&self, user_id: Uuid) -> Result<i64>;
        /// The passkey of a credential id, its user's handle and whether the user is disabled.
        pub async fn passkey_by_credential(&self, credential_id: &[u8]) -> Result<Option<FoundPasskey>>;
        /// Registers a passkey under the user's lock (at most `max_per_user`, each credential once).
        pub async fn insert_passkey(&self, passkey: &NewPasskey, max_per_user: u32) -> Result<PasskeyInsert>;
        /// Records an assertion if its counter moved forward; false otherwise.
        pub async fn use_passkey(&self, used: &PasskeyUse<'_>) -> Result<bool>;
        /// Removes a passkey and ends the sessions that signed in with it; None if not the user's.
        pub async fn remove_passkey(&self, user_id: Uuid, id: Uuid, now: DateTime<Utc>) -> Result<Option<(String, u64)>>;
        /// Stores an emailed account code and retires the user's older live ones of its purpose.
        pub async fn insert_account_code(&self, code: &NewAccountCode) -> Result<()>;
        /// Removes an account code whose message could not be delivered.
        pub async fn delete_account_code(&self, id: Uuid) -> Result<()>;
        /// The user's newest live code of `purpose` that can still take a guess.
        pub async fn open_account_code(&self, user_id: Uuid, purpose: Purpose, max_attempts: u32, now: DateTime<Utc>) -> Result<Option<OpenCode>>;
        /// The live account code a link's token (its keyed hash) belongs to.
        pub async fn find_account_code_by_token(&self, token_hash: &[u8], now: DateTime<Utc>) -> Result<Option<OpenCode>>;
        /// Checks a typed account code in one statement: a wrong one uses an attempt, a right one
        /// is accepted without being consumed (what it unlocks consumes it).
        pub async fn check_account_code(&self, id: Uuid, code_hash: &[u8], max_attempts: u32, now: DateTime<Utc>) -> Result<Attempt>;
        /// Consumes a `verify_email` or `change_email` code and proves its address (moving the
        /// account to it, and ending its sessions but `keep`, for a change), in one
        /// transaction; None when it was used meanwhile.
        pub async fn prove_address_with(&self, open: &OpenCode, keep: Option<Uuid>, now: DateTime<Utc>) -> Result<Option<AddressProven>>;
        /// Sets a password hash (consuming a reset code first, for [`PasswordTarget::Code`];
        /// only over `expected`, when given), ends the user's sessions but `keep` and open
        /// logins, retires reset and address-change codes and clears `counters`, in one
        /// transaction that locks the user first; None when something changed meanwhile.
        pub async fn set_password(&self, change: &PasswordChange<'_>, now: DateTime<Utc>) -> Result<Option<PasswordReset>>;
        /// Marks the user's current address proven.
        pub async fn mark_email_verified(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<Option<User>>;
        /// When a session began (its login).
        pub async fn session_started_at(&self, id: Uuid) -> Result<Option<DateTime<Utc>>>;
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
