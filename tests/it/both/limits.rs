//! Brute-force controls, the password policy, the audit trail and HTTP hardening.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{PASSWORD, TestApp, fresh_database, problem, test_settings};
use crate::smtp_sink::{Behaviour, MailSink};

const WRONG: &str = "not the password";

async fn fail_logins(app: &TestApp, email: &str, times: usize) {
    for _ in 0..times {
        let response = app.login(email, WRONG).await;
        problem(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    }
}

async fn assert_locked(response: reqwest::Response) {
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=300).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
}

#[tokio::test]
async fn ten_failed_logins_lock_the_account_even_for_the_right_password() {
    let app = TestApp::spawn().await;
    app.register("lock@example.test", false).await;
    fail_logins(&app, "lock@example.test", 10).await;
    assert_locked(app.login("lock@example.test", PASSWORD).await).await;
    assert_locked(app.login("lock@example.test", WRONG).await).await;
}

#[tokio::test]
async fn a_successful_login_resets_the_failure_count() {
    let app = TestApp::spawn().await;
    app.register("reset@example.test", false).await;
    fail_logins(&app, "reset@example.test", 9).await;
    assert_eq!(
        app.login("reset@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
    fail_logins(&app, "reset@example.test", 9).await;
    assert_eq!(
        app.login("reset@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn email_case_variants_share_one_counter_and_other_accounts_are_unaffected() {
    let app = TestApp::spawn().await;
    app.register("case@example.test", false).await;
    app.register("bystander@example.test", false).await;
    for variant in [
        "case@example.test",
        "CASE@example.test",
        " Case@Example.Test ",
    ]
    .iter()
    .cycle()
    .take(10)
    {
        let response = app.login(variant, WRONG).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_locked(app.login("case@EXAMPLE.test", PASSWORD).await).await;
    assert_eq!(
        app.login("bystander@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_addresses_lock_exactly_like_real_ones() {
    let app = TestApp::spawn().await;
    fail_logins(&app, "ghost@example.test", 10).await;
    assert_locked(app.login("ghost@example.test", WRONG).await).await;
}

#[tokio::test]
async fn two_instances_on_one_database_share_the_account_counter() {
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let first = TestApp::spawn_on(
        test_settings(&db_url, mail.port),
        mail.clone(),
        db_url.clone(),
    )
    .await;
    let second = TestApp::spawn_on(test_settings(&db_url, mail.port), mail, db_url).await;
    first.register("shared@example.test", false).await;
    fail_logins(&first, "shared@example.test", 5).await;
    fail_logins(&second, "shared@example.test", 5).await;
    assert_locked(first.login("shared@example.test", PASSWORD).await).await;
    assert_locked(second.login("shared@example.test", PASSWORD).await).await;
}

#[tokio::test]
async fn the_lock_ends_after_lockout_secs() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.login_failures_per_account = 2;
        s.rate_limit.lockout_secs = 1;
    })
    .await;
    app.register("brief@example.test", false).await;
    fail_logins(&app, "brief@example.test", 2).await;
    let response = app.login("brief@example.test", PASSWORD).await;
    assert_eq!(response.headers()["retry-after"], "1");
    problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        app.login("brief@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
}

// Multi-thread: the state under test is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_limit_answers_429_with_retry_after() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 5;
    })
    .await;
    app.register("busy@example.test", false).await;
    for _ in 0..4 {
        assert_eq!(
            app.login("busy@example.test", PASSWORD).await.status(),
            StatusCode::OK
        );
    }
    assert_locked(app.login("busy@example.test", PASSWORD).await).await;
    let response = app
        .post_json(
            "/register",
            &json!({"email": "new@example.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // Only the login routes are limited.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

// Multi-thread: the state under test is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_header_separates_clients_and_is_ignored_otherwise() {
    let trusting = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 2;
        s.rate_limit.client_ip_header = "X-Forwarded-For".into();
    })
    .await;
    let login = |app: &TestApp, forwarded: &'static str| {
        app.client
            .post(app.url("/login"))
            .header("x-forwarded-for", forwarded)
            .json(&json!({"email": "x@example.test", "password": WRONG}))
            .send()
    };
    for _ in 0..2 {
        assert_eq!(
            login(&trusting, "203.0.113.1").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login(&trusting, "203.0.113.1").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login(&trusting, "203.0.113.2").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let untrusting = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 2;
    })
    .await;
    for forwarded in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(
            login(&untrusting, forwarded).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login(&untrusting, "203.0.113.3").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a forged header must not buy a new allowance"
    );
}

#[tokio::test]
async fn with_rate_limits_switched_off_nothing_locks() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.enabled = false;
        s.rate_limit.requests_per_ip_per_minute = 1;
    })
    .await;
    app.register("free@example.test", false).await;
    fail_logins(&app, "free@example.test", 12).await;
    assert_eq!(
        app.login("free@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn common_passwords_and_the_users_own_email_are_refused_with_a_clear_422() {
    let app = TestApp::spawn().await;
    for (password, hint) in [
        ("password", "common"),
        ("Password1", "common"),
        ("12345678", "common"),
        ("qwertyuiop", "common"),
        ("mallory.smith", "email"),
    ] {
        let response = app
            .post_json(
                "/register",
                &json!({"email": "mallory.smith@example.test", "password": password}),
            )
            .await;
        let body = problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert_eq!(body["errors"][0]["field"], "password");
        assert!(message.contains(hint), "{password}: {message}");
    }
}

#[tokio::test]
async fn the_audit_trail_records_each_security_event_with_user_client_and_outcome() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.login_failures_per_account = 2;
    })
    .await;
    app.register("audit@example.test", true).await;
    let (challenge, code) = app.start_challenge("audit@example.test").await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    app.submit_code(&challenge, wrong).await;
    assert_eq!(
        app.submit_code(&challenge, &code).await.status(),
        StatusCode::OK
    );
    fail_logins(&app, "audit@example.test", 2).await;
    app.login("audit@example.test", PASSWORD).await;

    for (kind, count) in [
        ("user_registered", 1),
        ("code_sent", 1),
        ("code_rejected", 1),
        ("code_accepted", 1),
        ("login_failed", 2),
        ("login_throttled", 1),
    ] {
        app.db.expect_events(kind, count).await;
    }
    let client = app
        .db
        .text("SELECT client_ip FROM security_events WHERE kind = 'login_throttled'")
        .await;
    assert_eq!(client, "127.0.0.1");
    let outcome = app
        .db
        .text("SELECT outcome FROM security_events WHERE kind = 'login_throttled'")
        .await;
    assert_eq!(outcome, "throttled");
    let email = app
        .db
        .text("SELECT email FROM security_events WHERE kind = 'code_sent'")
        .await;
    assert_eq!(email, "audit@example.test");
    let locked = app
        .db
        .int("SELECT CAST(count(*) AS BIGINT) FROM security_events WHERE detail = 'account locked'")
        .await;
    assert_eq!(locked, 1);
}

