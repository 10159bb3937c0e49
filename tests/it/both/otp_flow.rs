//! The second step: emailed codes, challenge tokens, single use, attempt limits, races.

use authd::token::{TokenKeys, TokenKind};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, SECRET, TestApp, problem};
use crate::smtp_sink::Behaviour;

/// A code guaranteed to differ from `code`.
fn wrong(code: &str) -> String {
    let first = (code.as_bytes()[0] - b'0' + 1) % 10;
    format!("{first}{}", &code[1..])
}

// Multi-thread: the state under test is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_factor_login_emails_a_code_that_exchanges_for_an_access_token() {
    let app = TestApp::spawn().await;
    let user = app.register("ada@example.test", true).await;
    let response = app.login("ada@example.test", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["otp_required"], true);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert!(body.get("access_token").is_none());
    let challenge = body["challenge_token"].as_str().unwrap();

    let message = app.mail.wait_for("ada@example.test", 1).await;
    let code = crate::smtp_sink::extract_code(&message);
    assert_eq!(app.mail.messages().len(), 1, "exactly one email per login");

    let response = app.submit_code(challenge, &code).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    let access = body["access_token"].as_str().unwrap();
    let me: Value = app
        .get_with_token("/users/me", access)
        .await
        .json()
        .await
        .unwrap();
    let mut expected = user.clone();
    expected["recovery_codes_left"] = 0.into();
    assert_eq!(me, expected);
}

#[tokio::test]
async fn the_code_is_never_in_the_challenge_token_nor_stored_in_clear() {
    let app = TestApp::spawn().await;
    app.register("sec@example.test", true).await;
    let (challenge, code) = app.start_challenge("sec@example.test").await;
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(&challenge)
        .unwrap()
        .claims;
    let keys: Vec<&String> = claims.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["aud", "exp", "iat", "iss", "jti", "sub"]);
    assert!(!challenge.contains(&code));
    assert!(!claims.to_string().contains(&code));
    let header = jsonwebtoken::decode_header(&challenge).unwrap();
    assert_ne!(header.typ.as_deref(), Some("at+jwt"));

    let stored = app.db.bytes("SELECT code_hash FROM otp_challenges").await;
    assert_eq!(stored.len(), 32, "an HMAC-SHA256, not the code");
    assert!(!String::from_utf8_lossy(&stored).contains(&code));
}

