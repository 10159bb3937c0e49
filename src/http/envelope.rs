//! The envelope every request goes through: request id, request timeout, panic guard,
//! problem+json for errors made outside the handlers, security headers, request metrics and
//! the access log line.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use tower::ServiceExt;
use tracing::Instrument;

use super::error::{ApiError, InternalCause, PROBLEM_JSON};
use super::pages::HtmlPage;
use super::routes::DocsPage;
use crate::config::HttpSettings;
use crate::metrics::{Metrics, RequestSeries};

/// Whether a route's handler writes log lines of its own. If it does, each of its requests
/// gets a span carrying the request id for those lines; if it does not, the span is made only
/// when the access line is written: a span per request was the largest single part of what a
/// read route cost beyond the benchmark's bare route (BENCHMARKS.md).
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
    /// Whether a request path is this route's: exactly, or for a path ending in `{id}`, the
    /// same prefix and one more segment.
    fn matches(&self, path: &str) -> bool {
        match self.path.strip_suffix("{id}") {
            Some(prefix) => path
                .strip_prefix(prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')),
            None => self.path == path,
        }
    }

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

    /// Where its requests are counted, when they are: the accept loop counts refused
    /// connections there too.
    pub(super) fn metrics(&self) -> Option<&Metrics> {
        self.0.metrics.as_ref()
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
            .find(|route| route.matches(request.uri().path()));
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
                span.in_scope(|| problem_for_panic(panic))
            }
        };
        let status = response.status();
        if (status.is_client_error() || status.is_server_error())
            && !is_problem(&response)
            && response.extensions().get::<HtmlPage>().is_none()
        {
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

/// A 500 problem for a handler that panicked; the panic message stays in the log.
fn problem_for_panic(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "a request handler panicked");
    ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use axum::routing::get;

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
