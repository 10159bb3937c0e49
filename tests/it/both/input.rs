//! Hostile and unusual input: Unicode email spellings, control characters in passwords and
//! token claims, and tokens whose registered claims or header authd must refuse.

use std::time::Duration;

use assert_cmd::Command;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{PASSWORD, SECRET, TestApp, problem};

async fn user_count(app: &TestApp) -> i64 {
    app.db
        .int("SELECT CAST(count(*) AS BIGINT) FROM users")
        .await
}

async fn register_with(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.post_json("/register", &json!({"email": email, "password": password}))
        .await
}

async fn me(app: &TestApp, token: &str) -> reqwest::Response {
    app.get_with_token("/users/me", token).await
}

// ---- email normalisation ----

#[tokio::test]
async fn an_email_typed_precomposed_then_decomposed_is_one_account() {
    let app = TestApp::spawn().await;
    let nfc = "jos\u{e9}@example.test";
    let nfd = "jose\u{301}@example.test";
    let response = register_with(&app, nfc, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], nfc);

    let response = register_with(&app, nfd, PASSWORD).await;
    problem(response, StatusCode::CONFLICT, "email_taken").await;
    let response = register_with(&app, "JOSE\u{301}@Example.TEST", PASSWORD).await;
    problem(response, StatusCode::CONFLICT, "email_taken").await;
    assert_eq!(user_count(&app).await, 1);

    let token = app.access_token(nfd).await;
    let shown: Value = me(&app, &token).await.json().await.unwrap();
    assert_eq!(shown["email"], nfc);
}

#[tokio::test]
async fn a_unicode_domain_is_stored_and_shown_in_its_ascii_form() {
    let app = TestApp::spawn().await;
    let response = register_with(&app, "User@B\u{fc}cher.Example", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], "user@xn--bcher-kva.example");

    let response = register_with(&app, "user@xn--bcher-kva.example", PASSWORD).await;
    problem(response, StatusCode::CONFLICT, "email_taken").await;

    for spelling in [
        "user@b\u{fc}cher.example",
        "user@bu\u{308}cher.example",
        "USER@XN--BCHER-KVA.EXAMPLE",
    ] {
        let token = app.access_token(spelling).await;
        let shown: Value = me(&app, &token).await.json().await.unwrap();
        assert_eq!(shown["email"], "user@xn--bcher-kva.example", "{spelling}");
    }
}

#[tokio::test]
async fn a_non_ascii_upper_case_local_part_is_stored_lower_cased_within_the_database_check() {
    // The users table checks email = lower(btrim(email)); Rust's lower-casing must satisfy it.
    let app = TestApp::spawn().await;
    let response = register_with(&app, "\u{c9}MILE.\u{d8}RSTED@example.test", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], "\u{e9}mile.\u{f8}rsted@example.test");
    let token = app
        .access_token("\u{e9}mile.\u{f8}rsted@example.test")
        .await;
    assert_eq!(me(&app, &token).await.status(), StatusCode::OK);
}

// ---- control characters in passwords ----

#[test]
fn bcrypt_itself_takes_a_password_followed_by_nul_and_itself_for_the_password() {
    // Why the rule exists: the key schedule cycles "P\0", so "P\0P" is the same key.
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let doubled = format!("{PASSWORD}\0{PASSWORD}");
    assert!(bcrypt::verify(&doubled, &hash).unwrap());
    // authd's own check refuses it (and spends the same time on it).
    assert!(authd::password::verify_hash(PASSWORD.as_bytes(), &hash));
    assert!(!authd::password::verify_hash(doubled.as_bytes(), &hash));
}

#[tokio::test]
async fn a_password_followed_by_nul_and_itself_does_not_log_in() {
    let app = TestApp::spawn().await;
    app.register("nul@example.test", false).await;
    let response = app
        .login("nul@example.test", &format!("{PASSWORD}\0{PASSWORD}"))
        .await;
    problem(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    let response = app.login("nul@example.test", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn registering_a_password_with_nul_or_another_control_character_is_422_and_stores_nothing() {
    let app = TestApp::spawn().await;
    for password in [
        format!("{PASSWORD}\0"),
        "correct\thorse battery".to_string(),
        "correct\u{1b}[2Jhorse battery".to_string(),
        "correct horse\u{7f} battery".to_string(),
    ] {
        let response = register_with(&app, "ctl@example.test", &password).await;
        let body = problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        let errors = body["errors"].as_array().expect("errors array");
        assert!(
            errors.iter().any(|e| e["field"] == "password"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("control characters"))),
            "{password:?} -> {body}"
        );
    }
    assert_eq!(user_count(&app).await, 0);
}

// ---- tokens ----

/// Signs `header` and `claims` with the test secret, as anyone holding it could.
fn sign(header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{signature}")
}

fn claims_of(token: &str) -> Value {
    let segment = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

// Multi-thread: the state under test is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_me_refuses_a_token_with_crit_a_future_nbf_or_an_iat_from_the_future() {
    // HS256 signs, so the test can sign with the secret: under ES256 an HS256 token is only
    // taken when issued before the first key (the second of the server's start), which a login
    // on a busy machine is not.
    let app = TestApp::spawn_with(crate::smtp_sink::Behaviour::Accept, |s| {
        s.jwt.algorithm = authd::config::JwtAlgorithm::Hs256
    })
    .await;
    app.register("claims@example.test", false).await;
    let token = app.access_token("claims@example.test").await;
    let claims = claims_of(&token);
    let header = json!({"alg": "HS256", "typ": "at+jwt"});
    let now = chrono::Utc::now().timestamp();
    // Re-signed as it is, the token is still good: what follows differs only in one field.
    assert_eq!(
        me(&app, &sign(&header, &claims)).await.status(),
        StatusCode::OK
    );

    let crit = sign(
        &json!({"alg": "HS256", "typ": "at+jwt", "crit": ["exp"]}),
        &claims,
    );
    let mut later = claims.clone();
    later["nbf"] = json!(now + 120);
    let mut ahead = claims.clone();
    ahead["iat"] = json!(now + 3_600);
    for (what, forged) in [
        ("crit", crit),
        ("nbf", sign(&header, &later)),
        ("iat", sign(&header, &ahead)),
    ] {
        // Twice: a refused token is not remembered as verified either.
        for _ in 0..2 {
            let response = me(&app, &forged).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        }
    }
    assert_eq!(me(&app, &token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn token_inspect_shows_escape_sequences_in_claims_escaped_in_the_table() {
    let now = chrono::Utc::now().timestamp();
    let token = sign(
        &json!({"alg": "HS256", "typ": "at+jwt\u{1b}[31m"}),
        &json!({"iss": "authd", "sub": "x", "aud": "authd", "exp": now + 60, "iat": now,
                "jti": "j", "note": "\u{1b}[2Jcleared", "\u{1b}]0;title\u{7}": 1}),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authd"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AUTHD_") {
            cmd.env_remove(key);
        }
    }
    let data_dir =
        std::env::temp_dir().join(format!("authd-input-{}", uuid::Uuid::new_v4().simple()));
    cmd.env_remove("DATABASE_URL")
        .env("AUTHD_JWT__SECRET", SECRET)
        .env("AUTHD_DATA_DIR", &data_dir)
        .args(["token", "inspect", &token])
        .timeout(Duration::from_secs(60));
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        !output.stdout.contains(&0x1b) && !output.stdout.contains(&0x07),
        "raw control bytes on stdout: {:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("\\u{1b}[2Jcleared"), "{table}");
    assert!(table.contains("\\u{1b}]0;title\\u{7}"), "{table}");
}
