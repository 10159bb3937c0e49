//! The HTTP contract: registration, login, /users/me, errors, docs and health.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, problem};

mod audit;

#[tokio::test]
async fn register_returns_201_with_location_and_the_user_without_any_hash() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/register",
            &json!({"email": "  Ada@Example.TEST ", "password": PASSWORD,
                    "first_name": "Ada", "last_name": "Lovelace"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["location"], "/users/me");
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], "ada@example.test");
    assert_eq!(user["first_name"], "Ada");
    assert_eq!(user["last_name"], "Lovelace");
    assert_eq!(user["two_factor_enabled"], false);
    assert!(uuid::Uuid::parse_str(user["id"].as_str().unwrap()).is_ok());
    assert!(chrono::DateTime::parse_from_rfc3339(user["created_at"].as_str().unwrap()).is_ok());
    let keys: Vec<&String> = user.as_object().unwrap().keys().collect();
    assert_eq!(
        keys.len(),
        9,
        "unexpected fields in {user}: nothing else, and never a hash"
    );
    let stored = app.db.text("SELECT password_hash FROM users").await;
    assert!(stored.starts_with("$2"), "the password is stored as bcrypt");
}

#[tokio::test]
async fn register_ignores_fields_it_does_not_own() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/register",
            &json!({"email": "eve@example.test", "password": PASSWORD,
                    "id": "00000000-0000-0000-0000-000000000001",
                    "created_at": "2000-01-01T00:00:00Z", "is_admin": true}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_ne!(user["id"], "00000000-0000-0000-0000-000000000001");
    assert!(!user["created_at"].as_str().unwrap().starts_with("2000"));
}

#[tokio::test]
async fn register_twice_with_another_case_is_409_email_taken() {
    let app = TestApp::spawn().await;
    app.register("grace@example.test", false).await;
    let response = app
        .post_json(
            "/register",
            &json!({"email": "GRACE@example.test", "password": PASSWORD}),
        )
        .await;
    problem(response, StatusCode::CONFLICT, "email_taken").await;
    let count = app
        .db
        .int("SELECT CAST(count(*) AS BIGINT) FROM users")
        .await;
    assert_eq!(count, 1);
}

