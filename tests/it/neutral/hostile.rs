//! Limits that hold against hostile clients: made-up methods, connections that never speak or
//! never leave, too many connections, IPv6 address hopping, and /metrics on a public port.
//!
//! Every socket is on loopback and every read and connect has a timeout. Test clients that must
//! count as different addresses bind to other loopback addresses (127.0.0.2, ...) first.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::helpers::TestApp;
use crate::smtp_sink::Behaviour;

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: with the preface, a complete HTTP/2 client handshake.
const HTTP2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// Long enough on a loaded machine, far shorter than the deadlines the tests tell apart from it.
const PATIENCE: Duration = Duration::from_secs(10);

fn addr(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

/// A TCP connection to `server` from the loopback address `from`.
async fn connect_from(from: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    timeout(PATIENCE, socket.connect(server))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Reads (and drops) whatever the server sends until it closes the connection; `true` when it
/// did within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    read_until_closed(stream, within).await.is_some()
}

/// Everything the server sent before closing the connection, or `None` if it was still open
/// after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read_all = async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    timeout(within, read_all).await.ok()?;
    Some(received)
}

/// `GET path` over a fresh HTTP/1.1 connection from `from`: the whole answer, empty when the
/// server closed the connection without answering.
async fn get_from(from: Ipv4Addr, server: SocketAddr, path: &str) -> String {
    let mut stream = connect_from(from, server).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: authd\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let answer = read_until_closed(&mut stream, PATIENCE)
        .await
        .expect("an answer or a close in time");
    String::from_utf8_lossy(&answer).into_owned()
}

/// `GET /healthz` over a fresh connection from `from`; the status line, or `None` when the
/// server closed the connection without answering.
async fn healthz_from(from: Ipv4Addr, server: SocketAddr) -> Option<String> {
    let answer = get_from(from, server, "/healthz").await;
    answer.lines().next().map(str::to_owned)
}

/// Retries `healthz_from` until it answers (a freed slot may take a moment to be seen).
async fn healthz_answers_eventually(from: Ipv4Addr, server: SocketAddr) -> bool {
    for _ in 0..50 {
        if let Some(status) = healthz_from(from, server).await {
            return status.starts_with("HTTP/1.1 200");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The frame types in a stream of HTTP/2 frames sent by a server.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

const FRAME_PING: u8 = 6;
const FRAME_GOAWAY: u8 = 7;

/// Plays a well-behaved idle HTTP/2 client: answers every PING, sends nothing else. The
/// frames the server sent before closing the connection, or `None` if it was open after `within`.
async fn answer_pings_until_closed(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let converse = async {
        let mut buffer = [0u8; 4096];
        let mut parsed = 0;
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
            while received.len() >= parsed + 9 {
                let frame = &received[parsed..];
                let length = (usize::from(frame[0]) << 16)
                    | (usize::from(frame[1]) << 8)
                    | usize::from(frame[2]);
                if frame.len() < 9 + length {
                    break;
                }
                if frame[3] == FRAME_PING && frame[4] & 1 == 0 {
                    let mut ack = vec![0, 0, 8, FRAME_PING, 1, 0, 0, 0, 0];
                    ack.extend_from_slice(&frame[9..17]);
                    if stream.write_all(&ack).await.is_err() {
                        return;
                    }
                }
                parsed += 9 + length;
            }
        }
    };
    timeout(within, converse).await.ok()?;
    Some(received)
}

/// An HTTP/2 connection (prior knowledge, no TLS) that has sent one `GET /healthz`.
async fn http2_after_one_request(server: SocketAddr) -> TcpStream {
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, server).await;
    // HPACK: :method GET (static 2), :scheme http (static 6), :path literal "/healthz".
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend_from_slice(b"/healthz");
    let length = u8::try_from(block.len()).unwrap();
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    let mut headers = vec![0, 0, length, 1, 0x05, 0, 0, 0, 1];
    headers.extend_from_slice(&block);
    let hello = [HTTP2_PREFACE, HTTP2_EMPTY_SETTINGS, &headers].concat();
    timeout(PATIENCE, stream.write_all(&hello))
        .await
        .unwrap()
        .unwrap();
    stream
}

/// `GET path` on the API port: status and body.
async fn get(app: &TestApp, path: &str) -> (StatusCode, String) {
    let request = app.client.get(app.url(path)).timeout(PATIENCE).send();
    let response = request.await.unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn count_request_series(app: &TestApp) -> usize {
    get(app, "/metrics")
        .await
        .1
        .lines()
        .filter(|line| {
            line.starts_with("authd_http_requests_total{")
                || line.starts_with("authd_http_request_duration_seconds_count{")
        })
        .count()
}

#[tokio::test]
async fn made_up_http_methods_do_not_add_metric_series() {
    let app = TestApp::spawn().await;
    authd::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap();
    let send = |method: String, path: &'static str| {
        let request = client.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            app.url(path),
        );
        async move { request.send().await.unwrap().status() }
    };
    // The series of a made-up method and of /metrics itself exist from here on.
    send("WARMUP".into(), "/healthz").await;
    send("WARMUP".into(), "/no-such-path").await;
    count_request_series(&app).await;
    let before = count_request_series(&app).await;
    for i in 0..150 {
        assert_eq!(
            send(format!("BREW{i}"), "/healthz").await,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            send(format!("WHEN{i}"), "/no-such-path").await,
            StatusCode::NOT_FOUND
        );
    }
    let after = count_request_series(&app).await;
    assert_eq!(before, after, "300 made-up methods added series");
    let (_, metrics) = get(&app, "/metrics").await;
    assert!(
        metrics.contains(
            r#"authd_http_requests_total{method="other",route="/healthz",status="405"} 151"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.http.header_timeout_secs = 1).await;
    let mut silent = connect_from(Ipv4Addr::LOCALHOST, addr(&app)).await;
    assert!(closed_within(&mut silent, PATIENCE).await);
}

#[tokio::test]
async fn a_connection_that_sends_one_byte_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.http.header_timeout_secs = 1).await;
    // "P" could start an HTTP/2 preface, "G" an HTTP/1 GET: neither may hold the socket.
    for byte in [b"P", b"G"] {
        let mut stream = connect_from(Ipv4Addr::LOCALHOST, addr(&app)).await;
        stream.write_all(byte).await.unwrap();
        assert!(
            closed_within(&mut stream, PATIENCE).await,
            "after {:?}",
            String::from_utf8_lossy(byte)
        );
    }
}

