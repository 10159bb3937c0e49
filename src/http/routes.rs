//! The route table: which path runs which handler behind which per-route layers, and the
//! state the handlers share.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::response::Response;
use axum::routing::{delete, get, post};
use tower_http::timeout::RequestBodyTimeoutLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use super::client::ClientAddress;
use super::envelope::{HandlerLogs, HttpService, with_common_layers};
use super::limits::{IpLimiter, limit_per_ip};
use super::pages::Pages;
use super::{handlers, mfa, openapi, pages, passkeys, recovery};
use crate::auth::Auth;
use crate::config::{HttpSettings, Settings};

/// Largest request body accepted; bigger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Shared state of the HTTP door: built once; each request clones one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

/// What [`AppState`] shares.
pub struct AppParts {
    pub auth: Auth,
    pub client_address: ClientAddress,
    pub ip_limiter: Option<Arc<IpLimiter>>,
    pub published: Published,
    pub pages: Pages,
}

/// What the `/.well-known` routes say besides the keys.
pub struct Published {
    /// `http.public_url` (or `http://` + `http.addr`), without a trailing slash.
    pub base_url: String,
    pub issuer: String,
    /// `Cache-Control: max-age` of the keys and metadata: `keys.refresh_secs`.
    pub max_age_secs: u64,
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

impl AppState {
    pub fn new(auth: Auth, settings: &Settings) -> anyhow::Result<AppState> {
        let limits = &settings.rate_limit;
        Ok(AppState(Arc::new(AppParts {
            auth,
            client_address: ClientAddress::from_settings(limits)?,
            ip_limiter: limits
                .enabled
                .then(|| IpLimiter::new(limits.requests_per_ip_per_minute, limits.ipv6_prefix_len)),
            published: Published {
                base_url: settings.public_url(),
                issuer: settings.jwt.issuer.clone(),
                max_age_secs: settings.keys.refresh_secs,
            },
            pages: Pages::new(&settings.mail.product_name)?,
        })))
    }
}

/// Every route of the API, with its middleware.
pub fn router(state: AppState, http: &HttpSettings, serve_metrics_here: bool) -> HttpService {
    // The per-address limit guards the routes that take a password, a code or a link's token,
    // or send mail (the pages of the emailed links included).
    let limited = [
        ("/register", post(handlers::register)),
        ("/login", post(handlers::login)),
        ("/login/otp", post(handlers::login_otp)),
        ("/token/refresh", post(handlers::refresh)),
        ("/email/verify", post(recovery::verify_email)),
        ("/email/verify/resend", post(recovery::resend_verification)),
        ("/password/forgot", post(recovery::forgot_password)),
        ("/password/reset", post(recovery::reset_password)),
        ("/password/change", post(recovery::change_password)),
        ("/email/change", post(recovery::request_email_change)),
        (
            "/email/change/confirm",
            post(recovery::confirm_email_change),
        ),
        ("/mfa/totp/enroll", post(mfa::enroll)),
        ("/mfa/totp/confirm", post(mfa::confirm)),
        ("/mfa/totp", delete(mfa::disable)),
        ("/mfa/recovery-codes", post(mfa::regenerate)),
        (
            "/passkeys/register/options",
            post(passkeys::register_options),
        ),
        ("/passkeys/register", post(passkeys::register)),
        ("/login/passkey/options", post(passkeys::login_options)),
        ("/login/passkey", post(passkeys::login)),
        (
            "/verify-email",
            get(pages::verify_email_page).post(pages::verify_email_form),
        ),
        (
            "/reset-password",
            get(pages::reset_password_page).post(pages::reset_password_form),
        ),
    ];
    // Bodies, but no per-address limit: password guessing from a shared address must not stop
    // the people behind it from logging out.
    let unlimited_bodies = [("/logout", post(handlers::logout))];
    let mut open = vec![
        ("/users/me", get(handlers::me)),
        ("/sessions", get(handlers::sessions)),
        ("/sessions/{id}", delete(handlers::delete_session)),
        ("/passkeys", get(passkeys::list)),
        ("/passkeys/{id}", delete(passkeys::remove)),
        // A page that only shows itself: what it does, it does through the routes above.
        ("/ui/passkeys", get(pages::passkeys_page)),
        ("/.well-known/jwks.json", get(handlers::jwks)),
        (
            "/.well-known/oauth-authorization-server",
            get(handlers::server_metadata),
        ),
        ("/healthz", get(handlers::healthz)),
        ("/readyz", get(handlers::readyz)),
    ];
    if serve_metrics_here {
        open.push(("/metrics", get(handlers::metrics)));
    }
    // The metrics label each of these paths by name; only the handlers behind the per-address
    // limit write log lines of their own (see `Envelope`).
    let routes: Vec<(&'static str, HandlerLogs)> = limited
        .iter()
        .chain(unlimited_bodies.iter())
        .map(|(path, _)| (*path, HandlerLogs::Yes))
        .chain(open.iter().map(|(path, _)| (*path, HandlerLogs::No)))
        .collect();
    let limited = limited
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_per_ip));
    let bodies = unlimited_bodies
        .into_iter()
        .fold(limited, |router, (path, handler)| {
            router.route(path, handler)
        })
        // Only these routes read a body: its size limit and read timeout are theirs alone,
        // which keeps the read routes free of per-request layers.
        .route_layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(RequestBodyTimeoutLayer::new(Duration::from_secs(
            http.body_timeout_secs,
        )));
    let api = open.into_iter().fold(bodies, |router, (path, handler)| {
        router.route(path, handler)
    });
    let metrics = state.auth.metrics().clone();
    let docs = Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::ApiDoc::openapi()))
        .layer(middleware::map_response(|mut response: Response| async {
            response.extensions_mut().insert(DocsPage);
            response
        }));
    let router = api.with_state(state).merge(docs);
    with_common_layers(router, http, Some(metrics), &routes)
}

/// A router with only `GET /metrics`, for `metrics.addr`.
pub fn metrics_router(state: AppState, http: &HttpSettings) -> HttpService {
    let metrics = state.auth.metrics().clone();
    let router = Router::new()
        .route("/metrics", get(handlers::metrics))
        .with_state(state);
    with_common_layers(
        router,
        http,
        Some(metrics),
        &[("/metrics", HandlerLogs::No)],
    )
}

/// Marks a response of the documentation pages, which need scripts and styles: the
/// envelope leaves out the API's restrictive content security policy there.
#[derive(Clone, Copy)]
pub(super) struct DocsPage;