#[tokio::test]
async fn racing_registrations_of_one_address_give_one_201_and_409s_never_500() {
    let app = TestApp::spawn().await;
    let app = &app;
    let attempts = (0..8).map(|i| {
        let email = if i % 2 == 0 {
            "race@example.test"
        } else {
            "RACE@example.test"
        };
        let body = json!({"email": email, "password": PASSWORD});
        async move { app.post_json("/register", &body).await }
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        7,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn invalid_registration_fields_are_422_with_one_error_per_field_and_store_nothing() {
    let app = TestApp::spawn().await;
    let cases = [
        (json!({"password": PASSWORD}), "email"),
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            "email",
        ),
        (
            json!({"email": "a@example.test\r\nBcc: x@example.test", "password": PASSWORD}),
            "email",
        ),
        (
            json!({"email": format!("{}@example.test", "a".repeat(250)), "password": PASSWORD}),
            "email",
        ),
        (json!({"email": "a@example.test"}), "password"),
        (
            json!({"email": "a@example.test", "password": "short"}),
            "password",
        ),
        (
            json!({"email": "a@example.test", "password": PASSWORD, "first_name": "x".repeat(101)}),
            "first_name",
        ),
        (
            json!({"email": "a@example.test", "password": PASSWORD, "last_name": "Bell\u{7}"}),
            "last_name",
        ),
        (json!({"email": 42, "password": PASSWORD}), "email"),
    ];
    for (body, field) in cases {
        let response = app.post_json("/register", &body).await;
        let problem = problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        let errors = problem["errors"].as_array().expect("errors array");
        assert!(
            errors
                .iter()
                .any(|e| e["field"] == field && e["message"].is_string()),
            "{body} -> {problem}"
        );
    }
    let count = app
        .db
        .int("SELECT CAST(count(*) AS BIGINT) FROM users")
        .await;
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_password_over_72_bytes_is_refused_never_truncated() {
    let app = TestApp::spawn().await;
    // Exactly 72 bytes, multi-byte characters included.
    let mut ok = String::new();
    for c in "Grüße aus Köln: zwölf Boxkämpfer jagen Viktor quer über den Sylter Deich".chars()
    {
        if ok.len() + c.len_utf8() > 72 {
            break;
        }
        ok.push(c);
    }
    while ok.len() < 72 {
        ok.push('x');
    }
    let too_long = format!("{ok}x"); // 73 bytes
    let response = app
        .post_json(
            "/register",
            &json!({"email": "long@example.test", "password": too_long}),
        )
        .await;
    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("72 bytes"), "{message}");

    let response = app
        .post_json(
            "/register",
            &json!({"email": "long@example.test", "password": ok}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let login = app.login("long@example.test", &ok).await;
    assert_eq!(login.status(), StatusCode::OK);
    // A longer password that shares the first 72 bytes must not log in.
    let login = app.login("long@example.test", &too_long).await;
    problem(login, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
}

// Multi-thread: the state under test is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_without_two_factor_returns_a_bearer_access_token_that_reads_users_me() {
    let app = TestApp::spawn().await;
    let user = app.register("alan@example.test", false).await;
    let response = app.login("ALAN@example.test", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["otp_required"], false);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert!(body.get("challenge_token").is_none());
    let token = body["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));

    let me = app.get_with_token("/users/me", token).await;
    assert_eq!(me.status(), StatusCode::OK);
    let me: Value = me.json().await.unwrap();
    let mut expected = user.clone();
    expected["recovery_codes_left"] = 0.into();
    assert_eq!(me, expected, "the User, and the recovery codes left");
    assert!(app.mail.messages().is_empty(), "no mail without 2FA");
}

// Multi-thread: the verified-token cache is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_users_remembered_access_token_is_refused_at_once() {
    let app = TestApp::spawn().await;
    app.register("gone@example.test", false).await;
    let token = app.access_token("gone@example.test").await;
    // Used once, the token is verified and remembered.
    assert_eq!(
        app.get_with_token("/users/me", &token).await.status(),
        StatusCode::OK
    );
    app.db
        .exec(
            "DELETE FROM users WHERE email = 'gone@example.test'",
            "DELETE FROM users WHERE email = 'gone@example.test'",
        )
        .await;
    let response = app.get_with_token("/users/me", &token).await;
    problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn login_accepts_username_as_an_alias_of_email() {
    let app = TestApp::spawn().await;
    app.register("alias@example.test", false).await;
    let response = app
        .post_json(
            "/login",
            &json!({"username": "alias@example.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_get_the_identical_401() {
    let app = TestApp::spawn().await;
    app.register("known@example.test", false).await;
    let wrong = app.login("known@example.test", "wrong password").await;
    let wrong_headers = wrong.headers().clone();
    let wrong = problem(wrong, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let unknown = app.login("nobody@example.test", PASSWORD).await;
    let unknown = problem(unknown, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(wrong, unknown);
    let malformed = app.login("not an email", PASSWORD).await;
    let malformed = problem(malformed, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(wrong, malformed);
    assert!(wrong_headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn login_with_missing_fields_is_422() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json("/login", &json!({"email": "a@example.test"}))
        .await;
    let body = problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "password");
}

// Multi-thread: the state under test is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_me_without_or_with_a_bad_token_is_401_with_www_authenticate() {
    let app = TestApp::spawn().await;
    let response = app.get("/users/me").await;
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    let response = app.get_with_token("/users/me", "garbage").await;
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains(r#"error="invalid_token""#),
        "{challenge}"
    );
    problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    let basic = app
        .client
        .get(app.url("/users/me"))
        .basic_auth("a", Some("b"))
        .send()
        .await
        .unwrap();
    problem(basic, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

// Multi-thread: the state under test is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_another_key_or_expired_is_refused() {
    use authd::token::{TokenKeys, TokenKind};
    let app = TestApp::spawn().await;
    let user = app.register("tok@example.test", false).await;
    let sub = uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();

    let foreign = TokenKeys::new(b"some-other-secret-some-other-secret!!", &app.settings.jwt)
        .issue(TokenKind::Access, sub, uuid::Uuid::new_v4())
        .unwrap();
    let response = app.get_with_token("/users/me", &foreign.token).await;
    problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    let ours = crate::helpers::server_keys(&app.settings).await;
    let expired = ours
        .issue_at(
            TokenKind::Access,
            sub,
            uuid::Uuid::new_v4(),
            chrono::Utc::now() - chrono::Duration::hours(2),
        )
        .unwrap();
    let response = app.get_with_token("/users/me", &expired.token).await;
    let body = problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert!(body["detail"].as_str().unwrap().contains("expired"));

    // Our key and in date, but naming no session: no login made it, so it opens nothing.
    let sessionless = ours
        .issue(TokenKind::Access, sub, uuid::Uuid::new_v4())
        .unwrap();
    let response = app.get_with_token("/users/me", &sessionless.token).await;
    problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let forged_session = ours.issue_access(sub, uuid::Uuid::now_v7()).unwrap();
    let response = app.get_with_token("/users/me", &forged_session.token).await;
    problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    let valid = app.access_token("tok@example.test").await;
    let response = app.get_with_token("/users/me", &valid).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn bodies_that_are_not_json_get_415_400_413_as_problems() {
    let app = TestApp::spawn().await;
    let no_type = app
        .client
        .post(app.url("/login"))
        .body(r#"{"email":"a@example.test","password":"x"}"#)
        .send()
        .await
        .unwrap();
    problem(
        no_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;

    let broken = app
        .client
        .post(app.url("/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(broken, StatusCode::BAD_REQUEST, "malformed_request").await;

    // Every route that reads a body limits it (axum's own default would take 2 MB).
    let huge = json!({"email": "a@example.test", "password": "x".repeat(70 * 1024)});
    for path in ["/register", "/login", "/login/otp"] {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth("not-checked-before-the-body")
            .json(&huge)
            .send()
            .await
            .unwrap();
        problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems_too() {
    let app = TestApp::spawn().await;
    problem(app.get("/nope").await, StatusCode::NOT_FOUND, "not_found").await;
    let response = app.get("/login").await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
}

#[tokio::test]
async fn health_ready_docs_and_openapi_are_served() {
    let app = TestApp::spawn().await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in ["/register", "/login", "/login/otp", "/users/me"] {
        assert!(spec["paths"].get(path).is_some(), "{path} missing");
    }
}

#[tokio::test]
async fn the_committed_openapi_json_equals_what_is_served() {
    let app = TestApp::spawn().await;
    let served: Value = app.get("/openapi.json").await.json().await.unwrap();
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
            .expect("openapi.json at the repository root"),
    )
    .unwrap();
    assert!(
        served == committed,
        "openapi.json is stale: regenerate it with `make openapi`"
    );
    assert_eq!(
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json")).unwrap(),
        authd::http::openapi::openapi_json(),
        "openapi.json is not formatted as generated: run `make openapi`"
    );
}
