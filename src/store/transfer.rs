//! Users in bulk: `authd user import` writes a batch at a time (PostgreSQL: one statement over
//! arrays; SQLite: one statement per row, one transaction per batch), `authd user export` reads
//! page by page in creation order. Memory stays that of one batch whatever the file's size.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::common::{Time, statements};
use super::{PgStore, SqliteStore};
use crate::error::Result;

/// A user about to be imported: every field already checked as registration checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedUser {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    /// SHA-256 of the hash as the file gave it: a later import of the same hash is no change,
    /// whatever authd did to the stored one since (a re-hash at login, a new password).
    pub hash_digest: Vec<u8>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub two_factor_enabled: bool,
    pub email_verified: bool,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    /// Which optional fields the row gave: `--update` leaves the others as they are stored.
    pub given: GivenFields,
}

/// The optional fields a row gave (an absent or empty one is not given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GivenFields {
    pub first_name: bool,
    pub last_name: bool,
    pub two_factor_enabled: bool,
    pub email_verified: bool,
    pub disabled: bool,
}

/// What one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportCounts {
    /// New users.
    pub imported: u64,
    /// Users already there whose profile or hash the row changed (`--update`).
    pub updated: u64,
    /// Users already there, left as they were (no `--update`, or nothing to change).
    pub skipped: u64,
    /// Of the updated: those whose password hash changed or who were disabled, so their
    /// sessions ended.
    pub sessions_ended_for: u64,
}

impl std::ops::AddAssign for ImportCounts {
    fn add_assign(&mut self, other: ImportCounts) {
        self.imported += other.imported;
        self.updated += other.updated;
        self.skipped += other.skipped;
        self.sessions_ended_for += other.sessions_ended_for;
    }
}

/// One user as `authd user export` writes it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExportedUser {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub two_factor_enabled: bool,
    pub email_verified: bool,
    pub disabled: bool,
    /// An authenticator app, which no export carries: exported as `two_factor_enabled`.
    pub totp_enabled: bool,
    created_at: Time,
}

impl ExportedUser {
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at.0
    }
}

/// Where the last page of an export ended: its last user's creation time and id.
#[derive(Debug, Clone, Copy)]
pub struct ExportCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// The stored state of a user an `--update` row names.
#[derive(sqlx::FromRow)]
struct Present {
    id: Uuid,
    password_hash: String,
    imported_hash_digest: Option<Vec<u8>>,
    first_name: Option<String>,
    last_name: Option<String>,
    two_factor_enabled: bool,
    email_verified: bool,
    disabled: bool,
}

/// What an `--update` row changes of a user already there; `None` fields stay as stored.
#[derive(Debug, Default, PartialEq, Eq)]
struct Change {
    password_hash: Option<(String, Vec<u8>)>,
    first_name: Option<Option<String>>,
    last_name: Option<Option<String>>,
    two_factor_enabled: Option<bool>,
    email_verified: Option<bool>,
    disabled: Option<bool>,
}

impl Change {
    /// What `row` changes of `present`: only what it gives and what differs. The same hash
    /// (by the digest of what the file gave, or as stored) is no change.
    fn of(present: &Present, row: &ImportedUser) -> Change {
        let same_hash = present.imported_hash_digest.as_deref() == Some(row.hash_digest.as_slice())
            || present.password_hash == row.password_hash;
        let differs = |given: bool, stored: &Option<String>, new: &Option<String>| {
            (given && stored != new).then(|| new.clone())
        };
        let flag = |given: bool, stored: bool, new: bool| (given && stored != new).then_some(new);
        Change {
            password_hash: (!same_hash)
                .then(|| (row.password_hash.clone(), row.hash_digest.clone())),
            first_name: differs(row.given.first_name, &present.first_name, &row.first_name),
            last_name: differs(row.given.last_name, &present.last_name, &row.last_name),
            two_factor_enabled: flag(
                row.given.two_factor_enabled,
                present.two_factor_enabled,
                row.two_factor_enabled,
            ),
            email_verified: flag(
                row.given.email_verified,
                present.email_verified,
                row.email_verified,
            ),
            disabled: flag(row.given.disabled, present.disabled, row.disabled),
        }
    }

