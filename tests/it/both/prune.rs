//! Pruning: expired challenges, idle throttle rows and old audit events leave the database,
//! by `authd prune` and by the server's own task; code counters stay.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{SECRET, TestApp};
use crate::smtp_sink::Behaviour;

/// Leaves one of each kind of row behind, then ages them: a throttle row for an unknown
/// address, a code counter, an expired challenge, and audit events from 400 days ago.
async fn leave_old_rows(app: &TestApp) {
    assert_eq!(
        app.login("ghost@example.test", "not the password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    app.register("prune@example.test", true).await;
    let (token, code) = app.start_challenge("prune@example.test").await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_eq!(
        app.submit_code(&token, wrong).await.status(),
        StatusCode::UNAUTHORIZED
    );
    app.db.expect_events("code_rejected", 1).await;
    app.db.expire_challenges().await;
    app.db
        .exec(
            "UPDATE throttles SET updated_at = updated_at - interval '31 days'",
            "UPDATE throttles SET updated_at = updated_at - 31 * 86400000000",
        )
        .await;
    app.db
        .exec(
            "UPDATE security_events SET at = at - interval '400 days'",
            "UPDATE security_events SET at = at - 400 * 86400000000",
        )
        .await;
}

async fn rows(app: &TestApp) -> (i64, i64, i64, i64) {
    (
        app.db
            .int("SELECT CAST(count(*) AS BIGINT) FROM otp_challenges")
            .await,
        app.db
            .int("SELECT CAST(count(*) AS BIGINT) FROM throttles WHERE key LIKE 'login:%'")
            .await,
        app.db
            .int("SELECT CAST(count(*) AS BIGINT) FROM throttles WHERE key LIKE 'otp:%'")
            .await,
        app.db
            .int("SELECT CAST(count(*) AS BIGINT) FROM security_events")
            .await,
    )
}

/// `authd prune ARGS` beside the running server.
async fn run_prune(app: &TestApp, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_authd"));
    command
        .env_remove("AUTHD_CONFIG")
        .env("AUTHD_JWT__SECRET", SECRET)
        // The server shares the SQLite file: let the command wait its turn on a busy machine.
        .env("AUTHD_DATABASE__ACQUIRE_TIMEOUT_SECS", "20")
        .args(["--database-url", &app.db_url, "prune"])
        .args(args);
    crate::helpers::run_to_end(command, b"").await
}

#[tokio::test]
async fn authd_prune_removes_what_expired_and_keeps_code_counters() {
    let app = TestApp::spawn().await;
    leave_old_rows(&app).await;
    let (challenges, logins, codes, events) = rows(&app).await;
    assert_eq!((challenges, logins, codes), (1, 1, 1));
    app.register("recent@example.test", false).await;
    app.db.expect_events("user_registered", 2).await;
    let prune = |args: &'static [&'static str]| run_prune(&app, args);
    let output = prune(&["--format", "json"]).await;
    assert!(output.status.success(), "{output:?}");
    let pruned: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(pruned["challenges"], 1);
    assert_eq!(pruned["throttles"], 1);
    assert_eq!(pruned["events"], events);
    // The code counter stays; so do the events of the recent registration (its
    // user_registered and email_verification_sent).
    assert_eq!(rows(&app).await, (0, 0, 1, 2));
    // A second pass finds nothing, and says so in a line.
    let again = prune(&[]).await;
    assert_eq!(
        String::from_utf8(again.stdout).unwrap(),
        "removed 0 expired challenges, 0 expired account codes, 0 expired passkey ceremonies, 0 ended sessions, 0 idle throttle rows, 0 audit events older than 365 days, 0 retired signing keys past their tokens' expiry\n"
    );
}

#[tokio::test]
async fn the_server_prunes_by_itself_every_interval() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.audit.prune_interval_secs = 1).await;
    leave_old_rows(&app).await;
    for _ in 0..50 {
        if rows(&app).await == (0, 0, 1, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not pruned: {:?}", rows(&app).await);
}

#[tokio::test]
async fn ended_and_expired_sessions_are_pruned_and_live_ones_stay() {
    let app = TestApp::spawn().await;
    app.register("sessions@example.test", false).await;
    let mut access = Vec::new();
    for _ in 0..3 {
        access.push(app.access_token("sessions@example.test").await);
    }
    // One logs out, one expires; the third lives on.
    let out = app
        .client
        .post(app.url("/logout"))
        .bearer_auth(&access[0])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    app.db
        .exec(
            "UPDATE sessions SET expires_at = now() - interval '1 second'
             WHERE id = (SELECT id FROM sessions ORDER BY id DESC LIMIT 1)",
            "UPDATE sessions SET expires_at = expires_at - 40 * 86400000000
             WHERE id = (SELECT id FROM sessions ORDER BY id DESC LIMIT 1)",
        )
        .await;
    let output = run_prune(&app, &["--format", "json"]).await;
    assert!(output.status.success(), "{output:?}");
    let pruned: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(pruned["sessions"], 2, "{pruned}");
    assert_eq!(
        app.db
            .int("SELECT CAST(count(*) AS BIGINT) FROM sessions")
            .await,
        1
    );
    assert_eq!(
        app.get_with_token("/users/me", &access[1]).await.status(),
        StatusCode::OK
    );
}
