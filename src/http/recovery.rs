//! Handlers of the account lifecycle: proving the address, resetting and changing the password,
//! changing the address. Translation only; the rules are in `crate::auth::recovery`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{BearerToken, Json};
use super::routes::AppState;
use crate::auth::{ChangeProof, Client, Proof};
use crate::domain::{Otp, User};
use crate::error::{Error, FieldError};

/// The longest link token looked at: a real one has 43 characters.
const MAX_TOKEN_CHARS: usize = 256;

#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyEmailRequest {
    /// With `code`: the address the code went to.
    #[schema(example = "ada@example.test")]
    pub email: Option<String>,
    /// With `email`: the six digits from the email.
    #[schema(example = "123456")]
    pub code: Option<String>,
    /// Instead of `email` and `code`: the `token` of the email's link.
    pub token: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EmailRequest {
    #[schema(required = true, value_type = String, example = "ada@example.test")]
    pub email: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResetPasswordRequest {
    /// With `code`: the account's address.
    #[schema(example = "ada@example.test")]
    pub email: Option<String>,
    /// With `email`: the six digits from the reset email.
    #[schema(example = "123456")]
    pub code: Option<String>,
    /// Instead of `email` and `code`: the `token` of the reset email's link.
    pub token: Option<String>,
    /// 8 to 72 bytes of UTF-8, under the same policy as registration.
    #[schema(required = true, value_type = String)]
    pub new_password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    #[schema(required = true, value_type = String)]
    pub current_password: Option<String>,
    /// 8 to 72 bytes of UTF-8, under the same policy as registration.
    #[schema(required = true, value_type = String)]
    pub new_password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EmailChangeRequest {
    #[schema(required = true, value_type = String, example = "ada@new.example.test")]
    pub new_email: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct EmailChangeConfirmRequest {
    /// The six digits emailed to the new address (with the access token of the account).
    #[schema(example = "123456")]
    pub code: Option<String>,
    /// Instead of `code`: the `token` of the email's link (no access token needed).
    pub token: Option<String>,
}

/// The answer to a request whose outcome is emailed (or not): always the same.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub message: &'static str,
}

/// The answer to a successful password reset.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasswordResetDone {
    pub message: &'static str,
}

fn accepted(message: &'static str) -> Response {
    (StatusCode::ACCEPTED, Json(Accepted { message })).into_response()
}

fn required(field: &str, value: Option<String>) -> Result<String, Error> {
    value.ok_or_else(|| Error::validation(field, "is required"))
}

fn code(raw: String) -> Result<Otp, Error> {
    Otp::parse(&raw).map_err(|m| Error::validation("code", m))
}

/// A link's token as given: an over-long one names no code.
fn token(raw: String) -> Result<String, Error> {
    if raw.chars().count() > MAX_TOKEN_CHARS {
        return Err(Error::InvalidCode);
    }
    Ok(raw)
}

/// Either the emailed code with its address, or the link's token.
fn proof(
    email: Option<String>,
    code_given: Option<String>,
    token_given: Option<String>,
) -> Result<Proof, Error> {
    match (email, code_given, token_given) {
        (None, None, Some(raw)) => Ok(Proof::Token(token(raw)?)),
        (Some(email), Some(raw), None) => Ok(Proof::Code {
            email,
            code: code(raw)?,
        }),
        _ => Err(Error::Validation(vec![FieldError::new(
            "token",
            "give either `token` (from the link), or `email` and `code`",
        )])),
    }
}

/// Prove the account's address with the emailed code or link.
///
/// Either `{"email", "code"}` or `{"token"}` (the link's). A code takes 5 wrong tries, then a
/// new one must be asked for. A code or link works once, and only the newest sent works. The
/// link of an email change (`POST /email/change`) proves the new address here too and moves
/// the account to it.
#[utoipa::path(
    post, path = "/email/verify", tag = "account",
    request_body = VerifyEmailRequest,
    responses(
        (status = 200, description = "The address is proven: the user as they are now", body = User),
        (status = 400, description = "Wrong, used, retired or expired code or link, out of tries, or no account with this address: one answer for all (`invalid_code`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An email change's link, and the new address was taken by another account meanwhile (`email_taken`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither `token` nor `email` and `code`, a malformed address, or a code that is not six digits (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn verify_email(
    State(state): State<AppState>,
    client: Client,
    Json(body): Json<VerifyEmailRequest>,
) -> Result<Json<User>, ApiError> {
    let proof = proof(body.email, body.code, body.token)?;
    Ok(Json(state.auth.verify_email(proof, client).await?))
}

/// Ask for a new verification email.
///
/// Always 202 with the same body: an email goes out only when an account with this address
/// exists and its address is not proven yet, at most once per
/// `verification.resend_interval_secs` and `verification.max_per_day` times a day.
#[utoipa::path(
    post, path = "/email/verify/resend", tag = "account",
    request_body = EmailRequest,
    responses(
        (status = 202, description = "Accepted, whether or not anything is sent", body = Accepted),
        (status = 422, description = "`email` missing or not an address (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn resend_verification(
    State(state): State<AppState>,
    client: Client,
    Json(body): Json<EmailRequest>,
) -> Result<Response, ApiError> {
    state
        .auth
        .resend_verification(&required("email", body.email)?, client)?;
    Ok(accepted(
        "if an account with this address is waiting for verification, an email is on its way",
    ))
}

/// Ask for a password reset.
///
/// Always 202 with the same body and in about the same time: a reset email (a code and a
/// link, valid `password.reset_ttl_secs`) goes out only when an enabled account has this
/// address, within the same limits as the verification emails.
#[utoipa::path(
    post, path = "/password/forgot", tag = "account",
    request_body = EmailRequest,
    responses(
        (status = 202, description = "Accepted, whether or not an account exists", body = Accepted),
        (status = 422, description = "`email` missing or not an address (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn forgot_password(
    State(state): State<AppState>,
    client: Client,
    Json(body): Json<EmailRequest>,
) -> Result<Response, ApiError> {
    state
        .auth
        .forgot_password(&required("email", body.email)?, client)?;
    Ok(accepted(
        "if an account has this address, an email with a reset code and link is on its way",
    ))
}

/// Set a new password with the emailed reset code or link.
///
/// Either `{"email", "code", "new_password"}` or `{"token", "new_password"}`. The password
/// obeys the registration policy (a refused one leaves the code usable). On success every
/// session of the user ends, the password locks are cleared and a notice is emailed. The
/// second step, if the account has one, still applies at the next login.
#[utoipa::path(
    post, path = "/password/reset", tag = "account",
    request_body = ResetPasswordRequest,
    responses(
        (status = 200, description = "The password is changed; log in with it", body = PasswordResetDone),
        (status = 400, description = "Wrong, used, retired or expired code or link, out of tries, or no account with this address (`invalid_code`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing fields, or a new password the policy refuses (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or too many passwords already waiting to be hashed (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn reset_password(
    State(state): State<AppState>,
    client: Client,
    Json(body): Json<ResetPasswordRequest>,
) -> Result<Response, ApiError> {
    let new_password = required("new_password", body.new_password)?;
    let proof = proof(body.email, body.code, body.token)?;
    state
        .auth
        .reset_password(proof, &new_password, client)
        .await?;
    Ok(Json(PasswordResetDone {
        message: "the password is changed and every session ended: log in with the new password",
    })
    .into_response())
}

/// Change the password, knowing the current one.
///
/// A wrong `current_password` counts toward the account's password lock like a failed login.
/// The caller's other sessions end; this one stays. A notice is emailed.
#[utoipa::path(
    post, path = "/password/change", tag = "account",
    request_body = ChangePasswordRequest,
    security(("access_token" = [])),
    responses(
        (status = 204, description = "Changed; the user's other sessions ended"),
        (status = 401, description = "Missing, invalid or expired access token, or its session ended (`invalid_token`)", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer error=\"invalid_token\"`"))),
        (status = 422, description = "Missing fields, a wrong `current_password`, or a new password the policy refuses (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The account is locked after repeated wrong passwords, or too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or too many passwords already waiting to be checked (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn change_password(
    State(state): State<AppState>,
    client: Client,
    BearerToken(access_token): BearerToken,
    Json(body): Json<ChangePasswordRequest>,
) -> Result<StatusCode, ApiError> {
    let (current, new) = match (body.current_password, body.new_password) {
        (Some(current), Some(new)) => (current, new),
        (current, new) => {
            let missing = [("current_password", current), ("new_password", new)]
                .into_iter()
                .filter(|(_, value)| value.is_none())
                .map(|(name, _)| FieldError::new(name, "is required"))
                .collect();
            return Err(Error::Validation(missing).into());
        }
    };
    state
        .auth
        .change_password(&access_token, &current, &new, client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ask to move the account to another address.
///
/// Needs a login less than `session.fresh_login_secs` ago. A code and a link go to the new
/// address and a notice to the current one; the address changes only when
/// `POST /email/change/confirm` (or `POST /email/verify` with the link's token) confirms it.
/// A new address that is another account's gets the same answer and nothing changes (its
/// owner is told).
#[utoipa::path(
    post, path = "/email/change", tag = "account",
    request_body = EmailChangeRequest,
    security(("access_token" = [])),
    responses(
        (status = 202, description = "Accepted: confirm with the code or link sent to the new address", body = Accepted),
        (status = 401, description = "Missing, invalid or expired access token, or its session ended (`invalid_token`)", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer error=\"invalid_token\"`"))),
        (status = 403, description = "The session's login is older than `session.fresh_login_secs`: log in again (`reauthentication_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`new_email` missing, malformed, or the current address (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn request_email_change(
    State(state): State<AppState>,
    client: Client,
    BearerToken(access_token): BearerToken,
    Json(body): Json<EmailChangeRequest>,
) -> Result<Response, ApiError> {
    let new_email = required("new_email", body.new_email)?;
    state
        .auth
        .request_email_change(&access_token, &new_email, client)
        .await?;
    Ok(accepted(
        "confirm with the code or link emailed to the new address",
    ))
}

/// Confirm an email change.
///
/// `{"code"}` with the account's access token, or `{"token"}` (the link's) alone. The account
/// moves to the new address, which counts as proven.
#[utoipa::path(
    post, path = "/email/change/confirm", tag = "account",
    request_body = EmailChangeConfirmRequest,
    security((), ("access_token" = [])),
    responses(
        (status = 200, description = "The account's address changed: the user as they are now", body = User),
        (status = 400, description = "Wrong, used, retired or expired code or link, or out of tries (`invalid_code`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "A code without a valid access token (`invalid_token`)", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer error=\"invalid_token\"`"))),
        (status = 409, description = "Another account took the new address meanwhile (`email_taken`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither `code` nor `token`, or a code that is not six digits (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn confirm_email_change(
    State(state): State<AppState>,
    client: Client,
    bearer: Option<BearerToken>,
    Json(body): Json<EmailChangeConfirmRequest>,
) -> Result<Json<User>, ApiError> {
    let proof = match (body.code, body.token) {
        (Some(raw), None) => {
            let access_token = bearer.ok_or_else(ApiError::missing_token)?.0;
            ChangeProof::Code {
                access_token,
                code: code(raw)?,
            }
        }
        (None, Some(raw)) => ChangeProof::Token(token(raw)?),
        _ => {
            return Err(Error::validation(
                "code",
                "give either `code` (with the access token) or `token` (from the link)",
            )
            .into());
        }
    };
    Ok(Json(state.auth.confirm_email_change(proof, client).await?))
}
