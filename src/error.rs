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
    /// An emailed code or link (verification, reset, email change) that is wrong, used,
    /// retired, expired or out of attempts; deliberately one answer for all, and the same
    /// whether or not the address has an account.
    #[error("the code or link is wrong, used or expired: ask for a new one")]
    InvalidCode,
    /// The password was right, but the account's address is not proven and
    /// `registration.require_verified_email` is on.
    #[error(
        "this account's email address is not verified yet: use the code or link emailed to it, or ask for a new one"
    )]
    EmailNotVerified,
    /// A sensitive action needs a login younger than `session.fresh_login_secs`.
    #[error("this needs a recent login: log in again, then retry")]
    ReauthenticationRequired,
    /// An authenticator app is on already: turn it off before enrolling another.
    #[error("an authenticator app is already set up for this account: turn it off first")]
    AlreadyEnrolled,
    #[error("no user with this email address")]
    UserNotFound,
    /// No live session with this id belongs to the caller (or, for an admin, exists).
    #[error("no such session")]
    SessionNotFound,
    #[error("no such passkey")]
    PasskeyNotFound,
    #[error(
        "passkeys are not set up on this server: it has no domain name (set http.public_url or webauthn.rp_id)"
    )]
    PasskeysUnavailable,
    #[error(
        "this passkey ceremony is unknown, already finished, expired or for something else: ask for new options"
    )]
    InvalidCeremony,
    #[error("the passkey was not accepted: ask for new options and try again")]
    PasskeyRejected,
    #[error("the browser's answer does not register a passkey: ask for new options and try again")]
    InvalidPasskey,
    #[error("this account has the most passkeys it may have: remove one first")]
    TooManyPasskeys,
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
