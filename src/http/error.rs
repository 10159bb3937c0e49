//! `ApiError`: the core error in HTTP terms, rendered as RFC 9457 problem details.

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{Error, FieldError};

/// Seconds a client should wait before retrying when a dependency is down.
pub const RETRY_AFTER_SECS: u64 = 5;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem details body. `code` is stable and meant for programs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// URI identifying the problem type (`urn:authd:problem:<code>`).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable snake_case error code, e.g. `invalid_credentials`.
    pub code: String,
    /// Present on `validation_failed`: one entry per invalid field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// An error response: a problem body plus the headers some statuses need.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    errors: Option<Vec<FieldError>>,
    www_authenticate: Option<String>,
    retry_after: Option<u64>,
    /// Why a 500 happened: for the log, never for the client.
    cause: Option<String>,
}

/// The cause of a 500, handed from the handler to the access log line in the response's
/// extensions, so it is written once, with the request id, and never sent.
#[derive(Debug, Clone)]
pub struct InternalCause(pub String);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            errors: None,
            www_authenticate: None,
            retry_after: None,
            cause: None,
        }
    }

    /// 401 for a request that carries no bearer token at all (RFC 6750 section 3.1: no error code).
    pub fn missing_token() -> ApiError {
        let mut err = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "this endpoint needs an `Authorization: Bearer <token>` header",
        );
        err.www_authenticate = Some(r#"Bearer realm="authd""#.into());
        err
    }

    fn invalid_token(detail: &str) -> ApiError {
        let mut err = ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", detail);
        err.www_authenticate = Some(format!(
            r#"Bearer realm="authd", error="invalid_token", error_description="{}""#,
            detail.replace(['"', '\\'], "'")
        ));
        err
    }

    /// The problem for a bare status (used for errors produced outside handlers, e.g. 404, 405).
    pub fn from_status(status: StatusCode) -> ApiError {
        let (code, detail) = match status {
            StatusCode::NOT_FOUND => ("not_found", "there is nothing at this path"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this path does not accept this method",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
            StatusCode::REQUEST_TIMEOUT => {
                ("request_timeout", "the request took too long to arrive")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            s if s.is_server_error() => {
                ("internal_error", "the server could not handle the request")
            }
            _ => ("bad_request", "the request could not be handled"),
        };
        ApiError::new(status, code, detail)
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:authd:problem:{}", self.code),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_string(),
            errors: self.errors.clone(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        match err {
            Error::EmailTaken => {
                ApiError::new(StatusCode::CONFLICT, "email_taken", err.to_string())
            }
            Error::InvalidCredentials => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                err.to_string(),
            ),
            Error::InvalidToken(detail) => ApiError::invalid_token(detail),
            Error::InvalidOtp { remaining } => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_otp",
                match remaining {
                    0 => "the code is wrong and no attempts are left: log in again".to_string(),
                    1 => "the code is wrong: 1 attempt left".to_string(),
                    n => format!("the code is wrong: {n} attempts left"),
                },
            ),
            Error::InvalidCode => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_code", err.to_string())
            }
            Error::EmailNotVerified => {
                ApiError::new(StatusCode::FORBIDDEN, "email_not_verified", err.to_string())
            }
            Error::ReauthenticationRequired => ApiError::new(
                StatusCode::FORBIDDEN,
                "reauthentication_required",
                err.to_string(),
            ),
            Error::AlreadyEnrolled => {
                ApiError::new(StatusCode::CONFLICT, "mfa_already_enabled", err.to_string())
            }
            Error::UserNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "user_not_found", err.to_string())
            }
            Error::SessionNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "session_not_found", err.to_string())
            }
            Error::PasskeyNotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "passkey_not_found", err.to_string())
            }
            Error::PasskeysUnavailable => ApiError::new(
                StatusCode::NOT_FOUND,
                "passkeys_unavailable",
                err.to_string(),
            ),
            Error::InvalidCeremony => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_ceremony", err.to_string())
            }
            Error::PasskeyRejected => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "passkey_rejected",
                err.to_string(),
            ),
            Error::InvalidPasskey => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_passkey", err.to_string())
            }
            Error::TooManyPasskeys => ApiError::new(
                StatusCode::CONFLICT,
                "passkey_limit_reached",
                err.to_string(),
            ),
            Error::Validation(errors) => {
                let mut api = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "validation_failed",
                    "some fields are invalid: see `errors`",
                );
                api.errors = Some(errors);
                api
            }
            Error::RateLimited { retry_after_secs } => {
                let mut api = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("too many attempts: try again in {retry_after_secs} seconds"),
                );
                api.retry_after = Some(retry_after_secs);
                api
            }
            Error::SecondFactorLocked => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "second_factor_locked",
                err.to_string(),
            ),
            Error::Unavailable(what) => {
                let mut api = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("the {what} is unavailable right now: try again shortly"),
                );
                api.retry_after = Some(RETRY_AFTER_SECS);
                api
            }
            Error::Internal(cause) => {
                let mut api = ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR);
                api.cause = Some(format!("{cause:?}"));
                api
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(err) => {
                Error::Validation(vec![field_error_from_serde(&err.body_text())]).into()
            }
            JsonRejection::JsonSyntaxError(_) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_request",
                "the body is not valid JSON",
            ),
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::from_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            }
            other if body_timed_out(&other) => ApiError::from_status(StatusCode::REQUEST_TIMEOUT),
            other => ApiError::from_status(other.status()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if body_timed_out(&rejection) {
            ApiError::from_status(StatusCode::REQUEST_TIMEOUT)
        } else {
            ApiError::from_status(rejection.status())
        }
    }
}

/// Whether reading the body failed because the client was too slow (the body timeout layer).
fn body_timed_out(rejection: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(err) = cause {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = err.source();
    }
    false
}

/// Turns serde's "Failed to deserialize ...: email: invalid type: ... at line 1 column 10"
/// into `{field: "email", message: "invalid type: ..."}`.
fn field_error_from_serde(text: &str) -> FieldError {
    let text = text
        .split_once("target type: ")
        .map_or(text, |(_, rest)| rest);
    let text = text.rsplit_once(" at line ").map_or(text, |(head, _)| head);
    match text.split_once(": ") {
        Some((path, message)) if !path.contains(' ') => FieldError::new(path, message),
        _ => FieldError::new("body", text),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(value) = self
            .www_authenticate
            .and_then(|v| HeaderValue::try_from(v).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(InternalCause(cause));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_the_field() {
        let err = field_error_from_serde(
            "Failed to deserialize the JSON body into the target type: email: invalid type: integer `5`, expected a string at line 1 column 10",
        );
        assert_eq!(
            err,
            FieldError::new("email", "invalid type: integer `5`, expected a string")
        );
        let err = field_error_from_serde(
            "Failed to deserialize the JSON body into the target type: invalid type: sequence, expected struct X at line 1 column 1",
        );
        assert_eq!(err.field, "body");
    }

    #[test]
    fn an_internal_error_keeps_its_cause_for_the_log_and_out_of_the_body() {
        let err = Error::Internal(anyhow::anyhow!("disk on fire").context("cannot save"));
        let mut response = ApiError::from(err).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let cause = response.extensions_mut().remove::<InternalCause>().unwrap();
        assert!(cause.0.contains("disk on fire"), "{}", cause.0);
        let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            response.into_body(),
            usize::MAX,
        ))
        .unwrap()
        .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("internal_error"), "{body}");
        assert!(!body.contains("fire") && !body.contains("save"), "{body}");
    }
}