    fn is_none(&self) -> bool {
        *self == Change::default()
    }

    /// Whether the user's sessions end with it: a new hash, or disabled.
    fn ends_sessions(&self) -> bool {
        self.password_hash.is_some() || self.disabled == Some(true)
    }
}

impl PgStore {
    /// Writes a batch (emails unique within it) in one transaction: new users inserted with one
    /// statement over arrays; with `update`, users already there changed row by row (see
    /// [`Change`]).
    pub async fn import_users(
        &self,
        batch: &[ImportedUser],
        update: bool,
        now: DateTime<Utc>,
    ) -> Result<ImportCounts> {
        if update {
            return self.update_imported_users(batch, now).await;
        }
        let ids: Vec<Uuid> = batch.iter().map(|u| u.id).collect();
        let emails: Vec<&str> = batch.iter().map(|u| u.email.as_str()).collect();
        let hashes: Vec<&str> = batch.iter().map(|u| u.password_hash.as_str()).collect();
        let digests: Vec<&[u8]> = batch.iter().map(|u| u.hash_digest.as_slice()).collect();
        let first: Vec<Option<&str>> = batch.iter().map(|u| u.first_name.as_deref()).collect();
        let last: Vec<Option<&str>> = batch.iter().map(|u| u.last_name.as_deref()).collect();
        let two_factor: Vec<bool> = batch.iter().map(|u| u.two_factor_enabled).collect();
        let when = |on: bool| on.then_some(now);
        let verified: Vec<Option<DateTime<Utc>>> =
            batch.iter().map(|u| when(u.email_verified)).collect();
        let disabled: Vec<Option<DateTime<Utc>>> = batch.iter().map(|u| when(u.disabled)).collect();
        let created: Vec<DateTime<Utc>> = batch.iter().map(|u| u.created_at).collect();
        let inserted = sqlx::query(
            "INSERT INTO users (id, email, password_hash, imported_hash_digest, first_name,
                                last_name, two_factor_enabled, email_verified_at, disabled_at,
                                created_at)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[],
                                  $6::text[], $7::boolean[], $8::timestamptz[],
                                  $9::timestamptz[], $10::timestamptz[])
             ON CONFLICT (email) DO NOTHING",
        )
        .bind(&ids)
        .bind(&emails)
        .bind(&hashes)
        .bind(&digests)
        .bind(&first)
        .bind(&last)
        .bind(&two_factor)
        .bind(&verified)
        .bind(&disabled)
        .bind(&created)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(ImportCounts {
            imported: inserted,
            skipped: batch.len() as u64 - inserted,
            ..ImportCounts::default()
        })
    }
}

impl SqliteStore {
    /// [`PgStore::import_users`] on SQLite: a statement per row (in-process, so no round trip
    /// to save), one transaction for the batch.
    pub async fn import_users(
        &self,
        batch: &[ImportedUser],
        update: bool,
        now: DateTime<Utc>,
    ) -> Result<ImportCounts> {
        if update {
            return self.update_imported_users(batch, now).await;
        }
        let mut tx = self.pool.begin().await?;
        let mut counts = ImportCounts::default();
        for user in batch {
            if insert_imported!(tx, user, now) > 0 {
                counts.imported += 1;
            } else {
                counts.skipped += 1;
            }
        }
        tx.commit().await?;
        Ok(counts)
    }
}

/// Inserts one imported user inside transaction `$tx` unless its address is taken: rows
/// written (0 or 1).
macro_rules! insert_imported {
    ($tx:expr, $user:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, imported_hash_digest, first_name,
                                last_name, two_factor_enabled, email_verified_at, disabled_at,
                                created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (email) DO NOTHING",
        )
        .bind($user.id)
        .bind(&$user.email)
        .bind(&$user.password_hash)
        .bind(&$user.hash_digest)
        .bind(&$user.first_name)
        .bind(&$user.last_name)
        .bind($user.two_factor_enabled)
        .bind($user.email_verified.then_some(Time($now)))
        .bind($user.disabled.then_some(Time($now)))
        .bind(Time($user.created_at))
        .execute(&mut *$tx)
        .await?
        .rows_affected()
    };
}

