//! The server: the accept loop with its connection caps, header and idle deadlines, graceful
//! shutdown, and the signals that ask for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use tokio::net::{TcpListener, TcpStream};

use super::envelope::HttpService;
use super::limits::{ConnectionCaps, ConnectionSlot};
use crate::config::Settings;

/// Read buffer per HTTP/1 connection: headers (at most `MAX_HEADER_BYTES`) and body chunks.
const MAX_READ_BUFFER_BYTES: usize = 32 * 1024;
/// Largest request head accepted; a bigger one is refused by hyper (431 or a closed stream).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long a connection may stay open without a request, and how many may be open: shared by
/// the API and metrics listeners, so the process cap counts both.
#[derive(Clone)]
pub struct ConnectionRules {
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
    pub fn from_settings(settings: &Settings) -> ConnectionRules {
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
pub async fn serve(
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
                if let Some(metrics) = service.metrics() {
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

/// Completes at SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: a signal sent the moment the server answers (a supervisor that
/// stops it right after its health check) finds them in place instead of the default action,
/// which would kill the process without draining anything. Call it before serving.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        [
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        ]
    };
    async move {
        #[cfg(unix)]
        {
            let [interrupt, terminate] = signals;
            let received = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = received(interrupt) => {},
                () = received(terminate) => {},
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutdown signal received: finishing in-flight requests");
    }
}