#[tokio::test]
async fn an_http2_connection_without_a_request_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.http.header_timeout_secs = 1).await;
    // The preface alone, and a complete handshake that never opens a stream.
    for hello in [
        HTTP2_PREFACE.to_vec(),
        [HTTP2_PREFACE, HTTP2_EMPTY_SETTINGS].concat(),
    ] {
        let mut stream = connect_from(Ipv4Addr::LOCALHOST, addr(&app)).await;
        stream.write_all(&hello).await.unwrap();
        assert!(
            closed_within(&mut stream, PATIENCE).await,
            "after {hello:?}"
        );
    }
}

#[tokio::test]
async fn an_idle_http2_connection_is_sent_away_after_the_idle_timeout() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.http.header_timeout_secs = 30;
        s.http.idle_timeout_secs = 1;
    })
    .await;
    let mut stream = http2_after_one_request(addr(&app)).await;
    let received = answer_pings_until_closed(&mut stream, PATIENCE)
        .await
        .expect("the idle connection is closed");
    assert!(
        frame_types(&received).contains(&FRAME_GOAWAY),
        "{received:?}"
    );
}

#[tokio::test]
async fn an_http2_client_that_does_not_answer_pings_is_disconnected() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.http.header_timeout_secs = 30;
        s.http.idle_timeout_secs = 60;
        s.http.http2_keepalive_interval_secs = 1;
        s.http.http2_keepalive_timeout_secs = 1;
    })
    .await;
    let mut stream = http2_after_one_request(addr(&app)).await;
    let received = read_until_closed(&mut stream, PATIENCE)
        .await
        .expect("the silent client is disconnected");
    assert!(frame_types(&received).contains(&FRAME_PING), "{received:?}");
}

// Multi-thread: the state under test is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_per_address_cap_a_connection_is_closed_at_once_and_others_are_served() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.http.header_timeout_secs = 60;
        s.http.max_connections_per_ip = 3;
    })
    .await;
    let server = addr(&app);
    let client = Ipv4Addr::LOCALHOST;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from(client, server).await);
    }
    let mut over = connect_from(client, server).await;
    assert!(closed_within(&mut over, PATIENCE).await, "over the cap");
    for stream in &mut held {
        assert!(!closed_within(stream, Duration::from_millis(100)).await);
    }
    // Another client is served meanwhile.
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let status = healthz_from(other, server).await.expect("an answer");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let metrics = get_from(other, server, "/metrics").await;
    assert!(
        metrics.contains(r#"authd_connections_refused_total{cap="client"} 1"#),
        "{metrics}"
    );
    // Closing a connection gives its slot back.
    drop(held.pop());
    assert!(healthz_answers_eventually(client, server).await);
}

