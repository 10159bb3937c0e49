//! Sessions: refresh tokens with rotation and reuse detection, logout, the session list, and
//! revocation (by the user, by an admin, by disabling or deleting the account) that cuts a live
//! access token at its next use.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TempDir, TestApp, admin, admin_output, problem};
use crate::smtp_sink::Behaviour;

/// The tokens one login or refresh answer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tokens {
    access: String,
    refresh: String,
}

impl Tokens {
    async fn from(response: reqwest::Response) -> Tokens {
        assert_eq!(response.status(), StatusCode::OK, "a token answer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert!(body["expires_in"].as_u64().unwrap() > 0);
        assert!(body["refresh_expires_in"].as_u64().unwrap() > 0, "{body}");
        Tokens {
            access: body["access_token"].as_str().unwrap().to_owned(),
            refresh: body["refresh_token"].as_str().unwrap().to_owned(),
        }
    }
}

async fn login(app: &TestApp, email: &str) -> Tokens {
    Tokens::from(app.login(email, PASSWORD).await).await
}

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json("/token/refresh", &json!({ "refresh_token": token }))
        .await
}

/// A refresh that must be refused with 401 `invalid_token`.
async fn refused(app: &TestApp, token: &str) {
    problem(
        refresh(app, token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

async fn me_status(app: &TestApp, access: &str) -> StatusCode {
    app.get_with_token("/users/me", access).await.status()
}

async fn sessions(app: &TestApp, access: &str) -> Vec<Value> {
    let response = app.get_with_token("/sessions", access).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["sessions"].as_array().unwrap().clone()
}

async fn logout(app: &TestApp, access: &str, scope: Option<&str>) -> reqwest::Response {
    let request = app.client.post(app.url("/logout")).bearer_auth(access);
    let request = match scope {
        Some(scope) => request.json(&json!({ "scope": scope })),
        None => request,
    };
    request.send().await.unwrap()
}

async fn delete_session(app: &TestApp, access: &str, id: &str) -> reqwest::Response {
    app.client
        .delete(app.url(&format!("/sessions/{id}")))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
}

async fn live_sessions(app: &TestApp) -> i64 {
    app.db
        .int("SELECT CAST(count(*) AS BIGINT) FROM sessions WHERE revoked_at IS NULL")
        .await
}

#[tokio::test]
async fn a_login_opens_a_session_whose_refresh_token_rotates_at_each_use() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    let first = login(&app, "ada@example.test").await;
    assert_eq!(first.refresh.len(), 75, "56 bytes, base64url");
    let body: Value = app
        .login("ada@example.test", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["refresh_expires_in"], 2_592_000);

    let second = Tokens::from(refresh(&app, &first.refresh).await).await;
    assert_ne!(second.refresh, first.refresh);
    assert_ne!(second.access, first.access);
    assert_eq!(me_status(&app, &second.access).await, StatusCode::OK);
    let third = Tokens::from(refresh(&app, &second.refresh).await).await;
    assert_ne!(third.refresh, second.refresh);
    assert_eq!(me_status(&app, &third.access).await, StatusCode::OK);
    // Two logins, two sessions; the refreshes made none.
    assert_eq!(live_sessions(&app).await, 2);
    assert_eq!(
        app.db
            .int("SELECT CAST(max(generation) AS BIGINT) FROM sessions")
            .await,
        2
    );
}

#[tokio::test]
async fn a_rotated_token_used_after_the_grace_period_revokes_the_whole_session() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.session.reuse_grace_secs = 0).await;
    app.register("ada@example.test", false).await;
    let first = login(&app, "ada@example.test").await;
    let second = Tokens::from(refresh(&app, &first.refresh).await).await;
    // The thief (or the victim) replays the first token: the family is revoked...
    refused(&app, &first.refresh).await;
    // ...every token descended from it with it, the live access token included.
    assert_eq!(
        me_status(&app, &second.access).await,
        StatusCode::UNAUTHORIZED
    );
    refused(&app, &second.refresh).await;
    app.db.expect_events("refresh_token_reused", 1).await;
    assert_eq!(live_sessions(&app).await, 0);
}

