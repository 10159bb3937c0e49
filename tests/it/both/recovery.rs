//! The account lifecycle end to end, with the real SMTP sink: proving the address, password
//! reset and change, email change; single use, expiry, attempts, parallel use, flood limits and
//! answers that say nothing about which addresses have accounts.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, TempDir, TestApp, admin, admin_output, admin_output_with, problem, refused_line,
};
use crate::smtp_sink::{Behaviour, Received};

const NEW_PASSWORD: &str = "a brand new passphrase";

/// Test settings with no per-address limit in the way and no minimum gap between two account
/// emails (the tests of the limits set their own).
fn open_limits(s: &mut authd::config::Settings) {
    s.rate_limit.requests_per_ip_per_minute = 100_000;
    s.verification.resend_interval_secs = 0;
    s.verification.max_per_day = 100;
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(Behaviour::Accept, open_limits).await
}

/// Registers `email` and returns the verification email registration sent.
async fn register_for_mail(app: &TestApp, email: &str, two_factor: bool) -> Received {
    let response = app
        .post_json(
            "/register",
            &json!({"email": email, "password": PASSWORD, "two_factor_enabled": two_factor}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email_verified"], false, "{user}");
    assert_eq!(user["email_verified_at"], Value::Null, "{user}");
    app.mail.wait_for(email, 1).await
}

fn code_of(message: &Received) -> String {
    message
        .code()
        .unwrap_or_else(|| panic!("no code in {}", message.text()))
}

fn token_of(message: &Received) -> String {
    message
        .token()
        .unwrap_or_else(|| panic!("no link token in {}", message.text()))
}

async fn me(app: &TestApp, access_token: &str) -> Value {
    let response = app.get_with_token("/users/me", access_token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Asks for a reset of `email` and returns the reset email (the `n`-th to the address).
async fn forgot(app: &TestApp, email: &str, n: usize) -> Received {
    let response = app
        .post_json("/password/forgot", &json!({"email": email}))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.mail.wait_for(email, n).await
}

/// Logs in a user without a second step; (access token, refresh token).
async fn login_tokens(app: &TestApp, email: &str, password: &str) -> (String, String) {
    let response = app.login(email, password).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn registration_emails_a_code_that_proves_the_address_once() {
    let app = spawn().await;
    let message = register_for_mail(&app, "ada@example.test", false).await;
    assert!(message.subject().len() < 50, "{}", message.subject());
    let code = code_of(&message);
    assert!(
        message.token().is_some(),
        "the email also has a link: {}",
        message.text()
    );
    let response = app
        .post_json(
            "/email/verify",
            &json!({"email": "ADA@example.test", "code": code}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email_verified"], true, "{user}");
    assert!(user["email_verified_at"].is_string(), "{user}");
    let access = app.access_token("ada@example.test").await;
    assert_eq!(me(&app, &access).await["email_verified"], true);
    // Used once; a second use is refused like any wrong code.
    problem(
        app.post_json(
            "/email/verify",
            &json!({"email": "ada@example.test", "code": code}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    app.db.expect_events("email_verified", 1).await;
}

#[tokio::test]
async fn the_links_token_proves_the_address_and_works_once() {
    let app = spawn().await;
    let message = register_for_mail(&app, "link@example.test", false).await;
    let token = token_of(&message);
    assert!(
        message
            .link()
            .unwrap()
            .starts_with(&format!("{}/verify-email?token=", app.base)),
        "{}",
        message.text()
    );
    let response = app
        .post_json("/email/verify", &json!({"token": token}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap()["email_verified"],
        true
    );
    problem(
        app.post_json("/email/verify", &json!({"token": token}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    // The token is stored only as a keyed hash.
    assert_eq!(
        app.db
            .int("SELECT CAST(count(*) AS BIGINT) FROM account_codes WHERE length(token_hash) = 32")
            .await,
        1
    );
}

#[tokio::test]
async fn five_wrong_codes_kill_a_verification_code_even_sent_at_once() {
    let app = spawn().await;
    let message = register_for_mail(&app, "guess@example.test", false).await;
    let code = code_of(&message);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let body = json!({"email": "guess@example.test", "code": wrong});
    let answers = join_all((0..12).map(|_| app.post_json("/email/verify", &body))).await;
    for answer in answers {
        problem(answer, StatusCode::BAD_REQUEST, "invalid_code").await;
    }
    assert_eq!(
        app.db
            .int("SELECT CAST(max(attempts) AS BIGINT) FROM account_codes")
            .await,
        5,
        "parallel guesses never pass the limit"
    );
    // Now even the right code is refused: a new one must be asked for.
    problem(
        app.post_json(
            "/email/verify",
            &json!({"email": "guess@example.test", "code": code}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    app.db.expect_events("account_code_rejected", 5).await;
}

#[tokio::test]
async fn an_expired_code_and_link_are_refused() {
    let app = spawn().await;
    let message = register_for_mail(&app, "late@example.test", false).await;
    app.db
        .exec(
            "UPDATE account_codes SET expires_at = now() - interval '1 second'",
            "UPDATE account_codes SET expires_at = expires_at - 100000000000",
        )
        .await;
    for body in [
        json!({"email": "late@example.test", "code": code_of(&message)}),
        json!({"token": token_of(&message)}),
    ] {
        problem(
            app.post_json("/email/verify", &body).await,
            StatusCode::BAD_REQUEST,
            "invalid_code",
        )
        .await;
    }
    // A reset code past password.reset_ttl_secs too.
    let reset = forgot(&app, "late@example.test", 2).await;
    app.db
        .exec(
            "UPDATE account_codes SET expires_at = now() - interval '1 second'",
            "UPDATE account_codes SET expires_at = expires_at - 100000000000",
        )
        .await;
    problem(
        app.post_json(
            "/password/reset",
            &json!({"email": "late@example.test", "code": code_of(&reset), "new_password": NEW_PASSWORD}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
}

#[tokio::test]
async fn verification_requests_must_name_one_proof() {
    let app = spawn().await;
    for body in [
        json!({}),
        json!({"email": "a@example.test"}),
        json!({"code": "123456"}),
        json!({"email": "a@example.test", "code": "123456", "token": "x"}),
        json!({"email": "a@example.test", "code": "12345"}),
    ] {
        problem(
            app.post_json("/email/verify", &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    // An unknown address, a made-up token: the same answer as a wrong code.
    problem(
        app.post_json(
            "/email/verify",
            &json!({"email": "nobody@example.test", "code": "123456"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    problem(
        app.post_json("/email/verify", &json!({"token": "x".repeat(5000)}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
}

/// Status, body and headers but the ones that differ per response (its id and date).
async fn answer_of(response: reqwest::Response) -> (StatusCode, Vec<(String, String)>, String) {
    let status = response.status();
    let headers = response
        .headers()
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "x-request-id" | "date"))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    (status, headers, response.text().await.unwrap())
}

#[tokio::test]
async fn resend_answers_alike_for_every_address_and_sends_only_to_an_unverified_account() {
    let app = spawn().await;
    let first = register_for_mail(&app, "waiting@example.test", false).await;
    app.register("verified@example.test", false).await;
    admin(
        &app.db_url,
        &TempDir::new("authd-recovery"),
        &["user", "verify-email", "verified@example.test"],
        "",
    )
    .await;
    let mut answers = Vec::new();
    for email in [
        "waiting@example.test",
        "verified@example.test",
        "nobody@example.test",
    ] {
        answers.push(
            answer_of(
                app.post_json("/email/verify/resend", &json!({"email": email}))
                    .await,
            )
            .await,
        );
    }
    assert_eq!(answers[0].0, StatusCode::ACCEPTED);
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
    app.wait_for_background_mail().await;
    let second = app.mail.wait_for("waiting@example.test", 2).await;
    assert!(app.mail.messages_to("verified@example.test").is_empty());
    assert!(app.mail.messages_to("nobody@example.test").is_empty());
    // Only the newest email works.
    problem(
        app.post_json("/email/verify", &json!({"token": token_of(&first)}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    let response = app
        .post_json("/email/verify", &json!({"token": token_of(&second)}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_burst_of_resends_sends_one_email_a_minute_and_a_few_a_day() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 100_000;
        s.verification.max_per_day = 3;
    })
    .await;
    register_for_mail(&app, "flood@example.test", false).await;
    let body = json!({"email": "flood@example.test"});
    let answers = join_all((0..20).map(|_| app.post_json("/email/verify/resend", &body))).await;
    assert!(answers.iter().all(|a| a.status() == StatusCode::ACCEPTED));
    app.wait_for_background_mail().await;
    // Registration's email started the minute: nothing more within it.
    assert_eq!(app.mail.messages_to("flood@example.test").len(), 1);
    // A patient sender: each minute later one more, up to the day's three.
    for _ in 0..4 {
        app.db.end_locks().await;
        app.post_json(
            "/email/verify/resend",
            &json!({"email": "flood@example.test"}),
        )
        .await;
        app.wait_for_background_mail().await;
    }
    assert_eq!(app.mail.messages_to("flood@example.test").len(), 3);
    // 20 in the burst (the minute), then two past the day's three.
    app.db.expect_events("account_mail_limited", 22).await;
}

#[tokio::test]
async fn required_verification_refuses_only_the_right_password_and_sends_no_code() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        open_limits(s);
        s.registration.require_verified_email = true;
    })
    .await;
    let message = register_for_mail(&app, "strict@example.test", true).await;
    // A wrong password says nothing about the address.
    problem(
        app.login("strict@example.test", "not the password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    problem(
        app.login("strict@example.test", PASSWORD).await,
        StatusCode::FORBIDDEN,
        "email_not_verified",
    )
    .await;
    app.db.expect_events("login_unverified", 1).await;
    assert_eq!(
        app.mail.messages_to("strict@example.test").len(),
        1,
        "no second-step code went to the unproven address"
    );
    let response = app
        .post_json("/email/verify", &json!({"token": token_of(&message)}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app.login("strict@example.test", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap()["otp_required"],
        true
    );
}

#[tokio::test]
async fn without_required_verification_an_unverified_account_logs_in() {
    let app = spawn().await;
    register_for_mail(&app, "relaxed@example.test", false).await;
    login_tokens(&app, "relaxed@example.test", PASSWORD).await;
}

#[tokio::test]
async fn a_reset_code_sets_a_new_password_ends_every_session_and_clears_the_lock() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        open_limits(s);
        s.rate_limit.login_failures_per_account = 2;
    })
    .await;
    app.register("reset@example.test", false).await;
    let (access, refresh) = login_tokens(&app, "reset@example.test", PASSWORD).await;
    for _ in 0..2 {
        app.login("reset@example.test", "not the password").await;
    }
    problem(
        app.login("reset@example.test", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    let message = forgot(&app, "reset@example.test", 1).await;
    let response = app
        .post_json(
            "/password/reset",
            &json!({"email": "reset@example.test", "code": code_of(&message), "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // Every session ended at once.
    problem(
        app.get_with_token("/users/me", &access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    problem(
        app.post_json("/token/refresh", &json!({"refresh_token": refresh}))
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    // The lock is gone, the new password works and the old one does not.
    login_tokens(&app, "reset@example.test", NEW_PASSWORD).await;
    problem(
        app.login("reset@example.test", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let notice = app.mail.wait_for("reset@example.test", 2).await;
    assert_eq!(notice.code(), None, "a notice carries no code");
    assert!(
        notice.subject().to_lowercase().contains("password"),
        "{}",
        notice.subject()
    );
    app.db.expect_events("password_reset", 1).await;
}

#[tokio::test]
async fn a_reset_by_link_keeps_the_second_step() {
    let app = spawn().await;
    app.register("twostep@example.test", true).await;
    let message = forgot(&app, "twostep@example.test", 1).await;
    let response = app
        .post_json(
            "/password/reset",
            &json!({"token": token_of(&message), "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app.login("twostep@example.test", NEW_PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap()["otp_required"],
        true
    );
}

#[tokio::test]
async fn a_weak_new_password_is_refused_and_leaves_the_code_usable() {
    let app = spawn().await;
    app.register("weak@example.test", false).await;
    let message = forgot(&app, "weak@example.test", 1).await;
    let code = code_of(&message);
    for weak in ["short", "password123", "weak@example.test"] {
        problem(
            app.post_json(
                "/password/reset",
                &json!({"email": "weak@example.test", "code": code, "new_password": weak}),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    let response = app
        .post_json(
            "/password/reset",
            &json!({"email": "weak@example.test", "code": code, "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_parallel_resets_with_one_code_exactly_one_succeeds() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        open_limits(s);
        s.password.max_queue = 100;
    })
    .await;
    app.register("race@example.test", false).await;
    let message = forgot(&app, "race@example.test", 1).await;
    let code = code_of(&message);
    let bodies: Vec<Value> = (0..8)
        .map(|n| json!({"email": "race@example.test", "code": code, "new_password": format!("{NEW_PASSWORD} {n}")}))
        .collect();
    let answers = join_all(
        bodies
            .iter()
            .map(|body| app.post_json("/password/reset", body)),
    )
    .await;
    let winners: Vec<usize> = answers
        .iter()
        .enumerate()
        .filter(|(_, a)| a.status() == StatusCode::OK)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    for answer in answers {
        if answer.status() != StatusCode::OK {
            problem(answer, StatusCode::BAD_REQUEST, "invalid_code").await;
        }
    }
    login_tokens(
        &app,
        "race@example.test",
        &format!("{NEW_PASSWORD} {}", winners[0]),
    )
    .await;
    app.db.expect_events("password_reset", 1).await;
}

#[tokio::test]
async fn forgot_answers_alike_for_every_address_and_mails_only_an_account() {
    let app = spawn().await;
    app.register("known@example.test", false).await;
    let known = answer_of(
        app.post_json("/password/forgot", &json!({"email": "known@example.test"}))
            .await,
    )
    .await;
    let unknown = answer_of(
        app.post_json(
            "/password/forgot",
            &json!({"email": "unknown@example.test"}),
        )
        .await,
    )
    .await;
    assert_eq!(known.0, StatusCode::ACCEPTED);
    assert_eq!(known, unknown);
    app.wait_for_background_mail().await;
    assert_eq!(app.mail.messages_to("known@example.test").len(), 1);
    assert!(app.mail.messages_to("unknown@example.test").is_empty());
    problem(
        app.post_json("/password/forgot", &json!({"email": "not an address"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn a_code_from_another_purpose_or_account_does_not_reset() {
    let app = spawn().await;
    let verification = register_for_mail(&app, "mixed@example.test", false).await;
    problem(
        app.post_json(
            "/password/reset",
            &json!({"token": token_of(&verification), "new_password": NEW_PASSWORD}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    app.register("other@example.test", false).await;
    let reset = forgot(&app, "other@example.test", 1).await;
    problem(
        app.post_json(
            "/password/reset",
            &json!({"email": "mixed@example.test", "code": code_of(&reset), "new_password": NEW_PASSWORD}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    login_tokens(&app, "mixed@example.test", PASSWORD).await;
}

#[tokio::test]
async fn changing_the_password_needs_the_current_one_and_ends_the_other_sessions() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        open_limits(s);
        s.rate_limit.login_failures_per_account = 3;
    })
    .await;
    app.register("change@example.test", false).await;
    let (current, _) = login_tokens(&app, "change@example.test", PASSWORD).await;
    let (other, _) = login_tokens(&app, "change@example.test", PASSWORD).await;
    let change = |from: &str| json!({"current_password": from, "new_password": NEW_PASSWORD});
    for _ in 0..2 {
        problem(
            app.post_json_with_token("/password/change", &current, &change("wrong one"))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    app.db.expect_events("password_change_failed", 2).await;
    let response = app
        .post_json_with_token("/password/change", &current, &change(PASSWORD))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(me(&app, &current).await["email"], "change@example.test");
    problem(
        app.get_with_token("/users/me", &other).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    login_tokens(&app, "change@example.test", NEW_PASSWORD).await;
    app.mail.wait_for("change@example.test", 1).await;
    app.db.expect_events("password_changed", 1).await;
}

#[tokio::test]
async fn wrong_current_passwords_lock_the_account_like_failed_logins() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        open_limits(s);
        s.rate_limit.login_failures_per_account = 3;
    })
    .await;
    app.register("locked@example.test", false).await;
    let (access, _) = login_tokens(&app, "locked@example.test", PASSWORD).await;
    let wrong = json!({"current_password": "wrong one", "new_password": NEW_PASSWORD});
    let answers =
        join_all((0..6).map(|_| app.post_json_with_token("/password/change", &access, &wrong)))
            .await;
    let locked = answers
        .iter()
        .filter(|a| a.status() == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(locked, 3, "{answers:?}");
    problem(
        app.login("locked@example.test", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    // Even the right one is refused while the lock lasts...
    let right = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    problem(
        app.post_json_with_token("/password/change", &access, &right)
            .await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    // ...and taken once it is over.
    app.db.end_locks().await;
    let response = app
        .post_json_with_token("/password/change", &access, &right)
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    login_tokens(&app, "locked@example.test", NEW_PASSWORD).await;
}

#[tokio::test]
async fn an_email_change_moves_the_account_only_once_the_new_address_is_proven() {
    let app = spawn().await;
    app.register("old@example.test", false).await;
    let (access, _) = login_tokens(&app, "old@example.test", PASSWORD).await;
    let response = app
        .post_json_with_token(
            "/email/change",
            &access,
            &json!({"new_email": "new@example.test"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let code = code_of(&app.mail.wait_for("new@example.test", 1).await);
    let notice = app.mail.wait_for("old@example.test", 1).await;
    assert_eq!(notice.code(), None);
    assert!(
        notice.text().contains("new@example.test"),
        "{}",
        notice.text()
    );
    // Nothing changed yet.
    assert_eq!(me(&app, &access).await["email"], "old@example.test");
    let response = app
        .post_json_with_token("/email/change/confirm", &access, &json!({"code": code}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], "new@example.test");
    assert_eq!(user["email_verified"], true);
    login_tokens(&app, "new@example.test", PASSWORD).await;
    problem(
        app.login("old@example.test", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    app.db.expect_events("email_changed", 1).await;
}

#[tokio::test]
async fn an_email_change_link_confirms_through_the_verification_route() {
    let app = spawn().await;
    app.register("before@example.test", false).await;
    let (access, _) = login_tokens(&app, "before@example.test", PASSWORD).await;
    app.post_json_with_token(
        "/email/change",
        &access,
        &json!({"new_email": "after@example.test"}),
    )
    .await;
    let message = app.mail.wait_for("after@example.test", 1).await;
    let response = app
        .post_json("/email/verify", &json!({"token": token_of(&message)}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap()["email"],
        "after@example.test"
    );
}

#[tokio::test]
async fn an_email_change_to_a_taken_address_answers_alike_and_only_warns_its_owner() {
    let app = spawn().await;
    app.register("mover@example.test", false).await;
    app.register("owner@example.test", false).await;
    let (access, _) = login_tokens(&app, "mover@example.test", PASSWORD).await;
    let taken = answer_of(
        app.post_json_with_token(
            "/email/change",
            &access,
            &json!({"new_email": "owner@example.test"}),
        )
        .await,
    )
    .await;
    let free = answer_of(
        app.post_json_with_token(
            "/email/change",
            &access,
            &json!({"new_email": "free@example.test"}),
        )
        .await,
    )
    .await;
    assert_eq!(taken.0, StatusCode::ACCEPTED);
    assert_eq!(taken, free);
    app.wait_for_background_mail().await;
    let warning = app.mail.wait_for("owner@example.test", 1).await;
    assert_eq!(warning.code(), None, "the owner gets a notice, not a code");
    assert_eq!(warning.token(), None);
    // The mover's old address got a notice each time, whichever the new address was.
    assert_eq!(app.mail.messages_to("mover@example.test").len(), 2);
    assert_eq!(me(&app, &access).await["email"], "mover@example.test");
}

#[tokio::test]
async fn an_email_change_needs_a_fresh_login() {
    let app = spawn().await;
    app.register("stale@example.test", false).await;
    let (access, _) = login_tokens(&app, "stale@example.test", PASSWORD).await;
    app.db
        .exec(
            "UPDATE sessions SET created_at = created_at - interval '301 seconds'",
            "UPDATE sessions SET created_at = created_at - 301000000",
        )
        .await;
    problem(
        app.post_json_with_token(
            "/email/change",
            &access,
            &json!({"new_email": "fresh@example.test"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "reauthentication_required",
    )
    .await;
    problem(
        app.post_json_with_token(
            "/email/change",
            &access,
            &json!({"new_email": "stale@example.test"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "reauthentication_required",
    )
    .await;
    let (fresh, _) = login_tokens(&app, "stale@example.test", PASSWORD).await;
    problem(
        app.post_json_with_token(
            "/email/change",
            &fresh,
            &json!({"new_email": "stale@example.test"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn an_admin_sets_a_password_or_emails_a_reset() {
    let app = spawn().await;
    let data_dir = TempDir::new("authd-recovery");
    app.register("admin-reset@example.test", false).await;
    let (access, _) = login_tokens(&app, "admin-reset@example.test", PASSWORD).await;
    let out = admin(
        &app.db_url,
        &data_dir,
        &[
            "user",
            "reset-password",
            "admin-reset@example.test",
            "--password-stdin",
        ],
        &format!("{NEW_PASSWORD}\n"),
    )
    .await;
    assert!(out.contains("admin-reset@example.test"), "{out}");
    problem(
        app.get_with_token("/users/me", &access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    login_tokens(&app, "admin-reset@example.test", NEW_PASSWORD).await;
    // A weak password and an unknown user: one line, exit 1, nothing changed.
    let weak = admin_output(
        &app.db_url,
        &data_dir,
        &[
            "user",
            "reset-password",
            "admin-reset@example.test",
            "--password-stdin",
        ],
        "password123\n",
    )
    .await;
    assert_eq!(weak.status.code(), Some(1), "{weak:?}");
    refused_line(weak, "password");
    let unknown = admin_output(
        &app.db_url,
        &data_dir,
        &[
            "user",
            "reset-password",
            "nobody@example.test",
            "--send-link",
        ],
        "",
    )
    .await;
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    // --send-link emails a reset (through the same relay) that the server accepts.
    let port = app.mail.port.to_string();
    let sent = admin_output_with(
        &app.db_url,
        &data_dir,
        &[
            "user",
            "reset-password",
            "admin-reset@example.test",
            "--send-link",
        ],
        "",
        &[
            ("AUTHD_MAIL__TRANSPORT", "smtp"),
            ("AUTHD_MAIL__SMTP__HOST", "127.0.0.1"),
            ("AUTHD_MAIL__SMTP__PORT", &port),
        ],
    )
    .await;
    assert!(sent.status.success(), "{sent:?}");
    assert!(
        String::from_utf8_lossy(&sent.stdout).contains("emailed a password reset"),
        "{sent:?}"
    );
    let message = app.mail.wait_for("admin-reset@example.test", 1).await;
    let response = app
        .post_json(
            "/password/reset",
            &json!({"token": token_of(&message), "new_password": "yet another passphrase"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    login_tokens(&app, "admin-reset@example.test", "yet another passphrase").await;
}

#[tokio::test]
async fn clients_that_hang_up_at_once_still_get_no_more_than_one_email_a_minute() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 100_000;
    })
    .await;
    app.register("hangups@example.test", false).await;
    let addr = app.base.strip_prefix("http://").unwrap().to_string();
    let body = r#"{"email":"hangups@example.test"}"#;
    let request = format!(
        "POST /password/forgot HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Twenty clients ask for a reset and vanish without reading the answer.
    for _ in 0..20 {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        drop(socket);
    }
    // One that reads its answer, after them on the same server.
    let response = app
        .post_json(
            "/password/forgot",
            &json!({"email": "hangups@example.test"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.wait_for_background_mail().await;
    assert_eq!(
        app.mail.messages_to("hangups@example.test").len(),
        1,
        "one reset email within verification.resend_interval_secs, however the clients behave"
    );
}

#[tokio::test]
async fn a_password_reset_cancels_a_pending_email_change() {
    let app = spawn().await;
    app.register("victim@example.test", false).await;
    // Someone with the victim's session asks to move the account to their own address...
    let (stolen, _) = login_tokens(&app, "victim@example.test", PASSWORD).await;
    app.post_json_with_token(
        "/email/change",
        &stolen,
        &json!({"new_email": "thief@example.test"}),
    )
    .await;
    let change = app.mail.wait_for("thief@example.test", 1).await;
    app.wait_for_background_mail().await;
    // ...the victim, warned, resets the password...
    let reset = forgot(&app, "victim@example.test", 2).await;
    let response = app
        .post_json(
            "/password/reset",
            &json!({"token": token_of(&reset), "new_password": NEW_PASSWORD}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // ...and the change's code and link are dead.
    for body in [json!({"token": token_of(&change)})] {
        problem(
            app.post_json("/email/verify", &body).await,
            StatusCode::BAD_REQUEST,
            "invalid_code",
        )
        .await;
    }
    let (fresh, _) = login_tokens(&app, "victim@example.test", NEW_PASSWORD).await;
    assert_eq!(me(&app, &fresh).await["email"], "victim@example.test");
    // So is the session that asked for it.
    problem(
        app.post_json_with_token(
            "/email/change/confirm",
            &stolen,
            &json!({"code": code_of(&change)}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logins_with_the_old_password_racing_a_reset_leave_no_session_behind() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        open_limits(s);
        s.password.max_queue = 200;
        s.rate_limit.login_failures_per_account = 1000;
    })
    .await;
    app.register("raced@example.test", false).await;
    for round in 0..3 {
        let reset = forgot(&app, "raced@example.test", round * 2 + 1).await;
        let new_password = format!("{NEW_PASSWORD} {round}");
        let old_password = if round == 0 {
            PASSWORD.to_owned()
        } else {
            format!("{NEW_PASSWORD} {}", round - 1)
        };
        let body = json!({"token": token_of(&reset), "new_password": new_password});
        let logins = join_all((0..12).map(|_| app.login("raced@example.test", &old_password)));
        let (reset, logins) = tokio::join!(app.post_json("/password/reset", &body), logins);
        assert_eq!(reset.status(), StatusCode::OK);
        for login in logins {
            assert!(
                [StatusCode::OK, StatusCode::UNAUTHORIZED].contains(&login.status()),
                "{login:?}"
            );
        }
        // Whatever the order, nothing opened with the old password outlives the reset.
        assert_eq!(
            app.db
                .int("SELECT CAST(count(*) AS BIGINT) FROM sessions WHERE revoked_at IS NULL")
                .await,
            0,
            "round {round}"
        );
        app.wait_for_background_mail().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn codes_of_one_account_used_at_once_never_fail_with_a_server_error() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        open_limits(s);
        s.password.max_queue = 200;
    })
    .await;
    let verification = register_for_mail(&app, "busy@example.test", false).await;
    let (access, _) = login_tokens(&app, "busy@example.test", PASSWORD).await;
    app.post_json_with_token(
        "/email/change",
        &access,
        &json!({"new_email": "busier@example.test"}),
    )
    .await;
    let change = app.mail.wait_for("busier@example.test", 1).await;
    app.wait_for_background_mail().await;
    let reset = forgot(&app, "busy@example.test", 3).await;
    let verify = json!({"token": token_of(&verification)});
    let confirm = json!({"token": token_of(&change)});
    let reset = json!({"token": token_of(&reset), "new_password": NEW_PASSWORD});
    let change_password =
        json!({"current_password": PASSWORD, "new_password": "another passphrase here"});
    let (a, b, c, d) = tokio::join!(
        app.post_json("/email/verify", &verify),
        app.post_json("/email/verify", &confirm),
        app.post_json("/password/reset", &reset),
        app.post_json_with_token("/password/change", &access, &change_password),
    );
    for answer in [a, b, c, d] {
        assert!(
            answer.status().is_success() || answer.status().is_client_error(),
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn asking_to_move_to_a_taken_address_over_and_over_sends_its_owner_one_notice() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 100_000;
    })
    .await;
    app.register("mallory@example.test", false).await;
    app.register("alice@example.test", false).await;
    let (access, _) = login_tokens(&app, "mallory@example.test", PASSWORD).await;
    for _ in 0..7 {
        let response = app
            .post_json_with_token(
                "/email/change",
                &access,
                &json!({"new_email": "alice@example.test"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        app.wait_for_background_mail().await;
    }
    assert_eq!(app.mail.messages_to("alice@example.test").len(), 1);
    // And alice's own reset still goes out.
    forgot(&app, "alice@example.test", 2).await;
}

#[tokio::test]
async fn a_reset_sent_before_a_disable_does_not_work_after_it() {
    let app = spawn().await;
    let data_dir = TempDir::new("authd-recovery");
    app.register("shut@example.test", false).await;
    let reset = forgot(&app, "shut@example.test", 1).await;
    admin(
        &app.db_url,
        &data_dir,
        &["user", "disable", "shut@example.test"],
        "",
    )
    .await;
    problem(
        app.post_json(
            "/password/reset",
            &json!({"token": token_of(&reset), "new_password": NEW_PASSWORD}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    let refused = admin_output(
        &app.db_url,
        &data_dir,
        &["user", "reset-password", "shut@example.test", "--send-link"],
        "",
    )
    .await;
    let line = refused_line(refused, "a disabled account");
    assert!(line.contains("disabled"), "{line}");
}
