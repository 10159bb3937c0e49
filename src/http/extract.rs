//! Request extractors whose failures come back as problem+json.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::error::Error;

/// `axum::Json` with rejections in the problem+json shape.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A JSON body that may be left out: an empty body is `None`; anything else must be JSON, with
/// [`Json`]'s rules and errors.
pub struct OptionalJson<T>(pub Option<T>);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let headers = parts.headers.clone();
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state).await?;
        if bytes.is_empty() {
            return Ok(OptionalJson(None));
        }
        let mut request = Request::new(axum::body::Body::from(bytes));
        *request.headers_mut() = headers;
        // Read as any JSON first: `null` means no body too, and only an object is a body (serde
        // would read a struct from an array).
        let Json(value) = Json::<serde_json::Value>::from_request(request, state).await?;
        match value {
            serde_json::Value::Null => Ok(OptionalJson(None)),
            serde_json::Value::Object(_) => serde_json::from_value(value)
                .map(|parsed| OptionalJson(Some(parsed)))
                .map_err(|err| Error::validation("body", err.to_string()).into()),
            _ => Err(Error::validation("body", "must be a JSON object, or left out").into()),
        }
    }
}

/// The token from an `Authorization: Bearer <token>` header.
pub struct BearerToken(pub String);

/// `Option<BearerToken>`: none without an `Authorization` header; one that is there must hold
/// a bearer token.
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for BearerToken {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(None);
        }
        <BearerToken as FromRequestParts<S>>::from_request_parts(parts, state)
            .await
            .map(Some)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::missing_token)?;
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or_else(ApiError::missing_token)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(ApiError::missing_token());
        }
        Ok(BearerToken(token.to_string()))
    }
}
