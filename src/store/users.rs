//! Users: accounts, their credentials, listing, disabling and deleting.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::common::{Time, UserRow, statements, user_columns};
use crate::domain::{Email, User};
use crate::error::Result;

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

/// A user as `authd user list` shows them: the API's User with two more fields.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UserListing {
    #[serde(flatten)]
    pub user: User,
    pub disabled: bool,
    /// Live sessions.
    pub sessions: i64,
    /// Registered passkeys.
    pub passkeys: i64,
}

/// Filters for listing users.
#[derive(Debug, Default, Clone)]
pub struct UserQuery {
    pub search: Option<String>,
    pub limit: Option<u32>,
}

/// A user with the stored hash, for login.
#[derive(Debug, sqlx::FromRow)]
pub struct CredentialsRow {
    #[sqlx(flatten)]
    pub user: UserRow,
    pub password_hash: String,
    pub disabled: bool,
}

/// A user row as `authd user list` reads it.
#[derive(Debug, sqlx::FromRow)]
pub struct UserListingRow {
    #[sqlx(flatten)]
    user: UserRow,
    disabled: bool,
    sessions: i64,
    passkeys: i64,
}

impl From<UserListingRow> for UserListing {
    fn from(row: UserListingRow) -> UserListing {
        UserListing {
            user: row.user.into(),
            disabled: row.disabled,
            sessions: row.sessions,
            passkeys: row.passkeys,
        }
    }
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

statements! {
    pub async fn insert_user(&self, new: NewUser) -> Result<User> {
        let row: UserRow = sqlx::query_as(
            concat!("INSERT INTO users (id, email, password_hash, first_name, last_name,
                                two_factor_enabled, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             RETURNING ", user_columns!()),
        )
        .bind(new.id)
        .bind(&new.email)
        .bind(&new.password_hash)
        .bind(&new.first_name)
        .bind(&new.last_name)
        .bind(new.two_factor_enabled)
        .bind(Time(new.created_at))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.into())
    }

    pub async fn find_credentials(&self, email: &Email) -> Result<Option<Credentials>> {
        let row: Option<CredentialsRow> = sqlx::query_as(
            "SELECT id, email, first_name, last_name, two_factor_enabled, created_at,
                    email_verified_at, totp_secret IS NOT NULL AS totp_enabled,
                    password_hash, disabled_at IS NOT NULL AS disabled
             FROM users WHERE email = $1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| Credentials {
            user: row.user.into(),
            password_hash: row.password_hash,
            disabled: row.disabled,
        }))
    }

    pub async fn find_user(&self, id: Uuid) -> Result<Option<User>> {
        let row: Option<UserRow> = sqlx::query_as(
            concat!("SELECT ", user_columns!(), "
             FROM users WHERE id = $1"),
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(User::from))
    }

    pub async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>> {
        let row: Option<UserRow> = sqlx::query_as(
            concat!("SELECT ", user_columns!(), "
             FROM users WHERE email = $1"),
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(User::from))
    }

    pub async fn list_users(
        &self,
        query: &UserQuery,
        now: DateTime<Utc>,
    ) -> Result<Vec<UserListing>> {
        let rows: Vec<UserListingRow> = sqlx::query_as(
            r"SELECT u.id, u.email, u.first_name, u.last_name, u.two_factor_enabled,
                     u.created_at, u.email_verified_at, u.totp_secret IS NOT NULL AS totp_enabled,
                     u.disabled_at IS NOT NULL AS disabled,
                     (SELECT count(*) FROM sessions s
                      WHERE s.user_id = u.id AND s.revoked_at IS NULL
                        AND s.expires_at > $3) AS sessions,
                     (SELECT count(*) FROM passkeys p WHERE p.user_id = u.id) AS passkeys
              FROM users u
              WHERE $1 IS NULL
                 OR u.email LIKE $1 ESCAPE '\'
                 OR lower(coalesce(u.first_name, '') || ' ' || coalesce(u.last_name, ''))
                    LIKE $1 ESCAPE '\'
              ORDER BY u.created_at, u.id
              LIMIT $2",
        )
        .bind(like_pattern(query))
        .bind(query.limit.map_or(i64::MAX, i64::from))
        .bind(Time(now))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(UserListing::from).collect())
    }

    pub async fn set_disabled(
        &self,
        email: &Email,
        disabled: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<User>> {
        let mut tx = self.pool.begin().await?;
        let row: Option<UserRow> = sqlx::query_as(
            concat!("UPDATE users
             SET disabled_at = CASE WHEN $2 THEN coalesce(disabled_at, $3) ELSE NULL END
             WHERE email = $1
             RETURNING ", user_columns!()),
        )
        .bind(email.as_str())
        .bind(disabled)
        .bind(Time(now))
        .fetch_optional(&mut *tx)
        .await?;
        if let (Some(user), true) = (&row, disabled) {
            // Every session ends, and so does a login waiting for its code, and every emailed
            // code or link (a reset or an address change must not outlive the disable).
            sqlx::query(
                "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(user.id)
            .bind(Time(now))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE otp_challenges SET retired_at = $2
                 WHERE user_id = $1 AND consumed_at IS NULL AND retired_at IS NULL",
            )
            .bind(user.id)
            .bind(Time(now))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE account_codes SET retired_at = $2
                 WHERE user_id = $1 AND consumed_at IS NULL AND retired_at IS NULL",
            )
            .bind(user.id)
            .bind(Time(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(row.map(User::from))
    }

    pub async fn delete_user(
        &self,
        email: &Email,
        counters: &[String],
    ) -> Result<Option<User>> {
        let mut tx = self.pool.begin().await?;
        let row: Option<UserRow> = sqlx::query_as(
            concat!("DELETE FROM users WHERE email = $1
             RETURNING ", user_columns!()),
        )
        .bind(email.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_some() {
            for key in counters {
                sqlx::query("DELETE FROM throttles WHERE key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(row.map(User::from))
    }

    pub async fn set_two_factor(&self, email: &Email, enabled: bool) -> Result<Option<User>> {
        let row: Option<UserRow> = sqlx::query_as(
            concat!("UPDATE users SET two_factor_enabled = $2 WHERE email = $1
             RETURNING ", user_columns!()),
        )
        .bind(email.as_str())
        .bind(enabled)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(User::from))
    }

    pub async fn replace_password_hash(&self, id: Uuid, old: &str, new: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
        )
        .bind(id)
        .bind(old)
        .bind(new)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }
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
}
