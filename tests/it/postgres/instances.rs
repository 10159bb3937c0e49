//! Several instances on one PostgreSQL database: a session ended through one is refused by
//! every other at the next request, whatever each has remembered; one prunes at a time.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, TempDir, TestApp, admin, admin_output, fresh_database, problem, rotate_now,
    signing_keys, test_settings,
};
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

/// The `kid` in a token's header.
fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_at_once_on_a_new_database_make_one_current_key_between_them() {
    let db_url = fresh_database().await;
    let (one, two, three) = tokio::join!(instance(&db_url), instance(&db_url), instance(&db_url));
    let data_dir = TempDir::new("authd-instances");
    let keys = signing_keys(&db_url, &data_dir).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["state"], "current");
    // All three sign with it, and each accepts what the others signed.
    one.register("ada@example.test", false).await;
    let tokens = [
        one.access_token("ada@example.test").await,
        two.access_token("ada@example.test").await,
        three.access_token("ada@example.test").await,
    ];
    for token in &tokens {
        assert_eq!(kid_of(token), keys[0]["kid"].as_str().unwrap());
        for app in [&one, &two, &three] {
            assert_eq!(
                app.get_with_token("/users/me", token).await.status(),
                StatusCode::OK
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_reaches_a_second_instance_without_a_restart() {
    let db_url = fresh_database().await;
    let quick = |db_url: &str| {
        let db_url = db_url.to_owned();
        async move {
            let mail = MailSink::start(Behaviour::Accept).await.unwrap();
            let mut settings = test_settings(&db_url, mail.port);
            settings.keys.refresh_secs = 1;
            TestApp::spawn_on(settings, mail, db_url).await
        }
    };
    let (one, two) = (quick(&db_url).await, quick(&db_url).await);
    let data_dir = TempDir::new("authd-instances");
    one.register("ada@example.test", false).await;
    let before = two.access_token("ada@example.test").await;
    let current = rotate_now(&db_url, &data_dir).await;
    // Within keys.refresh_secs the second instance signs with the new key, unrestarted.
    let mut after = None;
    for _ in 0..50 {
        let token = two.access_token("ada@example.test").await;
        if kid_of(&token) == current {
            after = Some(token);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let after = after.expect("the second instance took the new key up");
    for app in [&one, &two] {
        for token in [&before, &after] {
            assert_eq!(
                app.get_with_token("/users/me", token).await.status(),
                StatusCode::OK
            );
        }
    }
    // A revocation on the first's database is refused by both at once.
    admin(&db_url, &data_dir, &["keys", "revoke", &current], "").await;
    for app in [&one, &two] {
        let refused = app.get_with_token("/users/me", &after).await;
        problem(refused, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
}

/// The pruning pass (the server's task and `authd prune`) takes an advisory lock: while another
/// instance holds it, a pass does nothing.
#[tokio::test]
async fn one_instance_at_a_time_prunes() {
    let app = TestApp::spawn().await;
    let store = authd::store::Store::connect_lazy(&app.settings).unwrap();
    let crate::helpers::TestDb::Postgres(pool) = &*app.db else {
        panic!("the postgres tests run on PostgreSQL")
    };
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(authd::store::PRUNE_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    let now = chrono::Utc::now();
    assert_eq!(store.prune(now, now, false).await.unwrap(), None);
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(authd::store::PRUNE_LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    // Released: this instance prunes (once the server's own pass, which may hold the lock for
    // a moment, is done).
    assert!(
        crate::helpers::wait_until(crate::helpers::EVENTS_DEADLINE, async || {
            store.prune(now, now, false).await.unwrap().is_some()
        })
        .await,
        "the lock was never free again"
    );
}

/// A revocation of the current key and an activation run at once, again and again: each either
/// does what it says or is refused (exit 1: nothing to activate), neither fails as a system
/// error (2), and one key is current after every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_and_an_activation_at_once_both_finish_and_leave_one_current_key() {
    let db_url = fresh_database().await;
    let app = instance(&db_url).await;
    let data_dir = TempDir::new("authd-race");
    for round in 0..4 {
        admin(&db_url, &data_dir, &["keys", "rotate"], "").await;
        admin(&db_url, &data_dir, &["keys", "rotate"], "").await;
        let current = signing_keys(&db_url, &data_dir)
            .await
            .into_iter()
            .find(|k| k["state"] == "current")
            .unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned();
        let revoke = ["keys", "revoke", current.as_str()];
        let activate = ["keys", "rotate", "--activate", "--force"];
        let (revoked, activated) = tokio::join!(
            admin_output(&db_url, &data_dir, &revoke, ""),
            admin_output(&db_url, &data_dir, &activate, ""),
        );
        assert_eq!(revoked.status.code(), Some(0), "round {round}: {revoked:?}");
        assert!(
            matches!(activated.status.code(), Some(0 | 1)),
            "round {round}: {activated:?}"
        );
        let keys = signing_keys(&db_url, &data_dir).await;
        let current: Vec<_> = keys.iter().filter(|k| k["state"] == "current").collect();
        assert_eq!(current.len(), 1, "round {round}: {keys:?}");
        assert_eq!(
            keys.iter().find(|k| k["kid"] == revoke[2]).unwrap()["state"],
            "revoked"
        );
    }
    // The server signs with the one current key throughout.
    app.register("ada@example.test", false).await;
    let login = app.login("ada@example.test", PASSWORD).await;
    assert_eq!(login.status(), StatusCode::OK);
}

/// An activation that waits behind a revocation which makes another key current (the two at
/// once on PostgreSQL): when the revocation commits, the activation would make a second current
/// key; the one-current index refuses it and the activation reports "nothing changed", so its
/// caller reads the keys again, instead of failing as a database error.
#[tokio::test]
async fn an_activation_behind_a_revocation_that_made_another_key_current_changes_nothing() {
    let app = TestApp::spawn().await;
    let data_dir = TempDir::new("authd-race");
    admin(&app.db_url, &data_dir, &["keys", "rotate"], "").await;
    admin(&app.db_url, &data_dir, &["keys", "rotate"], "").await;
    let keys = signing_keys(&app.db_url, &data_dir).await;
    let kid = |i: usize| keys[i]["kid"].as_str().unwrap().to_owned();
    let (current, promoted, wanted) = (kid(0), kid(1), kid(2));
    let crate::helpers::TestDb::Postgres(pool) = &*app.db else {
        unreachable!()
    };
    // The revocation, by hand and left open: the old key revoked, the first next key current.
    let mut revocation = pool.begin().await.unwrap();
    for (sql, kid) in [
        (
            "UPDATE signing_keys SET state = 'revoked', revoked_at = now() WHERE kid = $1",
            &current,
        ),
        (
            "UPDATE signing_keys SET state = 'current', activated_at = now() WHERE kid = $1",
            &promoted,
        ),
    ] {
        sqlx::query(sql)
            .bind(kid)
            .execute(&mut *revocation)
            .await
            .unwrap();
    }
    let store = authd::store::Store::connect_lazy(&app.settings).unwrap();
    let activation = tokio::spawn(async move {
        store
            .activate_signing_key(&wanted, chrono::Utc::now())
            .await
    });
    // Until the activation waits on the revocation's row lock (bounded).
    let waiting = crate::helpers::wait_until(std::time::Duration::from_secs(2), async || {
        let blocked: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE signing_keys SET state = ''retired''%'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        blocked > 0
    })
    .await;
    assert!(waiting, "the activation never waited on the revocation");
    revocation.commit().await.unwrap();
    let activated = activation.await.unwrap();
    assert!(
        matches!(activated, Ok(false)),
        "nothing changed, no error: {activated:?}"
    );
    let states: Vec<(String, String)> = signing_keys(&app.db_url, &data_dir)
        .await
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states
            .iter()
            .filter(|(_, state)| state == "current")
            .collect::<Vec<_>>(),
        [&(promoted, "current".to_owned())]
    );
}

/// Four instances start at once on a new database, two with one key-encryption key and two
/// with another: the first to record its KEK's check value wins, the instances with the other
/// KEK refuse to start, and every instance that started signs with the one current key, which
/// its KEK opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_with_two_keks_starting_at_once_leave_one_kek_in_charge() {
    let db_url = fresh_database().await;
    let kek_b = "cd".repeat(32);
    let build = |kek: Option<String>| {
        let db_url = db_url.clone();
        async move {
            let mut settings = test_settings(&db_url, 25);
            if let Some(kek) = kek {
                settings.keys.encryption_key = Some(kek.into());
            }
            authd::app::App::build(&settings).await.map(|_| ())
        }
    };
    let started = tokio::join!(
        build(None),
        build(Some(kek_b.clone())),
        build(None),
        build(Some(kek_b.clone())),
    );
    let started = [started.0, started.1, started.2, started.3].map(|r| r.is_ok());
    // Instances 0 and 2 share a KEK, 1 and 3 the other: exactly one pair started.
    assert!(
        started == [true, false, true, false] || started == [false, true, false, true],
        "{started:?}"
    );
    let data_dir = TempDir::new("authd-instances");
    let keys = signing_keys(&db_url, &data_dir).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["state"], "current");
}
