//! Route handlers: translate HTTP to use-case calls and back; no business rules here.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::extract::{BearerToken, Json, OptionalJson};
use super::routes::AppState;
use crate::auth::{
    Client, LoginOutcome, LogoutScope, OwnSession, Registration, RegistrationInput,
    SecondStepAnswer, SessionTokens,
};
use crate::domain::{Otp, User};
use crate::error::{Error, FieldError};
use crate::token::totp::RecoveryCode;

#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    // Optional here so that a missing field is a 422 naming it, not a serde message; the
    // document says what a valid request has.
    #[schema(required = true, value_type = String, example = "ada@example.test")]
    pub email: Option<String>,
    /// 8 to 72 bytes of UTF-8.
    #[schema(required = true, value_type = String, example = "correct horse battery staple")]
    pub password: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// Email a one-time code at every login.
    #[serde(default)]
    pub two_factor_enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Required unless `username` is given.
    #[schema(example = "ada@example.test")]
    pub email: Option<String>,
    /// Accepted as an alias of `email` (OAuth2 password-form habit).
    pub username: Option<String>,
    #[schema(required = true, value_type = String)]
    pub password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct OtpRequest {
    /// The six digits from the email, or from the authenticator app for an account with one.
    #[schema(example = "123456")]
    pub otp: Option<String>,
    /// Instead of `otp`: one of the account's recovery codes (`XXXXX-XXXXX`; any letter case,
    /// with or without the dash). Each works once.
    #[schema(example = "7KQ2M-XR4PT")]
    pub recovery_code: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The refresh token of the last login or refresh answer.
    #[schema(required = true, value_type = String)]
    pub refresh_token: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct LogoutRequest {
    /// Which sessions to end: the access token's (`current`, the default), every other one of
    /// the user (`others`), or all of them (`all`).
    // A string here, read below, so that any wrong value is a 422 naming the field.
    #[serde(default)]
    #[schema(value_type = Option<LogoutScopeName>)]
    pub scope: Option<serde_json::Value>,
}

/// The scopes of `POST /logout`.
#[derive(Debug, Clone, Copy, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum LogoutScopeName {
    Current,
    Others,
    All,
}

/// Result of `POST /login`: an access token, or a challenge token when a code was emailed.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub otp_required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenge_token: Option<String>,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// With the access token: the session's refresh token, for `POST /token/refresh`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// With the access token: seconds until the refresh token dies unless used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_expires_in: Option<u64>,
    /// With the challenge token: what the second step asks for, `email` (a code was emailed)
    /// or `totp` (the authenticator app's code; nothing was emailed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "totp")]
    pub second_factor: Option<&'static str>,
    /// With the challenge token: every way the user can finish (`email` or `totp`; `passkey`
    /// when the user has one, see `POST /login/passkey`; `recovery_code` while they have
    /// recovery codes left).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!(["totp", "recovery_code"]))]
    pub methods: Option<Vec<&'static str>>,
}

impl LoginResponse {
    /// A login that opened a session.
    pub fn access(tokens: SessionTokens) -> LoginResponse {
        LoginResponse {
            otp_required: false,
            access_token: Some(tokens.access.token),
            challenge_token: None,
            token_type: "Bearer",
            expires_in: tokens.access.expires_in,
            refresh_token: Some(tokens.refresh_token),
            refresh_expires_in: Some(tokens.refresh_expires_in),
            second_factor: None,
            methods: None,
        }
    }
}

/// An access token and its session's refresh token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque; present it once to `POST /token/refresh`, which answers with the next one.
    pub refresh_token: String,
    /// Seconds until the refresh token dies unless used (never past the session's end).
    pub refresh_expires_in: u64,
}

impl From<SessionTokens> for TokenResponse {
    fn from(tokens: SessionTokens) -> TokenResponse {
        TokenResponse {
            access_token: tokens.access.token,
            token_type: "Bearer",
            expires_in: tokens.access.expires_in,
            refresh_token: tokens.refresh_token,
            refresh_expires_in: tokens.refresh_expires_in,
        }
    }
}

