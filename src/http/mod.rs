//! The HTTP door: router, middleware, and the server's lifecycle.

pub mod error;
pub mod extract;
pub mod handlers;
pub mod openapi;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::Auth;
use crate::config::Settings;
use crate::keys::load_signing_secret;
use crate::store::{Backend, Store};
use error::{ApiError, PROBLEM_JSON};

/// Largest request body accepted; bigger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Shared state of the HTTP door: built once, cloned cheaply into each request.
#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Auth>,
}

/// Every route of the API, with its middleware.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/register", post(handlers::register))
        .route("/login", post(handlers::login))
        .route("/login/otp", post(handlers::login_otp))
        .route("/users/me", get(handlers::me))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .with_state(state)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::ApiDoc::openapi()))
        .fallback(|| async { ApiError::from_status(axum::http::StatusCode::NOT_FOUND) })
        .layer(middleware::from_fn(problem_for_bare_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
}

/// Gives errors produced outside the handlers (405, 413 from layers...) the problem+json shape.
async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if (status.is_client_error() || status.is_server_error()) && !is_problem {
        let mut replaced = ApiError::from_status(status).into_response();
        for name in [header::ALLOW, header::RETRY_AFTER] {
            if let Some(value) = response.headers().get(&name) {
                replaced.headers_mut().insert(name, value.clone());
            }
        }
        return replaced;
    }
    response
}

/// A built server: bound to its port, ready to run.
pub struct App {
    listener: TcpListener,
    router: Router,
}

impl App {
    /// Connects the pieces and binds the listener (port 0 picks a free port).
    pub async fn build(settings: &Settings) -> anyhow::Result<App> {
        settings.check_production()?;
        let store = Store::connect_lazy(settings)?;
        if store.backend() == Backend::Sqlite {
            // One file, one instance: keep it zero-setup by creating the schema at start.
            for name in store
                .migrate()
                .await
                .context("cannot migrate the SQLite database")?
            {
                tracing::info!(migration = %name, "applied migration");
            }
            tracing::info!(
                "using SQLite: fine for a single instance; run more than one instance on PostgreSQL"
            );
        }
        if settings.mail.transport.is_development_only() {
            tracing::warn!(
                transport = ?settings.mail.transport,
                "development-only mail transport: codes are not emailed"
            );
        }
        let secret = load_signing_secret(settings, true)?;
        let auth = Auth::from_settings(settings, store, &secret).await?;
        let listener = TcpListener::bind(&settings.http.addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.http.addr))?;
        Ok(App {
            listener,
            router: router(AppState {
                auth: Arc::new(auth),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Serves until SIGINT or SIGTERM, then finishes in-flight requests and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` completes, then drains in-flight requests.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "authd listening");
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await
        .context("server failed")?;
        tracing::info!("authd stopped");
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received: finishing in-flight requests");
}
