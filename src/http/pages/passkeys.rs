//! `GET /ui/passkeys`: a page to sign in (password, then a code or a passkey; or a passkey
//! alone) and to list, add and remove one's passkeys, through the JSON API. A person can try
//! passkeys with it; an integrator reads it as the reference for calling the API from a browser.
//! Serving it changes nothing and needs no token: the tokens the page gets stay in its script's
//! memory.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::sha256_base64;
use crate::http::routes::AppState;

/// The page's script, inlined into the page and allowed by its hash.
const SCRIPT: &str = include_str!("../../../templates/pages/passkeys.js");

const TITLE: &str = "Passkeys";

/// The page's content security policy: the pages' policy, plus its one script and its calls to
/// authd (`connect-src 'self'`), and no form submission at all (`form-action 'none'`: the
/// script handles the forms, so a script that failed to run cannot post the password anywhere,
/// not even into a URL).
///
/// The script is inline, allowed by its SHA-256 (`script-src 'sha256-…'`), rather than served
/// at its own path under `script-src 'self'`: a hash allows exactly this script and nothing
/// else, whereas `'self'` would allow any script authd's origin serves (Swagger UI's at `/docs`
/// included), which is more than the page needs. It also keeps the page one response that an
/// integrator can save and read whole.
pub(super) fn policy(style_hash: &str) -> String {
    let script_hash = sha256_base64(SCRIPT);
    format!(
        "default-src 'none'; style-src 'sha256-{style_hash}'; \
         script-src 'sha256-{script_hash}'; connect-src 'self'; form-action 'none'; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

/// The passkeys page: sign in, then list, add and remove passkeys. Changes nothing.
///
/// Open it at `http://localhost:PORT/ui/passkeys` in development (WebAuthn refuses an IP
/// address), at `http.public_url` otherwise. No external resource; one inline script, allowed
/// by its hash; it calls `POST /login`, `POST /login/otp`, `POST /login/passkey/options`,
/// `POST /login/passkey`, `GET /users/me`, `GET /passkeys`, `POST /passkeys/register/options`,
/// `POST /passkeys/register`, `DELETE /passkeys/{id}`, `POST /token/refresh` and `POST /logout`.
#[utoipa::path(get, path = "/ui/passkeys", tag = "pages",
    responses(
        (status = 200, description = "The page (`Content-Security-Policy` allows its one inline script by its hash, and calls to authd only)", content_type = "text/html"),
    ))]
pub async fn passkeys_page(State(state): State<AppState>) -> Response {
    let pages = &state.pages;
    pages.render_under(
        &pages.passkeys_csp,
        StatusCode::OK,
        "passkeys.html",
        TITLE,
        minijinja::context! { script => SCRIPT },
    )
}