/// One live session of the caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: uuid::Uuid,
    /// RFC 3339: when its login happened.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// RFC 3339: its login or its last refresh.
    pub last_used_at: chrono::DateTime<chrono::Utc>,
    /// RFC 3339: when its refresh token dies unless used.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
    /// The session of the access token that asked.
    pub current: bool,
    /// The passkey it signed in with (alone or as the second step; `GET /passkeys` names it),
    /// or null: removing that passkey ends this session.
    pub passkey_id: Option<uuid::Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// Newest first.
    pub sessions: Vec<SessionView>,
}

impl From<OwnSession> for SessionView {
    fn from(own: OwnSession) -> SessionView {
        let s = own.session;
        SessionView {
            id: s.id,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            client_ip: s.client_ip,
            user_agent: s.user_agent,
            current: own.current,
            passkey_id: s.passkey_id,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Token responses must never be cached (RFC 6749 section 5.1).
pub(super) fn no_store<T: Serialize>(body: T) -> Response {
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn require(field: &str, value: Option<String>) -> Result<String, Error> {
    value.ok_or_else(|| Error::validation(field, "is required"))
}

/// Create an account.
#[utoipa::path(
    post, path = "/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Account created", body = User,
            headers(("Location" = String, description = "Where to read the new user: /users/me"))),
        (status = 409, description = "The email address is taken (`email_taken`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (`validation_failed`), including a common password", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or too many passwords already waiting to be hashed (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    client: Client,
    Json(body): Json<RegisterRequest>,
) -> Result<Response, ApiError> {
    let registration = Registration::parse(RegistrationInput {
        email: body.email,
        password: body.password,
        first_name: body.first_name,
        last_name: body.last_name,
        two_factor_enabled: body.two_factor_enabled.unwrap_or(false),
    })?;
    let user = state.auth.register(registration, client).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, "/users/me")],
        Json(user),
    )
        .into_response())
}

/// Log in with email and password.
///
/// Without a second step the answer carries the access token. With one, the answer carries a
/// challenge token for `POST /login/otp`, says which (`second_factor`: `email`, a six-digit
/// code was emailed; `totp`, the authenticator app's code, nothing emailed) and lists every
/// way to finish (`methods`).
#[utoipa::path(
    post, path = "/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Access token, or challenge token and an emailed code", body = LoginResponse),
        (status = 401, description = "Wrong email or password (`invalid_credentials`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Missing fields, or fields of the wrong type (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Account locked after repeated failures (each lock twice as long as the last, up to 24 h), the account's code emails used up for now (`mail.max_codes_per_account`), or too many requests from this address (`rate_limited`, with `Retry-After`); or the second step of a two-factor account is locked after too many wrong codes (`second_factor_locked`, no `Retry-After`: an administrator must unlock it)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database or mail relay unavailable, or too many passwords already waiting to be checked (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    client: Client,
    Json(body): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    let email = body.email.or(body.username);
    let (email, password) = match (email, body.password) {
        (Some(e), Some(p)) => (e, p),
        (e, p) => {
            let mut errors = Vec::new();
            if e.is_none() {
                errors.push(FieldError::new("email", "is required"));
            }
            if p.is_none() {
                errors.push(FieldError::new("password", "is required"));
            }
            return Err(Error::Validation(errors).into());
        }
    };
    let outcome = state.auth.login(&email, &password, client).await?;
    Ok(no_store(match outcome {
        LoginOutcome::Access(tokens) => LoginResponse::access(tokens),
        LoginOutcome::Challenge(challenge) => LoginResponse {
            otp_required: true,
            access_token: None,
            challenge_token: Some(challenge.token.token),
            token_type: "Bearer",
            expires_in: challenge.token.expires_in,
            refresh_token: None,
            refresh_expires_in: None,
            second_factor: Some(challenge.factor.as_str()),
            methods: Some(challenge.methods),
        },
    }))
}

