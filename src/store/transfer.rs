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
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub two_factor_enabled: bool,
    /// When the address counts as proven: the import's time for a row that says it is.
    pub email_verified_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
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
    /// Of the updated: those whose password hash changed, so their sessions ended.
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

impl PgStore {
    /// Writes a batch (emails unique within it) in one transaction: new users inserted; with
    /// `update`, users already there given the row's profile and hash when they differ, and
    /// the sessions of those whose hash changed ended.
    pub async fn import_users(
        &self,
        batch: &[ImportedUser],
        update: bool,
        now: DateTime<Utc>,
    ) -> Result<ImportCounts> {
        let column = |f: fn(&ImportedUser) -> String| batch.iter().map(f).collect::<Vec<_>>();
        let ids: Vec<Uuid> = batch.iter().map(|u| u.id).collect();
        let emails = column(|u| u.email.clone());
        let hashes = column(|u| u.password_hash.clone());
        let first: Vec<Option<String>> = batch.iter().map(|u| u.first_name.clone()).collect();
        let last: Vec<Option<String>> = batch.iter().map(|u| u.last_name.clone()).collect();
        let two_factor: Vec<bool> = batch.iter().map(|u| u.two_factor_enabled).collect();
        let verified: Vec<Option<DateTime<Utc>>> =
            batch.iter().map(|u| u.email_verified_at).collect();
        let created: Vec<DateTime<Utc>> = batch.iter().map(|u| u.created_at).collect();
        let mut tx = self.pool.begin().await?;
        let mut counts = ImportCounts::default();
        if !update {
            let inserted = sqlx::query(
                "INSERT INTO users (id, email, password_hash, first_name, last_name,
                                    two_factor_enabled, email_verified_at, created_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::boolean[], $7::timestamptz[], $8::timestamptz[])
                 ON CONFLICT (email) DO NOTHING",
            )
            .bind(&ids)
            .bind(&emails)
            .bind(&hashes)
            .bind(&first)
            .bind(&last)
            .bind(&two_factor)
            .bind(&verified)
            .bind(&created)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            counts.imported = inserted;
            counts.skipped = batch.len() as u64 - inserted;
            tx.commit().await?;
            return Ok(counts);
        }
        // The rows already there, locked, as they were before this statement: every CTE reads
        // one snapshot, so `old` holds the hash the upsert replaces.
        let rows: Vec<(Uuid, bool, bool)> = sqlx::query_as(
            "WITH incoming AS (
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::boolean[], $7::timestamptz[], $8::timestamptz[])
                     AS t(id, email, password_hash, first_name, last_name, two_factor_enabled,
                          email_verified_at, created_at)),
             old AS (
                 SELECT u.id, u.password_hash FROM users u JOIN incoming i ON i.email = u.email
                 FOR UPDATE OF u),
             written AS (
                 INSERT INTO users (id, email, password_hash, first_name, last_name,
                                    two_factor_enabled, email_verified_at, created_at)
                 SELECT * FROM incoming
                 ON CONFLICT (email) DO UPDATE SET
                     password_hash = EXCLUDED.password_hash,
                     first_name = EXCLUDED.first_name,
                     last_name = EXCLUDED.last_name,
                     two_factor_enabled = EXCLUDED.two_factor_enabled,
                     email_verified_at = CASE WHEN EXCLUDED.email_verified_at IS NULL THEN NULL
                                              ELSE COALESCE(users.email_verified_at,
                                                            EXCLUDED.email_verified_at) END
                 WHERE (users.password_hash, users.first_name, users.last_name,
                        users.two_factor_enabled, users.email_verified_at IS NOT NULL)
                       IS DISTINCT FROM
                       (EXCLUDED.password_hash, EXCLUDED.first_name, EXCLUDED.last_name,
                        EXCLUDED.two_factor_enabled, EXCLUDED.email_verified_at IS NOT NULL)
                 RETURNING users.id, users.password_hash, (xmax = 0) AS inserted)
             SELECT w.id, w.inserted,
                    NOT w.inserted AND o.password_hash IS DISTINCT FROM w.password_hash
             FROM written w LEFT JOIN old o ON o.id = w.id",
        )
        .bind(&ids)
        .bind(&emails)
        .bind(&hashes)
        .bind(&first)
        .bind(&last)
        .bind(&two_factor)
        .bind(&verified)
        .bind(&created)
        .fetch_all(&mut *tx)
        .await?;
        let rehashed: Vec<Uuid> = rows
            .iter()
            .filter(|(_, _, changed)| *changed)
            .map(|(id, _, _)| *id)
            .collect();
        counts.imported = rows.iter().filter(|(_, inserted, _)| *inserted).count() as u64;
        counts.updated = rows.len() as u64 - counts.imported;
        counts.skipped = batch.len() as u64 - rows.len() as u64;
        counts.sessions_ended_for = rehashed.len() as u64;
        if !rehashed.is_empty() {
            sqlx::query(
                "UPDATE sessions SET revoked_at = $2
                 WHERE user_id = ANY($1) AND revoked_at IS NULL",
            )
            .bind(&rehashed)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(counts)
    }
}

