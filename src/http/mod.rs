//! The HTTP door: router, middleware, and the server's lifecycle.

pub mod error;
pub mod extract;
pub mod handlers;
pub mod limits;
pub mod openapi;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use std::time::Instant;

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::FutureExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::audit::AuditLog;
use crate::auth::Auth;
use crate::config::{Environment, HttpSettings, Settings};
use crate::keys::load_signing_secret;
use crate::metrics::{Metrics, RequestSeries};
use crate::store::{Backend, Store};
use error::{ApiError, InternalCause, PROBLEM_JSON};
use limits::{ClientAddress, ConnectionCaps, ConnectionSlot, IpLimiter, limit_per_ip};

/// Read buffer per HTTP/1 connection: headers (at most `MAX_HEADER_BYTES`) and body chunks.
const MAX_READ_BUFFER_BYTES: usize = 32 * 1024;
/// Largest request head accepted; a bigger one is refused by hyper (431 or a closed stream).
const MAX_HEADER_BYTES: usize = 16 * 1024;

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
        })))
    }
}

/// Every route of the API, with its middleware.
pub fn router(state: AppState, http: &HttpSettings, serve_metrics_here: bool) -> HttpService {
    // The per-address limit guards the routes that take a password or a code.
    let limited = [
        ("/register", post(handlers::register)),
        ("/login", post(handlers::login)),
        ("/login/otp", post(handlers::login_otp)),
    ];
    let mut open = vec![
        ("/users/me", get(handlers::me)),
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
        .map(|(path, _)| (*path, HandlerLogs::Yes))
        .chain(open.iter().map(|(path, _)| (*path, HandlerLogs::No)))
        .collect();
    let limited = limited
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_per_ip))
        // Only these routes read a body: its size limit and read timeout are theirs alone,
        // which keeps the read routes free of per-request layers.
        .route_layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(RequestBodyTimeoutLayer::new(Duration::from_secs(
            http.body_timeout_secs,
        )));
    let api = open.into_iter().fold(limited, |router, (path, handler)| {
        router.route(path, handler)
    });
    let metrics = state.auth.metrics.clone();
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
    let metrics = state.auth.metrics.clone();
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
struct DocsPage;

/// Whether a route's handler writes log lines of its own. If it does, each of its requests
/// gets a span carrying the request id for those lines; if it does not, the span is made only
/// when the access line is written. A span per request cost 5 µs of the 16–22 µs by which
/// `/users/me` exceeded the benchmark's bare route (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerLogs {
    Yes,
    No,
}

/// What the envelope needs to know, built once per router, and the router it wraps.
struct Envelope {
    router: Router,
    request_timeout: Duration,
    metrics: Option<Metrics>,
    /// The routes counted by name in the metrics (anything else counts as `other`, and its
    /// handler writes no lines of its own).
    routes: Vec<KnownRoute>,
    /// [`security_headers`] for the API and for the documentation pages.
    api_headers: HeaderMap,
    docs_headers: HeaderMap,
}

/// A path the metrics count by name.
struct KnownRoute {
    path: &'static str,
    logs: HandlerLogs,
    /// Its series for a 200 to GET and to POST, resolved on first use: looking series up by
    /// label takes a lock and clones shared counters, on every request otherwise.
    ok: [OnceLock<RequestSeries>; 2],
}

impl KnownRoute {
    fn ok_series(&self, method: &Method, status: StatusCode) -> Option<&OnceLock<RequestSeries>> {
        match (status, method) {
            (StatusCode::OK, &Method::GET) => Some(&self.ok[0]),
            (StatusCode::OK, &Method::POST) => Some(&self.ok[1]),
            _ => None,
        }
    }
}

/// A router inside the envelope (see [`Envelope::handle`]): what the server runs. A tower
/// service wrapping the whole router instead of a `Router::layer`: a router layer is boxed
/// around every route and cloned (an allocation) per request at every level, which cost
/// the read routes more than anything they do themselves (BENCHMARKS.md).
#[derive(Clone)]
pub struct HttpService(Arc<Envelope>);

impl HttpService {
    /// Answers one request: never fails, errors are answers.
    pub async fn handle(&self, request: Request) -> Response {
        self.0.handle(request).await
    }
}