/// Finish the second step: the emailed code, the authenticator app's code, or a recovery code.
///
/// An app's code works once (a later step's code only); a recovery code works once.
#[utoipa::path(
    post, path = "/login/otp", tag = "auth",
    request_body = OtpRequest,
    security(("challenge_token" = [])),
    responses(
        (status = 200, description = "Access token", body = TokenResponse),
        (status = 401, description = "Bad challenge token (`invalid_token`) or wrong code (`invalid_otp`)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Neither `otp` nor `recovery_code` (or both), a code that is not six digits, or a recovery code that is not 10 letters and digits (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`); or the second step is locked after `rate_limit.otp_failures_per_account` consecutive wrong codes until an administrator unlocks it (`second_factor_locked`, no `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn login_otp(
    State(state): State<AppState>,
    client: Client,
    BearerToken(token): BearerToken,
    Json(body): Json<OtpRequest>,
) -> Result<Response, ApiError> {
    let answer = match (body.otp, body.recovery_code) {
        (Some(otp), None) => {
            SecondStepAnswer::Otp(Otp::parse(&otp).map_err(|m| Error::validation("otp", m))?)
        }
        (None, Some(code)) => {
            SecondStepAnswer::RecoveryCode(RecoveryCode::parse(&code).ok_or_else(|| {
                Error::validation(
                    "recovery_code",
                    "must be 10 letters and digits, as XXXXX-XXXXX",
                )
            })?)
        }
        _ => {
            return Err(Error::validation(
                "otp",
                "give either `otp` (six digits) or `recovery_code`",
            )
            .into());
        }
    };
    let tokens = state.auth.verify_otp(&token, &answer, client).await?;
    Ok(no_store(TokenResponse::from(tokens)))
}

/// Exchange a refresh token for a new access token and the next refresh token.
///
/// Each refresh token works once: the answer carries the next one, and the one presented
/// stops working. Presented again within `session.reuse_grace_secs` (two refreshes at once, a
/// lost answer), it gets the session's current tokens again; later, it counts as stolen and
/// the whole session is revoked.
#[utoipa::path(
    post, path = "/token/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new access token and the next refresh token", body = TokenResponse),
        (status = 401, description = "Unknown, expired, revoked or already used refresh token (`invalid_token`); a used one also revokes its session", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer error=\"invalid_token\"`"))),
        (status = 422, description = "`refresh_token` missing or not a string (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    client: Client,
    Json(body): Json<RefreshRequest>,
) -> Result<Response, ApiError> {
    let token = require("refresh_token", body.refresh_token)?;
    let tokens = state.auth.refresh(&token, client).await?;
    Ok(no_store(TokenResponse::from(tokens)))
}

