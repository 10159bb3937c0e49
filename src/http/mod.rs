//! The HTTP door: router, middleware, and the server's lifecycle.

pub mod error;
pub mod extract;
pub mod handlers;
pub mod limits;
pub mod openapi;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::audit::AuditLog;
use crate::auth::Auth;
use crate::config::{HttpSettings, Settings};
use crate::keys::load_signing_secret;
use crate::metrics::Metrics;
use crate::store::{Backend, Store};
use error::{ApiError, PROBLEM_JSON};
use limits::{ClientAddress, IpLimiter, limit_per_ip};

/// Largest request body accepted; bigger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Shared state of the HTTP door: built once, cloned cheaply into each request.
#[derive(Clone)]
pub struct AppState {
    pub auth: Arc<Auth>,
    pub client_address: ClientAddress,
    pub ip_limiter: Option<Arc<IpLimiter>>,
}

impl AppState {
    pub fn new(auth: Auth, settings: &Settings) -> anyhow::Result<AppState> {
        let limits = &settings.rate_limit;
        Ok(AppState {
            auth: Arc::new(auth),
            client_address: ClientAddress::from_settings(limits)?,
            ip_limiter: limits
                .enabled
                .then(|| IpLimiter::new(limits.requests_per_ip_per_minute)),
        })
    }
}

/// Every route of the API, with its middleware.
pub fn router(state: AppState, http: &HttpSettings, serve_metrics_here: bool) -> Router {
    let limited = Router::new()
        .route("/register", post(handlers::register))
        .route("/login", post(handlers::login))
        .route("/login/otp", post(handlers::login_otp))
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_per_ip));
    let mut api = Router::new()
        .merge(limited)
        .route("/users/me", get(handlers::me))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz));
    if serve_metrics_here {
        api = api.route("/metrics", get(handlers::metrics));
    }
    let api = api
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            track_requests,
        ))
        .with_state(state)
        .layer(api_security_headers());
    let docs = Router::new()
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi::ApiDoc::openapi()));
    with_common_layers(api.merge(docs), http)
}

/// Headers for the JSON API: nothing may be sniffed, framed, cached or loaded from it.
fn api_security_headers() -> tower::layer::util::Stack<
    SetResponseHeaderLayer<HeaderValue>,
    tower::layer::util::Stack<
        SetResponseHeaderLayer<HeaderValue>,
        SetResponseHeaderLayer<HeaderValue>,
    >,
> {
    tower::layer::util::Stack::new(
        SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ),
        tower::layer::util::Stack::new(
            SetResponseHeaderLayer::if_not_present(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            ),
            SetResponseHeaderLayer::if_not_present(
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ),
    )
}

/// Layers every response goes through, docs included: problem+json for bare errors, body
/// limit and timeouts, panic recovery, tracing, and headers that are right for any response.
pub fn with_common_layers(router: Router, http: &HttpSettings) -> Router {
    router
        .fallback(|| async { ApiError::from_status(axum::http::StatusCode::NOT_FOUND) })
        .layer(middleware::from_fn(problem_for_bare_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(
            http.body_timeout_secs,
        )))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(http.request_timeout_secs),
        ))
        .layer(CatchPanicLayer::custom(limits::problem_for_panic))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(log_response)
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every log line of a request carries its id (from `X-Request-Id`, generated when absent).
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        route = %request.uri().path(),
    )
}

/// The one line per request: status and latency (the span adds id, method and route).
fn log_response(response: &Response, latency: Duration, _span: &tracing::Span) {
    tracing::info!(
        status = response.status().as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request"
    );
}

/// Counts each routed request and its latency by route template, method and status.
async fn track_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    state.auth.metrics.observe_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// A router with only `GET /metrics`, for `metrics.addr`.
pub fn metrics_router(state: AppState, http: &HttpSettings) -> Router {
    with_common_layers(
        Router::new()
            .route("/metrics", get(handlers::metrics))
            .with_state(state),
        http,
    )
}

/// Gives errors produced outside the handlers (405, 408, 413 from layers...) the problem+json shape.
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
    metrics: Option<(TcpListener, Router)>,
    header_timeout: Duration,
    audit_writer: JoinHandle<()>,
}

impl App {
    /// Connects the pieces and binds the listener (port 0 picks a free port).
    pub async fn build(settings: &Settings) -> anyhow::Result<App> {
        settings.check_production()?;
        // SQLite gets its schema here (zero setup); PostgreSQL needs `authd migrate`.
        let store = Store::open(settings)
            .await
            .context("cannot prepare the database")?;
        if store.backend() == Backend::Sqlite {
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
        if !settings.rate_limit.enabled {
            tracing::warn!("rate_limit.enabled = false: no brute-force protection");
        }
        let secret = load_signing_secret(settings, true)?;
        let (audit, audit_writer) = AuditLog::start(store.clone());
        let auth = Auth::from_settings(settings, store, &secret, audit, Metrics::new()).await?;
        let state = AppState::new(auth, settings)?;
        let listener = TcpListener::bind(&settings.http.addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.http.addr))?;
        let separate_metrics = settings.metrics.enabled && !settings.metrics.addr.trim().is_empty();
        let metrics = if separate_metrics {
            let addr = settings.metrics.addr.trim();
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on metrics.addr {addr}"))?;
            Some((listener, metrics_router(state.clone(), &settings.http)))
        } else {
            None
        };
        let serve_metrics_here = settings.metrics.enabled && !separate_metrics;
        Ok(App {
            listener,
            router: router(state, &settings.http, serve_metrics_here),
            metrics,
            header_timeout: Duration::from_secs(settings.http.header_timeout_secs),
            audit_writer,
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

    /// Where `/metrics` is served when it has its own listener.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until SIGINT or SIGTERM, then finishes in-flight requests and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` completes, then stops accepting, drains in-flight requests and
    /// flushes the audit trail.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "authd listening");
        let App {
            listener,
            router,
            metrics,
            header_timeout,
            audit_writer,
        } = self;
        let (stopped, watch) = tokio::sync::watch::channel(false);
        let stop_signal = |mut watch: tokio::sync::watch::Receiver<bool>| async move {
            let _ = watch.wait_for(|stopped| *stopped).await;
        };
        let metrics_server = metrics.map(|(listener, router)| {
            tracing::info!(addr = ?listener.local_addr().ok(), "metrics listening");
            tokio::spawn(serve(
                listener,
                router,
                header_timeout,
                stop_signal(watch.clone()),
            ))
        });
        let api = tokio::spawn(serve(listener, router, header_timeout, stop_signal(watch)));
        stop.await;
        let _ = stopped.send(true);
        let _ = api.await;
        if let Some(server) = metrics_server {
            let _ = server.await;
        }
        // The router held the last handle on the audit queue: the writer now drains and ends.
        if tokio::time::timeout(Duration::from_secs(10), audit_writer)
            .await
            .is_err()
        {
            tracing::warn!("audit trail not fully written at shutdown");
        }
        tracing::info!("authd stopped");
        Ok(())
    }
}

/// The accept loop: hyper with a header read timeout (axum::serve has none), the peer address
/// in each request, and a graceful shutdown that lets in-flight requests finish.
async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let mut builder = ConnBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request)
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    drop(router);
    graceful.shutdown().await;
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