impl tower::Service<Request> for HttpService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::BoxFuture<'static, Result<Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let service = self.clone();
        Box::pin(async move { Ok(service.handle(request).await) })
    }
}

/// Wraps a router in the envelope every request goes through (see [`Envelope::handle`]), with
/// a problem+json 404 for unknown paths. `routes` are the paths that get their own metrics
/// label; `metrics` off (None) records nothing.
pub fn with_common_layers(
    router: Router,
    http: &HttpSettings,
    metrics: Option<Metrics>,
    routes: &[(&'static str, HandlerLogs)],
) -> HttpService {
    HttpService(Arc::new(Envelope {
        router: router.fallback(|| async { ApiError::from_status(StatusCode::NOT_FOUND) }),
        request_timeout: Duration::from_secs(http.request_timeout_secs),
        metrics,
        api_headers: security_headers(false),
        docs_headers: security_headers(true),
        routes: routes
            .iter()
            .map(|&(path, logs)| KnownRoute {
                path,
                logs,
                ok: Default::default(),
            })
            .collect(),
    }))
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest `X-Request-Id` taken from a client; a longer one is replaced by a generated id.
const MAX_REQUEST_ID_LEN: usize = 128;

/// An answer slower than this is logged at INFO even when it succeeded.
const SLOW_REQUEST: Duration = Duration::from_secs(1);

impl Envelope {
    /// The one middleware around every request, folded into a single step because each separate
    /// layer costs an allocation and a move of the whole future (see BENCHMARKS.md):
    /// - the request id: the client's `X-Request-Id` when it is short and printable, else a UUID;
    ///   returned in `X-Request-Id` and carried by every log line of the request (its span; see
    ///   [`HandlerLogs`] for when the span is made);
    /// - the request timeout (408) and panic recovery (a 500 problem, the panic text only logged);
    /// - problem+json for bare errors produced outside the handlers (404, 405, 413, 415...);
    /// - security headers, with the API's strict content security policy everywhere but the docs;
    /// - the request metrics and the access log line: INFO for errors and slow answers, DEBUG
    ///   (target `authd::access`) for the rest, so a busy server does not spend its time logging
    ///   successes.
    async fn handle(&self, request: Request) -> Response {
        let started = Instant::now();
        let id = request
            .headers()
            .get(&REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN && v.to_str().is_ok())
            .cloned()
            .unwrap_or_else(|| {
                // A random UUID from the thread's generator: no system call per request.
                let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
                let mut buffer = uuid::Uuid::encode_buffer();
                let id = uuid.hyphenated().encode_lower(&mut buffer);
                HeaderValue::from_str(id).expect("a UUID is a valid header value")
            });
        let method = request.method().clone();
        let known = self
            .routes
            .iter()
            .find(|route| route.path == request.uri().path());
        let (route, handler_logs) = known.map_or(("other", HandlerLogs::No), |r| (r.path, r.logs));
        let path: std::borrow::Cow<'static, str> = match known {
            Some(known) => known.path.into(),
            None => request.uri().path().to_owned().into(),
        };
        let span = match handler_logs {
            HandlerLogs::Yes => request_span(&id, &method, &path),
            HandlerLogs::No => tracing::Span::none(),
        };
        let handled = std::panic::AssertUnwindSafe(tokio::time::timeout(
            self.request_timeout,
            self.router.clone().oneshot(request),
        ))
        .catch_unwind()
        .instrument(span.clone())
        .await;
        let mut response = match handled {
            Ok(Ok(Ok(response))) => response,
            Ok(Ok(Err(infallible))) => match infallible {},
            Ok(Err(_elapsed)) => ApiError::from_status(StatusCode::REQUEST_TIMEOUT).into_response(),
            Err(panic) => {
                let span = match handler_logs {
                    HandlerLogs::Yes => span.clone(),
                    HandlerLogs::No => request_span(&id, &method, &path),
                };
                span.in_scope(|| limits::problem_for_panic(panic))
            }
        };
        let status = response.status();
        if (status.is_client_error() || status.is_server_error()) && !is_problem(&response) {
            response = problem_for_bare_error(response);
        }
        // The security headers come from a map built once; the handler's own headers win.
        let docs = response.extensions().get::<DocsPage>().is_some();
        let mut headers = match docs {
            true => self.docs_headers.clone(),
            false => self.api_headers.clone(),
        };
        headers.extend(std::mem::take(response.headers_mut()));
        *response.headers_mut() = headers;
        let took = started.elapsed();
        if let Some(metrics) = &self.metrics {
            match known.and_then(|known| known.ok_series(&method, status)) {
                Some(series) => series
                    .get_or_init(|| metrics.request_series(route, method.as_str(), status.as_str()))
                    .observe(took),
                None => metrics.observe_request(route, method.as_str(), status.as_str(), took),
            }
        }
        let (status, latency_ms) = (status.as_u16(), took.as_secs_f64() * 1000.0);
        let cause = response.extensions_mut().remove::<InternalCause>();
        let level = if cause.is_some() {
            tracing::Level::ERROR
        } else if status >= 400 || took >= SLOW_REQUEST {
            tracing::Level::INFO
        } else {
            tracing::Level::DEBUG
        };
        let logged = match level {
            tracing::Level::ERROR => {
                tracing::enabled!(target: "authd::access", tracing::Level::ERROR)
            }
            tracing::Level::INFO => {
                tracing::enabled!(target: "authd::access", tracing::Level::INFO)
            }
            _ => tracing::enabled!(target: "authd::access", tracing::Level::DEBUG),
        };
        if logged {
            let span = match handler_logs {
                HandlerLogs::Yes => span,
                HandlerLogs::No => request_span(&id, &method, &path),
            };
            let _entered = span.enter();
            match (level, cause) {
                (_, Some(InternalCause(error))) => {
                    tracing::error!(target: "authd::access", status, latency_ms, error, "request");
                }
                (tracing::Level::INFO, None) => {
                    tracing::info!(target: "authd::access", status, latency_ms, "request");
                }
                _ => tracing::debug!(target: "authd::access", status, latency_ms, "request"),
            }
        }
        response.headers_mut().insert(&REQUEST_ID, id);
        response
    }
}

/// The span every log line of a request is written in: its id, method and path.
fn request_span(id: &HeaderValue, method: &axum::http::Method, path: &str) -> tracing::Span {
    tracing::info_span!(
        "request",
        request_id = id.to_str().unwrap_or_default(),
        method = method.as_str(),
        route = path,
    )
}

/// The headers every response carries unless its handler set them: security headers, with
/// the API's strict content security policy on all but the documentation pages (`docs`), which
/// need scripts and styles. Room is left for the handler's headers and `X-Request-Id`.
fn security_headers(docs: bool) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(16);
    let mut set = |name, value| headers.insert(name, HeaderValue::from_static(value));
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    if !docs {
        set(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        );
        set(header::CACHE_CONTROL, "no-store");
        set(header::REFERRER_POLICY, "no-referrer");
    }
    headers
}

fn is_problem(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()))
}

