//! Handlers of passkeys (WebAuthn): the registration and sign-in ceremonies, listing and
//! removing. Translation only; the rules are in `crate::auth::passkeys`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use super::error::{ApiError, Problem};
use super::extract::{BearerToken, Json};
use super::handlers::{LoginResponse, no_store};
use super::routes::AppState;
use crate::auth::{CeremonyOptions, Client, PasskeySummary};
use crate::error::Error;

/// Options for `navigator.credentials`, and the ceremony to name in the answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct CeremonyView {
    /// Names this ceremony in the answer; works once, for 5 minutes.
    pub ceremony: Uuid,
    /// The WebAuthn options as JSON (base64url binaries), for
    /// `PublicKeyCredential.parseCreationOptionsFromJSON` or `parseRequestOptionsFromJSON`.
    #[serde(rename = "publicKey")]
    #[schema(value_type = Object)]
    pub public_key: Value,
}

impl From<CeremonyOptions> for CeremonyView {
    fn from(options: CeremonyOptions) -> CeremonyView {
        CeremonyView {
            ceremony: options.ceremony,
            public_key: options.public_key,
        }
    }
}

/// A registered passkey.
#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyView {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// The last sign-in with it; null before the first.
    pub last_used_at: Option<DateTime<Utc>>,
    /// The authenticator may sync it to the user's other devices.
    pub backup_eligible: bool,
    /// It is synced (backed up) now.
    pub backed_up: bool,
}

