//! The PostgreSQL store.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::{
    Attempt, Credentials, NewChallenge, NewUser, PRUNE_LOCK, Pruned, Reservation,
    THROTTLE_MEMORY_DAYS, ThrottleRule, UserQuery, like_pattern,
};
use crate::audit::{EventQuery, RecordedEvent, SecurityEvent};
use crate::config::DatabaseSettings;
use crate::domain::{Email, User};
use crate::error::Result;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A pool of connections to one PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
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

    /// Applies pending migrations and returns the descriptions of the ones it applied.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        let before: Vec<i64> = if self.has_migrations_table().await? {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        MIGRATOR.run(&self.pool).await.context("migration failed")?;
        Ok(super::newly_applied(&MIGRATOR, &before))
    }

    /// Migrations this binary knows that the database has not applied yet.
    pub async fn pending_migrations(&self) -> Result<usize> {
        let applied: Vec<i64> = if self.has_migrations_table().await? {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        Ok(MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .count())
    }

    async fn has_migrations_table(&self) -> Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Answers whether the database responds right now.
    pub fn pool_usage(&self) -> (u32, u32, u32) {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        (
            self.pool.size(),
            idle,
            self.pool.options().get_max_connections(),
        )
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn insert_user(&self, new: NewUser) -> Result<User> {
        let row = sqlx::query(
            "INSERT INTO users (id, email, password_hash, first_name, last_name, two_factor_enabled)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id, email, first_name, last_name, two_factor_enabled, created_at",
        )
        .bind(new.id)
        .bind(&new.email)
        .bind(&new.password_hash)
        .bind(&new.first_name)
        .bind(&new.last_name)
        .bind(new.two_factor_enabled)
        .fetch_one(&self.pool)
        .await?;
        Ok(user_from_row(&row)?)
    }

    pub async fn find_credentials(&self, email: &Email) -> Result<Option<Credentials>> {
        let row = sqlx::query(
            "SELECT id, email, first_name, last_name, two_factor_enabled, created_at, password_hash
             FROM users WHERE email = $1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(Credentials {
                user: user_from_row(&row)?,
                password_hash: row.try_get("password_hash")?,
            })
        })
        .transpose()
    }

    pub async fn find_user(&self, id: Uuid) -> Result<Option<User>> {
        let row = sqlx::query(
            "SELECT id, email, first_name, last_name, two_factor_enabled, created_at
             FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    pub async fn list_users(&self, query: &UserQuery) -> Result<Vec<User>> {
        let rows = sqlx::query(
            r"SELECT id, email, first_name, last_name, two_factor_enabled, created_at
              FROM users
              WHERE $1::text IS NULL
                 OR email LIKE $1 ESCAPE '\'
                 OR lower(coalesce(first_name, '') || ' ' || coalesce(last_name, '')) LIKE $1 ESCAPE '\'
              ORDER BY created_at, id
              LIMIT $2",
        )
        .bind(like_pattern(query))
        .bind(query.limit.map(i64::from))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
    }

    pub async fn set_two_factor(&self, email: &Email, enabled: bool) -> Result<Option<User>> {
        let row = sqlx::query(
            "UPDATE users SET two_factor_enabled = $2 WHERE email = $1
             RETURNING id, email, first_name, last_name, two_factor_enabled, created_at",
        )
        .bind(email.as_str())
        .bind(enabled)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    pub async fn most_common_hash_cost(&self) -> Result<Option<u32>> {
        let cost: Option<String> = sqlx::query_scalar(
            "SELECT substr(password_hash, 5, 2) FROM users
             GROUP BY substr(password_hash, 5, 2) ORDER BY count(*) DESC, 1 DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(super::parse_cost(cost))
    }

    pub async fn replace_password_hash(&self, id: Uuid, old: &str, new: &str) -> Result<bool> {
        let done =
            sqlx::query("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2")
                .bind(id)
                .bind(old)
                .bind(new)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn insert_challenge(&self, challenge: &NewChallenge) -> Result<()> {
        sqlx::query(
            "INSERT INTO otp_challenges (id, user_id, code_hash, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(challenge.id)
        .bind(challenge.user_id)
        .bind(&challenge.code_hash)
        .bind(challenge.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a challenge whose code could not be delivered.
    pub async fn delete_challenge(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM otp_challenges WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Retires every open challenge of the user except `keep`, and forgets long-dead ones.
    pub async fn retire_challenges_except(&self, user_id: Uuid, keep: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE otp_challenges SET retired_at = now()
             WHERE user_id = $1 AND id < $2 AND consumed_at IS NULL AND retired_at IS NULL",
        )
        .bind(user_id)
        .bind(keep)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM otp_challenges WHERE user_id = $1 AND expires_at < now() - interval '1 day'",
        )
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn challenge_is_open(
        &self,
        id: Uuid,
        user_id: Uuid,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM otp_challenges
                            WHERE id = $1 AND user_id = $2 AND consumed_at IS NULL
                              AND retired_at IS NULL AND expires_at > $4 AND attempts < $3)",
        )
        .bind(id)
        .bind(user_id)
        .bind(max_attempts as i32)
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Counts or consumes in one statement. The row lock serialises concurrent submissions, and the
    /// re-checked `WHERE` means parallel guesses cannot pass `max_attempts` and a right code is
    /// accepted at most once.
    pub async fn attempt_challenge(
        &self,
        id: Uuid,
        user_id: Uuid,
        code_hash: &[u8],
        max_attempts: u32,
    ) -> Result<Attempt> {
        let row = sqlx::query(
            "UPDATE otp_challenges
             SET attempts = attempts + CASE WHEN code_hash = $3 THEN 0 ELSE 1 END,
                 consumed_at = CASE WHEN code_hash = $3 THEN now() ELSE NULL END
             WHERE id = $1 AND user_id = $2
               AND consumed_at IS NULL AND retired_at IS NULL
               AND expires_at > now() AND attempts < $4
             RETURNING consumed_at IS NOT NULL AS accepted, attempts",
        )
        .bind(id)
        .bind(user_id)
        .bind(code_hash)
        .bind(max_attempts as i32)
        .fetch_optional(&self.pool)
        .await?;
        super::attempt_from(
            row.map(|r| -> Result<(bool, i64)> {
                Ok((
                    r.try_get("accepted")?,
                    i64::from(r.try_get::<i32, _>("attempts")?),
                ))
            })
            .transpose()?,
            max_attempts,
        )
    }

    pub async fn reserve_attempt(
        &self,
        key: &str,
        rule: &ThrottleRule,
        now: DateTime<Utc>,
    ) -> Result<Reservation> {
        let failures: Option<i32> = sqlx::query_scalar(
            "INSERT INTO throttles AS t (key, failures, locked_until, updated_at)
             VALUES ($1, 1, CASE WHEN $2 = 1 THEN $3 + $4::float8 * interval '1 microsecond' END, $3)
             ON CONFLICT (key) DO UPDATE SET
                 failures = t.failures + 1,
                 locked_until = CASE WHEN (t.failures + 1) % $2 = 0
                     THEN $3 + least($4::float8 * power(2::float8, least((t.failures + 1) / $2 - 1, $6)), $5::float8)
                              * interval '1 microsecond'
                     ELSE t.locked_until END,
                 updated_at = $3
             WHERE (t.locked_until IS NULL OR t.locked_until <= $3)
               AND ($7::int4 IS NULL OR t.failures < $7)
             RETURNING failures",
        )
        .bind(key)
        .bind(rule.every as i32)
        .bind(now)
        .bind(rule.first_lock_micros)
        .bind(rule.max_lock_micros)
        .bind(rule.max_doublings() as i32)
        .bind(rule.hard_limit.map(|h| h as i32))
        .fetch_optional(&self.pool)
        .await?;
        match failures {
            Some(failures) => Ok(super::granted(i64::from(failures), rule)),
            None => Ok(super::refusal(self.throttle_row(key).await?, rule, now)),
        }
    }

    async fn throttle_row(&self, key: &str) -> Result<Option<(i64, Option<DateTime<Utc>>)>> {
        let row: Option<(i32, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT failures, locked_until FROM throttles WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(failures, until)| (i64::from(failures), until)))
    }

    pub async fn throttle_state(
        &self,
        key: &str,
        rule: &ThrottleRule,
        now: DateTime<Utc>,
    ) -> Result<Option<Reservation>> {
        Ok(super::state_of(self.throttle_row(key).await?, rule, now))
    }

    pub async fn release_attempt(&self, key: &str) -> Result<()> {
        sqlx::query("UPDATE throttles SET failures = failures - 1 WHERE key = $1 AND failures > 0")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn take_quota(
        &self,
        key: &str,
        max: u32,
        window_micros: i64,
        now: DateTime<Utc>,
    ) -> Result<Result<u32, DateTime<Utc>>> {
        let used: Option<i32> = sqlx::query_scalar(
            "INSERT INTO throttles AS t (key, failures, locked_until, updated_at)
             VALUES ($1, 1, $3 + $4::float8 * interval '1 microsecond', $3)
             ON CONFLICT (key) DO UPDATE SET
                 failures = CASE WHEN t.locked_until IS NULL OR t.locked_until <= $3
                                 THEN 1 ELSE t.failures + 1 END,
                 locked_until = CASE WHEN t.locked_until IS NULL OR t.locked_until <= $3
                                     THEN EXCLUDED.locked_until ELSE t.locked_until END,
                 updated_at = $3
             WHERE t.locked_until IS NULL OR t.locked_until <= $3 OR t.failures < $2
             RETURNING failures",
        )
        .bind(key)
        .bind(max as i32)
        .bind(now)
        .bind(window_micros)
        .fetch_optional(&self.pool)
        .await?;
        match used {
            Some(used) => Ok(Ok(u32::try_from(used).unwrap_or(0))),
            None => Ok(Err(super::window_end(self.throttle_row(key).await?, now))),
        }
    }

    pub async fn clear_failures(&self, key: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM throttles WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn prune(
        &self,
        now: DateTime<Utc>,
        events_before: DateTime<Utc>,
        wait: bool,
    ) -> Result<Option<Pruned>> {
        let mut tx = self.pool.begin().await?;
        if wait {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PRUNE_LOCK)
                .execute(&mut *tx)
                .await?;
        } else {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(PRUNE_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            if !got {
                return Ok(None);
            }
        }
        let challenges = sqlx::query("DELETE FROM otp_challenges WHERE expires_at < $1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let throttles = sqlx::query(
            "DELETE FROM throttles
             WHERE key NOT LIKE 'otp:%' AND updated_at < $2
               AND (locked_until IS NULL OR locked_until < $1)",
        )
        .bind(now)
        .bind(now - chrono::Duration::days(THROTTLE_MEMORY_DAYS))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let events = sqlx::query("DELETE FROM security_events WHERE at < $1")
            .bind(events_before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(Some(Pruned {
            challenges,
            throttles,
            events,
        }))
    }

    pub async fn insert_events(&self, events: &[SecurityEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for event in events {
            sqlx::query(
                "INSERT INTO security_events (at, kind, outcome, user_id, email, client_ip, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(event.at)
            .bind(event.kind.as_str())
            .bind(event.kind.outcome())
            .bind(event.user_id)
            .bind(&event.email)
            .bind(event.client_ip.map(|ip| ip.to_string()))
            .bind(&event.detail)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_events(&self, query: &EventQuery) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(
            "SELECT id, at, kind, outcome, user_id, email, client_ip, detail
             FROM security_events
             WHERE $1::text IS NULL OR email = $1
             ORDER BY at DESC, id DESC
             LIMIT $2",
        )
        .bind(&query.email)
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RecordedEvent {
                    id: row.try_get("id")?,
                    at: row.try_get("at")?,
                    kind: row.try_get("kind")?,
                    outcome: row.try_get("outcome")?,
                    user_id: row.try_get("user_id")?,
                    email: row.try_get("email")?,
                    client_ip: row.try_get("client_ip")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }
}

fn user_from_row(row: &PgRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        two_factor_enabled: row.try_get("two_factor_enabled")?,
        created_at: row.try_get("created_at")?,
    })
}
