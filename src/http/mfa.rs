//! Handlers of the second factors: enrolling and confirming an authenticator app, turning it
//! off, new recovery codes. Translation only; the rules are in `crate::auth::mfa`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{BearerToken, Json};
use super::routes::AppState;
use crate::auth::{Client, Enrolment, TotpProof};
use crate::domain::{Otp, User};
use crate::error::Error;

/// A new enrolment, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolmentView {
    /// The secret in base32 (RFC 4648, no padding), for typing into an app.
    pub secret: String,
    /// `otpauth://totp/...`: SHA-1, 6 digits, 30 s.
    pub otpauth_uri: String,
    /// The URI as a QR code: an SVG document.
    pub qr_svg: String,
    /// Seconds the enrolment waits for its first code.
    pub expires_in: i64,
}

impl From<Enrolment> for EnrolmentView {
    fn from(enrolment: Enrolment) -> EnrolmentView {
        EnrolmentView {
            secret: enrolment.secret,
            otpauth_uri: enrolment.otpauth_uri,
            qr_svg: enrolment.qr_svg,
            expires_in: crate::auth::ENROLMENT_TTL_SECS,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CodeRequest {
    /// Six digits from the authenticator app.
    #[schema(required = true, value_type = String, example = "123456")]
    pub code: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct DisableTotpRequest {
    /// Six digits from the authenticator app...
    #[schema(example = "123456")]
    pub code: Option<String>,
    /// ...or the account's password.
    pub password: Option<String>,
}

/// Recovery codes, shown once: each finishes one login instead of the app's code.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// `XXXXX-XXXXX`; typed back in any letter case, with or without the dash.
    pub recovery_codes: Vec<String>,
}

fn app_code(raw: Option<String>) -> Result<Otp, Error> {
    let raw = raw.ok_or_else(|| Error::validation("code", "is required"))?;
    Otp::parse(&raw).map_err(|m| Error::validation("code", m))
}

/// Start enrolling an authenticator app.
///
/// Nothing changes for the user until `POST /mfa/totp/confirm` gets the app's first code,
/// within 10 minutes. Needs a login less than `session.fresh_login_secs` old.
#[utoipa::path(
    post, path = "/mfa/totp/enroll", tag = "mfa",
    security(("access_token" = [])),
    responses(
        (status = 200, description = "The secret, its otpauth URI and a QR code, shown once", body = EnrolmentView),
        (status = 403, description = "The session's login is older than `session.fresh_login_secs` (`reauthentication_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "An authenticator app is already on: turn it off first (`mfa_already_enabled`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn enroll(
    State(state): State<AppState>,
    BearerToken(token): BearerToken,
) -> Result<Response, ApiError> {
    let enrolment = state.auth.enroll_totp(&token).await?;
    Ok(super::handlers::no_store(EnrolmentView::from(enrolment)))
}

/// Confirm the enrolment with the app's first code.
///
/// The app becomes the second factor, the user's other sessions end, and 10 recovery codes are
/// returned, shown once. Wrong codes count toward a lock like wrong passwords.
#[utoipa::path(
    post, path = "/mfa/totp/confirm", tag = "mfa",
    request_body = CodeRequest,
    security(("access_token" = [])),
    responses(
        (status = 200, description = "The app is on; the recovery codes, shown once", body = RecoveryCodes),
        (status = 400, description = "A wrong code, or no enrolment waiting (expired, or never started) (`invalid_code`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many wrong codes (a lock, each twice as long as the last) or requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn confirm(
    State(state): State<AppState>,
    client: Client,
    BearerToken(token): BearerToken,
    Json(body): Json<CodeRequest>,
) -> Result<Response, ApiError> {
    let code = app_code(body.code)?;
    let recovery_codes = state.auth.confirm_totp(&token, &code, client).await?;
    Ok(super::handlers::no_store(RecoveryCodes { recovery_codes }))
}

/// Turn the authenticator app off.
///
/// With one of its codes, or the account's password from a session whose login is less than
/// `session.fresh_login_secs` old. The recovery codes go with it, the user's other sessions end;
/// the second step becomes the emailed code if that is on (`two_factor_enabled`), else none.
#[utoipa::path(
    delete, path = "/mfa/totp", tag = "mfa",
    request_body = DisableTotpRequest,
    security(("access_token" = [])),
    responses(
        (status = 204, description = "The app is off"),
        (status = 400, description = "A wrong code, or one already used (`invalid_code`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The password from a session whose login is older than `session.fresh_login_secs` (`reauthentication_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither `code` nor `password`, a wrong password, or no app is on (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The account's password or second step is locked, or too many requests from this address (`rate_limited` with `Retry-After`, or `second_factor_locked`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or too many passwords waiting to be checked (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn disable(
    State(state): State<AppState>,
    client: Client,
    BearerToken(token): BearerToken,
    Json(body): Json<DisableTotpRequest>,
) -> Result<axum::http::StatusCode, ApiError> {
    let proof = match (body.code, body.password) {
        (Some(code), None) => TotpProof::Code(app_code(Some(code))?),
        (None, Some(password)) => TotpProof::Password(password),
        _ => {
            return Err(Error::validation(
                "code",
                "give either `code` (from the app) or `password`",
            )
            .into());
        }
    };
    let _: User = state.auth.disable_totp(&token, proof, client).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Replace the recovery codes.
///
/// After a code of the app (each code works once), a whole new set; the old codes stop
/// working.
#[utoipa::path(
    post, path = "/mfa/recovery-codes", tag = "mfa",
    request_body = CodeRequest,
    security(("access_token" = [])),
    responses(
        (status = 200, description = "The new recovery codes, shown once", body = RecoveryCodes),
        (status = 400, description = "A wrong code, or one already used (`invalid_code`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`code` missing or not six digits, or no app is on (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The second step is locked, or too many requests from this address (`rate_limited` with `Retry-After`, or `second_factor_locked`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn regenerate(
    State(state): State<AppState>,
    client: Client,
    BearerToken(token): BearerToken,
    Json(body): Json<CodeRequest>,
) -> Result<Response, ApiError> {
    let code = app_code(body.code)?;
    let recovery_codes = state
        .auth
        .regenerate_recovery_codes(&token, &code, client)
        .await?;
    Ok(super::handlers::no_store(RecoveryCodes { recovery_codes }).into_response())
}
