//! The SQLite store: one file, one instance. Same rules as PostgreSQL; writes are serialised
//! by SQLite itself, which is what makes the single-statement attempt counting atomic here.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use uuid::Uuid;

use super::{
    Attempt, Credentials, NewChallenge, NewUser, Pruned, Reservation, THROTTLE_MEMORY_DAYS,
    ThrottleRule, UserQuery, like_pattern,
};
use crate::audit::{EventQuery, RecordedEvent, SecurityEvent};
use crate::config::DatabaseSettings;
use crate::domain::{Email, User};
use crate::error::{Error, Result};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A pool of connections to one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(v: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| sqlx::Error::Decode(format!("timestamp {v} out of range").into()))
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
    /// Opens (creating if needed) the database file and its directory.
    pub fn connect_lazy(url: &str, settings: &DatabaseSettings) -> anyhow::Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .context("database.url is not a valid sqlite:// URL")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(
                settings.acquire_timeout_secs.max(1) + 2,
            ));
        // sqlx names an in-memory database "file:sqlx-in-memory-<n>": nothing to create.
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if !in_memory {
            create_private_file(options.get_filename())?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
            .connect_lazy_with(options);
        Ok(SqliteStore { pool })
    }

    pub async fn migrate(&self) -> Result<Vec<String>> {
        let has_table: bool = sqlx::query_scalar(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        let before: Vec<i64> = if has_table {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        MIGRATOR.run(&self.pool).await.context("migration failed")?;
        Ok(super::newly_applied(&MIGRATOR, &before))
    }

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
            "INSERT INTO users (id, email, password_hash, first_name, last_name, two_factor_enabled, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             RETURNING id, email, first_name, last_name, two_factor_enabled, created_at",
        )
        .bind(new.id)
        .bind(&new.email)
        .bind(&new.password_hash)
        .bind(&new.first_name)
        .bind(&new.last_name)
        .bind(new.two_factor_enabled)
        .bind(micros(Utc::now()))
        .fetch_one(&self.pool)
        .await?;
        Ok(user_from_row(&row)?)
    }

    pub async fn find_credentials(&self, email: &Email) -> Result<Option<Credentials>> {
        let row = sqlx::query(
            "SELECT id, email, first_name, last_name, two_factor_enabled, created_at, password_hash
             FROM users WHERE email = ?1",
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
             FROM users WHERE id = ?1",
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
              WHERE ?1 IS NULL
                 OR email LIKE ?1 ESCAPE '\'
                 OR lower(coalesce(first_name, '') || ' ' || coalesce(last_name, '')) LIKE ?1 ESCAPE '\'
              ORDER BY created_at, id
              LIMIT ?2",
        )
        .bind(like_pattern(query))
        .bind(query.limit.map_or(-1, i64::from))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
    }

    pub async fn set_two_factor(&self, email: &Email, enabled: bool) -> Result<Option<User>> {
        let row = sqlx::query(
            "UPDATE users SET two_factor_enabled = ?2 WHERE email = ?1
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
            sqlx::query("UPDATE users SET password_hash = ?3 WHERE id = ?1 AND password_hash = ?2")
                .bind(id)
                .bind(old)
                .bind(new)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn insert_challenge(&self, challenge: &NewChallenge) -> Result<()> {
        sqlx::query(
            "INSERT INTO otp_challenges (id, user_id, code_hash, expires_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(challenge.id)
        .bind(challenge.user_id)
        .bind(&challenge.code_hash)
        .bind(micros(challenge.expires_at))
        .bind(micros(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn delete_challenge(&self, id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM otp_challenges WHERE id = ?1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn retire_challenges_except(&self, user_id: Uuid, keep: Uuid) -> Result<()> {
        let now = Utc::now();
        sqlx::query(
            "UPDATE otp_challenges SET retired_at = ?3
             WHERE user_id = ?1 AND id < ?2 AND consumed_at IS NULL AND retired_at IS NULL",
        )
        .bind(user_id)
        .bind(keep)
        .bind(micros(now))
        .execute(&self.pool)
        .await?;
        sqlx::query("DELETE FROM otp_challenges WHERE user_id = ?1 AND expires_at < ?2")
            .bind(user_id)
            .bind(micros(now - chrono::Duration::days(1)))
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
                            WHERE id = ?1 AND user_id = ?2 AND consumed_at IS NULL
                              AND retired_at IS NULL AND expires_at > ?4 AND attempts < ?3)",
        )
        .bind(id)
        .bind(user_id)
        .bind(i64::from(max_attempts))
        .bind(micros(now))
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn attempt_challenge(
        &self,
        id: Uuid,
        user_id: Uuid,
        code_hash: &[u8],
        max_attempts: u32,
    ) -> Result<Attempt> {
        let row = sqlx::query(
            "UPDATE otp_challenges
             SET attempts = attempts + CASE WHEN code_hash = ?3 THEN 0 ELSE 1 END,
                 consumed_at = CASE WHEN code_hash = ?3 THEN ?5 ELSE NULL END
             WHERE id = ?1 AND user_id = ?2
               AND consumed_at IS NULL AND retired_at IS NULL
               AND expires_at > ?5 AND attempts < ?4
             RETURNING consumed_at IS NOT NULL AS accepted, attempts",
        )
        .bind(id)
        .bind(user_id)
        .bind(code_hash)
        .bind(i64::from(max_attempts))
        .bind(micros(Utc::now()))
        .fetch_optional(&self.pool)
        .await?;
        super::attempt_from(
            row.map(|r| -> Result<(bool, i64), Error> {
                Ok((r.try_get("accepted")?, r.try_get("attempts")?))
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
        let failures: Option<i64> = sqlx::query_scalar(
            "INSERT INTO throttles (key, failures, locked_until, updated_at)
             VALUES (?1, 1, CASE WHEN ?2 = 1 THEN ?3 + ?4 END, ?3)
             ON CONFLICT (key) DO UPDATE SET
                 failures = throttles.failures + 1,
                 locked_until = CASE WHEN (throttles.failures + 1) % ?2 = 0
                     THEN ?3 + min(?4 * (1 << min((throttles.failures + 1) / ?2 - 1, ?6)), ?5)
                     ELSE throttles.locked_until END,
                 updated_at = ?3
             WHERE (throttles.locked_until IS NULL OR throttles.locked_until <= ?3)
               AND (?7 IS NULL OR throttles.failures < ?7)
             RETURNING failures",
        )
        .bind(key)
        .bind(i64::from(rule.every))
        .bind(micros(now))
        .bind(rule.first_lock_micros)
        .bind(rule.max_lock_micros)
        .bind(rule.max_doublings())
        .bind(rule.hard_limit.map(i64::from))
        .fetch_optional(&self.pool)
        .await?;
        match failures {
            Some(failures) => Ok(super::granted(failures, rule)),
            None => Ok(super::refusal(self.throttle_row(key).await?, rule, now)),
        }
    }

    async fn throttle_row(&self, key: &str) -> Result<Option<(i64, Option<DateTime<Utc>>)>> {
        let row: Option<(i64, Option<i64>)> =
            sqlx::query_as("SELECT failures, locked_until FROM throttles WHERE key = ?1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row
            .map(|(failures, until)| {
                Ok::<_, sqlx::Error>((failures, until.map(from_micros).transpose()?))
            })
            .transpose()?)
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
        sqlx::query("UPDATE throttles SET failures = failures - 1 WHERE key = ?1 AND failures > 0")
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
        let used: Option<i64> = sqlx::query_scalar(
            "INSERT INTO throttles (key, failures, locked_until, updated_at)
             VALUES (?1, 1, ?3 + ?4, ?3)
             ON CONFLICT (key) DO UPDATE SET
                 failures = CASE WHEN throttles.locked_until IS NULL OR throttles.locked_until <= ?3
                                 THEN 1 ELSE throttles.failures + 1 END,
                 locked_until = CASE WHEN throttles.locked_until IS NULL OR throttles.locked_until <= ?3
                                     THEN excluded.locked_until ELSE throttles.locked_until END,
                 updated_at = ?3
             WHERE throttles.locked_until IS NULL OR throttles.locked_until <= ?3 OR throttles.failures < ?2
             RETURNING failures",
        )
        .bind(key)
        .bind(i64::from(max))
        .bind(micros(now))
        .bind(window_micros)
        .fetch_optional(&self.pool)
        .await?;
        match used {
            Some(used) => Ok(Ok(u32::try_from(used).unwrap_or(0))),
            None => Ok(Err(super::window_end(self.throttle_row(key).await?, now))),
        }
    }

    pub async fn clear_failures(&self, key: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM throttles WHERE key = ?1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// One file, one instance: no lock to take, so `wait` changes nothing.
    pub async fn prune(
        &self,
        now: DateTime<Utc>,
        events_before: DateTime<Utc>,
        _wait: bool,
    ) -> Result<Option<Pruned>> {
        let mut tx = self.pool.begin().await?;
        let challenges = sqlx::query("DELETE FROM otp_challenges WHERE expires_at < ?1")
            .bind(micros(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let throttles = sqlx::query(
            "DELETE FROM throttles
             WHERE key NOT LIKE 'otp:%' AND updated_at < ?2
               AND (locked_until IS NULL OR locked_until < ?1)",
        )
        .bind(micros(now))
        .bind(micros(now - chrono::Duration::days(THROTTLE_MEMORY_DAYS)))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let events = sqlx::query("DELETE FROM security_events WHERE at < ?1")
            .bind(micros(events_before))
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
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(micros(event.at))
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
             WHERE ?1 IS NULL OR email = ?1
             ORDER BY at DESC, id DESC
             LIMIT ?2",
        )
        .bind(&query.email)
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RecordedEvent {
                    id: row.try_get("id")?,
                    at: from_micros(row.try_get("at")?)?,
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

fn user_from_row(row: &SqliteRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        two_factor_enabled: row.try_get("two_factor_enabled")?,
        created_at: from_micros(row.try_get("created_at")?)?,
    })
}