/// End the current session, the user's other sessions, or all of them.
#[utoipa::path(
    post, path = "/logout", tag = "auth",
    request_body(content = Option<LogoutRequest>, description = "Optional; without a body (or with `null`) the current session ends. Not behind the per-address limit, so that password guessing from a shared address cannot stop anyone there from logging out."),
    security(("access_token" = [])),
    responses(
        (status = 204, description = "The sessions ended; their access and refresh tokens are refused from now on"),
        (status = 400, description = "The body is not valid JSON (`malformed_request`)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired access token, or its session already ended (`invalid_token`)", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer error=\"invalid_token\"`"))),
        (status = 422, description = "The body is not an object (or `null`), or `scope` is not current, others or all (`validation_failed`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    client: Client,
    BearerToken(token): BearerToken,
    OptionalJson(body): OptionalJson<LogoutRequest>,
) -> Result<StatusCode, ApiError> {
    let scope = match body.and_then(|b| b.scope) {
        None | Some(serde_json::Value::Null) => LogoutScope::Current,
        Some(serde_json::Value::String(name)) if name == "current" => LogoutScope::Current,
        Some(serde_json::Value::String(name)) if name == "others" => LogoutScope::Others,
        Some(serde_json::Value::String(name)) if name == "all" => LogoutScope::All,
        Some(_) => {
            return Err(
                Error::validation("scope", "must be \"current\", \"others\" or \"all\"").into(),
            );
        }
    };
    state.auth.logout(&token, scope, client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's live sessions.
#[utoipa::path(
    get, path = "/sessions", tag = "users",
    security(("access_token" = [])),
    responses(
        (status = 200, description = "The caller's live sessions, newest first", body = SessionList),
        (status = 401, description = "Missing, invalid or expired access token, or its session ended (`invalid_token`)", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer error=\"invalid_token\"`"))),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn sessions(
    State(state): State<AppState>,
    BearerToken(token): BearerToken,
) -> Result<Json<SessionList>, ApiError> {
    let sessions = state.auth.own_sessions(&token).await?;
    Ok(Json(SessionList {
        sessions: sessions.into_iter().map(SessionView::from).collect(),
    }))
}

/// End one of the caller's sessions.
#[utoipa::path(
    delete, path = "/sessions/{id}", tag = "users",
    params(("id" = String, Path, description = "A session id from `GET /sessions`")),
    security(("access_token" = [])),
    responses(
        (status = 204, description = "The session ended"),
        (status = 401, description = "Missing, invalid or expired access token, or its session ended (`invalid_token`)", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer error=\"invalid_token\"`"))),
        (status = 404, description = "No live session of the caller has this id (`session_not_found`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_session(
    State(state): State<AppState>,
    client: Client,
    BearerToken(token): BearerToken,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    // Whatever the path holds is checked after the token: a bad id is "not found".
    let id = id.ok().and_then(|Path(id)| uuid::Uuid::parse_str(&id).ok());
    state.auth.revoke_own_session(&token, id, client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The user the access token belongs to.
#[utoipa::path(
    get, path = "/users/me", tag = "users",
    security(("access_token" = [])),
    responses(
        (status = 200, description = "The current user, with the recovery codes they have left", body = Me),
        (status = 401, description = "Missing, invalid or expired access token (`invalid_token`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable (`unavailable`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn me(
    State(state): State<AppState>,
    BearerToken(token): BearerToken,
) -> Result<Json<Me>, ApiError> {
    let found = state.auth.me(&token).await?;
    Ok(Json(Me {
        user: found.user,
        recovery_codes_left: found.recovery_codes_left,
    }))
}

/// `GET /users/me`: the User, and the recovery codes left.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    #[serde(flatten)]
    pub user: User,
    /// Recovery codes not used yet (0 without an authenticator app).
    pub recovery_codes_left: i64,
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: 200 when the database answers and the instance can sign, 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Database unavailable, signing keys not read yet, or a key set this instance cannot sign with (`unavailable`, with `Retry-After`; the reason is in the log and `authd_signing_key_usable`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.auth.ready().await?;
    Ok(Json(Health { status: "ready" }))
}

/// Prometheus metrics in the text exposition format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.auth.render_metrics();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// One public key of the JWK set (RFC 7517), as authd publishes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedJwk {
    /// `EC` (ES256) or `OKP` (EdDSA).
    #[schema(example = "EC")]
    pub kty: String,
    /// `P-256` or `Ed25519`.
    #[schema(example = "P-256")]
    pub crv: String,
    /// The public key's x coordinate (EC) or the public key (OKP), base64url.
    pub x: String,
    /// The y coordinate, base64url (EC keys only; absent for OKP keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub y: Option<String>,
    /// The key's id: the `kid` in the header of every token it signs.
    pub kid: String,
    /// `ES256` or `EdDSA`.
    #[schema(example = "ES256")]
    pub alg: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    #[schema(example = "sig")]
    pub use_: String,
}

/// The public keys of the `next`, `current` and `retired` signing keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublishedJwks {
    pub keys: Vec<PublishedJwk>,
}

/// What a cache may keep of the published keys and metadata: as long as an instance of authd
/// keeps its own copy of the keys (`keys.refresh_secs`).
fn public_for(max_age_secs: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("public, max-age={max_age_secs}"))
        .unwrap_or(HeaderValue::from_static("no-store"))
}

