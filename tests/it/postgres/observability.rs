//! Metrics and request logs.

use std::process::Stdio;

use reqwest::StatusCode;

use crate::helpers::{PASSWORD, TestApp};
use crate::smtp_sink::Behaviour;

/// The value of one sample line, e.g. `authd_logins_total{outcome="success"}`; 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(app: &TestApp, base: &str) -> String {
    let response = app
        .client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_move_after_logins_codes_and_throttling() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.login_failures_per_account = 1;
    })
    .await;
    let before = scrape(&app, &app.base).await;
    app.register("metrics@example.test", false).await;
    app.register("twofa@example.test", true).await;
    assert_eq!(
        app.login("metrics@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
    let (challenge, code) = app.start_challenge("twofa@example.test").await;
    assert_eq!(
        app.submit_code(&challenge, &code).await.status(),
        StatusCode::OK
    );
    app.login("metrics@example.test", "wrong password").await;
    assert_eq!(
        app.login("metrics@example.test", PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let after = scrape(&app, &app.base).await;
    for (series, delta) in [
        (r#"authd_logins_total{outcome="success"}"#, 1.0),
        (r#"authd_logins_total{outcome="code_required"}"#, 1.0),
        (r#"authd_logins_total{outcome="invalid_credentials"}"#, 1.0),
        (r#"authd_logins_total{outcome="throttled"}"#, 1.0),
        (r#"authd_codes_total{event="sent"}"#, 1.0),
        (r#"authd_codes_total{event="accepted"}"#, 1.0),
        (r#"authd_throttled_total{limit="account"}"#, 1.0),
        (
            r#"authd_http_requests_total{method="POST",route="/login",status="200"}"#,
            2.0,
        ),
        (
            r#"authd_http_requests_total{method="POST",route="/register",status="201"}"#,
            2.0,
        ),
        (
            r#"authd_http_request_duration_seconds_count{method="POST",route="/login"}"#,
            4.0,
        ),
        (
            r#"authd_bcrypt_duration_seconds_count{operation="verify"}"#,
            3.0,
        ),
        (
            r#"authd_bcrypt_duration_seconds_count{operation="hash"}"#,
            2.0,
        ),
    ] {
        assert_eq!(
            sample(&after, series) - sample(&before, series),
            delta,
            "{series}\n{after}"
        );
    }
    assert!(sample(&after, r#"authd_db_pool_connections{state="max"}"#) >= 1.0);
}

#[tokio::test]
async fn paths_that_are_not_api_routes_share_one_metrics_label() {
    let app = TestApp::spawn().await;
    for path in ["/wp-admin/setup.php", "/.env", "/docs/"] {
        app.get(path).await;
    }
    let after = scrape(&app, &app.base).await;
    assert_eq!(
        sample(
            &after,
            r#"authd_http_requests_total{method="GET",route="other",status="404"}"#
        ),
        2.0,
        "{after}"
    );
    assert!(
        !after.contains("wp-admin") && !after.contains(".env"),
        "{after}"
    );
}

#[tokio::test]
async fn a_client_request_id_is_echoed_only_when_short_and_printable() {
    let app = TestApp::spawn().await;
    let echoed = |id: String| {
        let client = app.client.clone();
        let url = format!("{}/healthz", app.base);
        async move {
            let response = client
                .get(url)
                .header("x-request-id", &id)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(echoed("abc-123".into()).await, "abc-123");
    let long = "x".repeat(129);
    let replaced = echoed(long).await;
    assert!(uuid::Uuid::parse_str(&replaced).is_ok(), "{replaced}");
}

#[tokio::test]
async fn metrics_can_move_to_their_own_address_or_be_switched_off() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.metrics.addr = "127.0.0.1:0".into();
    })
    .await;
    let separate = app.metrics_base.clone().expect("a metrics listener");
    assert!(
        scrape(&app, &separate)
            .await
            .contains("authd_db_pool_connections")
    );
    assert_eq!(app.get("/metrics").await.status(), StatusCode::NOT_FOUND);

    let off = TestApp::spawn_with(Behaviour::Accept, |s| s.metrics.enabled = false).await;
    assert_eq!(off.get("/metrics").await.status(), StatusCode::NOT_FOUND);
    assert!(off.metrics_base.is_none());
}

/// Starts the binary on SQLite in a fresh directory with JSON logs at `rust_log`.
async fn json_logging_server(
    rust_log: &str,
) -> (crate::both::process::Server, crate::helpers::TempDir) {
    let dir = crate::helpers::TempDir::new("authd-log");
    let mut command = crate::both::process::authd();
    command
        .current_dir(dir.path())
        .env("AUTHD_PASSWORD__BCRYPT_COST", "4")
        .env("AUTHD_LOG__FORMAT", "json")
        .env("RUST_LOG", rust_log)
        .stdin(Stdio::null());
    (crate::both::process::Server::spawn(command).await, dir)
}

fn parse_json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[tokio::test]
async fn json_log_lines_parse_and_carry_the_request_id_route_status_and_latency() {
    // authd::access at debug: successful answers are logged too.
    let (server, _dir) = json_logging_server("info,authd::access=debug").await;
    let client = crate::helpers::http_client();
    let response = client
        .get(format!("{}/users/me", server.base))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let generated = client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    let generated_id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        uuid::Uuid::parse_str(&generated_id).is_ok(),
        "{generated_id}"
    );
    let (status, log) = server.terminate().await;
    assert_eq!(status.code(), Some(0));

    let lines = parse_json_lines(&log);
    let request_line = |id: &str| {
        lines
            .iter()
            .find(|l| l["span"]["request_id"] == id && l["fields"]["status"].is_number())
            .unwrap_or_else(|| panic!("no request line for {id} in {log}"))
            .clone()
    };
    let line = request_line("trace-me-42");
    assert_eq!(line["span"]["route"], "/users/me");
    assert_eq!(line["span"]["method"], "GET");
    assert_eq!(line["fields"]["status"], 401);
    assert!(line["fields"]["latency_ms"].is_number());
    let line = request_line(&generated_id);
    assert_eq!(line["fields"]["status"], 200);
    assert_eq!(line["level"], "DEBUG");
    assert_eq!(line["target"], "authd::access");
}

#[tokio::test]
async fn at_the_default_level_errors_are_logged_and_fast_successes_are_not() {
    let (server, _dir) = json_logging_server("info").await;
    let client = crate::helpers::http_client();
    for (path, id, expected) in [
        ("/healthz", "quiet-ok", StatusCode::OK),
        ("/users/me", "loud-401", StatusCode::UNAUTHORIZED),
        ("/no/such/page", "loud-404", StatusCode::NOT_FOUND),
    ] {
        let response = client
            .get(format!("{}{path}", server.base))
            .header("x-request-id", id)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{path}");
    }
    // A handler that writes its own lines: they carry the request id too.
    let login = client
        .post(format!("{}/login", server.base))
        .header("x-request-id", "login-7")
        .json(&serde_json::json!({"email": "nobody@example.test", "password": "wrong horse"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::UNAUTHORIZED);
    let (status, log) = server.terminate().await;
    assert_eq!(status.code(), Some(0));
    let lines = parse_json_lines(&log);
    assert!(
        lines.iter().any(|l| l["span"]["request_id"] == "login-7"
            && l["fields"]["message"] == "login refused: invalid credentials"),
        "{log}"
    );
    let logged = |id: &str| {
        lines
            .iter()
            .find(|l| l["span"]["request_id"] == id && l["fields"]["status"].is_number())
            .cloned()
    };
    assert!(logged("quiet-ok").is_none(), "{log}");
    let line = logged("loud-401").unwrap_or_else(|| panic!("no line for the 401 in {log}"));
    assert_eq!(line["level"], "INFO");
    let line = logged("loud-404").unwrap_or_else(|| panic!("no line for the 404 in {log}"));
    assert_eq!(line["fields"]["status"], 404);
    assert_eq!(line["span"]["route"], "/no/such/page");
}
