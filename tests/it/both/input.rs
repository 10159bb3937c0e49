//! Hostile and unusual input: Unicode email spellings, control characters in passwords and
//! token claims, invisible and reordering characters in names and addresses, and tokens whose
//! registered claims or header authd must refuse.

use std::time::Duration;

use assert_cmd::Command;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{PASSWORD, SECRET, TempDir, TestApp, admin, fresh_database, problem};

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
    let db_url = fresh_database().await;
    cmd.env_remove("DATABASE_URL")
        .env("AUTHD_JWT__SECRET", SECRET)
        .env("AUTHD_DATA_DIR", &data_dir)
        .args(["--database-url", &db_url, "token", "inspect", &token])
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

// ---- invisible and reordering characters ----

/// Right-to-left override, line separator, paragraph separator, zero-width space: each
/// reorders, breaks or hides what an admin reads.
const HIDDEN: [char; 4] = ['\u{202e}', '\u{2028}', '\u{2029}', '\u{200b}'];

#[tokio::test]
async fn registration_refuses_an_invisible_or_reordering_character_in_each_name_and_the_email() {
    let app = TestApp::spawn().await;
    for c in HIDDEN {
        for field in ["first_name", "last_name", "email"] {
            let mut body = json!({"email": "ada@example.test", "password": PASSWORD,
                                  "first_name": "Ada", "last_name": "Lovelace"});
            body[field] = json!(match field {
                "email" => format!("ad{c}a@example.test"),
                _ => format!("Ad{c}min"),
            });
            let response = app.post_json("/register", &body).await;
            let problem = problem(
                response,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
            )
            .await;
            let errors = problem["errors"].as_array().expect("errors array");
            let code_point = format!("U+{:04X}", u32::from(c));
            assert!(
                errors
                    .iter()
                    .any(|e| e["field"] == field
                        && e["message"].as_str().unwrap().contains(&code_point)),
                "{c:?} in {field}: {problem}"
            );
        }
    }
    assert_eq!(user_count(&app).await, 0);
}

#[tokio::test]
async fn a_login_with_a_reordering_character_in_the_address_is_audited_without_the_address() {
    let app = TestApp::spawn().await;
    app.register("root@example.test", false).await;
    let response = app.login("root\u{202e}@example.test", PASSWORD).await;
    problem(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    app.db.expect_events("login_failed", 1).await;
    assert_eq!(
        app.db
            .int(
                "SELECT CAST(count(*) AS BIGINT) FROM security_events \
                 WHERE kind = 'login_failed' AND email IS NULL AND user_id IS NULL"
            )
            .await,
        1,
        "the failure is recorded, naming no address and no account"
    );
    assert_eq!(
        app.db
            .int(
                "SELECT CAST(count(*) AS BIGINT) FROM security_events \
                 WHERE email LIKE '%\u{202e}%' OR detail LIKE '%\u{202e}%'"
            )
            .await,
        0
    );
}

/// Stdout of `authd ARGS` against the app's database.
async fn admin_stdout(app: &TestApp, data_dir: &TempDir, args: &[&str]) -> String {
    admin(&app.db_url, data_dir, args, "").await
}

#[tokio::test]
async fn admin_tables_and_json_escape_invisible_characters_already_stored() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    app.access_token("ada@example.test").await;
    app.db.expect_events("login_succeeded", 1).await;
    // Rows as an older version (or a hand-made import) may have stored them: the rules at
    // parsing cannot help, the output must.
    let users = "UPDATE users SET email = 'ad\u{202e}a@example.test', \
                 first_name = 'Ad\u{202e}min', last_name = 'Love\u{2028}lace\u{200b}'";
    app.db.exec(users, users).await;
    let sessions = "UPDATE sessions SET user_agent = 'agent\u{2029}\u{202e}x'";
    app.db.exec(sessions, sessions).await;
    let events =
        "UPDATE security_events SET email = 'root\u{202e}@example.test', detail = 'd\u{2029}'";
    app.db.exec(events, events).await;

    let data_dir = TempDir::new("authd-hidden");
    for (args, shown) in [
        (&["user", "list"][..], "ad\\u{202e}a@example.test"),
        (
            &["user", "list"],
            "Ad\\u{202e}min Love\\u{2028}lace\\u{200b}",
        ),
        (&["session", "list"], "ad\\u{202e}a@example.test"),
        (&["session", "list"], "agent\\u{2029}\\u{202e}x"),
        (&["audit"], "root\\u{202e}@example.test"),
        (&["audit"], "d\\u{2029}"),
    ] {
        let table = admin_stdout(&app, &data_dir, args).await;
        for c in HIDDEN {
            assert!(!table.contains(c), "{args:?} printed {c:?} raw: {table}");
        }
        assert!(table.contains(shown), "{args:?} lacks {shown}: {table}");
    }
    for args in [
        &["user", "list", "--format", "json"][..],
        &["session", "list", "--format", "json"],
        &["audit", "--format", "json"],
    ] {
        let text = admin_stdout(&app, &data_dir, args).await;
        for c in HIDDEN {
            assert!(!text.contains(c), "{args:?} printed {c:?} raw: {text}");
        }
        assert!(text.contains("\\u202e"), "{args:?}: {text}");
        // Still the stored text to a JSON parser.
        let parsed: Value = serde_json::from_str(&text).unwrap();
        assert!(
            parsed.to_string().contains('\u{202e}'),
            "{args:?}: {parsed}"
        );
    }
}
