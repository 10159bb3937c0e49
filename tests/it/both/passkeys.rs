//! Passkeys end to end over HTTP, with the software authenticator of `testkit::passkey`
//! answering the options authd hands out: registration, a sign-in with nothing else, the
//! second step of a login, and every way an answer must be refused (another origin or RP id,
//! no user verification, a replay, a counter going backwards, another user's credential, a
//! ceremony finished twice, an expired one, a removed passkey).

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::passkey::SoftAuthenticator;

use crate::helpers::{
    PASSWORD, TempDir, TestApp, admin, admin_output, metric_value, problem, wait_until,
};
use crate::smtp_sink::Behaviour;

/// An authd with the per-address limit out of the way, `tweak`ed.
pub(super) async fn spawn_with(tweak: impl FnOnce(&mut authd::config::Settings)) -> TestApp {
    TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 100_000;
        tweak(s);
    })
    .await
}

pub(super) async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

/// The origin a browser would use: WebAuthn takes no IP address, so `localhost`.
pub(super) fn origin(app: &TestApp) -> String {
    app.base.replace("127.0.0.1", "localhost")
}

pub(super) async fn json_of(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// Logs `email` in with the password alone (no second step) and returns the access token.
async fn access(app: &TestApp, email: &str) -> String {
    app.access_token(email).await
}

/// `POST /passkeys/register/options` for the access token's user: the ceremony and options.
pub(super) async fn registration_options(app: &TestApp, access: &str) -> Value {
    json_of(
        app.post_json_with_token("/passkeys/register/options", access, &json!({}))
            .await,
    )
    .await
}

/// Registers a passkey of `authenticator` for the access token's user; the answer's body.
pub(super) async fn add_passkey(
    app: &TestApp,
    access: &str,
    authenticator: &mut SoftAuthenticator,
    name: &str,
) -> Value {
    let options = registration_options(app, access).await;
    let credential = authenticator
        .create(&options["publicKey"], &origin(app))
        .unwrap();
    let response = app
        .post_json_with_token(
            "/passkeys/register",
            access,
            &json!({"ceremony": options["ceremony"], "credential": credential, "name": name}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

/// A discoverable sign-in's options (no token).
pub(super) async fn login_options(app: &TestApp) -> Value {
    json_of(app.post_json("/login/passkey/options", &json!({})).await).await
}

pub(super) async fn finish(
    app: &TestApp,
    ceremony: &Value,
    credential: &Value,
) -> reqwest::Response {
    app.post_json(
        "/login/passkey",
        &json!({"ceremony": ceremony, "credential": credential}),
    )
    .await
}

/// A whole discoverable sign-in with `authenticator` from `origin`.
async fn sign_in_from(
    app: &TestApp,
    authenticator: &mut SoftAuthenticator,
    origin: &str,
) -> reqwest::Response {
    let options = login_options(app).await;
    let credential = authenticator.get(&options["publicKey"], origin).unwrap();
    finish(app, &options["ceremony"], &credential).await
}

pub(super) async fn sign_in(
    app: &TestApp,
    authenticator: &mut SoftAuthenticator,
) -> reqwest::Response {
    sign_in_from(app, authenticator, &origin(app)).await
}

/// Registers `email` (no second step) with one passkey: its access token and authenticator.
pub(super) async fn user_with_passkey(app: &TestApp, email: &str) -> (String, SoftAuthenticator) {
    app.register(email, false).await;
    let token = access(app, email).await;
    let mut authenticator = SoftAuthenticator::new();
    add_passkey(app, &token, &mut authenticator, "Laptop").await;
    (token, authenticator)
}

async fn live_sessions(app: &TestApp) -> i64 {
    app.db
        .int("SELECT CAST(count(*) AS BIGINT) FROM sessions WHERE revoked_at IS NULL")
        .await
}

#[tokio::test]
async fn a_registered_passkey_signs_in_without_a_password_or_a_code() {
    let app = spawn().await;
    // Two steps on: the passkey still signs in alone (it is two factors in one).
    app.register("ada@example.test", true).await;
    let (challenge, code) = app.start_challenge("ada@example.test").await;
    let body = json_of(app.submit_code(&challenge, &code).await).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let mut authenticator = SoftAuthenticator::new();

    let options = json_of(
        app.post_json_with_token("/passkeys/register/options", &token, &json!({}))
            .await,
    )
    .await;
    let public_key = &options["publicKey"];
    assert_eq!(public_key["rp"]["id"], "localhost");
    assert_eq!(
        public_key["authenticatorSelection"]["residentKey"],
        "required"
    );
    assert_eq!(
        public_key["authenticatorSelection"]["userVerification"],
        "required"
    );
    let credential = authenticator.create(public_key, &origin(&app)).unwrap();
    let response = app
        .post_json_with_token(
            "/passkeys/register",
            &token,
            &json!({"ceremony": options["ceremony"], "credential": credential, "name": " Laptop "}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let added: Value = response.json().await.unwrap();
    assert_eq!(added["name"], "Laptop");
    assert_eq!(added["last_used_at"], Value::Null);
    assert_eq!(added["backed_up"], false);
    // The owner hears of it.
    app.wait_for_background_mail().await;
    let notices: Vec<_> = app
        .mail
        .messages_to("ada@example.test")
        .into_iter()
        .filter(|m| m.subject().contains("A passkey was added"))
        .collect();
    assert_eq!(notices.len(), 1);
    assert!(
        notices[0].text().contains("\"Laptop\""),
        "{}",
        notices[0].text()
    );

    let listed = json_of(app.get_with_token("/passkeys", &token).await).await;
    assert_eq!(listed["passkeys"].as_array().unwrap().len(), 1);
    assert_eq!(listed["passkeys"][0]["id"], added["id"]);

    // A second registration of the same authenticator is excluded by the options.
    let options = json_of(
        app.post_json_with_token("/passkeys/register/options", &token, &json!({}))
            .await,
    )
    .await;
    assert!(
        authenticator
            .create(&options["publicKey"], &origin(&app))
            .is_err(),
        "the user's credential is excluded: {}",
        options["publicKey"]["excludeCredentials"]
    );

    let mails_before = app.mail.messages_to("ada@example.test").len();
    let options = login_options(&app).await;
    let allowed = options["publicKey"]["allowCredentials"].as_array();
    assert!(
        allowed.is_none_or(|list| list.is_empty()),
        "a discoverable sign-in names no credential"
    );
    let credential = authenticator
        .get(&options["publicKey"], &origin(&app))
        .unwrap();
    let response = finish(&app, &options["ceremony"], &credential).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["otp_required"], false);
    assert!(body["refresh_token"].is_string());
    let me = json_of(
        app.get_with_token("/users/me", body["access_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(me["email"], "ada@example.test");
    assert_eq!(
        app.mail.messages_to("ada@example.test").len(),
        mails_before,
        "no code emailed"
    );
    let listed = json_of(app.get_with_token("/passkeys", &token).await).await;
    assert!(listed["passkeys"][0]["last_used_at"].is_string());
    app.db.expect_events("passkey_registered", 1).await;
    app.db.expect_events("passkey_login", 1).await;
    for (event, count) in [("registered", 1), ("sign_in", 1)] {
        let series = format!("authd_passkeys_total{{event=\"{event}\"}}");
        assert_eq!(metric_value(&app, &series).await, Some(count), "{series}");
    }
}

#[tokio::test]
async fn a_passkey_finishes_the_second_step_of_a_login_and_the_challenge_with_it() {
    let app = spawn().await;
    let (_, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let data_dir = TempDir::new("authd-passkeys");
    admin(
        &app.db_url,
        &data_dir,
        &["user", "set-2fa", "ada@example.test", "on"],
        "",
    )
    .await;
    let before = app.mail.messages_to("ada@example.test").len();
    let login = json_of(app.login("ada@example.test", PASSWORD).await).await;
    assert_eq!(login["otp_required"], true);
    assert_eq!(login["methods"], json!(["email", "passkey"]));
    let challenge = login["challenge_token"].as_str().unwrap();
    let code =
        crate::smtp_sink::extract_code(&app.mail.wait_for("ada@example.test", before + 1).await);

    let options = json_of(
        app.post_json_with_token("/login/passkey/options", challenge, &json!({}))
            .await,
    )
    .await;
    let allowed = options["publicKey"]["allowCredentials"].as_array().unwrap();
    assert_eq!(allowed.len(), 1, "the user's own passkey");
    let credential = authenticator
        .get(&options["publicKey"], &origin(&app))
        .unwrap();
    // The second step's ceremony is not a sign-in's: without the challenge token it is refused.
    problem(
        finish(&app, &options["ceremony"], &credential).await,
        StatusCode::BAD_REQUEST,
        "invalid_ceremony",
    )
    .await;
    let options = json_of(
        app.post_json_with_token("/login/passkey/options", challenge, &json!({}))
            .await,
    )
    .await;
    let credential = authenticator
        .get(&options["publicKey"], &origin(&app))
        .unwrap();
    let response = app
        .post_json_with_token(
            "/login/passkey",
            challenge,
            &json!({"ceremony": options["ceremony"], "credential": credential}),
        )
        .await;
    let body = json_of(response).await;
    assert!(body["access_token"].is_string());
    // The challenge is consumed: its emailed code no longer works.
    problem(
        app.submit_code(challenge, &code).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    app.db.expect_events("passkey_login", 1).await;
}

#[tokio::test]
async fn answers_from_another_origin_or_rp_id_or_without_user_verification_are_refused() {
    let app = spawn().await;
    let (_, authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let sessions = live_sessions(&app).await;
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    for (origin, tweak) in [
        (format!("http://evil.example:{port}"), None),
        (
            format!("http://localhost:{}", port.parse::<u16>().unwrap() + 1),
            None,
        ),
        (origin(&app), Some("rp")),
        (origin(&app), Some("uv")),
        (origin(&app), Some("key")),
    ] {
        let mut attacker = authenticator.clone();
        match tweak {
            Some("rp") => attacker.behaviour.rp_id_override = Some("example.test".into()),
            Some("uv") => attacker.behaviour.skip_user_verification = true,
            Some("key") => attacker.behaviour.sign_with_another_key = true,
            _ => {}
        }
        problem(
            sign_in_from(&app, &mut attacker, &origin).await,
            StatusCode::UNAUTHORIZED,
            "passkey_rejected",
        )
        .await;
    }
    assert_eq!(live_sessions(&app).await, sessions, "no session opened");
    app.db.expect_events("passkey_rejected", 5).await;
    app.db.expect_events("passkey_login", 0).await;
}

#[tokio::test]
async fn a_ceremony_answered_many_times_at_once_opens_one_session() {
    let app = spawn().await;
    let (_, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let sessions = live_sessions(&app).await;
    let options = login_options(&app).await;
    let credential = authenticator
        .get(&options["publicKey"], &origin(&app))
        .unwrap();
    let answers = join_all((0..8).map(|_| finish(&app, &options["ceremony"], &credential))).await;
    let statuses: Vec<StatusCode> = answers.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::BAD_REQUEST),
        "{statuses:?}"
    );
    assert_eq!(live_sessions(&app).await, sessions + 1);
}

#[tokio::test]
async fn a_replayed_assertion_is_refused_on_a_new_ceremony() {
    let app = spawn().await;
    let (_, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let options = login_options(&app).await;
    let credential = authenticator
        .get(&options["publicKey"], &origin(&app))
        .unwrap();
    assert_eq!(
        finish(&app, &options["ceremony"], &credential)
            .await
            .status(),
        StatusCode::OK
    );
    // The same answer again: the ceremony is gone.
    problem(
        finish(&app, &options["ceremony"], &credential).await,
        StatusCode::BAD_REQUEST,
        "invalid_ceremony",
    )
    .await;
    // Sent with a fresh ceremony: it signed another challenge.
    let fresh = login_options(&app).await;
    problem(
        finish(&app, &fresh["ceremony"], &credential).await,
        StatusCode::UNAUTHORIZED,
        "passkey_rejected",
    )
    .await;
}

#[tokio::test]
async fn a_cloned_authenticator_whose_counter_went_backwards_is_refused_and_audited() {
    let app = spawn().await;
    let (_, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let mut clone = authenticator.clone();
    for _ in 0..3 {
        assert_eq!(
            sign_in(&app, &mut authenticator).await.status(),
            StatusCode::OK
        );
    }
    // The clone's counter is behind the original's.
    problem(
        sign_in(&app, &mut clone).await,
        StatusCode::UNAUTHORIZED,
        "passkey_rejected",
    )
    .await;
    // Level with it: not forward either.
    let id = clone.credential_ids()[0].clone();
    clone.set_counter(&id, 2).unwrap();
    problem(
        sign_in(&app, &mut clone).await,
        StatusCode::UNAUTHORIZED,
        "passkey_rejected",
    )
    .await;
    app.db.expect_events("passkey_rejected", 2).await;
    let detail = app
        .db
        .text("SELECT detail FROM security_events WHERE kind = 'passkey_rejected' ORDER BY at LIMIT 1")
        .await;
    assert!(detail.contains("cloned"), "{detail}");
    // The original goes on.
    assert_eq!(
        sign_in(&app, &mut authenticator).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn two_sign_ins_signed_with_one_counter_value_at_once_open_one_session() {
    let app = spawn().await;
    let (_, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let sessions = live_sessions(&app).await;
    // Two ceremonies, each answered by one of two copies of the authenticator: the same
    // counter value signs both.
    let mut copies: Vec<SoftAuthenticator> = (0..6).map(|_| authenticator.clone()).collect();
    let mut answers = Vec::new();
    for copy in &mut copies {
        let options = login_options(&app).await;
        let credential = copy.get(&options["publicKey"], &origin(&app)).unwrap();
        answers.push((options["ceremony"].clone(), credential));
    }
    let results = join_all(
        answers
            .iter()
            .map(|(ceremony, credential)| finish(&app, ceremony, credential)),
    )
    .await;
    let statuses: Vec<StatusCode> = results.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(live_sessions(&app).await, sessions + 1);
    // The original's next counter is still ahead of the one taken.
    assert_eq!(
        sign_in(&app, &mut authenticator).await.status(),
        StatusCode::UNAUTHORIZED,
        "the original signs the same counter value as the copies"
    );
}

#[tokio::test]
async fn another_users_credential_is_refused_for_a_sign_in_and_for_a_second_step() {
    let app = spawn().await;
    let (_, ada) = user_with_passkey(&app, "ada@example.test").await;
    let (_, mut bob) = user_with_passkey(&app, "bob@example.test").await;
    let ada_handle = ada.credentials()[0].user_handle().to_vec();
    // Bob's credential claiming Ada's user handle.
    bob.behaviour.user_handle_override = Some(ada_handle);
    problem(
        sign_in(&app, &mut bob).await,
        StatusCode::UNAUTHORIZED,
        "passkey_rejected",
    )
    .await;
    bob.behaviour.user_handle_override = None;

    // Ada's login with a second step, finished with Bob's passkey.
    let data_dir = TempDir::new("authd-passkeys");
    admin(
        &app.db_url,
        &data_dir,
        &["user", "set-2fa", "ada@example.test", "on"],
        "",
    )
    .await;
    let login = json_of(app.login("ada@example.test", PASSWORD).await).await;
    let challenge = login["challenge_token"].as_str().unwrap();
    let options = json_of(
        app.post_json_with_token("/login/passkey/options", challenge, &json!({}))
            .await,
    )
    .await;
    bob.behaviour.credential_id = Some(bob.credential_ids()[0].clone());
    let credential = bob.get(&options["publicKey"], &origin(&app)).unwrap();
    problem(
        app.post_json_with_token(
            "/login/passkey",
            challenge,
            &json!({"ceremony": options["ceremony"], "credential": credential}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "passkey_rejected",
    )
    .await;
    app.db.expect_events("passkey_login", 0).await;
    app.db.expect_events("passkey_rejected", 2).await;
}

#[tokio::test]
async fn removing_a_passkey_ends_its_sessions_and_its_sign_ins() {
    let app = spawn().await;
    let (token, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let signed_in = json_of(sign_in(&app, &mut authenticator).await).await;
    let passkey_session = signed_in["access_token"].as_str().unwrap();
    let id = json_of(app.get_with_token("/passkeys", &token).await).await["passkeys"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The sessions say which passkey signed them in: removing it ends exactly those.
    let sessions = json_of(app.get_with_token("/sessions", passkey_session).await).await;
    let by_passkey: Vec<&Value> = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["passkey_id"] == id.as_str())
        .collect();
    assert_eq!(by_passkey.len(), 1, "{sessions}");
    assert_eq!(by_passkey[0]["current"], true);
    assert!(
        sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["passkey_id"].is_null()),
        "the password's session names none: {sessions}"
    );

    // Someone else's passkey is not found, and nothing changes.
    app.register("bob@example.test", false).await;
    let bob = access(&app, "bob@example.test").await;
    let response = app
        .client
        .delete(app.url(&format!("/passkeys/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::NOT_FOUND, "passkey_not_found").await;
    for junk in ["not-a-uuid", "00000000-0000-0000-0000-000000000000"] {
        let response = app
            .client
            .delete(app.url(&format!("/passkeys/{junk}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        problem(response, StatusCode::NOT_FOUND, "passkey_not_found").await;
    }
    assert_eq!(
        app.get_with_token("/users/me", passkey_session)
            .await
            .status(),
        StatusCode::OK
    );

    let response = app
        .client
        .delete(app.url(&format!("/passkeys/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    app.wait_for_background_mail().await;
    assert!(
        app.mail
            .messages_to("ada@example.test")
            .iter()
            .any(|m| m.subject().contains("A passkey was removed")),
        "the owner hears of it"
    );
    // The session it signed in is over; the password's session is not.
    problem(
        app.get_with_token("/users/me", passkey_session).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(
        app.get_with_token("/users/me", &token).await.status(),
        StatusCode::OK
    );
    problem(
        sign_in(&app, &mut authenticator).await,
        StatusCode::UNAUTHORIZED,
        "passkey_rejected",
    )
    .await;
    app.db.expect_events("passkey_removed", 1).await;
}

#[tokio::test]
async fn registering_or_removing_a_passkey_needs_a_fresh_login() {
    let app = spawn().await;
    let (token, _) = user_with_passkey(&app, "ada@example.test").await;
    let id = json_of(app.get_with_token("/passkeys", &token).await).await["passkeys"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // An options request made while fresh, answered once the login is old, is refused too.
    let options = json_of(
        app.post_json_with_token("/passkeys/register/options", &token, &json!({}))
            .await,
    )
    .await;
    app.db
        .exec(
            "UPDATE sessions SET created_at = created_at - interval '301 seconds'",
            "UPDATE sessions SET created_at = created_at - 301000000",
        )
        .await;
    problem(
        app.post_json_with_token("/passkeys/register/options", &token, &json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "reauthentication_required",
    )
    .await;
    let mut authenticator = SoftAuthenticator::new();
    let credential = authenticator
        .create(&options["publicKey"], &origin(&app))
        .unwrap();
    problem(
        app.post_json_with_token(
            "/passkeys/register",
            &token,
            &json!({"ceremony": options["ceremony"], "credential": credential}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "reauthentication_required",
    )
    .await;
    let response = app
        .client
        .delete(app.url(&format!("/passkeys/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::FORBIDDEN, "reauthentication_required").await;
    // Listing needs no fresh login.
    let listed = json_of(app.get_with_token("/passkeys", &token).await).await;
    assert_eq!(listed["passkeys"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_expired_ceremony_is_refused_and_pruned() {
    let app = spawn().await;
    let (token, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let options = login_options(&app).await;
    let registration = json_of(
        app.post_json_with_token("/passkeys/register/options", &token, &json!({}))
            .await,
    )
    .await;
    app.db
        .exec(
            "UPDATE webauthn_ceremonies SET expires_at = expires_at - interval '301 seconds'",
            "UPDATE webauthn_ceremonies SET expires_at = expires_at - 301000000",
        )
        .await;
    let credential = authenticator
        .get(&options["publicKey"], &origin(&app))
        .unwrap();
    problem(
        finish(&app, &options["ceremony"], &credential).await,
        StatusCode::BAD_REQUEST,
        "invalid_ceremony",
    )
    .await;
    let mut other = SoftAuthenticator::new();
    let created = other
        .create(&registration["publicKey"], &origin(&app))
        .unwrap();
    problem(
        app.post_json_with_token(
            "/passkeys/register",
            &token,
            &json!({"ceremony": registration["ceremony"], "credential": created}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_ceremony",
    )
    .await;
    // Options handed out and never answered are pruned once expired.
    login_options(&app).await;
    app.db
        .exec(
            "UPDATE webauthn_ceremonies SET expires_at = expires_at - interval '301 seconds'",
            "UPDATE webauthn_ceremonies SET expires_at = expires_at - 301000000",
        )
        .await;
    let data_dir = TempDir::new("authd-passkeys");
    let pruned: Value = serde_json::from_str(
        &admin(&app.db_url, &data_dir, &["prune", "--format", "json"], "").await,
    )
    .unwrap();
    assert_eq!(pruned["ceremonies"], 1);
    assert_eq!(
        app.db
            .int("SELECT CAST(count(*) AS BIGINT) FROM webauthn_ceremonies")
            .await,
        0
    );
}

#[tokio::test]
async fn refused_passkey_answers_lock_the_accounts_passkey_sign_ins_until_the_lock_ends() {
    let app = spawn_with(|s| s.rate_limit.login_failures_per_account = 3).await;
    let (_, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let mut attacker = authenticator.clone();
    attacker.behaviour.sign_with_another_key = true;
    // Refused answers at once: exactly the allowance is spent before the lock.
    let refused = join_all((0..6).map(|_| {
        let mut attacker = attacker.clone();
        let app = &app;
        async move { sign_in(app, &mut attacker).await.status() }
    }))
    .await;
    assert!(
        refused
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS),
        "{refused:?}"
    );
    assert_eq!(
        refused
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count(),
        3,
        "{refused:?}"
    );
    // The real passkey waits out the lock too; the password is not locked by it.
    let locked = sign_in(&app, &mut authenticator).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(locked.headers().contains_key("retry-after"));
    assert_eq!(
        app.login("ada@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
    app.db.end_locks().await;
    assert_eq!(
        sign_in(&app, &mut authenticator).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn malformed_passkey_requests_get_clear_errors_and_change_nothing() {
    let app = spawn().await;
    let (token, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let options = login_options(&app).await;
    let credential = authenticator
        .get(&options["publicKey"], &origin(&app))
        .unwrap();
    for (body, field) in [
        (json!({"credential": credential}), "ceremony"),
        (
            json!({"ceremony": "yesterday", "credential": credential}),
            "ceremony",
        ),
        (json!({"ceremony": options["ceremony"]}), "credential"),
        (
            json!({"ceremony": options["ceremony"], "credential": {"id": 7}}),
            "credential",
        ),
        (
            json!({"ceremony": options["ceremony"], "credential": "nope"}),
            "credential",
        ),
    ] {
        let refused = problem(
            app.post_json("/login/passkey", &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(refused["errors"][0]["field"], field, "{refused}");
    }
    // A ceremony id nobody handed out.
    problem(
        finish(&app, &json!(uuid::Uuid::new_v4()), &credential).await,
        StatusCode::BAD_REQUEST,
        "invalid_ceremony",
    )
    .await;
    // None of that used the ceremony up.
    assert_eq!(
        finish(&app, &options["ceremony"], &credential)
            .await
            .status(),
        StatusCode::OK
    );
    // A name with an invisible character, before any ceremony is taken.
    let registration = json_of(
        app.post_json_with_token("/passkeys/register/options", &token, &json!({}))
            .await,
    )
    .await;
    let mut other = SoftAuthenticator::new();
    let created = other
        .create(&registration["publicKey"], &origin(&app))
        .unwrap();
    let refused = problem(
        app.post_json_with_token(
            "/passkeys/register",
            &token,
            &json!({"ceremony": registration["ceremony"], "credential": created, "name": "Lap\u{202E}top"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(refused["errors"][0]["field"], "name");
    let response = app
        .post_json_with_token(
            "/passkeys/register",
            &token,
            &json!({"ceremony": registration["ceremony"], "credential": created}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let added: Value = response.json().await.unwrap();
    assert_eq!(added["name"], "Passkey");
    // A challenge token that is not one.
    problem(
        app.post_json_with_token("/login/passkey/options", "not.a.token", &json!({}))
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn an_administrator_lists_and_removes_a_users_passkeys() {
    let app = spawn().await;
    let (token, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let signed_in = json_of(sign_in(&app, &mut authenticator).await).await;
    let data_dir = TempDir::new("authd-passkeys");
    let listed: Value = serde_json::from_str(
        &admin(
            &app.db_url,
            &data_dir,
            &["user", "passkeys", "ada@example.test", "--format", "json"],
            "",
        )
        .await,
    )
    .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "Laptop");
    assert!(listed[0]["last_used_at"].is_string());
    let id = listed[0]["id"].as_str().unwrap().to_owned();
    let table = admin(
        &app.db_url,
        &data_dir,
        &["user", "passkeys", "ada@example.test"],
        "",
    )
    .await;
    assert!(table.contains(&id) && table.contains("Laptop"), "{table}");
    let users: Value = serde_json::from_str(
        &admin(
            &app.db_url,
            &data_dir,
            &["user", "list", "--format", "json"],
            "",
        )
        .await,
    )
    .unwrap();
    assert_eq!(users[0]["passkeys"], 1);

    for (args, what) in [
        (
            vec!["user", "passkeys", "ada@example.test", "--remove", "x"],
            "--remove",
        ),
        (
            vec![
                "user",
                "passkeys",
                "ada@example.test",
                "--remove",
                "00000000-0000-0000-0000-000000000000",
            ],
            "no such passkey",
        ),
        (vec!["user", "passkeys", "nobody@example.test"], "no user"),
    ] {
        let output = admin_output(&app.db_url, &data_dir, &args, "").await;
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(what), "{what}: {stderr}");
    }

    let said = admin(
        &app.db_url,
        &data_dir,
        &["user", "passkeys", "ada@example.test", "--remove", &id],
        "",
    )
    .await;
    assert!(said.contains("removed passkey"), "{said}");
    problem(
        app.get_with_token("/users/me", signed_in["access_token"].as_str().unwrap())
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(
        app.get_with_token("/users/me", &token).await.status(),
        StatusCode::OK
    );
    assert!(
        wait_until(std::time::Duration::from_secs(10), async || {
            app.db.count_events("passkey_removed").await == 1
        })
        .await
    );
}

#[tokio::test]
async fn without_a_domain_name_passkeys_are_off_and_say_so() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.http.public_url = "http://10.1.2.3:5050".into();
    })
    .await;
    app.register("ada@example.test", true).await;
    let login = json_of(app.login("ada@example.test", PASSWORD).await).await;
    assert_eq!(login["methods"], json!(["email"]));
    problem(
        app.post_json("/login/passkey/options", &json!({})).await,
        StatusCode::NOT_FOUND,
        "passkeys_unavailable",
    )
    .await;
}

/// The statement that takes an assertion's counter is the guard when two sign-ins read the
/// stored counter before either wrote it (the relying party's own check then passes both):
/// only a counter ahead of the stored one is taken, each value once.
#[tokio::test]
async fn the_store_takes_each_counter_value_once_and_only_forward() {
    use authd::store::{PasskeyUse, Store};
    let app = spawn().await;
    let (_, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    assert_eq!(
        sign_in(&app, &mut authenticator).await.status(),
        StatusCode::OK
    );
    let store = Store::connect_lazy(&app.settings).unwrap();
    let email = authd::domain::Email::parse("ada@example.test").unwrap();
    let user = store.find_user_by_email(&email).await.unwrap().unwrap();
    let records = store.user_passkeys(user.id).await.unwrap();
    let record = &records[0];
    assert_eq!(record.sign_count, 1);
    let used = |sign_count| PasskeyUse {
        id: record.id,
        user_id: record.user_id,
        credential: &record.credential,
        sign_count,
        backup_eligible: false,
        backed_up: false,
        at: chrono::Utc::now(),
    };
    assert!(!store.use_passkey(&used(1)).await.unwrap(), "level");
    assert!(
        !store.use_passkey(&used(0)).await.unwrap(),
        "backwards to none"
    );
    let second = used(2);
    let taken = join_all((0..8).map(|_| store.use_passkey(&second)))
        .await
        .into_iter()
        .filter(|taken| *taken.as_ref().unwrap())
        .count();
    assert_eq!(taken, 1, "one of eight takes counter 2");
    assert!(store.use_passkey(&used(5)).await.unwrap(), "forward");
}
