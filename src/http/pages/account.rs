//! The pages the emailed links open when `mail.link_base_url` is not set: proving an address
//! (`/verify-email`) and setting a new password (`/reset-password`). The token comes in the
//! link's query and goes back in the form's body; neither the access log (paths only) nor any
//! other log line carries it.

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use crate::auth::{Client, Proof};
use crate::error::Error;
use crate::http::routes::AppState;

/// The longest token a page looks at: a real one has 43 characters.
const MAX_TOKEN_CHARS: usize = 256;

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct VerifyForm {
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ResetForm {
    token: Option<String>,
    new_password: Option<String>,
    confirm_password: Option<String>,
}

const VERIFY_TITLE: &str = "Verify your email address";
const RESET_TITLE: &str = "Choose a new password";

/// A token worth showing in a form: present, not empty, not absurdly long.
fn usable(token: Option<String>) -> Option<String> {
    token.filter(|t| !t.is_empty() && t.chars().count() <= MAX_TOKEN_CHARS)
}

fn query_token(query: Result<Query<TokenQuery>, QueryRejection>) -> Option<String> {
    usable(query.ok().and_then(|Query(q)| q.token))
}

/// `GET /verify-email?token=…`: a button that posts the token. Changes nothing.
pub async fn verify_email_page(
    State(state): State<AppState>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Response {
    let token = query_token(query);
    let status = if token.is_some() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    state.pages.render(
        status,
        "verify_email.html",
        VERIFY_TITLE,
        minijinja::context! { token => token },
    )
}

/// `POST /verify-email` (the page's form): proves the address (or confirms an email change).
pub async fn verify_email_form(
    State(state): State<AppState>,
    client: Client,
    form: Result<Form<VerifyForm>, FormRejection>,
) -> Response {
    let pages = &state.pages;
    let Some(token) = usable(form.ok().and_then(|Form(f)| f.token)) else {
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

/// `GET /reset-password?token=…`: the new-password form. Changes nothing.
pub async fn reset_password_page(
    State(state): State<AppState>,
    query: Result<Query<TokenQuery>, QueryRejection>,
) -> Response {
    let token = query_token(query);
    let status = if token.is_some() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    state.pages.render(
        status,
        "reset_password.html",
        RESET_TITLE,
        minijinja::context! { token => token },
    )
}

/// `POST /reset-password` (the page's form): sets the new password. A password the policy
/// refuses, or two that differ, show the form again with the reason (the token still works).
pub async fn reset_password_form(
    State(state): State<AppState>,
    client: Client,
    form: Result<Form<ResetForm>, FormRejection>,
) -> Response {
    let pages = &state.pages;
    let Some(form) = form.ok().map(|Form(f)| f) else {
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
