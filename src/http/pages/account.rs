//! The pages the emailed links open when `mail.link_base_url` is not set: proving an address
//! (`/verify-email`) and setting a new password (`/reset-password`). The token comes in the
//! link's query and goes back in the form's body; neither the access log (paths only) nor any
//! other log line carries it.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::auth::{Client, Proof};
use crate::error::Error;
use crate::http::error::{ApiError, Problem};
use crate::http::routes::AppState;

/// The longest token a page looks at: a real one has 43 characters.
const MAX_TOKEN_CHARS: usize = 256;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// The `token` of the emailed link.
    token: Option<String>,
}

/// What the verification page's form posts.
#[derive(Debug, Deserialize, ToSchema)]
pub struct VerifyForm {
    /// The link's token, as the page received it.
    token: Option<String>,
}

/// What the reset page's form posts.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ResetForm {
    /// The link's token, as the page received it.
    token: Option<String>,
    /// The new password, under the same policy as registration.
    new_password: Option<String>,
    /// The new password again: it must be the same.
    confirm_password: Option<String>,
}

const VERIFY_TITLE: &str = "Verify your email address";
const RESET_TITLE: &str = "Choose a new password";

/// A token worth showing in a form: present, not empty, not absurdly long.
fn usable(token: Option<String>) -> Option<String> {
    token.filter(|t| !t.is_empty() && t.chars().count() <= MAX_TOKEN_CHARS)
}

/// A form that could not be read because of how it was sent (too large, too slow, not a
/// form): the status of the API's problem for that (`Err`). One that is merely malformed is no
/// form (`Ok(None)`).
fn unreadable<T>(form: Result<Form<T>, FormRejection>) -> Result<Option<T>, StatusCode> {
    match form {
        Ok(Form(form)) => Ok(Some(form)),
        Err(rejection) => match rejection.status() {
            status @ (StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::REQUEST_TIMEOUT
            | StatusCode::UNSUPPORTED_MEDIA_TYPE) => Err(status),
            _ => Ok(None),
        },
    }
}

/// The page a link opens: `template` with the link's token (400 and the template's
/// "incomplete link" text when it has none). Changes nothing.
fn link_page(
    state: &AppState,
    query: Result<Query<TokenQuery>, QueryRejection>,
    template: &str,
    title: &str,
) -> Response {
    let token = usable(query.ok().and_then(|Query(q)| q.token));
    let status = if token.is_some() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    state.pages.render(
        status,
        template,
        title,
        minijinja::context! { token => token },
    )
}

/// The page of the verification link: a button that posts the token. Changes nothing.
///
/// The page authd's verification (and email-change) emails link to when
/// `mail.link_base_url` is not set. No script, no external resource, a strict CSP.
#[utoipa::path(get, path = "/verify-email", tag = "pages",
    params(TokenQuery),
    responses(
        (status = 200, description = "The page, with a button that posts the token to `POST /verify-email`", content_type = "text/html"),
        (status = 400, description = "The link has no token: a page saying so", content_type = "text/html"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn verify_email_page(
    State(state): State<AppState>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Response {
    link_page(&state, query, "verify_email.html", VERIFY_TITLE)
}

/// What the verification page's button posts: proves the address (or confirms an email change).
#[utoipa::path(post, path = "/verify-email", tag = "pages",
    request_body(content = VerifyForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "A page saying the address is verified", content_type = "text/html"),
        (status = 400, description = "A page saying the link is used, expired, replaced or wrong (or the form could not be read)", content_type = "text/html"),
        (status = 409, description = "An email change's link, and another account took the address meanwhile: a page saying so", content_type = "text/html"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable: a page saying to try again", content_type = "text/html"),
    ))]
pub async fn verify_email_form(
    State(state): State<AppState>,
    client: Client,
    form: Result<Form<VerifyForm>, FormRejection>,
) -> Response {
    let pages = &state.pages;
    let form = match unreadable(form) {
        Ok(form) => form,
        Err(status) => return ApiError::from_status(status).into_response(),
    };
    let Some(token) = usable(form.and_then(|f| f.token)) else {
        return pages.error(VERIFY_TITLE, &Error::InvalidCode);
    };
    match state.auth.verify_email(Proof::Token(token), client).await {
        Ok(user) => pages.result(
            StatusCode::OK,
            "Email address verified",
            &format!(
                "{} is verified. You can close this page and go back to the app.",
                user.email
            ),
        ),
        Err(err) => pages.error(VERIFY_TITLE, &err),
    }
}

/// The page of the reset link: a form for the new password, typed twice. Changes nothing.
///
/// The page authd's reset emails link to when `mail.link_base_url` is not set. No script, no
/// external resource, a strict CSP.
#[utoipa::path(get, path = "/reset-password", tag = "pages",
    params(TokenQuery),
    responses(
        (status = 200, description = "The page, with a form that posts the token and the new password to `POST /reset-password`", content_type = "text/html"),
        (status = 400, description = "The link has no token: a page saying so", content_type = "text/html"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reset_password_page(
    State(state): State<AppState>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Response {
    link_page(&state, query, "reset_password.html", RESET_TITLE)
}

/// What the reset page's form posts: sets the new password. A password the policy refuses,
/// or two that differ, show the form again with the reason (the token still works).
#[utoipa::path(post, path = "/reset-password", tag = "pages",
    request_body(content = ResetForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "A page saying the password is changed (every session of the user ended)", content_type = "text/html"),
        (status = 400, description = "A page saying the link is used, expired, replaced or wrong (or the form could not be read)", content_type = "text/html"),
        (status = 422, description = "The form again, saying why: the passwords differ, or the policy refuses the password", content_type = "text/html"),
        (status = 429, description = "Too many requests from this address (`rate_limited`, with `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable, or too many passwords are waiting to be hashed: a page saying to try again", content_type = "text/html"),
    ))]
pub async fn reset_password_form(
    State(state): State<AppState>,
    client: Client,
    form: Result<Form<ResetForm>, FormRejection>,
) -> Response {
    let pages = &state.pages;
    let Some(form) = (match unreadable(form) {
        Ok(form) => form,
        Err(status) => return ApiError::from_status(status).into_response(),
    }) else {
        return pages.error(RESET_TITLE, &Error::InvalidCode);
    };
    let Some(token) = usable(form.token) else {
        return pages.error(RESET_TITLE, &Error::InvalidCode);
    };
    let again = |message: String| {
        pages.render(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reset_password.html",
            RESET_TITLE,
            minijinja::context! { token => &token, error => message },
        )
    };
    let new_password = form.new_password.unwrap_or_default();
    if Some(&new_password) != form.confirm_password.as_ref() {
        return again("The two passwords differ: type the same one twice.".to_owned());
    }
    match state
        .auth
        .reset_password(Proof::Token(token.clone()), &new_password, client)
        .await
    {
        Ok(_) => pages.result(
            StatusCode::OK,
            "Password changed",
            "Your password is changed and every session ended. Log in with the new password.",
        ),
        Err(Error::Validation(errors)) => again(
            errors
                .iter()
                .map(|e| format!("The password {}.", e.message))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Err(err) => pages.error(RESET_TITLE, &err),
    }
}