#[tokio::test]
async fn with_a_grace_period_a_rotated_token_is_replayed_until_it_ends_then_revokes_the_session() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.session.reuse_grace_secs = 10).await;
    app.register("ada@example.test", false).await;
    let first = login(&app, "ada@example.test").await;
    let second = Tokens::from(refresh(&app, &first.refresh).await).await;
    // Rotated 7 s ago (moved back in the database, not waited for): still within the 10 s, so
    // the answer is the session's current token.
    app.db
        .exec(
            "UPDATE sessions SET rotated_at = rotated_at - interval '7 seconds'",
            "UPDATE sessions SET rotated_at = rotated_at - 7000000",
        )
        .await;
    let replayed = Tokens::from(refresh(&app, &first.refresh).await).await;
    assert_eq!(replayed.refresh, second.refresh);
    app.db.expect_events("refresh_token_reused", 0).await;
    // 11 s ago: the grace is over and the same token is reuse.
    app.db
        .exec(
            "UPDATE sessions SET rotated_at = rotated_at - interval '4 seconds'",
            "UPDATE sessions SET rotated_at = rotated_at - 4000000",
        )
        .await;
    refused(&app, &first.refresh).await;
    assert_eq!(
        me_status(&app, &replayed.access).await,
        StatusCode::UNAUTHORIZED
    );
    refused(&app, &second.refresh).await;
    app.db.expect_events("refresh_token_reused", 1).await;
    assert_eq!(live_sessions(&app).await, 0);
}

#[tokio::test]
async fn a_token_two_rotations_old_is_reuse_once_its_own_rotation_is_past_the_grace() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.session.reuse_grace_secs = 10).await;
    app.register("ada@example.test", false).await;
    let first = login(&app, "ada@example.test").await;
    let second = Tokens::from(refresh(&app, &first.refresh).await).await;
    let third = Tokens::from(refresh(&app, &second.refresh).await).await;
    // The rotation that retired `first` was 11 s ago (moved back in the database), the one that
    // retired `second` just now.
    app.db
        .exec(
            "UPDATE sessions SET earlier_rotated_at = earlier_rotated_at - interval '11 seconds'",
            "UPDATE sessions SET earlier_rotated_at = earlier_rotated_at - 11000000",
        )
        .await;
    let replayed = Tokens::from(refresh(&app, &second.refresh).await).await;
    assert_eq!(replayed.refresh, third.refresh);
    refused(&app, &first.refresh).await;
    assert_eq!(
        me_status(&app, &third.access).await,
        StatusCode::UNAUTHORIZED
    );
    app.db.expect_events("refresh_token_reused", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_no_grace_parallel_refreshes_of_one_token_revoke_the_session() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.session.reuse_grace_secs = 0).await;
    app.register("ada@example.test", false).await;
    let first = login(&app, "ada@example.test").await;
    let answers = futures::future::join_all((0..12).map(|_| refresh(&app, &first.refresh))).await;
    let statuses: Vec<StatusCode> = answers.iter().map(|r| r.status()).collect();
    let mut rotated = Vec::new();
    for answer in answers {
        if answer.status() == StatusCode::OK {
            rotated.push(Tokens::from(answer).await);
        } else {
            problem(answer, StatusCode::UNAUTHORIZED, "invalid_token").await;
        }
    }
    // One rotates; each of the others presents the token just rotated, which is reuse.
    assert_eq!(rotated.len(), 1, "{statuses:?}");
    assert_eq!(
        me_status(&app, &rotated[0].access).await,
        StatusCode::UNAUTHORIZED
    );
    refused(&app, &rotated[0].refresh).await;
    app.db.expect_events("refresh_token_reused", 1).await;
    assert_eq!(live_sessions(&app).await, 0);
}

