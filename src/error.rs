//! The core error: what went wrong in terms of the domain, with no transport attached.

use serde::Serialize;

/// One invalid input field and why, as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Errors of the use cases. HTTP and CLI each map them to their own form.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("an account with this email address already exists")]
    EmailTaken,
    #[error("the email address or password is wrong")]
    InvalidCredentials,
    #[error("the token is invalid: {0}")]
    InvalidToken(&'static str),
    #[error("the code is wrong ({remaining} attempts left)")]
    InvalidOtp { remaining: u32 },
    #[error("no user with this email address")]
    UserNotFound,
    #[error("invalid input: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Validation(Vec<FieldError>),
    /// Too many failures or requests: try again after `retry_after_secs`.
    #[error("too many attempts: try again in {retry_after_secs} seconds")]
    RateLimited { retry_after_secs: u64 },
    /// Too many consecutive wrong codes over the account's life: the second step stays locked
    /// until an admin runs `authd user unlock`.
    #[error(
        "the second step of this account is locked after too many wrong codes: an administrator must unlock it"
    )]
    SecondFactorLocked,
    /// A dependency (database, mail relay) is down or too slow; worth retrying later.
    #[error("{0} is unavailable")]
    Unavailable(&'static str),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        Error::Validation(vec![FieldError::new(field, message)])
    }
}

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
