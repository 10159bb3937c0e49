//! The few HTML pages authd serves itself: one layout, no external resource, and a content
//! security policy that allows nothing but the page's own inline style (by its hash) and forms
//! posting back to authd. The emailed links' pages have no script: a GET only shows a page;
//! only a person pressing its button (a POST) changes anything, so a mail scanner that follows
//! a link changes nothing. The passkeys page is the one with a script (WebAuthn has no form),
//! allowed by its hash too, and calls the JSON API.

pub mod account;
pub mod passkeys;

pub use account::{reset_password_form, reset_password_page, verify_email_form, verify_email_page};
pub use passkeys::passkeys_page;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use minijinja::Environment;
use sha2::{Digest, Sha256};

use crate::error::Error;

/// The pages' one stylesheet, inlined into each page and allowed by its hash.
const STYLE: &str = include_str!("../../../templates/pages/style.css");

/// The base64 of the SHA-256 of `text`: how a policy names an inline style or script.
fn sha256_base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
}

/// Marks a response as a page: the envelope keeps its HTML (it would otherwise turn an error
/// status into problem+json).
#[derive(Clone, Copy)]
pub struct HtmlPage;

/// The page templates and the policy they are served under. Built once.
pub struct Pages {
    env: Environment<'static>,
    product: String,
    csp: HeaderValue,
    /// The passkeys page's policy: its script too, and its calls to the API.
    passkeys_csp: HeaderValue,
}

impl Pages {
    pub fn new(product: &str) -> anyhow::Result<Pages> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        for (name, source) in [
            (
                "layout.html",
                include_str!("../../../templates/pages/layout.html"),
            ),
            (
                "verify_email.html",
                include_str!("../../../templates/pages/verify_email.html"),
            ),
            (
                "reset_password.html",
                include_str!("../../../templates/pages/reset_password.html"),
            ),
            (
                "result.html",
                include_str!("../../../templates/pages/result.html"),
            ),
            (
                "passkeys.html",
                include_str!("../../../templates/pages/passkeys.html"),
            ),
        ] {
            env.add_template(name, source)?;
        }
        let style_hash = sha256_base64(STYLE);
        let csp = HeaderValue::from_str(&format!(
            "default-src 'none'; style-src 'sha256-{style_hash}'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'"
        ))?;
        let passkeys_csp = HeaderValue::from_str(&passkeys::policy(&style_hash))?;
        Ok(Pages {
            env,
            product: product.to_owned(),
            csp,
            passkeys_csp,
        })
    }

    /// Renders `template` with `context` (plus the product name and the style) as a response
    /// of `status`. A template that fails to render is a bare 500 page, its cause logged.
    fn render(
        &self,
        status: StatusCode,
        template: &str,
        title: &str,
        context: minijinja::Value,
    ) -> Response {
        self.render_under(&self.csp, status, template, title, context)
    }

    /// [`Pages::render`] under the policy `csp`.
    fn render_under(
        &self,
        csp: &HeaderValue,
        status: StatusCode,
        template: &str,
        title: &str,
        context: minijinja::Value,
    ) -> Response {
        let rendered = self.env.get_template(template).and_then(|t| {
            t.render(minijinja::context! {
                product => &self.product,
                style => STYLE,
                title => title,
                ..context
            })
        });
        let (status, body) = match rendered {
            Ok(body) => (status, body),
            Err(err) => {
                tracing::error!(error = %err, template, "a page did not render");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "<!doctype html><title>Error</title><p>Something went wrong.</p>".to_owned(),
                )
            }
        };
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
        response.extensions_mut().insert(HtmlPage);
        response
    }

    /// A page saying how something went: `done` (success) or `error`.
    fn result(&self, status: StatusCode, title: &str, message: &str) -> Response {
        let kind = if status.is_success() { "done" } else { "error" };
        self.render(
            status,
            "result.html",
            title,
            minijinja::context! { kind => kind, message => message },
        )
    }

    /// A page for an error of the core, in words for a person (never internal text).
    fn error(&self, title: &str, err: &Error) -> Response {
        let (status, message) = match err {
            Error::InvalidCode => (
                StatusCode::BAD_REQUEST,
                "This link was already used, has expired, or was replaced by a newer email. \
                 Ask for a new email.",
            ),
            Error::EmailTaken => (
                StatusCode::CONFLICT,
                "Another account has taken this address meanwhile: nothing was changed.",
            ),
            Error::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts: wait a few minutes and try again.",
            ),
            Error::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The service is unavailable right now: try again in a moment.",
            ),
            _ => {
                tracing::error!(error = %err, "a page could not complete");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong: try again later.",
                )
            }
        };
        self.result(status, title, message)
    }
}
