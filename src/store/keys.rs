//! Signing keys (their states and rotation) and the key-encryption key's check value.

use chrono::{DateTime, Utc};

use super::common::{Time, statements};
use crate::error::Result;

/// A signing key about to be stored.
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

impl From<SigningKeyRow> for SigningKeyRecord {
    fn from(row: SigningKeyRow) -> SigningKeyRecord {
        SigningKeyRecord {
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

/// Makes the `next` key `$1` current as of `$2`; no row when it is not `next` any more (the
/// caller retired the old current key first, in the same transaction).
const PROMOTE_NEXT_KEY: &str = "UPDATE signing_keys SET state = 'current', activated_at = $2
                                WHERE kid = $1 AND state = 'next'";

/// The rows a promotion changed; none when it would have made a second current key (another
/// change made one current meanwhile, which the one-current index refuses): the caller reads
/// the keys again rather than failing.
fn promoted_rows<R: PromotedRows>(result: std::result::Result<R, sqlx::Error>) -> Result<u64> {
    match result {
        Ok(done) => Ok(done.rows()),
        // PostgreSQL names the index; SQLite the column.
        Err(sqlx::Error::Database(db))
            if db.kind() == sqlx::error::ErrorKind::UniqueViolation
                && (db.constraint() == Some("signing_keys_one_current")
                    || db.message().contains("signing_keys.state")) =>
        {
            Ok(0)
        }
        Err(err) => Err(err.into()),
    }
}

/// What both backends' query results say about the rows they changed.
trait PromotedRows {
    fn rows(&self) -> u64;
}

impl PromotedRows for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl PromotedRows for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

statements! {
    pub async fn insert_signing_key(&self, key: &NewSigningKey) -> Result<()> {
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

    pub async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        let rows: Vec<SigningKeyRow> = sqlx::query_as(
            "SELECT kid, algorithm, public_jwk, sealed_private, state, created_at,
                    activated_at, retired_at, revoked_at
             FROM signing_keys ORDER BY created_at, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(SigningKeyRecord::from).collect())
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
        let activated = promoted_rows(
            sqlx::query(PROMOTE_NEXT_KEY)
                .bind(kid)
                .bind(Time(now))
                .execute(&mut *tx)
                .await,
        )?;
        // Another activation took this key first, or another change made a key current
        // meanwhile: leave everything as it made it.
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
        successor: Option<Successor<'_>>,
    ) -> Result<Revocation> {
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
                let done = promoted_rows(
                    sqlx::query(PROMOTE_NEXT_KEY)
                        .bind(next)
                        .bind(Time(now))
                        .execute(&mut *tx)
                        .await,
                )?;
                if done == 0 {
                    tx.rollback().await?;
                    return Ok(Revocation::Changed);
                }
                promoted = Some(next.to_owned());
            }
            Some(Successor::New(key)) => {
                let inserted = sqlx::query(
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
                .await;
                if promoted_rows(inserted)? == 0 {
                    tx.rollback().await?;
                    return Ok(Revocation::Changed);
                }
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
}
