//! Account locks that hold against bursts, several instances and patience: attempts are
//! reserved in the database before bcrypt, counts survive locks, locks double, and the second
//! step locks for good after `rate_limit.otp_failures_per_account` wrong codes.

use std::time::Duration;

use futures::future::join_all;
use reqwest::StatusCode;

use crate::helpers::{
    PASSWORD, TestApp, bcrypt_verifications, fresh_database, problem, test_settings,
};
use crate::smtp_sink::{Behaviour, MailSink};

const WRONG: &str = "not the password";

/// Settings for bursts: room on the hashing queue and no per-address limit in the way.
fn burst_settings(s: &mut authd::config::Settings) {
    s.password.max_queue = 200;
    s.rate_limit.requests_per_ip_per_minute = 100_000;
}

/// Sends `n` wrong-password logins for `email` at once, spread over `apps`; returns the count
/// of each status.
async fn burst(apps: &[&TestApp], email: &str, n: usize) -> (usize, usize, usize) {
    let answers = join_all((0..n).map(|i| apps[i % apps.len()].login(email, WRONG))).await;
    let count = |status| answers.iter().filter(|r| r.status() == status).count();
    let counts = (
        count(StatusCode::UNAUTHORIZED),
        count(StatusCode::TOO_MANY_REQUESTS),
        count(StatusCode::SERVICE_UNAVAILABLE),
    );
    assert_eq!(
        counts.0 + counts.1 + counts.2,
        n,
        "other statuses: {answers:?}"
    );
    counts
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_concurrent_wrong_passwords_reach_bcrypt_at_most_the_limit() {
    let app = TestApp::spawn_with(Behaviour::Accept, burst_settings).await;
    app.register("burst@example.test", false).await;
    let (refused_by_bcrypt, locked, _) = burst(&[&app], "burst@example.test", 40).await;
    // Each 401 is a guess bcrypt checked; the reservation lets exactly the limit through.
    assert_eq!(refused_by_bcrypt, 10);
    assert_eq!(locked, 30);
    app.db.expect_events("login_failed", 10).await;
    problem(
        app.login("burst@example.test", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_concurrent_wrong_passwords_over_two_instances_reach_bcrypt_at_most_the_limit() {
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let mut settings = test_settings(&db_url, mail.port);
    burst_settings(&mut settings);
    let first = TestApp::spawn_on(settings.clone(), mail.clone(), db_url.clone()).await;
    let second = TestApp::spawn_on(settings, mail, db_url).await;
    first.register("pair@example.test", false).await;
    let (refused_by_bcrypt, locked, _) = burst(&[&first, &second], "pair@example.test", 40).await;
    assert_eq!(refused_by_bcrypt, 10);
    assert_eq!(locked, 30);
}

#[tokio::test]
async fn a_lock_does_not_reset_the_count_and_each_lock_lasts_twice_as_long() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.login_failures_per_account = 2;
        s.rate_limit.lockout_secs = 1;
    })
    .await;
    app.register("patient@example.test", false).await;
    for expected_lock in [1, 2, 4] {
        for _ in 0..2 {
            problem(
                app.login("patient@example.test", WRONG).await,
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
            )
            .await;
        }
        let refused = app.login("patient@example.test", PASSWORD).await;
        assert_eq!(retry_after(&refused), expected_lock);
        problem(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
        // Wait the lock out (its end moved into the past): the count goes on where it was, it
        // does not start over.
        app.db.end_locks().await;
    }
    // A success clears everything: one failure no longer locks.
    assert_eq!(
        app.login("patient@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
    problem(
        app.login("patient@example.test", WRONG).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_eq!(
        app.login("patient@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
}

/// The failures stored for `login:queue@example.test` (0 with no row).
async fn queue_failures(app: &TestApp) -> i64 {
    app.db
        .int(
            "SELECT CAST(COALESCE((SELECT failures FROM throttles
                                   WHERE key = 'login:queue@example.test'), 0) AS BIGINT)",
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_refused_for_a_full_hashing_queue_counts_no_failure() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.password.max_queue = 0;
        // Each check holds its hashing thread long enough that thirty at once overflow it.
        s.password.bcrypt_cost = 8;
        s.rate_limit.requests_per_ip_per_minute = 100_000;
        // No lock in the way: every login the pool admits is a counted guess.
        s.rate_limit.login_failures_per_account = 1000;
    })
    .await;
    app.register("queue@example.test", false).await;
    let (wrong, locked, busy) = burst(&[&app], "queue@example.test", 30).await;
    assert_eq!(locked, 0);
    assert!(busy > 0, "the pool was never full: {wrong} checked");
    assert!(wrong > 0, "no guess reached bcrypt");
    // Only the guesses bcrypt checked were counted, none of those refused with 503.
    assert_eq!(queue_failures(&app).await, wrong as i64);
}

/// Starts a challenge and returns its token, the right code and a wrong one.
async fn challenge(app: &TestApp, email: &str) -> (String, String, String) {
    let (token, code) = app.start_challenge(email).await;
    let wrong = if code == "000000" { "111111" } else { "000000" }.to_string();
    (token, code, wrong)
}

#[tokio::test]
async fn wrong_codes_lock_the_second_step_until_an_admin_unlocks_it() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.otp_failures_per_account = 7;
        s.rate_limit.lockout_secs = 1;
    })
    .await;
    app.register("codes@example.test", true).await;
    // 5 wrong codes kill the first challenge; a new login does not reset the account count.
    let (first, _, wrong) = challenge(&app, "codes@example.test").await;
    for _ in 0..5 {
        problem(
            app.submit_code(&first, &wrong).await,
            StatusCode::UNAUTHORIZED,
            "invalid_otp",
        )
        .await;
    }
    let (second, code, wrong) = challenge(&app, "codes@example.test").await;
    for _ in 0..2 {
        problem(
            app.submit_code(&second, &wrong).await,
            StatusCode::UNAUTHORIZED,
            "invalid_otp",
        )
        .await;
    }
    // Seven in all: the right code is refused, with a code of its own and no Retry-After.
    let refused = app.submit_code(&second, &code).await;
    assert!(refused.headers().get("retry-after").is_none());
    problem(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "second_factor_locked",
    )
    .await;
    app.db.expect_events("second_factor_locked", 1).await;
    // Waiting longer than any lock (an hour, moved into the past) changes nothing, and no new
    // code is sent.
    app.db.end_locks().await;
    let sent = app.mail.messages_to("codes@example.test").len();
    problem(
        app.login("codes@example.test", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "second_factor_locked",
    )
    .await;
    assert_eq!(app.mail.messages_to("codes@example.test").len(), sent);

    // `authd user unlock` lifts it.
    let mut unlock = std::process::Command::new(env!("CARGO_BIN_EXE_authd"));
    unlock
        .env_remove("AUTHD_CONFIG")
        .env("AUTHD_JWT__SECRET", crate::helpers::SECRET)
        // The server writes to the same SQLite file meanwhile: on a loaded machine the
        // command may wait its turn longer than the default 3 s.
        .env("AUTHD_DATABASE__ACQUIRE_TIMEOUT_SECS", "20")
        .args(["--database-url", &app.db_url, "user", "unlock"])
        .arg("Codes@Example.test");
    let unlocked = crate::helpers::run_to_end(unlock, b"").await;
    assert!(unlocked.status.success(), "{unlocked:?}");
    let stdout = String::from_utf8(unlocked.stdout).unwrap();
    assert!(
        stdout.starts_with("unlocked codes@example.test"),
        "{stdout}"
    );
    app.db.expect_events("user_unlocked", 1).await;
    let (token, code, _) = challenge(&app, "codes@example.test").await;
    assert_eq!(
        app.submit_code(&token, &code).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_codes_cannot_pass_the_account_limit() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.otp_failures_per_account = 3;
        s.rate_limit.requests_per_ip_per_minute = 100_000;
        s.otp.max_attempts = 50;
    })
    .await;
    app.register("parallel@example.test", true).await;
    let (token, code, wrong) = challenge(&app, "parallel@example.test").await;
    let answers = join_all((0..20).map(|_| app.submit_code(&token, &wrong))).await;
    let statuses: Vec<_> = answers.iter().map(|r| r.status()).collect();
    let guessed = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let locked = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((guessed, locked), (3, 17), "{statuses:?}");
    problem(
        app.submit_code(&token, &code).await,
        StatusCode::TOO_MANY_REQUESTS,
        "second_factor_locked",
    )
    .await;
}