// Multi-thread: the state under test is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_process_cap_a_connection_is_closed_at_once_until_one_ends() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.http.header_timeout_secs = 60;
        s.http.max_connections = 3;
    })
    .await;
    let server = addr(&app);
    let mut held = Vec::new();
    for last_byte in 1..=3 {
        held.push(connect_from(Ipv4Addr::new(127, 0, 0, last_byte), server).await);
    }
    let mut over = connect_from(Ipv4Addr::new(127, 0, 0, 4), server).await;
    assert!(closed_within(&mut over, PATIENCE).await, "over the cap");
    assert_eq!(
        healthz_from(Ipv4Addr::new(127, 0, 0, 5), server).await,
        None
    );
    drop(held.pop());
    assert!(healthz_answers_eventually(Ipv4Addr::new(127, 0, 0, 5), server).await);
    // The health check's own connection may still hold the freed slot for a moment (the
    // server counts it until it has seen it close): bounded retries.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = get_from(Ipv4Addr::new(127, 0, 0, 5), server, "/metrics").await;
        if !metrics.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains(r#"authd_connections_refused_total{cap="process"}"#),
        "{metrics}"
    );
}

// Multi-thread: the state under test is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_addresses_of_one_prefix_share_one_request_allowance() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.client_ip_header = "x-forwarded-for".into();
        s.rate_limit.requests_per_ip_per_minute = 2;
    })
    .await;
    let login_from = |ip: &'static str| {
        let request = app
            .client
            .post(app.url("/login"))
            .timeout(PATIENCE)
            .header("x-forwarded-for", ip)
            .json(&json!({"email": "nobody@example.test", "password": "not the password"}));
        async move { request.send().await.unwrap().status() }
    };
    assert_ne!(
        login_from("2001:db8:1:1::a").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_ne!(
        login_from("2001:db8:1:1::b").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login_from("2001:db8:1:1:ffff::c").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a third address of the same /64"
    );
    assert_ne!(
        login_from("2001:db8:1:2::a").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // An IPv4-mapped address is its IPv4 address.
    assert_ne!(login_from("192.0.2.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(login_from("192.0.2.1").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        login_from("::ffff:192.0.2.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// A production configuration with nothing to refuse besides what a test varies.
fn production(s: &mut authd::config::Settings) {
    s.env = authd::config::Environment::Production;
    s.jwt.secret = Some("q7Zt4Rw9xK2mV8pL3nB6cY1hF5jD0sG7aE4uT9iO2wQ6eR8z".into());
    s.password.bcrypt_cost = 10;
    s.mail.smtp.host = "127.0.0.1".into();
}

#[tokio::test]
async fn production_keeps_metrics_off_the_api_port_unless_it_is_private() {
    let public = TestApp::spawn_with(Behaviour::Accept, production).await;
    assert_eq!(get(&public, "/healthz").await.0, StatusCode::OK);
    assert_eq!(get(&public, "/metrics").await.0, StatusCode::NOT_FOUND);

    let separate = TestApp::spawn_with(Behaviour::Accept, |s| {
        production(s);
        s.metrics.addr = "127.0.0.1:0".into();
    })
    .await;
    assert_eq!(get(&separate, "/metrics").await.0, StatusCode::NOT_FOUND);
    let metrics_base = separate.metrics_base.clone().expect("a metrics listener");
    let scraped = separate
        .client
        .get(format!("{metrics_base}/metrics"))
        .timeout(PATIENCE)
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);

    let private = TestApp::spawn_with(Behaviour::Accept, |s| {
        production(s);
        s.metrics.api_port_private = true;
    })
    .await;
    assert_eq!(get(&private, "/metrics").await.0, StatusCode::OK);
}

/// Sends a `GET /healthz` whose head carries `header_bytes` of one header, with
/// `Connection: close`; returns the status line of the answer.
async fn status_for_head_of(server: SocketAddr, header_bytes: usize) -> String {
    let mut stream = connect_from(Ipv4Addr::LOCALHOST, server).await;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(header_bytes)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the server answers and closes");
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_past_32_kib_is_refused_before_it_costs_more_memory() {
    let app = TestApp::spawn().await;
    let server = addr(&app);
    assert_eq!(status_for_head_of(server, 20_000).await, "HTTP/1.1 200 OK");
    // hyper's default buffer (about 400 KiB) would have taken this one.
    assert_eq!(
        status_for_head_of(server, 40_000).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Many of them at once leave the server answering.
    let many = (0..50).map(|_| status_for_head_of(server, 40_000));
    for status in futures::future::join_all(many).await {
        assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    }
    assert_eq!(status_for_head_of(server, 100).await, "HTTP/1.1 200 OK");
}