#[tokio::test]
async fn within_the_grace_period_the_rotated_token_gets_the_current_tokens_again() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    let first = login(&app, "ada@example.test").await;
    let second = Tokens::from(refresh(&app, &first.refresh).await).await;
    // The first answer was lost: the client sends the old token again.
    let again = Tokens::from(refresh(&app, &first.refresh).await).await;
    assert_eq!(again.refresh, second.refresh, "the session's current token");
    assert_eq!(me_status(&app, &again.access).await, StatusCode::OK);
    let third = Tokens::from(refresh(&app, &second.refresh).await).await;
    assert_eq!(me_status(&app, &third.access).await, StatusCode::OK);
    app.db.expect_events("refresh_token_reused", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twelve_parallel_refreshes_of_one_token_keep_the_user_in_and_make_one_chain() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    let first = login(&app, "ada@example.test").await;
    let answers = futures::future::join_all((0..12).map(|_| refresh(&app, &first.refresh))).await;
    let mut refreshed = Vec::new();
    for answer in answers {
        refreshed.push(Tokens::from(answer).await);
    }
    // Every answer carries the same next token: one chain, not twelve.
    let next = refreshed[0].refresh.clone();
    assert!(refreshed.iter().all(|t| t.refresh == next), "{refreshed:?}");
    for tokens in &refreshed {
        assert_eq!(me_status(&app, &tokens.access).await, StatusCode::OK);
    }
    assert_eq!(live_sessions(&app).await, 1);
    assert_eq!(
        app.db
            .int("SELECT CAST(generation AS BIGINT) FROM sessions")
            .await,
        1
    );
    let after = Tokens::from(refresh(&app, &next).await).await;
    assert_eq!(me_status(&app, &after.access).await, StatusCode::OK);
    app.db.expect_events("refresh_token_reused", 0).await;
}

#[tokio::test]
async fn refresh_refuses_what_is_not_a_live_refresh_token() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.session.refresh_ttl_secs = 1;
        s.session.absolute_ttl_secs = 1;
    })
    .await;
    app.register("ada@example.test", false).await;
    let tokens = login(&app, "ada@example.test").await;
    for bad in [
        "".to_owned(),
        "not a token".to_owned(),
        "A".repeat(75),
        tokens.access.clone(),
    ] {
        refused(&app, &bad).await;
    }
    problem(
        app.post_json("/token/refresh", &json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    // Waits out the one-second session: the token and the session's access token die with it.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    refused(&app, &tokens.refresh).await;
    assert_eq!(
        me_status(&app, &tokens.access).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_refresh_never_outlives_the_absolute_session_lifetime() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.session.refresh_ttl_secs = 2;
        s.session.absolute_ttl_secs = 3;
    })
    .await;
    app.register("ada@example.test", false).await;
    let mut tokens = login(&app, "ada@example.test").await;
    // Refreshing every second keeps the sliding expiry ahead, but not past the third second.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        tokens = Tokens::from(refresh(&app, &tokens.refresh).await).await;
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    refused(&app, &tokens.refresh).await;
}