/// The JWK set other services verify access tokens with: the public keys of the `next`,
/// `current` and `retired` signing keys (never a private part, never the HS256 secret; revoked
/// keys are left out). Refetch it when a token names a `kid` it does not have.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "keys",
    responses(
        (status = 200, description = "The JWK set (RFC 7517)", body = PublishedJwks,
            headers(("Cache-Control" = String, description = "`public, max-age=<keys.refresh_secs>`"))),
        (status = 503, description = "The keys could not be read yet: the database did not answer since the start (`unavailable`, with `Retry-After`; never cached)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let set = state.auth.key_set()?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                public_for(state.published.max_age_secs),
            ),
        ],
        set.jwks().to_string(),
    )
        .into_response())
}

/// OAuth 2.0 authorization server metadata (RFC 8414), with only what authd does: it has no
/// authorization or OAuth token endpoint, so no response or grant types; its own token
/// endpoints are named by `authd_`-prefixed members.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerMetadata {
    /// `jwt.issuer`: the `iss` of every token.
    pub issuer: String,
    /// Where the JWK set is.
    pub jwks_uri: String,
    /// Always empty: authd has no authorization endpoint.
    pub response_types_supported: Vec<String>,
    /// Always empty: authd has no OAuth token endpoint (without this member RFC 8414 would
    /// mean `authorization_code` and `implicit`).
    pub grant_types_supported: Vec<String>,
    /// The API documentation.
    pub service_documentation: String,
    /// `POST /login`: email and password, for an access and a refresh token or a challenge.
    pub authd_login_endpoint: String,
    /// `POST /login/otp`: the emailed code with the challenge token.
    pub authd_login_otp_endpoint: String,
    /// `POST /token/refresh`: a refresh token for new tokens.
    pub authd_token_refresh_endpoint: String,
    /// `POST /logout`: ends sessions.
    pub authd_logout_endpoint: String,
    /// The algorithms of the published keys: what a verifier accepts (`alg` of each key).
    pub authd_token_signing_alg_values_supported: Vec<String>,
}

/// Authorization server metadata (RFC 8414): the issuer, the JWKS URL and authd's token
/// endpoints, for services that configure themselves from it.
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "keys",
    responses(
        (status = 200, description = "The metadata", body = ServerMetadata,
            headers(("Cache-Control" = String, description = "`public, max-age=<keys.refresh_secs>`"))),
        (status = 503, description = "The keys could not be read yet (`unavailable`, with `Retry-After`; never cached)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn server_metadata(State(state): State<AppState>) -> Result<Response, ApiError> {
    let set = state.auth.key_set()?;
    let published = &state.published;
    let url = |path: &str| format!("{}{path}", published.base_url);
    let metadata = ServerMetadata {
        issuer: published.issuer.clone(),
        jwks_uri: url("/.well-known/jwks.json"),
        response_types_supported: Vec::new(),
        grant_types_supported: Vec::new(),
        service_documentation: url("/docs"),
        authd_login_endpoint: url("/login"),
        authd_login_otp_endpoint: url("/login/otp"),
        authd_token_refresh_endpoint: url("/token/refresh"),
        authd_logout_endpoint: url("/logout"),
        authd_token_signing_alg_values_supported: set
            .published_algorithms()
            .iter()
            .map(|alg| (*alg).to_owned())
            .collect(),
    };
    Ok((
        [(header::CACHE_CONTROL, public_for(published.max_age_secs))],
        axum::Json(metadata),
    )
        .into_response())
}
