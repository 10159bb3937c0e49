//! What every statement file shares: the time types both databases encode, the user row, and
//! `statements!`, which writes a topic's methods once for both stores.

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::PgInterval;
use sqlx::{Database, Decode, Encode, Postgres, Sqlite, Type};
use uuid::Uuid;

use crate::domain::User;

/// A point in time as each database keeps it: `timestamptz` in PostgreSQL, integer
/// microseconds since the Unix epoch in SQLite (so comparisons there are numeric). Every time a
/// statement compares with comes from Rust as one of these, never from the database's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub DateTime<Utc>);

impl From<DateTime<Utc>> for Time {
    fn from(t: DateTime<Utc>) -> Time {
        Time(t)
    }
}

impl Type<Postgres> for Time {
    fn type_info() -> <Postgres as Database>::TypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
    fn compatible(ty: &<Postgres as Database>::TypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for Time {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Time {
    fn decode(value: <Postgres as Database>::ValueRef<'r>) -> Result<Time, BoxDynError> {
        Ok(Time(<DateTime<Utc> as Decode<Postgres>>::decode(value)?))
    }
}

impl Type<Sqlite> for Time {
    fn type_info() -> <Sqlite as Database>::TypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
    fn compatible(ty: &<Sqlite as Database>::TypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Time {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode_by_ref(&self.0.timestamp_micros(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Time {
    fn decode(value: <Sqlite as Database>::ValueRef<'r>) -> Result<Time, BoxDynError> {
        let micros = <i64 as Decode<Sqlite>>::decode(value)?;
        DateTime::from_timestamp_micros(micros)
            .map(Time)
            .ok_or_else(|| format!("timestamp {micros} out of range").into())
    }
}

/// A length of time as each database adds it to a [`Time`]: an `interval` in PostgreSQL,
/// integer microseconds in SQLite. So `$time + $span`, `$span * <integer>` and comparisons of
/// two spans read the same on both; it is only ever bound, never read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub micros: i64,
}

impl Type<Postgres> for Span {
    fn type_info() -> <Postgres as Database>::TypeInfo {
        <PgInterval as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Span {
    fn encode_by_ref(
        &self,
        buf: &mut <Postgres as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        // Microseconds only: no days or months, whose length depends on the calendar.
        let interval = PgInterval {
            months: 0,
            days: 0,
            microseconds: self.micros,
        };
        <PgInterval as Encode<Postgres>>::encode_by_ref(&interval, buf)
    }
}

impl Type<Sqlite> for Span {
    fn type_info() -> <Sqlite as Database>::TypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for Span {
    fn encode_by_ref(
        &self,
        buf: &mut <Sqlite as Database>::ArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode_by_ref(&self.micros, buf)
    }
}

/// Counters are `int4` in PostgreSQL and 64-bit in SQLite: statements return them as BIGINT.
pub type Count = i64;

/// The public columns of a user, as every user statement returns them.
#[derive(Debug, sqlx::FromRow)]
pub struct UserRow {
    pub(super) id: Uuid,
    email: String,
    first_name: Option<String>,
    last_name: Option<String>,
    two_factor_enabled: bool,
    created_at: Time,
    email_verified_at: Option<Time>,
    totp_enabled: bool,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> User {
        User {
            id: row.id,
            email: row.email,
            first_name: row.first_name,
            last_name: row.last_name,
            two_factor_enabled: row.two_factor_enabled,
            created_at: row.created_at.0,
            email_verified: row.email_verified_at.is_some(),
            email_verified_at: row.email_verified_at.map(|t| t.0),
            second_factor: crate::domain::SecondFactor::of(
                row.totp_enabled,
                row.two_factor_enabled,
            ),
        }
    }
}

/// The public columns of a user (what [`UserRow`] reads), for `concat!` into a statement.
macro_rules! user_columns {
    () => {
        "id, email, first_name, last_name, two_factor_enabled, created_at, email_verified_at, \
         totp_secret IS NOT NULL AS totp_enabled"
    };
}

pub(super) use user_columns;

/// Inside a transaction `$tx` of a `statements!` body: takes the row lock of user `$user` on
/// PostgreSQL, SQLite's write lock (`LOCK_SESSION_USER`). Every transaction
/// that changes a user's password, address, sessions or codes takes it first, so they queue in
/// one order (no deadlock) and each sees what the one before it committed.
macro_rules! lock_user {
    ($tx:expr, $user:expr) => {
        if let Some(lock) = Self::LOCK_SESSION_USER {
            sqlx::query(lock).bind($user).execute(&mut *$tx).await?;
        }
    };
}

pub(super) use lock_user;

/// Writes methods once for both stores: the body is expanded into `impl PgStore` and into
/// `impl SqliteStore`, one invocation per topic file. Parameters are `$n` on both databases,
/// every time is bound as a [`Time`] (a length of time as a [`Span`]), and a counter comes back
/// `CAST(... AS BIGINT)` as a [`Count`]. What a backend does differently is reached through
/// `Self::` (`MIGRATOR`, `LOCK_SESSION_USER`, `has_migrations_table`, `take_prune_lock`),
/// defined in `postgres.rs` and `sqlite.rs`.
macro_rules! statements {
    ($($body:tt)*) => {
        impl $crate::store::PgStore {
            $($body)*
        }

        impl $crate::store::SqliteStore {
            $($body)*
        }
    };
}

pub(super) use statements;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_time_is_integer_microseconds_in_sqlite_and_out_of_range_values_are_refused() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let t = DateTime::from_timestamp_micros(1_764_633_600_123_456).unwrap();
        let (stored, back): (i64, Time) = sqlx::query_as("SELECT $1, $1")
            .bind(Time(t))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(stored, 1_764_633_600_123_456);
        assert_eq!(back, Time(t));
        let refused = sqlx::query_scalar::<_, Time>("SELECT $1")
            .bind(i64::MAX)
            .fetch_one(&pool)
            .await;
        assert!(refused.is_err(), "{refused:?}");
    }

    #[tokio::test]
    async fn a_span_is_integer_microseconds_in_sqlite_so_it_adds_to_a_time() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let t = DateTime::from_timestamp_micros(1_764_633_600_000_000).unwrap();
        let later: Time = sqlx::query_scalar("SELECT $1 + $2 * 4")
            .bind(Time(t))
            .bind(Span { micros: 1_500_000 })
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(later, Time(t + chrono::Duration::seconds(6)));
    }
}