/// A user already there, as an `--update` import compares it on SQLite.
#[derive(sqlx::FromRow)]
struct Present {
    id: Uuid,
    password_hash: String,
    first_name: Option<String>,
    last_name: Option<String>,
    two_factor_enabled: bool,
    email_verified_at: Option<Time>,
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
        let mut tx = self.pool.begin().await?;
        // The write lock first, so the reads below see what the writes will change.
        sqlx::query("UPDATE users SET email = email WHERE 0")
            .execute(&mut *tx)
            .await?;
        let mut counts = ImportCounts::default();
        for user in batch {
            let present: Option<Present> = if update {
                sqlx::query_as(
                    "SELECT id, password_hash, first_name, last_name, two_factor_enabled,
                            email_verified_at
                     FROM users WHERE email = $1",
                )
                .bind(&user.email)
                .fetch_optional(&mut *tx)
                .await?
            } else {
                None
            };
            let Some(present) = present else {
                let inserted = sqlx::query(
                    "INSERT INTO users (id, email, password_hash, first_name, last_name,
                                        two_factor_enabled, email_verified_at, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (email) DO NOTHING",
                )
                .bind(user.id)
                .bind(&user.email)
                .bind(&user.password_hash)
                .bind(&user.first_name)
                .bind(&user.last_name)
                .bind(user.two_factor_enabled)
                .bind(user.email_verified_at.map(Time))
                .bind(Time(user.created_at))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted > 0 {
                    counts.imported += 1;
                } else {
                    counts.skipped += 1;
                }
                continue;
            };
            let same = present.password_hash == user.password_hash
                && present.first_name == user.first_name
                && present.last_name == user.last_name
                && present.two_factor_enabled == user.two_factor_enabled
                && present.email_verified_at.is_some() == user.email_verified_at.is_some();
            if same {
                counts.skipped += 1;
                continue;
            }
            sqlx::query(
                "UPDATE users SET password_hash = $2, first_name = $3, last_name = $4,
                                  two_factor_enabled = $5,
                                  email_verified_at = CASE WHEN $6 IS NULL THEN NULL
                                                           ELSE COALESCE(email_verified_at, $6) END
                 WHERE id = $1",
            )
            .bind(present.id)
            .bind(&user.password_hash)
            .bind(&user.first_name)
            .bind(&user.last_name)
            .bind(user.two_factor_enabled)
            .bind(user.email_verified_at.map(Time))
            .execute(&mut *tx)
            .await?;
            counts.updated += 1;
            if present.password_hash != user.password_hash {
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
}

statements! {
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
                    email_verified_at IS NOT NULL AS email_verified, created_at
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
