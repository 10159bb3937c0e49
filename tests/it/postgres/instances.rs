//! Several instances on one PostgreSQL database: a session ended through one is refused by
//! every other at the next request, whatever each has remembered.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TempDir, TestApp, admin, fresh_database, problem, test_settings};
use crate::smtp_sink::{Behaviour, MailSink};

async fn instance(db_url: &str) -> TestApp {
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let settings = test_settings(db_url, mail.port);
    TestApp::spawn_on(settings, mail, db_url.to_owned()).await
}

/// Two instances on one fresh database, and the login answer of a user registered on the first.
async fn two_instances_and_a_login() -> (String, TestApp, TestApp, Value) {
    let db_url = fresh_database().await;
    let (one, two) = (instance(&db_url).await, instance(&db_url).await);
    one.register("ada@example.test", false).await;
    let login: Value = one
        .login("ada@example.test", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    (db_url, one, two, login)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_ended_on_one_instance_is_refused_by_the_other_at_once() {
    let (db_url, one, two, login) = two_instances_and_a_login().await;
    let access = login["access_token"].as_str().unwrap();
    let refresh = login["refresh_token"].as_str().unwrap();
    // Both instances have verified (and cached) the token.
    for app in [&one, &two] {
        assert_eq!(
            app.get_with_token("/users/me", access).await.status(),
            StatusCode::OK
        );
    }
    let out = two
        .client
        .post(two.url("/logout"))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    for app in [&one, &two] {
        problem(
            app.get_with_token("/users/me", access).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
        problem(
            app.post_json("/token/refresh", &json!({ "refresh_token": refresh }))
                .await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }

    // An admin's disable is seen by both as well.
    let again = one
        .login("ada@example.test", PASSWORD)
        .await
        .json::<Value>()
        .await
        .unwrap();
    let access = again["access_token"].as_str().unwrap();
    assert_eq!(
        two.get_with_token("/users/me", access).await.status(),
        StatusCode::OK
    );
    let data_dir = TempDir::new("authd-instances");
    admin(
        &db_url,
        &data_dir,
        &["user", "disable", "ada@example.test"],
        "",
    )
    .await;
    for app in [&one, &two] {
        assert_eq!(
            app.get_with_token("/users/me", access).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_refreshes_through_two_instances_make_one_chain() {
    let (_, one, two, login) = two_instances_and_a_login().await;
    let refresh = login["refresh_token"].as_str().unwrap().to_owned();
    let body = json!({ "refresh_token": refresh });
    let answers = futures::future::join_all((0..12).map(|i| {
        let app = if i % 2 == 0 { &one } else { &two };
        app.post_json("/token/refresh", &body)
    }))
    .await;
    let mut next = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), StatusCode::OK);
        let body: Value = answer.json().await.unwrap();
        next.push(body["refresh_token"].as_str().unwrap().to_owned());
    }
    assert!(
        next.iter().all(|t| *t == next[0]),
        "one next token: {next:?}"
    );
    assert_eq!(
        one.db
            .int("SELECT CAST(generation AS BIGINT) FROM sessions")
            .await,
        1
    );
}