#[tokio::test]
async fn a_submission_to_a_dead_challenge_is_not_counted_as_a_guess() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.otp_failures_per_account = 2;
    })
    .await;
    app.register("dead@example.test", true).await;
    let (token, code, _) = challenge(&app, "dead@example.test").await;
    assert_eq!(
        app.submit_code(&token, &code).await.status(),
        StatusCode::OK
    );
    // The used challenge is dead: resubmitting it (a double click) is refused, not counted.
    for _ in 0..3 {
        problem(
            app.submit_code(&token, &code).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }
    let (token, code, _) = challenge(&app, "dead@example.test").await;
    assert_eq!(
        app.submit_code(&token, &code).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn code_emails_are_capped_per_account_and_the_cap_ends_with_its_window() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.mail.max_codes_per_account = 2;
        s.mail.codes_window_secs = 2;
    })
    .await;
    app.register("inbox@example.test", true).await;
    challenge(&app, "inbox@example.test").await;
    challenge(&app, "inbox@example.test").await;
    let refused = app.login("inbox@example.test", PASSWORD).await;
    assert!((1..=2).contains(&retry_after(&refused)));
    problem(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    app.db.expect_events("code_email_limited", 1).await;
    assert_eq!(app.mail.messages_to("inbox@example.test").len(), 2);
    // The window ends (moved into the past): the cap starts over.
    app.db.end_locks().await;
    challenge(&app, "inbox@example.test").await;
    assert_eq!(app.mail.messages_to("inbox@example.test").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_send_no_more_code_emails_than_the_cap() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        burst_settings(s);
        s.mail.max_codes_per_account = 5;
    })
    .await;
    app.register("flood@example.test", true).await;
    let answers = join_all((0..20).map(|_| app.login("flood@example.test", PASSWORD))).await;
    let sent = answers
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    let limited = answers
        .iter()
        .filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((sent, limited), (5, 15));
    // Every answer is in: a login answers only once its code is delivered, and the sink keeps a
    // message before it acknowledges it, so what it holds now is all that was sent.
    assert_eq!(app.mail.messages_to("flood@example.test").len(), 5);
}