impl From<PasskeySummary> for PasskeyView {
    fn from(passkey: PasskeySummary) -> PasskeyView {
        PasskeyView {
            id: passkey.id,
            name: passkey.name,
            created_at: passkey.created_at,
            last_used_at: passkey.last_used_at,
            backup_eligible: passkey.backup_eligible,
            backed_up: passkey.backed_up,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PasskeyList {
    /// Newest first.
    pub passkeys: Vec<PasskeyView>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterPasskeyRequest {
    /// The `ceremony` of `POST /passkeys/register/options`.
    #[schema(required = true, value_type = String, format = Uuid)]
    pub ceremony: Option<String>,
    /// The browser's answer: `credential.toJSON()` of `navigator.credentials.create()`.
    #[schema(required = true, value_type = Object)]
    pub credential: Option<Value>,
    /// What the user calls it (at most 100 characters); default "Passkey".
    #[schema(example = "Laptop")]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct PasskeyLoginRequest {
    /// The `ceremony` of `POST /login/passkey/options`.
    #[schema(required = true, value_type = String, format = Uuid)]
    pub ceremony: Option<String>,
    /// The browser's answer: `credential.toJSON()` of `navigator.credentials.get()`.
    #[schema(required = true, value_type = Object)]
    pub credential: Option<Value>,
}

fn ceremony_of(raw: Option<String>) -> Result<Uuid, Error> {
    let raw = raw.ok_or_else(|| Error::validation("ceremony", "is required"))?;
    Uuid::parse_str(raw.trim())
        .map_err(|_| Error::validation("ceremony", "is not a ceremony id from the options"))
}

/// The browser's answer, read as the WebAuthn JSON it must be.
fn credential_of<T: serde::de::DeserializeOwned>(
    raw: Option<Value>,
    what: &str,
) -> Result<T, Error> {
    let raw = raw.ok_or_else(|| Error::validation("credential", "is required"))?;
    serde_json::from_value(raw).map_err(|_| {
        Error::validation(
            "credential",
            format!("is not the browser's {what} (credential.toJSON())"),
        )
    })
}

/// Start registering a passkey.
///
/// Creation options for the caller: a discoverable credential (resident key) with user
/// verification required, the caller's passkeys excluded. Needs a login less than
/// `session.fresh_login_secs` old.
#[utoipa::path(
    post, path = "/passkeys/register/options", tag = "passkeys",
    security(("access_token" = [])),
    responses(
        (status = 200, description = "The ceremony and its creation options", body = CeremonyView),
        (status = 403, description = "The session's login is older than `session.fresh_login_secs` (`reauthentication_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Passkeys are off: no domain name is configured (`passkeys_unavailable`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The account has 25 passkeys already (`passkey_limit_reached`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn register_options(
    State(state): State<AppState>,
    BearerToken(token): BearerToken,
) -> Result<Response, ApiError> {
    let options = state.auth.passkey_registration_options(&token).await?;
    Ok(no_store(CeremonyView::from(options)))
}

/// Finish registering a passkey.
///
/// The browser's answer to the ceremony of `POST /passkeys/register/options` (the same user's,
/// within 5 minutes, once) becomes a passkey. Needs a login less than
/// `session.fresh_login_secs` old.
#[utoipa::path(
    post, path = "/passkeys/register", tag = "passkeys",
    request_body = RegisterPasskeyRequest,
    security(("access_token" = [])),
    responses(
        (status = 201, description = "The new passkey", body = PasskeyView),
        (status = 400, description = "The ceremony is unknown, finished, expired or another user's (`invalid_ceremony`), or the answer does not verify: another origin or RP id, no user verification, a bad attestation (`invalid_passkey`); either way, start again", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The session's login is older than `session.fresh_login_secs` (`reauthentication_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Passkeys are off (`passkeys_unavailable`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The account has 25 passkeys already (`passkey_limit_reached`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`ceremony` or `credential` missing or malformed, a name that is too long or holds invisible characters, or a credential registered already (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    client: Client,
    BearerToken(token): BearerToken,
    Json(body): Json<RegisterPasskeyRequest>,
) -> Result<Response, ApiError> {
    let ceremony = ceremony_of(body.ceremony)?;
    let credential: RegisterPublicKeyCredential =
        credential_of(body.credential, "registration response")?;
    let passkey = state
        .auth
        .register_passkey(&token, ceremony, &credential, body.name.as_deref(), client)
        .await?;
    Ok((StatusCode::CREATED, no_store(PasskeyView::from(passkey))).into_response())
}

/// The caller's passkeys.
#[utoipa::path(
    get, path = "/passkeys", tag = "passkeys",
    security(("access_token" = [])),
    responses(
        (status = 200, description = "The caller's passkeys, newest first", body = PasskeyList),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    BearerToken(token): BearerToken,
) -> Result<Response, ApiError> {
    let passkeys = state.auth.list_passkeys(&token).await?;
    Ok(no_store(PasskeyList {
        passkeys: passkeys.into_iter().map(PasskeyView::from).collect(),
    }))
}

/// Remove one of the caller's passkeys.
///
/// The sessions that signed in with it end. Needs a login less than `session.fresh_login_secs`
/// old.
#[utoipa::path(
    delete, path = "/passkeys/{id}", tag = "passkeys",
    params(("id" = String, Path, description = "A passkey id from `GET /passkeys`")),
    security(("access_token" = [])),
    responses(
        (status = 204, description = "The passkey is removed"),
        (status = 403, description = "The session's login is older than `session.fresh_login_secs` (`reauthentication_required`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The caller has no passkey with this id (`passkey_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn remove(
    State(state): State<AppState>,
    client: Client,
    BearerToken(token): BearerToken,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    // Whatever the path holds is checked after the token: a bad id is "not found".
    let id = id
        .ok()
        .and_then(|Path(id)| Uuid::parse_str(&id).ok())
        .unwrap_or(Uuid::nil());
    state.auth.remove_own_passkey(&token, id, client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start a sign-in with a passkey.
///
/// Without a token: options for a discoverable sign-in, naming no account (no
/// `allowCredentials`). With the challenge token of `POST /login`: options for that user's
/// passkeys, to finish that login's second step.
#[utoipa::path(
    post, path = "/login/passkey/options", tag = "auth",
    security((), ("challenge_token" = [])),
    responses(
        (status = 200, description = "The ceremony and its request options", body = CeremonyView),
        (status = 404, description = "Passkeys are off (`passkeys_unavailable`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The challenge token's user has no passkey (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login_options(
    State(state): State<AppState>,
    token: Option<BearerToken>,
) -> Result<Response, ApiError> {
    let token = token.map(|BearerToken(token)| token);
    let options = state.auth.passkey_login_options(token.as_deref()).await?;
    Ok(no_store(CeremonyView::from(options)))
}

/// Sign in with a passkey.
///
/// The browser's answer to the ceremony of `POST /login/passkey/options` (within 5 minutes,
/// once) opens a session: no password, no emailed code. With the challenge token of
/// `POST /login` it finishes that login's second step instead (the ceremony must be the one
/// started with that token). The body is that of a successful `POST /login`.
#[utoipa::path(
    post, path = "/login/passkey", tag = "auth",
    request_body = PasskeyLoginRequest,
    security((), ("challenge_token" = [])),
    responses(
        (status = 200, description = "Access and refresh token of a new session", body = LoginResponse),
        (status = 400, description = "The ceremony is unknown, finished, expired, or another login's (`invalid_ceremony`): start again", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The answer does not verify, names an unknown passkey or another user's, or its signature counter did not move forward (`passkey_rejected`); or a bad challenge token (`invalid_token`)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The account's address is not proven and `registration.require_verified_email` is on (`email_not_verified`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Passkeys are off (`passkeys_unavailable`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Passkey sign-ins of the account locked after `rate_limit.login_failures_per_account` refused answers, or too many requests from this address (`rate_limited`, with `Retry-After`); or, as the second step, that step is locked (`second_factor_locked`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    client: Client,
    token: Option<BearerToken>,
    Json(body): Json<PasskeyLoginRequest>,
) -> Result<Response, ApiError> {
    let ceremony = ceremony_of(body.ceremony)?;
    let credential: PublicKeyCredential =
        credential_of(body.credential, "authentication response")?;
    let token = token.map(|BearerToken(token)| token);
    let tokens = state
        .auth
        .passkey_login(token.as_deref(), ceremony, &credential, client)
        .await?;
    Ok(no_store(LoginResponse::access(tokens)))
}
