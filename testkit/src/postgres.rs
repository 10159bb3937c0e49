//! Throwaway PostgreSQL databases on a server the caller may create databases on (its admin URL,
//! `DATABASE_URL` in `make test` and `make bench`).

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

/// `url` with its database name replaced by `name` (query parameters kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let prefix = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

/// Creates the empty database `name` (dropping one left by an earlier run) and returns its URL.
/// `name` must be a plain identifier (letters, digits, `_`): it is not quoted for you.
pub async fn create_database(admin_url: &str, name: &str) -> Result<String, sqlx::Error> {
    check_name(name)?;
    on_server(
        admin_url,
        &[
            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#),
            format!(r#"CREATE DATABASE "{name}""#),
        ],
    )
    .await?;
    Ok(with_database(admin_url, name))
}

/// Drops the database `name`, closing whatever connections are still open to it.
pub async fn drop_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    check_name(name)?;
    on_server(
        admin_url,
        &[format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#)],
    )
    .await
}

/// Runs `statements` in order on one connection to the admin database.
async fn on_server(admin_url: &str, statements: &[String]) -> Result<(), sqlx::Error> {
    let mut admin = PgConnectOptions::from_str(admin_url)?.connect().await?;
    for statement in statements {
        admin
            .execute(sqlx::AssertSqlSafe(statement.clone()))
            .await?;
    }
    admin.close().await
}

fn check_name(name: &str) -> Result<(), sqlx::Error> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(sqlx::Error::Configuration(
            format!("{name:?} is not a plain database name").into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_name() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(with_database("postgres://h/a/b", "x"), "postgres://h/x");
    }

    #[test]
    fn only_plain_names_are_accepted() {
        assert!(check_name("authd_test_0af3").is_ok());
        for bad in ["", "a\"b", "a b", "x;DROP"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