use insert_imported;

statements! {
    /// `--update`: each row's user inserted, or changed where the row gives something else
    /// (row by row, one transaction for the batch, each user locked as it is read); the
    /// sessions of a user with a new hash, or disabled, end with it.
    async fn update_imported_users(
        &self,
        batch: &[ImportedUser],
        now: DateTime<Utc>,
    ) -> Result<ImportCounts> {
        let mut tx = self.pool.begin().await?;
        if let Some(lock) = Self::TAKE_WRITE_LOCK {
            sqlx::query(lock).execute(&mut *tx).await?;
        }
        let mut counts = ImportCounts::default();
        for user in batch {
            let present: Option<Present> = sqlx::query_as(Self::READ_IMPORTED_USER)
                .bind(&user.email)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(present) = present else {
                if insert_imported!(tx, user, now) > 0 {
                    counts.imported += 1;
                } else {
                    counts.skipped += 1;
                }
                continue;
            };
            let change = Change::of(&present, user);
            if change.is_none() {
                counts.skipped += 1;
                continue;
            }
            let (hash, digest) = change.password_hash.clone().unzip();
            sqlx::query(
                "UPDATE users SET
                     password_hash = COALESCE($2, password_hash),
                     imported_hash_digest = CASE WHEN $2 IS NULL THEN imported_hash_digest
                                                 ELSE $3 END,
                     first_name = CASE WHEN $4 THEN $5 ELSE first_name END,
                     last_name = CASE WHEN $6 THEN $7 ELSE last_name END,
                     two_factor_enabled = COALESCE($8, two_factor_enabled),
                     email_verified_at = CASE WHEN $9 IS NULL THEN email_verified_at
                                              WHEN $9 THEN COALESCE(email_verified_at, $11)
                                              ELSE NULL END,
                     disabled_at = CASE WHEN $10 IS NULL THEN disabled_at
                                        WHEN $10 THEN COALESCE(disabled_at, $11)
                                        ELSE NULL END
                 WHERE id = $1",
            )
            .bind(present.id)
            .bind(hash)
            .bind(digest)
            .bind(change.first_name.is_some())
            .bind(change.first_name.clone().flatten())
            .bind(change.last_name.is_some())
            .bind(change.last_name.clone().flatten())
            .bind(change.two_factor_enabled)
            .bind(change.email_verified)
            .bind(change.disabled)
            .bind(Time(now))
            .execute(&mut *tx)
            .await?;
            counts.updated += 1;
            if change.ends_sessions() {
                counts.sessions_ended_for += 1;
                sqlx::query(
                    "UPDATE sessions SET revoked_at = $2
                     WHERE user_id = $1 AND revoked_at IS NULL",
                )
                .bind(present.id)
                .bind(Time(now))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(counts)
    }

    /// Up to `limit` users after `after` in creation order (then id), with their hashes.
    pub async fn export_users_page(
        &self,
        after: Option<ExportCursor>,
        limit: u32,
    ) -> Result<Vec<ExportedUser>> {
        let (at, id) = match after {
            Some(cursor) => (Some(Time(cursor.created_at)), Some(cursor.id)),
            None => (None, None),
        };
        Ok(sqlx::query_as(
            "SELECT id, email, password_hash, first_name, last_name, two_factor_enabled,
                    email_verified_at IS NOT NULL AS email_verified,
                    disabled_at IS NOT NULL AS disabled,
                    totp_secret IS NOT NULL AS totp_enabled, created_at
             FROM users
             WHERE $1 IS NULL OR created_at > $1 OR (created_at = $1 AND id > $2)
             ORDER BY created_at, id
             LIMIT $3",
        )
        .bind(at)
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }
}