#[tokio::test]
async fn logout_ends_the_current_session_others_or_all() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    let [a, b, c] = [
        login(&app, "ada@example.test").await,
        login(&app, "ada@example.test").await,
        login(&app, "ada@example.test").await,
    ];
    assert_eq!(
        logout(&app, &a.access, Some("others")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(me_status(&app, &a.access).await, StatusCode::OK);
    assert_eq!(me_status(&app, &b.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me_status(&app, &c.access).await, StatusCode::UNAUTHORIZED);
    refused(&app, &b.refresh).await;
    // No body means the current session.
    assert_eq!(
        logout(&app, &a.access, None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(me_status(&app, &a.access).await, StatusCode::UNAUTHORIZED);
    problem(
        logout(&app, &a.access, None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;

    let [d, e] = [
        login(&app, "ada@example.test").await,
        login(&app, "ada@example.test").await,
    ];
    problem(
        logout(&app, &d.access, Some("everyone")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(me_status(&app, &d.access).await, StatusCode::OK);
    assert_eq!(
        logout(&app, &d.access, Some("all")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(me_status(&app, &d.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me_status(&app, &e.access).await, StatusCode::UNAUTHORIZED);
    assert_eq!(live_sessions(&app).await, 0);
    app.db.expect_events("logout", 3).await;
}

#[tokio::test]
async fn the_session_list_shows_the_callers_own_sessions_and_each_can_be_revoked() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    app.register("bob@example.test", false).await;
    let first = login(&app, "ada@example.test").await;
    let second = app
        .client
        .post(app.url("/login"))
        .header("user-agent", "phone/1.0")
        .json(&json!({"email": "ada@example.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let second = Tokens::from(second).await;
    let bob = login(&app, "bob@example.test").await;

    let listed = sessions(&app, &first.access).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let current: Vec<&Value> = listed.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    for session in &listed {
        for key in [
            "id",
            "created_at",
            "last_used_at",
            "client_ip",
            "user_agent",
        ] {
            assert!(session.get(key).is_some(), "{key} in {session}");
        }
        assert_eq!(session["client_ip"], "127.0.0.1");
    }
    let phone = listed
        .iter()
        .find(|s| s["user_agent"] == "phone/1.0")
        .expect("the second login's user agent");
    assert_eq!(phone["current"], false);
    let phone_id = phone["id"].as_str().unwrap().to_owned();

    // Bob cannot see or end Ada's session: it is not his.
    assert_eq!(sessions(&app, &bob.access).await.len(), 1);
    problem(
        delete_session(&app, &bob.access, &phone_id).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    )
    .await;
    problem(
        delete_session(&app, &bob.access, "not-a-session").await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    )
    .await;
    assert_eq!(me_status(&app, &second.access).await, StatusCode::OK);

    assert_eq!(
        delete_session(&app, &first.access, &phone_id)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        me_status(&app, &second.access).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(me_status(&app, &first.access).await, StatusCode::OK);
    assert_eq!(sessions(&app, &first.access).await.len(), 1);
    problem(
        delete_session(&app, &first.access, &phone_id).await,
        StatusCode::NOT_FOUND,
        "session_not_found",
    )
    .await;
    app.db.expect_events("session_revoked", 1).await;
}

#[tokio::test]
async fn past_the_per_user_cap_a_login_ends_the_oldest_session() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.session.max_per_user = 2).await;
    app.register("ada@example.test", false).await;
    let oldest = login(&app, "ada@example.test").await;
    let middle = login(&app, "ada@example.test").await;
    let newest = login(&app, "ada@example.test").await;
    assert_eq!(
        me_status(&app, &oldest.access).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(me_status(&app, &middle.access).await, StatusCode::OK);
    assert_eq!(me_status(&app, &newest.access).await, StatusCode::OK);
    assert_eq!(live_sessions(&app).await, 2);
}

#[tokio::test]
async fn the_two_factor_login_opens_a_session_too() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", true).await;
    let (challenge, code) = app.start_challenge("ada@example.test").await;
    let tokens = Tokens::from(app.submit_code(&challenge, &code).await).await;
    assert_eq!(me_status(&app, &tokens.access).await, StatusCode::OK);
    let next = Tokens::from(refresh(&app, &tokens.refresh).await).await;
    assert_eq!(me_status(&app, &next.access).await, StatusCode::OK);
    // The challenge token is no access token and opens no session list.
    problem(
        app.get_with_token("/sessions", &challenge).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn disabling_a_user_cuts_their_live_token_at_once_and_enabling_lets_them_back() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    let tokens = login(&app, "ada@example.test").await;
    let data_dir = TempDir::new("authd-sessions");
    let out = admin(
        &app.db_url,
        &data_dir,
        &["user", "disable", "ada@example.test"],
        "",
    )
    .await;
    assert!(out.contains("disabled"), "{out}");
    assert_eq!(
        me_status(&app, &tokens.access).await,
        StatusCode::UNAUTHORIZED
    );
    refused(&app, &tokens.refresh).await;
    // The same answer as a wrong password: nothing says the account exists.
    problem(
        app.login("ada@example.test", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let listed = admin(
        &app.db_url,
        &data_dir,
        &["user", "list", "--format", "json"],
        "",
    )
    .await;
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["disabled"], true);
    assert_eq!(listed[0]["sessions"], 0);

    admin(
        &app.db_url,
        &data_dir,
        &["user", "enable", "ada@example.test"],
        "",
    )
    .await;
    let back = login(&app, "ada@example.test").await;
    assert_eq!(me_status(&app, &back.access).await, StatusCode::OK);
    // The old session stays revoked.
    assert_eq!(
        me_status(&app, &tokens.access).await,
        StatusCode::UNAUTHORIZED
    );
    app.db.expect_events("user_disabled", 1).await;
    app.db.expect_events("user_enabled", 1).await;
}

#[tokio::test]
async fn deleting_a_user_needs_yes_without_a_terminal_and_cuts_their_token_at_once() {
    let app = TestApp::spawn().await;
    let ada = app.register("ada@example.test", false).await;
    let tokens = login(&app, "ada@example.test").await;
    let data_dir = TempDir::new("authd-sessions");
    let refused = admin_output(
        &app.db_url,
        &data_dir,
        &["user", "delete", "ada@example.test"],
        "",
    )
    .await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(me_status(&app, &tokens.access).await, StatusCode::OK);

    admin(
        &app.db_url,
        &data_dir,
        &["user", "delete", "ada@example.test", "--yes"],
        "",
    )
    .await;
    assert_eq!(
        me_status(&app, &tokens.access).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.db
            .int("SELECT CAST(count(*) AS BIGINT) FROM sessions")
            .await,
        0
    );
    // The audit trail keeps what happened to the account.
    app.db.expect_events("user_deleted", 1).await;
    assert_eq!(
        app.db.event_user_ids("user_deleted").await,
        [Some(ada["id"].as_str().unwrap().parse().unwrap())]
    );
    let again = admin_output(
        &app.db_url,
        &data_dir,
        &["user", "delete", "ada@example.test", "--yes"],
        "",
    )
    .await;
    assert_eq!(again.status.code(), Some(1));
}

#[tokio::test]
async fn session_list_and_revoke_from_the_command_line() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    app.register("bob@example.test", false).await;
    let ada = [
        login(&app, "ada@example.test").await,
        login(&app, "ada@example.test").await,
    ];
    let bob = login(&app, "bob@example.test").await;
    let data_dir = TempDir::new("authd-sessions");

    let all: Value = serde_json::from_str(
        &admin(
            &app.db_url,
            &data_dir,
            &["session", "list", "--format", "json"],
            "",
        )
        .await,
    )
    .unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let table = admin(
        &app.db_url,
        &data_dir,
        &["session", "list", "--user", "ada@example.test"],
        "",
    )
    .await;
    assert_eq!(table.matches("ada@example.test").count(), 2, "{table}");
    assert!(!table.contains("bob@example.test"), "{table}");

    let bobs: Value = serde_json::from_str(
        &admin(
            &app.db_url,
            &data_dir,
            &[
                "session",
                "list",
                "--user",
                "bob@example.test",
                "--format",
                "json",
            ],
            "",
        )
        .await,
    )
    .unwrap();
    let bob_session = bobs[0]["id"].as_str().unwrap().to_owned();
    admin(
        &app.db_url,
        &data_dir,
        &["session", "revoke", &bob_session],
        "",
    )
    .await;
    assert_eq!(me_status(&app, &bob.access).await, StatusCode::UNAUTHORIZED);
    // Revoking it again, or a session that never was, is an error that changes nothing.
    let again = admin_output(
        &app.db_url,
        &data_dir,
        &["session", "revoke", &bob_session],
        "",
    )
    .await;
    assert_eq!(again.status.code(), Some(1));
    let garbage = admin_output(&app.db_url, &data_dir, &["session", "revoke", "x"], "").await;
    assert_eq!(garbage.status.code(), Some(1));
    let neither = admin_output(&app.db_url, &data_dir, &["session", "revoke"], "").await;
    assert_eq!(neither.status.code(), Some(1));

    let out = admin(
        &app.db_url,
        &data_dir,
        &["session", "revoke", "--user", "ada@example.test"],
        "",
    )
    .await;
    assert!(out.contains('2'), "{out}");
    for tokens in &ada {
        assert_eq!(
            me_status(&app, &tokens.access).await,
            StatusCode::UNAUTHORIZED
        );
    }
    // One event per command: the one by id, then the user's two sessions together.
    app.db.expect_events("session_revoked", 2).await;
}

#[tokio::test]
async fn switching_the_second_step_ends_the_users_sessions() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    let tokens = login(&app, "ada@example.test").await;
    let data_dir = TempDir::new("authd-sessions");
    admin(
        &app.db_url,
        &data_dir,
        &["user", "set-2fa", "ada@example.test", "on"],
        "",
    )
    .await;
    assert_eq!(
        me_status(&app, &tokens.access).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn odd_logout_bodies_and_user_agents_are_handled_without_harm() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    let long_agent = format!("agent/\t{}", "x".repeat(8_000));
    let response = app
        .client
        .post(app.url("/login"))
        .header("user-agent", long_agent)
        .json(&json!({"email": "ada@example.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let tokens = Tokens::from(response).await;
    let listed = sessions(&app, &tokens.access).await;
    let agent = listed[0]["user_agent"].as_str().unwrap();
    assert_eq!(agent.chars().count(), 256, "kept at 256 characters");
    assert!(agent.chars().all(|c| !c.is_control()));

    let send = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/logout"))
            .bearer_auth(&tokens.access)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    problem(
        send("{not json", "application/json").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed_request",
    )
    .await;
    problem(
        send(r#"{"scope": "all"}"#, "text/plain").await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    for not_an_object in [r#"{"scope": 7}"#, "[]", r#"["all"]"#, "42"] {
        problem(
            send(not_an_object, "application/json").await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    // None of those ended anything.
    assert_eq!(me_status(&app, &tokens.access).await, StatusCode::OK);
    // `{}` and a null scope mean the current session.
    assert_eq!(
        send(r#"{"scope": null}"#, "application/json")
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        me_status(&app, &tokens.access).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_string_with_a_sessions_family_but_not_its_secret_changes_nothing() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    let tokens = login(&app, "ada@example.test").await;
    let mut bytes = URL_SAFE_NO_PAD.decode(&tokens.refresh).unwrap();
    // The family and generation kept, the secret zeroed; then an older generation, forged.
    for byte in &mut bytes[24..] {
        *byte = 0;
    }
    let zeroed = URL_SAFE_NO_PAD.encode(&bytes);
    refused(&app, &zeroed).await;
    assert_eq!(me_status(&app, &tokens.access).await, StatusCode::OK);
    app.db.expect_events("refresh_token_reused", 0).await;
    let next = Tokens::from(refresh(&app, &tokens.refresh).await).await;
    assert_eq!(me_status(&app, &next.access).await, StatusCode::OK);
}

#[tokio::test]
async fn a_token_two_rotations_old_still_gets_the_current_tokens_within_the_grace_period() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    let first = login(&app, "ada@example.test").await;
    let second = Tokens::from(refresh(&app, &first.refresh).await).await;
    let third = Tokens::from(refresh(&app, &second.refresh).await).await;
    // The first request's retry arrives after the client already moved on twice.
    let late = Tokens::from(refresh(&app, &first.refresh).await).await;
    assert_eq!(late.refresh, third.refresh);
    assert_eq!(me_status(&app, &third.access).await, StatusCode::OK);
    app.db.expect_events("refresh_token_reused", 0).await;
    // Three rotations old is reuse, grace or not.
    let fourth = Tokens::from(refresh(&app, &third.refresh).await).await;
    refused(&app, &first.refresh).await;
    assert_eq!(
        me_status(&app, &fourth.access).await,
        StatusCode::UNAUTHORIZED
    );
    app.db.expect_events("refresh_token_reused", 1).await;
}

#[tokio::test]
async fn a_disabled_or_deleted_user_gets_no_new_session_from_the_store() {
    use authd::store::{NewSession, Store};
    let app = TestApp::spawn().await;
    let ada = app.register("ada@example.test", false).await;
    let user_id: uuid::Uuid = ada["id"].as_str().unwrap().parse().unwrap();
    let store = Store::connect_lazy(&app.settings).unwrap();
    let now = chrono::Utc::now();
    let session = |after_second_step| NewSession {
        id: uuid::Uuid::now_v7(),
        user_id,
        family: authd::token::refresh::new_family().to_vec(),
        refresh_hash: vec![0; 32],
        created_at: now,
        expires_at: now + chrono::Duration::hours(1),
        absolute_expires_at: now + chrono::Duration::hours(2),
        client_ip: None,
        user_agent: None,
        after_second_step,
        password_hash: None,
        passkey_id: None,
    };
    assert_eq!(
        store.insert_session(&session(false), 5).await.unwrap(),
        Some(0)
    );
    // Switched to two steps: a password-only login opens nothing; one past the code does.
    let data_dir = TempDir::new("authd-sessions");
    admin(
        &app.db_url,
        &data_dir,
        &["user", "set-2fa", "ada@example.test", "on"],
        "",
    )
    .await;
    assert_eq!(
        store.insert_session(&session(false), 5).await.unwrap(),
        None
    );
    assert_eq!(
        store.insert_session(&session(true), 5).await.unwrap(),
        Some(0)
    );
    admin(
        &app.db_url,
        &data_dir,
        &["user", "disable", "ada@example.test"],
        "",
    )
    .await;
    assert_eq!(store.insert_session(&session(true), 5).await.unwrap(), None);
    admin(
        &app.db_url,
        &data_dir,
        &["user", "delete", "ada@example.test", "--yes"],
        "",
    )
    .await;
    assert_eq!(store.insert_session(&session(true), 5).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_logins_of_one_user_keep_the_session_cap_exact() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.session.max_per_user = 3).await;
    app.register("ada@example.test", false).await;
    // Eight at once: each is counted as a failure until its password checks out, and ten in
    // flight would lock the account (rate_limit.login_failures_per_account).
    let logins =
        futures::future::join_all((0..8).map(|_| app.login("ada@example.test", PASSWORD))).await;
    for login in logins {
        assert_eq!(login.status(), StatusCode::OK);
    }
    assert_eq!(live_sessions(&app).await, 3);
    // Every login made a session; five of them were ended by later ones.
    let revoked = app
        .db
        .int("SELECT CAST(count(*) AS BIGINT) FROM sessions WHERE revoked_at IS NOT NULL")
        .await;
    assert_eq!(revoked, 5);
}

// Multi-thread: the per-address limiter is shared by every worker, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_refreshes_meets_the_per_address_limit_but_logout_never_does() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 4;
    })
    .await;
    // Two of the four this minute: the registration and the login.
    app.register("ada@example.test", false).await;
    let tokens = login(&app, "ada@example.test").await;
    let guesses: Vec<String> = (0..6).map(|i| format!("{i}").repeat(75)).collect();
    let guesses = futures::future::join_all(guesses.iter().map(|g| refresh(&app, g))).await;
    let statuses: Vec<StatusCode> = guesses.iter().map(|r| r.status()).collect();
    let answered = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited: Vec<_> = guesses
        .iter()
        .filter(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!((answered, limited.len()), (2, 4), "{statuses:?}");
    assert!(
        limited
            .iter()
            .all(|r| r.headers().contains_key("retry-after"))
    );
    // The address is out of requests, yet its user can still log out.
    assert_eq!(
        logout(&app, &tokens.access, None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        me_status(&app, &tokens.access).await,
        StatusCode::UNAUTHORIZED
    );
}