/// Gives an error produced outside the handlers (405, 413 from layers...) the problem+json
/// shape, keeping the headers that tell the client what to do next.
fn problem_for_bare_error(response: Response) -> Response {
    let mut replaced = ApiError::from_status(response.status()).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = response.headers().get(&name) {
            replaced.headers_mut().insert(name, value.clone());
        }
    }
    replaced
}

/// A built server: bound to its port, ready to run.
pub struct App {
    listener: TcpListener,
    router: HttpService,
    metrics: Option<(TcpListener, HttpService)>,
    connections: ConnectionRules,
    audit_writer: JoinHandle<()>,
    pruner: AbortOnDrop,
}

/// A background task that ends with its owner (a test dropping its app included).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        let metrics = Metrics::new();
        let (audit, audit_writer) = AuditLog::start(store.clone(), metrics.audit_dropped.clone());
        let auth = Auth::from_settings(settings, store, &secret, audit, metrics).await?;
        let pruner = AbortOnDrop(crate::prune::spawn_pruner(
            auth.store.clone(),
            settings.audit.clone(),
            auth.hasher.clone(),
        ));
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
        // In production the API port is taken to be public: /metrics (what the server is doing,
        // which accounts fail) stays off it unless the operator says the port is private.
        let metrics_on_api_port =
            settings.env != Environment::Production || settings.metrics.api_port_private;
        let serve_metrics_here =
            settings.metrics.enabled && !separate_metrics && metrics_on_api_port;
        if settings.metrics.enabled && !separate_metrics && !metrics_on_api_port {
            tracing::warn!(
                "metrics not served: in production /metrics needs metrics.addr or metrics.api_port_private = true"
            );
        }
        Ok(App {
            listener,
            router: router(state, &settings.http, serve_metrics_here),
            metrics,
            connections: ConnectionRules::from_settings(settings),
            audit_writer,
            pruner,
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
            connections,
            audit_writer,
            pruner,
        } = self;
        let (stopped, watch) = tokio::sync::watch::channel(false);
        let metrics_server = metrics.map(|(listener, router)| {
            tracing::info!(addr = ?listener.local_addr().ok(), "metrics listening");
            tokio::spawn(serve(listener, router, connections.clone(), watch.clone()))
        });
        let api = tokio::spawn(serve(listener, router, connections, watch));
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
        // A pruning pass cut short is rolled back and done again at the next start.
        drop(pruner);
        tracing::info!("authd stopped");
        Ok(())
    }
}

