//! Authenticator apps and recovery codes end to end: the codes come from an independent TOTP
//! implementation (`totp-lite`), so authd's codes are checked against someone else's reading of
//! RFC 6238, not its own.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use totp_lite::{Sha1, totp_custom};

use crate::helpers::{PASSWORD, TempDir, TestApp, admin, problem, wait_until};
use crate::smtp_sink::Behaviour;

async fn spawn() -> TestApp {
    TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 100_000;
    })
    .await
}

fn unix_now() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp()).unwrap()
}

/// The app's code `offset` steps from the step of `at`.
pub(crate) fn code_at(secret: &[u8], at: u64, offset: i64) -> String {
    let time = u64::try_from(i64::try_from(at).unwrap() + offset * 30).unwrap();
    totp_custom::<Sha1>(30, 6, secret, time)
}

/// Waits (at most a step) until the current 30 s step has at least 5 s left, so codes made
/// now for steps around it keep their distance from the server's step while a request runs.
pub(crate) async fn steady_step() -> u64 {
    assert!(
        wait_until(std::time::Duration::from_secs(31), async || unix_now() % 30
            < 25)
        .await,
        "a 30 s step began"
    );
    unix_now()
}

async fn login(app: &TestApp, email: &str) -> Value {
    let response = app.login(email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn access_of(body: &Value) -> String {
    body["access_token"].as_str().unwrap().to_owned()
}

/// Registers `email` and starts an enrolment: (access token, secret bytes, the answer).
async fn enrol(app: &TestApp, email: &str) -> (String, Vec<u8>, Value) {
    app.register(email, false).await;
    let access = access_of(&login(app, email).await);
    let response = app
        .post_json_with_token("/mfa/totp/enroll", &access, &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    let secret = totp_rs::Secret::try_from_base32(body["secret"].as_str().unwrap())
        .expect("the secret is base32");
    (access, secret.as_ref().to_vec(), body)
}

/// Confirms with `code`; the recovery codes.
async fn confirm(app: &TestApp, access: &str, code: &str) -> Vec<String> {
    let response = app
        .post_json_with_token("/mfa/totp/confirm", access, &json!({"code": code}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

/// Logs in a user with an app: the challenge token (and checks the answer says so).
async fn challenge(app: &TestApp, email: &str) -> String {
    let body = login(app, email).await;
    assert_eq!(body["otp_required"], true, "{body}");
    assert_eq!(body["second_factor"], "totp", "{body}");
    body["challenge_token"].as_str().unwrap().to_owned()
}

async fn answer(app: &TestApp, challenge: &str, body: Value) -> reqwest::Response {
    app.post_json_with_token("/login/otp", challenge, &body)
        .await
}

#[tokio::test]
async fn an_app_enrolled_with_its_first_code_becomes_the_second_step_and_emails_nothing() {
    let app = spawn().await;
    let (access, secret, enrolment) = enrol(&app, "app@example.test").await;
    let uri = enrolment["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains("app%40example.test"), "{uri}");
    assert!(enrolment["qr_svg"].as_str().unwrap().contains("<svg"));
    // Nothing changed yet.
    let me: Value = app
        .get_with_token("/users/me", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["second_factor"], "none");
    let codes = confirm(&app, &access, &code_at(&secret, steady_step().await, 0)).await;
    assert_eq!(codes.len(), 10);
    // The owner is told.
    let notice = app.mail.wait_for("app@example.test", 1).await;
    assert!(
        notice.subject().contains("second step"),
        "{}",
        notice.subject()
    );
    assert!(
        notice.text().contains("authenticator app"),
        "{}",
        notice.text()
    );
    assert_eq!(notice.code(), None);
    app.wait_for_background_mail().await;
    app.mail.forget("app@example.test");
    assert!(
        codes
            .iter()
            .all(|c| c.len() == 11 && c.as_bytes()[5] == b'-'),
        "{codes:?}"
    );
    let me: Value = app
        .get_with_token("/users/me", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["second_factor"], "totp");
    assert_eq!(me["recovery_codes_left"], 10);
    // The login asks for the app and sends no email.
    let body = login(&app, "app@example.test").await;
    assert_eq!(body["second_factor"], "totp");
    assert_eq!(body["methods"], json!(["totp", "recovery_code"]));
    assert!(app.mail.messages_to("app@example.test").is_empty());
    let token = body["challenge_token"].as_str().unwrap();
    let next = code_at(&secret, steady_step().await, 1);
    let response = answer(&app, token, json!({"otp": next})).await;
    assert_eq!(response.status(), StatusCode::OK);
    // The secret is stored sealed, never in clear.
    let stored = app
        .db
        .bytes("SELECT totp_secret FROM users WHERE email = 'app@example.test'")
        .await;
    assert!(!stored.windows(secret.len()).any(|w| w == secret.as_slice()));
    // A second enrolment is refused while the app is on.
    problem(
        app.post_json_with_token("/mfa/totp/enroll", &access, &json!({}))
            .await,
        StatusCode::CONFLICT,
        "mfa_already_enabled",
    )
    .await;
    app.db.expect_events("totp_enabled", 1).await;
}

#[tokio::test]
async fn one_step_either_side_is_accepted_two_are_refused_and_no_code_works_twice() {
    let app = spawn().await;
    let (access, secret, _) = enrol(&app, "skew@example.test").await;
    let now = steady_step().await;
    for offset in [-2, 2] {
        problem(
            app.post_json_with_token(
                "/mfa/totp/confirm",
                &access,
                &json!({"code": code_at(&secret, now, offset)}),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_code",
        )
        .await;
    }
    // The code of the step before is taken...
    confirm(&app, &access, &code_at(&secret, now, -1)).await;
    // ...and so is the one of the step after, at the next login...
    let first = challenge(&app, "skew@example.test").await;
    let later = code_at(&secret, now, 1);
    assert_eq!(
        answer(&app, &first, json!({"otp": later})).await.status(),
        StatusCode::OK
    );
    // ...after which neither it nor the current one (an earlier step) works again.
    let second = challenge(&app, "skew@example.test").await;
    for code in [later, code_at(&secret, now, 0)] {
        problem(
            answer(&app, &second, json!({"otp": code})).await,
            StatusCode::UNAUTHORIZED,
            "invalid_otp",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_code_sent_in_parallel_is_taken_once() {
    let app = spawn().await;
    let (access, secret, _) = enrol(&app, "twice@example.test").await;
    let now = steady_step().await;
    confirm(&app, &access, &code_at(&secret, now, -1)).await;
    // A login waiting for its code, and the same code sent at once to it and to five requests
    // for new recovery codes (each of which takes a code of the app too).
    let token = challenge(&app, "twice@example.test").await;
    let code = code_at(&secret, now, 0);
    let body = json!({"code": code});
    let regenerations =
        join_all((0..5).map(|_| app.post_json_with_token("/mfa/recovery-codes", &access, &body)));
    let (login, regenerations) =
        tokio::join!(answer(&app, &token, json!({"otp": code})), regenerations);
    let taken = regenerations
        .iter()
        .chain(std::iter::once(&login))
        .filter(|a| a.status() == StatusCode::OK)
        .count();
    assert_eq!(taken, 1, "{login:?} {regenerations:?}");
}

#[tokio::test]
async fn wrong_app_codes_count_like_wrong_emailed_codes() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 100_000;
        s.rate_limit.otp_failures_per_account = 3;
    })
    .await;
    let (access, secret, _) = enrol(&app, "wrong@example.test").await;
    confirm(&app, &access, &code_at(&secret, steady_step().await, 0)).await;
    let token = challenge(&app, "wrong@example.test").await;
    let right = code_at(&secret, steady_step().await, 1);
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    let body = problem(
        answer(&app, &token, json!({"otp": wrong})).await,
        StatusCode::UNAUTHORIZED,
        "invalid_otp",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("4 attempts left"),
        "{body}"
    );
    for _ in 0..2 {
        answer(&app, &token, json!({"otp": wrong})).await;
    }
    // Three in a row lock the second step, for the right code too.
    problem(
        answer(&app, &token, json!({"otp": right})).await,
        StatusCode::TOO_MANY_REQUESTS,
        "second_factor_locked",
    )
    .await;
}

#[tokio::test]
async fn a_recovery_code_finishes_one_login_typed_any_way_and_never_again() {
    let app = spawn().await;
    let (access, secret, _) = enrol(&app, "lost@example.test").await;
    let codes = confirm(&app, &access, &code_at(&secret, steady_step().await, 0)).await;
    let typed = codes[0].replace('-', "").to_lowercase();
    let token = challenge(&app, "lost@example.test").await;
    let response = answer(
        &app,
        &token,
        json!({"recovery_code": format!("  {typed} ")}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let fresh = access_of(&response.json().await.unwrap());
    let me: Value = app
        .get_with_token("/users/me", &fresh)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["recovery_codes_left"], 9);
    let token = challenge(&app, "lost@example.test").await;
    problem(
        answer(&app, &token, json!({"recovery_code": codes[0]})).await,
        StatusCode::UNAUTHORIZED,
        "invalid_otp",
    )
    .await;
    // In parallel, one code finishes one login.
    let challenges = [
        challenge(&app, "lost@example.test").await,
        challenge(&app, "lost@example.test").await,
    ];
    let answers = join_all(
        challenges
            .iter()
            .map(|c| answer(&app, c, json!({"recovery_code": codes[1]}))),
    )
    .await;
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.status() == StatusCode::OK)
            .count(),
        1
    );
    app.db.expect_events("recovery_code_used", 2).await;
    problem(
        answer(
            &app,
            &challenges[0],
            json!({"recovery_code": "0OIL1-0OIL1"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
}

#[tokio::test]
async fn new_recovery_codes_need_an_app_code_and_replace_the_old_set() {
    let app = spawn().await;
    let (access, secret, _) = enrol(&app, "regen@example.test").await;
    let now = steady_step().await;
    let old = confirm(&app, &access, &code_at(&secret, now, -1)).await;
    let response = app
        .post_json_with_token(
            "/mfa/recovery-codes",
            &access,
            &json!({"code": code_at(&secret, now, 0)}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let new: Value = response.json().await.unwrap();
    let new: Vec<String> = new["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(new.len(), 10);
    let token = challenge(&app, "regen@example.test").await;
    problem(
        answer(&app, &token, json!({"recovery_code": old[0]})).await,
        StatusCode::UNAUTHORIZED,
        "invalid_otp",
    )
    .await;
    assert_eq!(
        answer(&app, &token, json!({"recovery_code": new[0]}))
            .await
            .status(),
        StatusCode::OK
    );
    app.db.expect_events("recovery_codes_regenerated", 1).await;
}

#[tokio::test]
async fn the_app_turns_off_with_the_password_and_the_emailed_code_comes_back() {
    let app = spawn().await;
    let (access, secret, _) = enrol(&app, "off@example.test").await;
    confirm(&app, &access, &code_at(&secret, steady_step().await, 0)).await;
    let data_dir = TempDir::new("authd-mfa");
    admin(
        &app.db_url,
        &data_dir,
        &["user", "set-2fa", "off@example.test", "on"],
        "",
    )
    .await;
    // set-2fa ended the sessions: log in again through the app.
    let token = challenge(&app, "off@example.test").await;
    let response = answer(
        &app,
        &token,
        json!({"otp": code_at(&secret, steady_step().await, 1)}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let access = access_of(&response.json().await.unwrap());
    problem(
        app.client
            .delete(app.url("/mfa/totp"))
            .bearer_auth(&access)
            .json(&json!({"password": "not the password"}))
            .send()
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let response = app
        .client
        .delete(app.url("/mfa/totp"))
        .bearer_auth(&access)
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let body = login(&app, "off@example.test").await;
    assert_eq!(body["second_factor"], "email");
    assert_eq!(body["methods"], json!(["email"]));
    app.mail.wait_for("off@example.test", 1).await;
    app.db.expect_events("totp_disabled", 1).await;
}

#[tokio::test]
async fn an_admin_sees_and_resets_the_second_factor_and_enrols_a_service_account() {
    let app = spawn().await;
    let data_dir = TempDir::new("authd-mfa");
    let (access, secret, _) = enrol(&app, "svc@example.test").await;
    confirm(&app, &access, &code_at(&secret, steady_step().await, 0)).await;
    let shown = admin(
        &app.db_url,
        &data_dir,
        &["user", "mfa", "svc@example.test"],
        "",
    )
    .await;
    assert!(shown.contains("authenticator app"), "{shown}");
    assert!(shown.contains("10 recovery codes left"), "{shown}");
    let reset = admin(
        &app.db_url,
        &data_dir,
        &["user", "mfa", "svc@example.test", "--reset"],
        "",
    )
    .await;
    assert!(reset.contains("second step is now none"), "{reset}");
    problem(
        app.get_with_token("/users/me", &access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(login(&app, "svc@example.test").await["otp_required"], false);
    app.db.expect_events("mfa_reset", 1).await;
    // totp-enroll: the app on at once, its URI printed; its codes log in.
    let enrolled = admin(
        &app.db_url,
        &data_dir,
        &["user", "totp-enroll", "svc@example.test"],
        "",
    )
    .await;
    let uri = enrolled
        .lines()
        .find_map(|l| l.strip_prefix("otpauth URI: "))
        .expect("the URI is printed");
    let secret = totp_rs::Totp::from_url_unchecked(uri).expect("a URI authenticator apps read");
    let token = challenge(&app, "svc@example.test").await;
    let code = code_at(secret.secret().as_ref(), steady_step().await, 0);
    assert_eq!(
        answer(&app, &token, json!({"otp": code})).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn turning_the_app_off_with_the_password_needs_a_recent_login_and_ends_the_other_sessions() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 100_000;
        s.session.fresh_login_secs = 60;
    })
    .await;
    let (access, secret, _) = enrol(&app, "guard@example.test").await;
    let now = steady_step().await;
    let codes = confirm(&app, &access, &code_at(&secret, now, 0)).await;
    let token = challenge(&app, "guard@example.test").await;
    let other = answer(&app, &token, json!({"otp": code_at(&secret, now, 1)})).await;
    assert_eq!(other.status(), StatusCode::OK);
    let other = access_of(&other.json().await.unwrap());
    // Sessions whose logins are old, and the password: refused.
    app.db
        .exec(
            "UPDATE sessions SET created_at = created_at - interval '61 seconds'",
            "UPDATE sessions SET created_at = created_at - 61000000",
        )
        .await;
    let off = json!({"password": PASSWORD});
    let delete = async |token: &str| {
        app.client
            .delete(app.url("/mfa/totp"))
            .bearer_auth(token)
            .json(&off)
            .send()
            .await
            .unwrap()
    };
    problem(
        delete(&access).await,
        StatusCode::FORBIDDEN,
        "reauthentication_required",
    )
    .await;
    // A recent login (with a recovery code) turns it off, and every other session ends.
    let token = challenge(&app, "guard@example.test").await;
    let fresh = answer(&app, &token, json!({"recovery_code": codes[0]})).await;
    assert_eq!(fresh.status(), StatusCode::OK);
    let fresh = access_of(&fresh.json().await.unwrap());
    assert_eq!(delete(&fresh).await.status(), StatusCode::NO_CONTENT);
    for ended in [&access, &other] {
        problem(
            app.get_with_token("/users/me", ended).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }
    let me: Value = app
        .get_with_token("/users/me", &fresh)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["second_factor"], "none");
    assert_eq!(me["recovery_codes_left"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enrolment_racing_a_confirmation_never_leaves_a_second_app_waiting() {
    let app = spawn().await;
    let (access, secret, _) = enrol(&app, "racer@example.test").await;
    let code = json!({"code": code_at(&secret, steady_step().await, 0)});
    let empty = json!({});
    let enrolments =
        join_all((0..8).map(|_| app.post_json_with_token("/mfa/totp/enroll", &access, &empty)));
    let (confirmed, enrolments) = tokio::join!(
        app.post_json_with_token("/mfa/totp/confirm", &access, &code),
        enrolments
    );
    for enrolment in enrolments {
        assert!(
            [StatusCode::OK, StatusCode::CONFLICT].contains(&enrolment.status()),
            "{enrolment:?}"
        );
    }
    if confirmed.status() == StatusCode::OK {
        assert_eq!(
            app.db
                .int(
                    "SELECT CAST(count(*) AS BIGINT) FROM users
                     WHERE totp_secret IS NOT NULL AND totp_pending IS NOT NULL"
                )
                .await,
            0,
            "an app is on and another waits"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_codes_sent_at_once_to_one_login_spend_only_the_one_that_finished_it() {
    let app = spawn().await;
    let (access, secret, _) = enrol(&app, "spend@example.test").await;
    let codes = confirm(&app, &access, &code_at(&secret, steady_step().await, 0)).await;
    let token = challenge(&app, "spend@example.test").await;
    let answers = join_all(
        codes[..6]
            .iter()
            .map(|code| answer(&app, &token, json!({"recovery_code": code}))),
    )
    .await;
    let finished = answers
        .iter()
        .filter(|a| a.status() == StatusCode::OK)
        .count();
    assert_eq!(finished, 1, "{answers:?}");
    let me: Value = app
        .get_with_token("/users/me", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["recovery_codes_left"], 9, "the others are not spent");
    app.db.expect_events("recovery_code_used", 1).await;
}

#[tokio::test]
async fn wrong_app_codes_outside_a_login_are_in_the_trail_and_count() {
    let app = spawn().await;
    let (access, secret, _) = enrol(&app, "trail@example.test").await;
    let right = code_at(&secret, steady_step().await, 0);
    confirm(&app, &access, &right).await;
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    problem(
        app.post_json_with_token("/mfa/recovery-codes", &access, &json!({"code": wrong}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    app.db.expect_events("code_rejected", 1).await;
    // An enrolment while the app is on, by an admin too, is refused.
    let data_dir = TempDir::new("authd-mfa");
    let refused = crate::helpers::admin_output(
        &app.db_url,
        &data_dir,
        &["user", "totp-enroll", "trail@example.test"],
        "",
    )
    .await;
    let line = crate::helpers::refused_line(refused, "an app already on");
    assert!(line.contains("already"), "{line}");
}

#[tokio::test]
async fn an_enrolment_waits_ten_minutes_for_its_first_code_and_an_app_code_turns_it_off() {
    let app = spawn().await;
    let (access, secret, _) = enrol(&app, "late@example.test").await;
    // Ten minutes later (the enrolment back-dated): its right code is refused.
    app.db
        .exec(
            "UPDATE users SET totp_pending_expires_at = totp_pending_expires_at - interval '601 seconds'",
            "UPDATE users SET totp_pending_expires_at = totp_pending_expires_at - 601000000",
        )
        .await;
    let now = steady_step().await;
    problem(
        app.post_json_with_token(
            "/mfa/totp/confirm",
            &access,
            &json!({"code": code_at(&secret, now, 0)}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_code",
    )
    .await;
    let me: Value = app
        .get_with_token("/users/me", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["second_factor"], "none");
    // A new enrolment, confirmed; then a later code of the app turns it off.
    let enrolment: Value = app
        .post_json_with_token("/mfa/totp/enroll", &access, &json!({}))
        .await
        .json()
        .await
        .unwrap();
    let secret = totp_rs::Secret::try_from_base32(enrolment["secret"].as_str().unwrap()).unwrap();
    let secret = secret.as_ref().to_vec();
    confirm(&app, &access, &code_at(&secret, now, 0)).await;
    let off = app
        .client
        .delete(app.url("/mfa/totp"))
        .bearer_auth(&access)
        .json(&json!({"code": code_at(&secret, now, 1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), StatusCode::NO_CONTENT);
    let me: Value = app
        .get_with_token("/users/me", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["second_factor"], "none");
}
