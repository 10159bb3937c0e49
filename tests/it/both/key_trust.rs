//! Key revocation under admin mistakes: a key-encryption key is checked against the database's
//! check value before anything is sealed with it (on an empty table too), only a key that opens
//! is ever promoted, a set that cannot sign makes the instance not ready (503, never a 200
//! beside 500s) while a revoked key still leaves the JWKS, and a refresh never signs with a key
//! revoked a moment ago.

use std::time::Duration;

use authd::app::App;
use authd::keys::{KeyAlgorithm, KeyState, new_signing_key};
use authd::store::Store;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, TempDir, TestApp, admin, admin_output, admin_output_with, fresh_database,
    kid_in_state, metric_value, problem, refused_line, signing_keys, test_settings, wait_until,
};
use crate::smtp_sink::{Behaviour, MailSink};

const OTHER_KEK: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// The `kid`s the JWKS publishes now.
async fn published(app: &TestApp) -> Vec<String> {
    let set: Value = app
        .get("/.well-known/jwks.json")
        .await
        .json()
        .await
        .unwrap();
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// The answer of a password-only login: access and refresh token.
async fn login_answer(app: &TestApp, email: &str) -> Value {
    let response = app.login(email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Waits (bounded: 10 s) until `done` holds.
async fn eventually(what: &str, done: impl AsyncFnMut() -> bool) {
    assert!(
        wait_until(Duration::from_secs(10), done).await,
        "never happened: {what}"
    );
}

/// A key sealed under a key-encryption key the servers do not have, stored as `next`: what a
/// command run with the wrong KEK left in a database from before the check value.
async fn plant_stray_next_key(settings: &authd::config::Settings) -> String {
    let kek: [u8; 32] = [0xcd; 32];
    let key = new_signing_key(
        &kek,
        KeyAlgorithm::Es256,
        KeyState::Next,
        chrono::Utc::now(),
    )
    .unwrap();
    Store::connect_lazy(settings)
        .unwrap()
        .insert_signing_key(&key)
        .await
        .unwrap();
    key.kid
}

#[tokio::test]
async fn a_command_with_another_kek_changes_nothing_even_on_an_empty_table() {
    let db_url = fresh_database().await;
    let data_dir = TempDir::new("authd-kek");
    let rotate_with = async |kek: &str| {
        admin_output_with(
            &db_url,
            &data_dir,
            &["keys", "rotate"],
            "",
            &[("AUTHD_KEYS__ENCRYPTION_KEY", kek)],
        )
        .await
    };
    // Nothing recorded yet: no command can tell whether its KEK is the servers', so none seals.
    let line = refused_line(rotate_with(OTHER_KEK).await, "rotate with another KEK");
    assert!(
        line.contains("no key-encryption key check value yet"),
        "{line}"
    );
    assert!(signing_keys(&db_url, &data_dir).await.is_empty());
    // `authd migrate` with the servers' KEK records its check value...
    let migrated = admin(&db_url, &data_dir, &["migrate"], "").await;
    assert!(
        migrated.contains("check value recorded or matched"),
        "{migrated}"
    );
    // ...so another KEK is refused on the empty table, one line, exit 1, nothing stored.
    let line = refused_line(rotate_with(OTHER_KEK).await, "rotate with another KEK");
    assert!(line.contains("keys.encryption_key"), "{line}");
    assert!(line.contains("check value differs"), "{line}");
    assert!(signing_keys(&db_url, &data_dir).await.is_empty());
    // migrate with it says so too; the right one is taken.
    let line = refused_line(
        admin_output_with(
            &db_url,
            &data_dir,
            &["migrate"],
            "",
            &[("AUTHD_KEYS__ENCRYPTION_KEY", OTHER_KEK)],
        )
        .await,
        "migrate with another KEK",
    );
    assert!(line.contains("check value differs"), "{line}");
    admin(&db_url, &data_dir, &["keys", "rotate"], "").await;
    assert_eq!(signing_keys(&db_url, &data_dir).await.len(), 1);

    // A server with another KEK does not start (exit 2 from `authd serve`): it could not sign
    // with the keys, nor check the codes and refresh tokens of the other instances.
    let mut settings = test_settings(&db_url, 25);
    settings.keys.encryption_key = Some(OTHER_KEK.to_string().into());
    let refused = App::build(&settings).await.err().expect("refused to start");
    assert!(
        format!("{refused:#}").contains("keys.encryption_key"),
        "{refused:#}"
    );
}

#[tokio::test]
async fn revoking_the_current_key_never_promotes_a_key_the_servers_cannot_open() {
    let app = TestApp::spawn().await;
    let data_dir = TempDir::new("authd-kek");
    app.register("ada@example.test", false).await;
    let current = kid_in_state(&app.db_url, &data_dir, "current").await;
    let stray = plant_stray_next_key(&app.settings).await;
    // --activate passes it over: there is no next key that opens.
    let line = refused_line(
        admin_output(
            &app.db_url,
            &data_dir,
            &["keys", "rotate", "--activate", "--force"],
            "",
        )
        .await,
        "activate a key that does not open",
    );
    assert!(line.contains("there is no next key to activate"), "{line}");
    // Revoking the current key makes a fresh key rather than promoting the stray one, and the
    // command says which; that is what the server signs with.
    let said = admin(&app.db_url, &data_dir, &["keys", "revoke", &current], "").await;
    let successor = kid_in_state(&app.db_url, &data_dir, "current").await;
    assert_ne!(successor, stray);
    assert_ne!(successor, current);
    assert!(
        said.contains(&format!("{successor} is the current key now")),
        "{said}"
    );
    assert_eq!(kid_in_state(&app.db_url, &data_dir, "next").await, stray);
    let token = app.access_token("ada@example.test").await;
    assert_eq!(kid_of(&token), successor);
    assert_eq!(
        app.get_with_token("/users/me", &token).await.status(),
        StatusCode::OK
    );
    assert!(!published(&app).await.contains(&current));
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    // A next key that opens is preferred to a fresh one.
    admin(&app.db_url, &data_dir, &["keys", "rotate"], "").await;
    let openable = signing_keys(&app.db_url, &data_dir)
        .await
        .into_iter()
        .filter(|k| k["state"] == "next" && k["kid"] != stray.as_str())
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .next()
        .unwrap();
    admin(&app.db_url, &data_dir, &["keys", "revoke", &successor], "").await;
    assert_eq!(
        kid_in_state(&app.db_url, &data_dir, "current").await,
        openable
    );
    assert_eq!(
        kid_of(&app.access_token("ada@example.test").await),
        openable
    );
}

#[tokio::test]
async fn a_set_that_cannot_sign_makes_the_instance_not_ready_and_still_drops_a_revoked_key() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.keys.refresh_secs = 1).await;
    let data_dir = TempDir::new("authd-kek");
    app.register("ada@example.test", false).await;
    app.register("bob@example.test", true).await;
    let login = login_answer(&app, "ada@example.test").await;
    let old_token = login["access_token"].as_str().unwrap().to_owned();
    let refresh_token = login["refresh_token"].as_str().unwrap().to_owned();
    let revoked = kid_of(&old_token);
    assert_eq!(
        metric_value(&app, "authd_signing_key_usable").await,
        Some(1)
    );
    // What the old revocation could do: the revoked key's place taken by a key that does not
    // open under the servers' KEK (made here by hand, as no command does it any more).
    let stray = plant_stray_next_key(&app.settings).await;
    // In one transaction: between two statements the instance (reading its keys every second)
    // would find no current key and make one, which the second statement then collides with.
    app.db
        .exec(
            "BEGIN; \
             UPDATE signing_keys SET state = 'revoked', revoked_at = now() WHERE state = 'current'; \
             UPDATE signing_keys SET state = 'current', activated_at = now() WHERE state = 'next'; \
             COMMIT;",
            "BEGIN; \
             UPDATE signing_keys SET state = 'revoked', revoked_at = 0 WHERE state = 'current'; \
             UPDATE signing_keys SET state = 'current', activated_at = 0 WHERE state = 'next'; \
             COMMIT;",
        )
        .await;
    // At the next read the revoked key leaves the JWKS though the new current key is unusable,
    // and the instance says it is not ready, in the metric too.
    eventually("the revoked key leaves the JWKS", async || {
        published(&app).await == [stray.clone()]
    })
    .await;
    eventually("/readyz answers 503", async || {
        app.get("/readyz").await.status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert_eq!(
        metric_value(&app, "authd_signing_key_usable").await,
        Some(0)
    );
    // Logins, codes and refreshes answer 503, never 500, and change nothing: no session, no
    // code sent, no rotation (the refresh token still works once the keys are fixed, even after
    // its grace period), no failure counted.
    let sessions = "SELECT CAST(COUNT(*) AS BIGINT) FROM sessions";
    let rows_before = app.db.int(sessions).await;
    for _ in 0..3 {
        problem(
            app.login("ada@example.test", PASSWORD).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        )
        .await;
        problem(
            app.login("bob@example.test", PASSWORD).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        )
        .await;
        problem(
            app.post_json("/token/refresh", &json!({ "refresh_token": refresh_token }))
                .await,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
        )
        .await;
    }
    assert_eq!(app.db.int(sessions).await, rows_before);
    assert_eq!(
        app.db
            .int("SELECT CAST(COUNT(*) AS BIGINT) FROM otp_challenges")
            .await,
        0,
        "no challenge, no code"
    );
    assert!(app.mail.messages().is_empty());
    app.db
        .exec(
            "UPDATE sessions SET rotated_at = now() - interval '1 hour'",
            "UPDATE sessions SET rotated_at = rotated_at - 3600000000",
        )
        .await;
    assert_eq!(
        app.get_with_token("/users/me", &old_token).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(!revoked.is_empty());
    // The operator revokes the stray key with the servers' KEK: a fresh key takes over, and
    // the instance is ready again at its next read.
    admin(&app.db_url, &data_dir, &["keys", "revoke", &stray], "").await;
    let fresh = kid_in_state(&app.db_url, &data_dir, "current").await;
    eventually("/readyz answers 200 again", async || {
        app.get("/readyz").await.status() == StatusCode::OK
    })
    .await;
    assert_eq!(
        metric_value(&app, "authd_signing_key_usable").await,
        Some(1)
    );
    assert_eq!(kid_of(&app.access_token("ada@example.test").await), fresh);
    let refreshed = app
        .post_json("/token/refresh", &json!({ "refresh_token": refresh_token }))
        .await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    app.db.expect_events("refresh_token_reused", 0).await;
}

#[tokio::test]
async fn keys_that_cannot_be_read_for_two_refresh_periods_make_the_instance_not_ready() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.keys.refresh_secs = 1).await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    let rename = async |sql: &'static str| app.db.exec(sql, sql).await;
    // The database answers, but its keys cannot be read (here: their table is away).
    rename("ALTER TABLE signing_keys RENAME TO signing_keys_away").await;
    eventually("/readyz answers 503", async || {
        app.get("/readyz").await.status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    rename("ALTER TABLE signing_keys_away RENAME TO signing_keys").await;
    eventually("/readyz answers 200 again", async || {
        app.get("/readyz").await.status() == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn a_server_records_no_kek_that_opens_none_of_the_keys_already_there() {
    // A database from before the check value, with a key made ahead under another KEK.
    let db_url = fresh_database().await;
    let mut settings = test_settings(&db_url, 25);
    let planted = plant_stray_next_key(&settings).await;
    settings.jwt.algorithm = authd::config::JwtAlgorithm::Hs256;
    let refused = App::build(&settings).await.err().expect("refused to start");
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("opens none of the stored signing keys"),
        "{refused}"
    );
    // Nothing was recorded: revoking the stray key (no KEK needed) lets the server start.
    let data_dir = TempDir::new("authd-kek");
    admin(&db_url, &data_dir, &["keys", "revoke", &planted], "").await;
    App::build(&settings)
        .await
        .expect("starts once the stray key is revoked");
}

#[tokio::test]
async fn a_refresh_right_after_a_revocation_never_signs_with_the_revoked_key() {
    // The periodic read is an hour away: only the refresh's own look finds the revocation.
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.keys.refresh_secs = 3600).await;
    let data_dir = TempDir::new("authd-kek");
    app.register("ada@example.test", false).await;
    let login = login_answer(&app, "ada@example.test").await;
    let revoked = kid_of(login["access_token"].as_str().unwrap());
    let refresh = async |token: &str| -> Value {
        let response = app
            .post_json("/token/refresh", &json!({ "refresh_token": token }))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    };
    // A refresh just before the revocation, then one just after.
    let before = refresh(login["refresh_token"].as_str().unwrap()).await;
    admin(&app.db_url, &data_dir, &["keys", "revoke", &revoked], "").await;
    let after = refresh(before["refresh_token"].as_str().unwrap()).await;
    let access = after["access_token"].as_str().unwrap();
    let successor = kid_in_state(&app.db_url, &data_dir, "current").await;
    assert_eq!(kid_of(access), successor);
    assert_eq!(
        app.get_with_token("/users/me", access).await.status(),
        StatusCode::OK
    );
    // Every instance reads the same: a second instance on the database signs with it too.
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let second = TestApp::spawn_on(
        test_settings(&app.db_url, mail.port),
        mail,
        app.db_url.clone(),
    )
    .await;
    assert_eq!(
        kid_of(&second.access_token("ada@example.test").await),
        successor
    );
}