/// How long a connection may stay open without a request, and how many may be open: shared by
/// the API and metrics listeners, so the process cap counts both.
#[derive(Clone)]
struct ConnectionRules {
    /// The first request's headers must have arrived this long after the accept, whatever the
    /// client speaks (nothing, a byte, an HTTP/2 preface...).
    first_request: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2 mostly: HTTP/1
    /// keep-alive connections also wait for their next headers within `first_request`).
    idle: Duration,
    http2_keepalive_interval: Duration,
    http2_keepalive_timeout: Duration,
    /// After a graceful close is asked for, how long in-flight requests may still take.
    drain: Duration,
    caps: Arc<ConnectionCaps>,
}

impl ConnectionRules {
    fn from_settings(settings: &Settings) -> ConnectionRules {
        let http = &settings.http;
        let secs = Duration::from_secs;
        ConnectionRules {
            first_request: secs(http.header_timeout_secs),
            idle: secs(http.idle_timeout_secs),
            http2_keepalive_interval: secs(http.http2_keepalive_interval_secs),
            http2_keepalive_timeout: secs(http.http2_keepalive_timeout_secs),
            drain: secs(http.request_timeout_secs + http.header_timeout_secs),
            caps: ConnectionCaps::from_settings(http, &settings.rate_limit),
        }
    }
}

/// What a connection's requests tell its watcher (see [`watch_connection`]).
#[derive(Default)]
struct Activity {
    requests: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
    /// When the last request ended, in milliseconds since the accept.
    last_done_ms: std::sync::atomic::AtomicU64,
    /// Woken when a request ends, to start the idle deadline.
    ended: tokio::sync::Notify,
}

/// Counts a request in flight until dropped.
struct InFlight {
    activity: Arc<Activity>,
    accepted: Instant,
}

impl InFlight {
    fn start(activity: &Arc<Activity>, accepted: Instant) -> InFlight {
        use std::sync::atomic::Ordering::Relaxed;
        activity.requests.fetch_add(1, Relaxed);
        activity.in_flight.fetch_add(1, Relaxed);
        InFlight {
            activity: Arc::clone(activity),
            accepted,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = u64::try_from(self.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.activity.last_done_ms.store(now, Relaxed);
        self.activity.in_flight.fetch_sub(1, Relaxed);
        self.activity.ended.notify_one();
    }
}

/// The accept loop: connection caps, hyper with header, first-request and idle deadlines
/// (axum::serve has none), HTTP/2 keep-alive, the peer address in each request, and a graceful
/// shutdown that lets in-flight requests finish.
async fn serve(
    listener: TcpListener,
    service: HttpService,
    rules: ConnectionRules,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut builder = ConnBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(rules.first_request)
        // hyper's default read buffer (about 400 KiB) lets unfinished headers cost that much
        // per connection; authd's requests need a fraction of it.
        .max_buf_size(MAX_READ_BUFFER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(rules.http2_keepalive_interval)
        .keep_alive_timeout(rules.http2_keepalive_timeout)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let builder = Arc::new(builder);
    // Every connection task holds a sender: when all are gone, the last connection has ended.
    let (alive, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
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
            () = stopped(&mut stop) => break,
        };
        // Past a cap the connection is closed now, not queued: a queue would only hold the
        // descriptors the cap is there to save.
        let slot = match rules.caps.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                tracing::debug!(%peer, cap = cap.label(), "connection refused: too many open");
                if let Some(metrics) = &service.0.metrics {
                    metrics.refuse_connection(cap.label());
                }
                drop(stream);
                continue;
            }
        };
        tokio::spawn(watch_connection(
            stream,
            peer,
            slot,
            service.clone(),
            Arc::clone(&builder),
            rules.clone(),
            stop.clone(),
            alive.clone(),
        ));
    }
    drop(listener);
    drop(service);
    drop(alive);
    let _ = all_ended.recv().await;
}

