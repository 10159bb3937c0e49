//! The audit trail: every documented event kind, each produced exactly once, with the user it
//! names (none where there is no account, as for an unknown address).

use authd::audit::EventKind;
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::both::mfa::{code_at, steady_step};
use crate::helpers::{
    PASSWORD, TempDir, TestApp, TestDb, admin, fresh_database, kid_in_state, problem, rotate_now,
    test_settings,
};
use crate::smtp_sink::{Behaviour, MailSink, extract_code};

/// The signing-key kinds and how often this test causes each: a key made by the first start
/// and one by `keys rotate`.
const KEY_KINDS: [(&str, i64); 3] = [("key_created", 2), ("key_activated", 1), ("key_revoked", 1)];

/// Every other kind the code has (`EventKind::ALL`, which a unit test holds to README's
/// "Audit trail" list): this test causes each exactly once.
fn user_kinds() -> Vec<EventKind> {
    EventKind::ALL
        .iter()
        .copied()
        .filter(|kind| !KEY_KINDS.iter().any(|(key, _)| *key == kind.as_str()))
        .collect()
}

/// The `outcome` column of every stored event of `kind`.
async fn outcomes(db: &TestDb, kind: &str) -> Vec<String> {
    match db {
        TestDb::Postgres(p) => {
            sqlx::query_scalar("SELECT outcome FROM security_events WHERE kind = $1")
                .bind(kind)
                .fetch_all(p)
                .await
                .unwrap()
        }
        TestDb::Sqlite(p) => {
            sqlx::query_scalar("SELECT outcome FROM security_events WHERE kind = ?1")
                .bind(kind)
                .fetch_all(p)
                .await
                .unwrap()
        }
    }
}

const NEW_PASSWORD: &str = "a brand new passphrase";

fn wrong(code: &str) -> String {
    let first = (code.as_bytes()[0] - b'0' + 1) % 10;
    format!("{first}{}", &code[1..])
}