#[tokio::test]
async fn api_responses_carry_security_headers() {
    let app = TestApp::spawn().await;
    let response = app.get("/users/me").await;
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    // Swagger UI needs its scripts: no API CSP there, but still no sniffing.
    let docs = app.get("/docs/").await;
    assert_eq!(docs.headers()["x-content-type-options"], "nosniff");
    assert!(docs.headers().get("content-security-policy").is_none());
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.http.header_timeout_secs = 1).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server kept a header-less connection open"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.http.body_timeout_secs = 1).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer within the body timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
}

#[tokio::test]
async fn a_panicking_handler_gives_a_500_problem_and_the_server_keeps_serving() {
    use axum::routing::get;
    let http = authd::Settings::defaults().http;
    let router = authd::http::with_common_layers(
        axum::Router::new()
            .route("/boom", get(boom))
            .route("/fine", get(|| async { "fine" })),
        &http,
        None,
        &[],
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, axum::ServiceExt::into_make_service(router)).await
    });
    let client = crate::helpers::http_client();
    let response = client.get(format!("{base}/boom")).send().await.unwrap();
    let body: Value = {
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        response.json().await.unwrap()
    };
    assert_eq!(body["code"], "internal_error");
    assert!(
        !body.to_string().contains("index out of bounds"),
        "no panic text leaks"
    );
    let fine = client.get(format!("{base}/fine")).send().await.unwrap();
    assert_eq!(fine.status(), StatusCode::OK);
}

async fn boom() -> &'static str {
    let items: Vec<&str> = Vec::new();
    // Indexing an empty vector panics at run time, as a bug in a handler would.
    items[0]
}
