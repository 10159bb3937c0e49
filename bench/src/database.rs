//! The throwaway PostgreSQL database of one bench run: created, seeded, read and dropped.

use anyhow::{Context, Result};
use sqlx::Connection;

use crate::cpu::stat_field;

/// The bench's own database on the server DATABASE_URL points at.
#[derive(Clone)]
pub struct Database {
    admin_url: String,
    name: String,
    pub url: String,
}

impl Database {
    pub async fn create(admin_url: &str) -> Result<Database> {
        let name = format!("authd_bench_{}", std::process::id());
        let url = testkit::postgres::create_database(admin_url, &name)
            .await
            .context("cannot create the bench database on DATABASE_URL")?;
        Ok(Database {
            admin_url: admin_url.to_owned(),
            url,
            name,
        })
    }

    /// A database of its own beside this one on the same server, `<this one's name>_<suffix>`
    /// (made anew if a run before left it), dropped with [`Database::drop_it`].
    pub async fn sibling(&self, suffix: &str) -> Result<Database> {
        let name = format!("{}_{suffix}", self.name);
        let url = testkit::postgres::create_database(&self.admin_url, &name)
            .await
            .with_context(|| format!("cannot create the database {name}"))?;
        Ok(Database {
            admin_url: self.admin_url.clone(),
            url,
            name,
        })
    }

    /// Runs one statement that returns nothing.
    pub async fn execute(&self, statement: &'static str) -> Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        sqlx::query(statement).execute(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// The stored bcrypt hash of an account: the bound verifies exactly what authd verifies.
    pub async fn password_hash(&self, email: &str) -> Result<String> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(&mut conn)
            .await
            .context("cannot read the stored hash")?;
        conn.close().await?;
        Ok(hash)
    }

    /// Adds `count` users, each with one live session, in two set-based statements; every
    /// seeded user has the password hash of `like` (so at authd's cost). Then ANALYZE, so the
    /// planner sees the tables as they now are.
    pub async fn seed(&self, count: u64, like: &str) -> Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let count = i64::try_from(count)?;
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, two_factor_enabled, created_at)
             SELECT gen_random_uuid(), 'seed' || i || '@seed.test',
                    (SELECT password_hash FROM users WHERE email = $2), false, now()
             FROM generate_series(1, $1) AS i",
        )
        .bind(count)
        .bind(like)
        .execute(&mut conn)
        .await
        .context("cannot seed users")?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, family, refresh_hash, created_at, last_used_at,
                                   expires_at, absolute_expires_at, client_ip, user_agent)
             SELECT gen_random_uuid(), id, decode(md5(id::text), 'hex'),
                    sha256(convert_to(id::text, 'UTF8')), now(), now(),
                    now() + interval '30 days', now() + interval '90 days', '127.0.0.1', 'seed'
             FROM users WHERE email LIKE 'seed%@seed.test'",
        )
        .execute(&mut conn)
        .await
        .context("cannot seed sessions")?;
        sqlx::query("ANALYZE").execute(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// Adds `count` accounts `<prefix><i>@bench.test` (i from 1), all with `password_hash`, in
    /// one set-based statement: the pools of the account-route phases, which need thousands of
    /// addresses and cannot register them at bcrypt's pace. `prefix` has no `%` or `_`.
    pub async fn add_accounts(
        &self,
        prefix: &str,
        count: usize,
        password_hash: &str,
    ) -> Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, two_factor_enabled, created_at)
             SELECT gen_random_uuid(), $2 || i || '@bench.test', $3, false, now()
             FROM generate_series(1, $1) AS i",
        )
        .bind(i64::try_from(count)?)
        .bind(prefix)
        .bind(password_hash)
        .execute(&mut conn)
        .await
        .context("cannot add the phase's accounts")?;
        conn.close().await?;
        Ok(())
    }

    /// Gives every account `<prefix>...` one live verification code, as registration would,
    /// but with a random stored hash: no code typed at it is right, and each takes authd's full
    /// number of wrong tries before it dies.
    pub async fn add_verification_codes(&self, prefix: &str) -> Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        sqlx::query(
            "INSERT INTO account_codes (id, user_id, purpose, email, code_hash, token_hash,
                                        attempts, expires_at, created_at)
             SELECT gen_random_uuid(), id, 'verify_email', email,
                    sha256(convert_to(gen_random_uuid()::text, 'UTF8')),
                    sha256(convert_to(gen_random_uuid()::text, 'UTF8')),
                    0, now() + interval '1 day', now()
             FROM users WHERE email LIKE $1 || '%'",
        )
        .bind(prefix)
        .execute(&mut conn)
        .await
        .context("cannot add the verification codes")?;
        sqlx::query("ANALYZE users, account_codes")
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }

    /// Removes the accounts `<prefix>...` and what hangs on them (codes, sessions), so a later
    /// phase or run measures on the database it had before.
    pub async fn remove_accounts(&self, prefix: &str) -> Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        // The codes first, in one statement, then VACUUM: the only index on their `user_id`
        // covers open codes alone, so the cascade of each account's delete scans the whole
        // table, and the dead rows of the codes too until a vacuum takes them out.
        sqlx::query(
            "DELETE FROM account_codes WHERE user_id IN
                 (SELECT id FROM users WHERE email LIKE $1 || '%')",
        )
        .bind(prefix)
        .execute(&mut conn)
        .await
        .context("cannot remove the phase's codes")?;
        sqlx::query("VACUUM account_codes")
            .execute(&mut conn)
            .await
            .context("cannot vacuum account_codes")?;
        sqlx::query("DELETE FROM users WHERE email LIKE $1 || '%'")
            .bind(prefix)
            .execute(&mut conn)
            .await
            .context("cannot remove the phase's accounts")?;
        conn.close().await?;
        Ok(())
    }

    /// The PostgreSQL server process whose children serve our connections.
    pub async fn postmaster_pid(&self) -> Result<u32> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        // Read while the connection is open: once closed, its backend may be gone.
        let stat = std::fs::read_to_string(format!("/proc/{backend}/stat"))
            .context("PostgreSQL must run on this machine")?;
        conn.close().await?;
        stat_field(&stat, 4)
            .map(|ppid| ppid as u32)
            .context("no parent in /proc stat")
    }

    pub async fn drop_it(&self) -> Result<()> {
        Ok(testkit::postgres::drop_database(&self.admin_url, &self.name).await?)
    }
}