#[tokio::test]
async fn every_documented_event_kind_is_recorded_exactly_once_with_its_user() {
    let db_url = fresh_database().await;
    let settings = |port| {
        let mut s = test_settings(&db_url, port);
        // One wrong password locks an address, one wrong code the second step, two code
        // emails use up the quota: each event then takes a single request to produce.
        s.rate_limit.login_failures_per_account = 1;
        s.rate_limit.otp_failures_per_account = 1;
        s.mail.max_codes_per_account = 2;
        // A rotated refresh token counts as reuse at once.
        s.session.reuse_grace_secs = 0;
        s
    };
    let good = MailSink::start(Behaviour::Accept).await.unwrap();
    let app = TestApp::spawn_on(settings(good.port), good, db_url.clone()).await;
    // A second instance on the same database whose relay refuses every message.
    let refused = MailSink::start(Behaviour::Refuse).await.unwrap();
    let broken = TestApp::spawn_on(settings(refused.port), refused, db_url.clone()).await;
    let data_dir = TempDir::new("authd-audit");

    // user_registered, email_verification_sent, login_succeeded: a user of the API without a
    // second step.
    let plain: Value = app
        .post_json(
            "/register",
            &json!({"email": "plain@example.test", "password": PASSWORD}),
        )
        .await
        .json()
        .await
        .unwrap();
    let plain = Uuid::parse_str(plain["id"].as_str().unwrap()).unwrap();
    let verification = app.mail.wait_for("plain@example.test", 1).await;
    let plain_login: Value = app
        .login("plain@example.test", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let plain_refresh = plain_login["refresh_token"].as_str().unwrap().to_owned();
    let plain_access = plain_login["access_token"].as_str().unwrap().to_owned();

    // password_change_failed: a wrong current password.
    problem(
        app.post_json_with_token(
            "/password/change",
            &plain_access,
            &json!({"current_password": "not the password", "new_password": NEW_PASSWORD}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    // email_change_requested: a code to the new address, a notice to the old one.
    let response = app
        .post_json_with_token(
            "/email/change",
            &plain_access,
            &json!({"new_email": "moved@example.test"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let change = app.mail.wait_for("moved@example.test", 1).await;
    app.wait_for_background_mail().await;

    // user_added_by_admin, two_factor_changed: an account made and switched by the CLI.
    let added = admin(
        &db_url,
        &data_dir,
        &[
            "user",
            "add",
            "--email",
            "admin@example.test",
            "--password-stdin",
            "--format",
            "json",
        ],
        &format!("{PASSWORD}\n"),
    )
    .await;
    let added: Value = serde_json::from_str(&added).unwrap();
    let admin_made = Uuid::parse_str(added["id"].as_str().unwrap()).unwrap();
    admin(
        &db_url,
        &data_dir,
        &["user", "set-2fa", "admin@example.test", "on"],
        "",
    )
    .await;

    // login_failed, login_throttled: an address with no account, so no user id.
    problem(
        app.login("ghost@example.test", "not the password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    problem(
        app.login("ghost@example.test", "not the password").await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;

    // code_sent, then code_send_failed on the instance whose relay refuses.
    let (challenge, code) = app.start_challenge("admin@example.test").await;
    let response = broken.login("admin@example.test", PASSWORD).await;
    problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;

    // code_rejected and second_factor_locked (the one wrong code allowed locks the step), then
    // code_throttled for the right code submitted while locked.
    problem(
        app.submit_code(&challenge, &wrong(&code)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_otp",
    )
    .await;
    problem(
        app.submit_code(&challenge, &code).await,
        StatusCode::TOO_MANY_REQUESTS,
        "second_factor_locked",
    )
    .await;

    // user_unlocked, then code_accepted on the same, still live, challenge.
    admin(
        &db_url,
        &data_dir,
        &["user", "unlock", "admin@example.test"],
        "",
    )
    .await;
    let accepted = app.submit_code(&challenge, &code).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let admin_access = accepted.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // code_email_limited: the sent and the failed email used up the quota of two.
    let response = app.login("admin@example.test", PASSWORD).await;
    problem(response, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(app.mail.messages_to("admin@example.test").len(), 1);
    extract_code(&app.mail.messages_to("admin@example.test")[0]);

    // totp_enabled, recovery_codes_regenerated: the admin-made user enrols an app (with the
    // session of the code above) and asks for new recovery codes with the next code.
    let enrolment: Value = app
        .post_json_with_token("/mfa/totp/enroll", &admin_access, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let secret = totp_rs::Secret::try_from_base32(enrolment["secret"].as_str().unwrap()).unwrap();
    let secret = secret.as_ref().to_vec();
    let now = steady_step().await;
    let confirm = json!({"code": code_at(&secret, now, 0)});
    let confirmed = app
        .post_json_with_token("/mfa/totp/confirm", &admin_access, &confirm)
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let regenerate = json!({"code": code_at(&secret, now, 1)});
    let regenerated: Value = app
        .post_json_with_token("/mfa/recovery-codes", &admin_access, &regenerate)
        .await
        .json()
        .await
        .unwrap();
    let recovery = regenerated["recovery_codes"][0]
        .as_str()
        .unwrap()
        .to_owned();
    // recovery_code_used: a login finished with one.
    let body: Value = app
        .login("admin@example.test", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let used = app
        .post_json_with_token(
            "/login/otp",
            body["challenge_token"].as_str().unwrap(),
            &json!({"recovery_code": recovery}),
        )
        .await;
    assert_eq!(used.status(), StatusCode::OK);
    let recovered = used.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // totp_disabled: the app turned off with the password; then an enrolment left waiting,
    // which `authd user mfa --reset` removes below (mfa_reset).
    let disabled = app
        .client
        .delete(app.url("/mfa/totp"))
        .bearer_auth(&recovered)
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), StatusCode::NO_CONTENT);
    let pending = app
        .post_json_with_token("/mfa/totp/enroll", &recovered, &json!({}))
        .await;
    assert_eq!(pending.status(), StatusCode::OK);

    // passkey_registered, passkey_login, passkey_rejected (another origin), passkey_removed:
    // a passkey of the admin-made user, one sign-in with it and one refused, then removed,
    // through an instance whose mail quota leaves room for the two notices (the one above is
    // used up by the app's).
    let mut roomy_settings = settings(app.mail.port);
    roomy_settings.mail.max_codes_per_account = 10;
    let roomy = TestApp::spawn_on(roomy_settings, app.mail.clone(), db_url.clone()).await;
    let origin = roomy.base.replace("127.0.0.1", "localhost");
    let mut authenticator = testkit::passkey::SoftAuthenticator::new();
    let options: Value = roomy
        .post_json_with_token("/passkeys/register/options", &recovered, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let credential = authenticator
        .create(&options["publicKey"], &origin)
        .unwrap();
    let added = roomy
        .post_json_with_token(
            "/passkeys/register",
            &recovered,
            &json!({"ceremony": options["ceremony"], "credential": credential}),
        )
        .await;
    assert_eq!(added.status(), StatusCode::CREATED);
    let passkey_id = added.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (from, status) in [
        (origin.clone(), StatusCode::OK),
        (
            origin.replace("localhost", "evil.example"),
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let options: Value = roomy
            .post_json("/login/passkey/options", &json!({}))
            .await
            .json()
            .await
            .unwrap();
        let credential = authenticator.get(&options["publicKey"], &from).unwrap();
        let answer = roomy
            .post_json(
                "/login/passkey",
                &json!({"ceremony": options["ceremony"], "credential": credential}),
            )
            .await;
        assert_eq!(answer.status(), status);
    }
    let removed = roomy
        .client
        .delete(roomy.url(&format!("/passkeys/{passkey_id}")))
        .bearer_auth(&recovered)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);

    // refresh_token_reused: the plain user's first refresh token, presented again after it
    // was rotated.
    let refresh = |token: String| {
        let app = &app;
        async move {
            app.post_json(
                "/token/refresh",
                &serde_json::json!({ "refresh_token": token }),
            )
            .await
        }
    };
    assert_eq!(
        refresh(plain_refresh.clone()).await.status(),
        StatusCode::OK
    );
    problem(
        refresh(plain_refresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;

    // logout: the admin-made user's live session; then session_revoked,
    // user_disabled, user_enabled and user_deleted from the command line.
    // (The session of the code above ended when the app was turned off: the recovered one is
    // the admin-made user's live session.)
    let logout = app
        .client
        .post(app.url("/logout"))
        .bearer_auth(&recovered)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    // login_unverified: the right password of the admin-made (so unproven) account, on an
    // instance that requires a proven address.
    let mut strict_settings = settings(app.mail.port);
    strict_settings.registration.require_verified_email = true;
    let strict = TestApp::spawn_on(strict_settings, app.mail.clone(), db_url.clone()).await;
    problem(
        strict.login("admin@example.test", PASSWORD).await,
        StatusCode::FORBIDDEN,
        "email_not_verified",
    )
    .await;
    // users_imported, users_exported: one import (one event, however many rows) and one export.
    let import = data_dir.path().join("import.jsonl");
    std::fs::write(
        &import,
        "{\"email\": \"imported@example.test\", \"password\": \"an imported passphrase\"}\n",
    )
    .unwrap();
    let import = import.display().to_string();
    for args in [
        &["user", "import", import.as_str()][..],
        &["user", "export"],
        &["session", "revoke", "--user", "admin@example.test"],
        &["user", "mfa", "admin@example.test", "--reset"],
        &["user", "disable", "admin@example.test"],
        &["user", "enable", "admin@example.test"],
        &["user", "delete", "admin@example.test", "--yes"],
    ] {
        admin(&db_url, &data_dir, args, "").await;
    }
    // account_code_rejected, email_verified: the registration's code, wrong once, then right.
    let code = extract_code(&verification);
    problem(
        app.post_json(
            "/email/verify",
            &json!({"email": "plain@example.test", "code": wrong(&code)}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    let verify = json!({"email": "plain@example.test", "code": code});
    assert_eq!(
        app.post_json("/email/verify", &verify).await.status(),
        StatusCode::OK
    );
    // email_changed: the change's link, through the verification route.
    let moved = json!({"token": change.token().unwrap()});
    assert_eq!(
        app.post_json("/email/verify", &moved).await.status(),
        StatusCode::OK
    );
    // password_reset_requested, then account_mail_limited: a second reset within
    // verification.resend_interval_secs. (The account's email quota of two, used by the
    // verification and the change notice, starts a new window first.)
    app.db.end_locks().await;
    let forgot = json!({"email": "moved@example.test"});
    for _ in 0..2 {
        let response = app.post_json("/password/forgot", &forgot).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        app.wait_for_background_mail().await;
    }
    let reset = app.mail.wait_for("moved@example.test", 2).await;
    // password_reset: its code.
    let body = json!({"email": "moved@example.test", "code": extract_code(&reset), "new_password": NEW_PASSWORD});
    assert_eq!(
        app.post_json("/password/reset", &body).await.status(),
        StatusCode::OK
    );
    app.wait_for_background_mail().await;
    // password_changed: set by an administrator.
    admin(
        &db_url,
        &data_dir,
        &[
            "user",
            "reset-password",
            "moved@example.test",
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    )
    .await;
    // The key events: the first start made one key, then a rotation and a revocation.
    let first = kid_in_state(&db_url, &data_dir, "current").await;
    rotate_now(&db_url, &data_dir).await;
    let retired = first;
    admin(&db_url, &data_dir, &["keys", "revoke", &retired], "").await;
    for (kind, count) in KEY_KINDS {
        app.db.expect_events(kind, count).await;
        assert_eq!(
            app.db.event_user_ids(kind).await,
            vec![None; count as usize],
            "a key event names no user: {kind}"
        );
    }

    let expected_user = |kind: &str| match kind {
        "user_registered"
        | "login_succeeded"
        | "refresh_token_reused"
        | "email_verification_sent"
        | "email_verified"
        | "password_reset_requested"
        | "password_reset"
        | "password_changed"
        | "password_change_failed"
        | "email_change_requested"
        | "email_changed"
        | "account_code_rejected"
        | "account_mail_limited" => Some(plain),
        // No one user: an unknown address, and the bulk commands (the counts are the detail).
        "login_failed" | "login_throttled" | "users_imported" | "users_exported" => None,
        _ => Some(admin_made),
    };
    let user_kinds = user_kinds();
    assert_eq!(
        user_kinds.len() + KEY_KINDS.len(),
        EventKind::ALL.len(),
        "every key kind is one the code has"
    );
    for kind in &user_kinds {
        let kind = kind.as_str();
        app.db.expect_events(kind, 1).await;
        assert_eq!(
            app.db.event_user_ids(kind).await,
            [expected_user(kind)],
            "user id of {kind}"
        );
    }
    // Each stored with the outcome its kind has.
    for kind in EventKind::ALL {
        assert_eq!(
            outcomes(&app.db, kind.as_str()).await,
            vec![kind.outcome().to_owned(); app.db.count_events(kind.as_str()).await as usize],
            "outcome of {}",
            kind.as_str()
        );
    }
    let total = app
        .db
        .int("SELECT CAST(count(*) AS BIGINT) FROM security_events")
        .await;
    assert_eq!(
        total,
        user_kinds.len() as i64 + KEY_KINDS.iter().map(|(_, n)| n).sum::<i64>(),
        "no other events were recorded"
    );
    drop(broken);
    drop(strict);
}