#[tokio::test]
async fn after_the_bcrypt_cost_changes_a_login_upgrades_the_hash() {
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let old = TestApp::spawn_on(
        test_settings(&db_url, mail.port),
        mail.clone(),
        db_url.clone(),
    )
    .await;
    old.register("upgrade@example.test", false).await;
    old.register("stays@example.test", false).await;
    // `old` stays alive: dropping a TestApp deletes its SQLite directory.

    let mut settings = test_settings(&db_url, mail.port);
    settings.password.bcrypt_cost = 5;
    let app = TestApp::spawn_on(settings, mail, db_url).await;
    assert_eq!(
        app.login("upgrade@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
    let mut cost = String::new();
    for _ in 0..100 {
        cost = app
            .db
            .text("SELECT substr(password_hash, 1, 7) FROM users WHERE email = 'upgrade@example.test'")
            .await;
        if cost == "$2b$05$" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cost, "$2b$05$");
    assert_eq!(
        app.db
            .text(
                "SELECT substr(password_hash, 1, 7) FROM users WHERE email = 'stays@example.test'"
            )
            .await,
        "$2b$04$"
    );
    // The upgraded hash still takes the same password, and only that one.
    assert_eq!(
        app.login("upgrade@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
    problem(
        app.login("upgrade@example.test", WRONG).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
}

#[tokio::test]
async fn unknown_and_malformed_emails_each_cost_one_bcrypt_check_like_a_wrong_password() {
    let app = TestApp::spawn().await;
    app.register("known@example.test", false).await;
    problem(
        app.login("known@example.test", WRONG).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let mut verified = bcrypt_verifications(&app).await;
    for email in [
        "nobody@example.test",
        "not an email",
        "",
        "@",
        "known@example.test",
    ] {
        problem(
            app.login(email, WRONG).await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
        // The check ran before the answer went out: the count is already there.
        let now = bcrypt_verifications(&app).await;
        assert_eq!(now, verified + 1, "{email:?}");
        verified = now;
    }
}

/// A wrong password for an address with no account, answered: one more bcrypt check that
/// starts after everything sent before it, and counts for no one the test looks at.
async fn check_an_unknown_address(app: &TestApp) {
    problem(
        app.login("probe@example.test", WRONG).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_hangs_up_before_the_answer_gets_no_uncounted_guess() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        burst_settings(s);
        s.rate_limit.login_failures_per_account = 1000;
        // Checks slow enough that some are still on a hashing thread when the clients go.
        s.password.bcrypt_cost = 10;
    })
    .await;
    app.register("hangup@example.test", false).await;
    check_an_unknown_address(&app).await;
    let before = bcrypt_verifications(&app).await;
    let addr = app.base.strip_prefix("http://").unwrap().to_string();
    let body = r#"{"email":"hangup@example.test","password":"not the password"}"#;
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Twenty clients send a wrong password...
    let mut sockets = Vec::new();
    for _ in 0..20 {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        sockets.push(socket);
    }
    // ...and vanish without reading anything once bcrypt has checked one of them, while the
    // others wait for a hashing thread or are on one.
    tokio::time::timeout(crate::helpers::HTTP_TIMEOUT, async {
        while bcrypt_verifications(&app).await == before {}
    })
    .await
    .expect("a guess reaches bcrypt");
    drop(sockets);
    // Two checks of the same cost that start after the hang-up end after any that was running
    // then; those still waiting are skipped.
    check_an_unknown_address(&app).await;
    check_an_unknown_address(&app).await;
    let verified = bcrypt_verifications(&app).await - before - 2;
    let counted = app
        .db
        .int(
            "SELECT CAST(COALESCE((SELECT failures FROM throttles
                                   WHERE key = 'login:hangup@example.test'), 0) AS BIGINT)",
        )
        .await;
    // Every guess bcrypt checked was counted first, whether or not anyone read its answer.
    assert!(verified >= 1);
    assert!(
        counted >= verified as i64,
        "{verified} checked, {counted} counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_at_a_dead_challenge_neither_counts_nor_locks() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        burst_settings(s);
        s.rate_limit.otp_failures_per_account = 7;
    })
    .await;
    app.register("deadburst@example.test", true).await;
    let (old, _, wrong) = challenge(&app, "deadburst@example.test").await;
    for _ in 0..5 {
        problem(
            app.submit_code(&old, &wrong).await,
            StatusCode::UNAUTHORIZED,
            "invalid_otp",
        )
        .await;
    }
    // `old` is out of attempts now; a new login retires nothing it needs.
    let (live, code, _) = challenge(&app, "deadburst@example.test").await;
    let answers = join_all((0..30).map(|_| app.submit_code(&old, &wrong))).await;
    assert!(
        answers
            .iter()
            .all(|r| r.status() == StatusCode::UNAUTHORIZED),
        "{answers:?}"
    );
    // Five real guesses so far: the account is neither locked for good nor for a while.
    assert_eq!(app.submit_code(&live, &code).await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_of_one_user_always_leave_a_usable_challenge() {
    let app = TestApp::spawn_with(Behaviour::Accept, burst_settings).await;
    app.register("doubleclick@example.test", true).await;
    let answers = join_all((0..12).map(|_| app.login("doubleclick@example.test", PASSWORD))).await;
    let sent = answers
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert_eq!(sent, 5);
    let open = app
        .db
        .int(
            "SELECT CAST(count(*) AS BIGINT) FROM otp_challenges
             WHERE consumed_at IS NULL AND retired_at IS NULL",
        )
        .await;
    assert!(open >= 1, "every challenge was retired");
}