#[tokio::test]
async fn a_code_works_once() {
    let app = TestApp::spawn().await;
    app.register("once@example.test", true).await;
    let (challenge, code) = app.start_challenge("once@example.test").await;
    assert_eq!(
        app.submit_code(&challenge, &code).await.status(),
        StatusCode::OK
    );
    let again = app.submit_code(&challenge, &code).await;
    problem(again, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn login_with_wrong_code_five_times_kills_the_challenge() {
    let app = TestApp::spawn().await;
    app.register("guess@example.test", true).await;
    let (challenge, code) = app.start_challenge("guess@example.test").await;
    let bad = wrong(&code);
    for remaining in (0..5).rev() {
        let response = app.submit_code(&challenge, &bad).await;
        let body = problem(response, StatusCode::UNAUTHORIZED, "invalid_otp").await;
        let detail = body["detail"].as_str().unwrap();
        if remaining > 0 {
            assert!(detail.contains(&remaining.to_string()), "{detail}");
        }
    }
    let right = app.submit_code(&challenge, &code).await;
    problem(right, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn the_attempt_limit_is_configurable() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.otp.max_attempts = 2).await;
    app.register("two@example.test", true).await;
    let (challenge, code) = app.start_challenge("two@example.test").await;
    for _ in 0..2 {
        let response = app.submit_code(&challenge, &wrong(&code)).await;
        problem(response, StatusCode::UNAUTHORIZED, "invalid_otp").await;
    }
    let right = app.submit_code(&challenge, &code).await;
    problem(right, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn parallel_guesses_cannot_exceed_the_attempt_limit() {
    let app = TestApp::spawn().await;
    app.register("swarm@example.test", true).await;
    let (challenge, code) = app.start_challenge("swarm@example.test").await;
    let bad = wrong(&code);
    let guesses = (0..30).map(|_| app.submit_code(&challenge, &bad));
    let responses = futures::future::join_all(guesses).await;
    let mut counted = 0;
    for response in responses {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = response.json().await.unwrap();
        if body["code"] == "invalid_otp" {
            counted += 1;
        } else {
            assert_eq!(body["code"], "invalid_token");
        }
    }
    assert_eq!(counted, 5, "exactly max_attempts guesses were counted");
    let attempts = app
        .db
        .int("SELECT CAST(attempts AS BIGINT) FROM otp_challenges")
        .await;
    assert_eq!(attempts, 5);
    let right = app.submit_code(&challenge, &code).await;
    problem(right, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn parallel_submissions_of_the_right_code_mint_exactly_one_access_token() {
    let app = TestApp::spawn().await;
    app.register("twice@example.test", true).await;
    let (challenge, code) = app.start_challenge("twice@example.test").await;
    let submissions = (0..20).map(|_| app.submit_code(&challenge, &code));
    let statuses: Vec<StatusCode> = futures::future::join_all(submissions)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::UNAUTHORIZED)
    );
}

#[tokio::test]
async fn a_new_login_retires_the_earlier_challenge() {
    let app = TestApp::spawn().await;
    app.register("again@example.test", true).await;
    let (first, first_code) = app.start_challenge("again@example.test").await;
    let (second, second_code) = app.start_challenge("again@example.test").await;
    let old = app.submit_code(&first, &first_code).await;
    problem(old, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_eq!(
        app.submit_code(&second, &second_code).await.status(),
        StatusCode::OK
    );
}

// Multi-thread: the state under test is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_kinds_cannot_be_confused() {
    let app = TestApp::spawn().await;
    app.register("plain@example.test", false).await;
    app.register("twofa@example.test", true).await;
    let access = app.access_token("plain@example.test").await;
    let (challenge, code) = app.start_challenge("twofa@example.test").await;

    // A challenge token does not open /users/me ...
    let response = app.get_with_token("/users/me", &challenge).await;
    problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
    // ... and an access token is not a challenge token.
    let response = app.submit_code(&access, &code).await;
    problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    // Forgeries signed with the real key that differ from a genuine token in only the header's
    // `typ` or only the `aud` claim: each verifier must check both, or one of them lets a
    // token of the other kind through.
    let keys = TokenKeys::new(SECRET.as_bytes(), &app.settings.jwt);
    let signer = crate::helpers::server_signer(&app.settings).await;
    let (access_typ, challenge_typ) = (TokenKind::Access.typ(), TokenKind::Challenge.typ());
    let access_aud = keys.audience(TokenKind::Access).to_owned();
    let challenge_aud = keys.audience(TokenKind::Challenge).to_owned();
    // Control: re-signed unchanged, both are accepted, so a refusal below is the edit's doing.
    let resigned = resign(&signer, &access, access_typ, None);
    assert_eq!(
        app.get_with_token("/users/me", &resigned).await.status(),
        StatusCode::OK
    );
    let forgeries = [
        (
            "access token with the challenge typ",
            resign(&signer, &access, challenge_typ, None),
        ),
        (
            "access token with the challenge aud",
            resign(&signer, &access, access_typ, Some(&challenge_aud)),
        ),
        (
            "challenge token with the access typ",
            resign(&signer, &challenge, access_typ, None),
        ),
        (
            "challenge token with the access aud",
            resign(&signer, &challenge, challenge_typ, Some(&access_aud)),
        ),
    ];
    for (what, forged) in &forgeries {
        let response = app.get_with_token("/users/me", forged).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "/users/me took the {what}"
        );
        problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
        let response = app.submit_code(forged, &code).await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "/login/otp took the {what}"
        );
        problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    // The re-signed challenge, unchanged, is accepted (it is the same challenge; checked last,
    // since it uses the challenge up).
    let resigned_challenge = resign(&signer, &challenge, challenge_typ, None);
    // The challenge itself still works afterwards: confusion attempts did not consume it.
    assert_eq!(
        app.submit_code(&resigned_challenge, &code).await.status(),
        StatusCode::OK
    );
}

/// `token`'s claims signed again with the test key under header `typ`, with `aud` replaced
/// when given.
fn resign(signer: &Signer, token: &str, typ: &str, aud: Option<&str>) -> String {
    let mut claims = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
        .unwrap()
        .claims;
    if let Some(aud) = aud {
        claims["aud"] = json!(aud);
    }
    let (kid, algorithm, key) = signer;
    let mut header = jsonwebtoken::Header::new(*algorithm);
    header.typ = Some(typ.to_owned());
    header.kid = Some(kid.clone());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// The server's current key: `kid`, algorithm, private half.
type Signer = (String, jsonwebtoken::Algorithm, jsonwebtoken::EncodingKey);

#[tokio::test]
async fn otp_endpoint_errors_missing_token_bad_format_and_forged_challenge() {
    let app = TestApp::spawn().await;
    let user = app.register("forge@example.test", true).await;
    let response = app.post_json("/login/otp", &json!({"otp": "123456"})).await;
    problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;

    let (challenge, _code) = app.start_challenge("forge@example.test").await;
    let response = app
        .post_json_with_token("/login/otp", &challenge, &json!({"otp": "12ab56"}))
        .await;
    problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let response = app
        .post_json_with_token("/login/otp", &challenge, &json!({}))
        .await;
    problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;

    // A correctly signed challenge token for a challenge that does not exist.
    let sub = uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
    let forged = crate::helpers::server_keys(&app.settings)
        .await
        .issue(TokenKind::Challenge, sub, uuid::Uuid::new_v4())
        .unwrap();
    let response = app.submit_code(&forged.token, "123456").await;
    problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn an_expired_challenge_is_refused_even_with_the_right_code() {
    let app = TestApp::spawn().await;
    app.register("late@example.test", true).await;
    let (challenge, code) = app.start_challenge("late@example.test").await;
    app.db.expire_challenges().await;
    let response = app.submit_code(&challenge, &code).await;
    problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn switching_two_factor_off_changes_the_next_login() {
    let app = TestApp::spawn().await;
    app.register("switch@example.test", true).await;
    let data_dir = crate::helpers::TempDir::new("authd-switch");
    crate::helpers::admin(
        &app.db_url,
        &data_dir,
        &["user", "set-2fa", "switch@example.test", "off"],
        "",
    )
    .await;
    let body: Value = app
        .login("switch@example.test", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["otp_required"], false);
    assert!(body["access_token"].is_string());
}

#[tokio::test]
async fn the_file_mail_transport_writes_one_eml_per_code_that_logs_in() {
    let guard = crate::helpers::TempDir::new("authd-mail");
    let dir = guard.path().join("mail");
    let mail_dir = dir.clone();
    let app = TestApp::spawn_with(Behaviour::Accept, move |s| {
        s.mail.transport = authd::config::MailTransport::File;
        s.mail.file_dir = mail_dir;
    })
    .await;
    app.register("files@example.test", true).await;
    let body: Value = app
        .login("files@example.test", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let challenge = body["challenge_token"].as_str().unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    // The registration's verification email and the login's code.
    assert_eq!(files.len(), 2, "{files:?}");
    // The messages carry live codes: only authd's user may read them.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    let messages: Vec<_> = files
        .iter()
        .map(|file| {
            assert_eq!(file.extension().unwrap(), "eml");
            assert_eq!(mode(file), 0o600);
            crate::smtp_sink::Received {
                rcpt: vec!["files@example.test".into()],
                data: std::fs::read_to_string(file).unwrap(),
            }
        })
        .collect();
    let message = messages
        .into_iter()
        .find(|m| m.subject().contains("sign-in code"))
        .expect("the login's code is one of the files");
    assert!(message.data.contains("To: files@example.test"));
    let code = crate::smtp_sink::extract_code(&message);
    assert_eq!(
        app.submit_code(challenge, &code).await.status(),
        StatusCode::OK
    );
    assert!(app.mail.messages().is_empty(), "nothing went over SMTP");
}