/// Completes once the server is asked to stop (or the asker is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Serves one connection and closes it when it breaks a rule: no first request within
/// `first_request` (closed at once), nothing in flight for `idle`, or the server stopping
/// (closed gracefully, in-flight requests get `drain` to finish).
#[allow(clippy::too_many_arguments)]
async fn watch_connection(
    stream: TcpStream,
    peer: SocketAddr,
    _slot: ConnectionSlot,
    service: HttpService,
    builder: Arc<ConnBuilder<TokioExecutor>>,
    rules: ConnectionRules,
    mut stop: tokio::sync::watch::Receiver<bool>,
    _alive: tokio::sync::mpsc::Sender<()>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let accepted = Instant::now();
    let activity = Arc::new(Activity::default());
    let watched = Arc::clone(&activity);
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let service = service.clone();
            let in_flight = InFlight::start(&watched, accepted);
            async move {
                let response = service.handle(request.map(axum::body::Body::new)).await;
                drop(in_flight);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    tokio::pin!(connection);
    let accepted_at = tokio::time::Instant::from_std(accepted);
    let mut wake = accepted_at + rules.first_request;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            () = stopped(&mut stop) => break,
            () = activity.ended.notified() => {
                if activity.in_flight.load(Relaxed) == 0 {
                    wake = tokio::time::Instant::now() + rules.idle;
                }
            }
            () = tokio::time::sleep_until(wake) => {
                if activity.requests.load(Relaxed) == 0 {
                    tracing::debug!(%peer, "connection closed: no request in time");
                    return;
                }
                let now = tokio::time::Instant::now();
                if activity.in_flight.load(Relaxed) > 0 {
                    wake = now + rules.idle;
                    continue;
                }
                let idle_since =
                    accepted_at + Duration::from_millis(activity.last_done_ms.load(Relaxed));
                if idle_since + rules.idle <= now {
                    tracing::debug!(%peer, "connection closed: idle");
                    break;
                }
                wake = idle_since + rules.idle;
            }
        }
    }
    if activity.requests.load(Relaxed) == 0 {
        return;
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(rules.drain, connection).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_handlers_own_header_wins_over_the_default_and_is_not_doubled() {
        let router = Router::new().route(
            "/cached",
            get(|| async { ([(header::CACHE_CONTROL, "max-age=60")], "x") }),
        );
        let http = Settings::defaults().http;
        let service = with_common_layers(router, &http, None, &[]);
        let request = Request::get("/cached")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = service.handle(request).await;
        let headers = response.headers();
        let cache: Vec<_> = headers.get_all(header::CACHE_CONTROL).iter().collect();
        assert_eq!(cache, ["max-age=60"]);
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY));
        assert!(headers.contains_key(header::CONTENT_TYPE));
        assert_eq!(headers[&REQUEST_ID].len(), 36, "a generated UUID");
    }

    #[tokio::test]
    async fn a_request_past_the_request_timeout_gets_a_408_problem() {
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late"
            }),
        );
        let mut http = Settings::defaults().http;
        http.request_timeout_secs = 1;
        let service = with_common_layers(router, &http, None, &[]);
        let request = Request::get("/slow")
            .header(&REQUEST_ID, "slow-1")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = service.handle(request).await;
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(is_problem(&response));
        assert_eq!(response.headers()[&REQUEST_ID], "slow-1");
    }
}
