//! An outside review of passkeys, as an attacker would go at them: each test either proves a
//! rule holds (it passes) or shows a problem (it fails until the fix its comment suggests).

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::passkey::SoftAuthenticator;

use super::passkeys::{
    add_passkey, finish, json_of, login_options, origin, registration_options, sign_in, spawn,
    spawn_with, user_with_passkey,
};
use crate::helpers::{PASSWORD, TempDir, TestApp, admin, problem};

async fn register_answer(
    app: &TestApp,
    access: &str,
    ceremony: &Value,
    credential: &Value,
) -> reqwest::Response {
    app.post_json_with_token(
        "/passkeys/register",
        access,
        &json!({"ceremony": ceremony, "credential": credential}),
    )
    .await
}

/// Turns the emailed second step on for `email`, and starts a login: its challenge token.
async fn challenge_of(app: &TestApp, email: &str, data_dir: &TempDir) -> String {
    admin(&app.db_url, data_dir, &["user", "set-2fa", email, "on"], "").await;
    let login = json_of(app.login(email, PASSWORD).await).await;
    login["challenge_token"].as_str().unwrap().to_owned()
}

async fn second_step_options(app: &TestApp, challenge: &str) -> Value {
    json_of(
        app.post_json_with_token("/login/passkey/options", challenge, &json!({}))
            .await,
    )
    .await
}

async fn second_step(
    app: &TestApp,
    challenge: &str,
    ceremony: &Value,
    credential: &Value,
) -> reqwest::Response {
    app.post_json_with_token(
        "/login/passkey",
        challenge,
        &json!({"ceremony": ceremony, "credential": credential}),
    )
    .await
}

async fn passkeys_stored(app: &TestApp) -> i64 {
    app.db
        .int("SELECT CAST(count(*) AS BIGINT) FROM passkeys")
        .await
}

/// base64url without padding, as the WebAuthn JSON has it.
fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn unb64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.bytes().map(value).collect();
    let mut out = Vec::new();
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The few CBOR shapes an attestation object needs (RFC 8949 major types 0, 1, 2, 3, 4, 5).
enum Cbor {
    Int(i64),
    Bytes(Vec<u8>),
    Text(&'static str),
    Array(Vec<Cbor>),
    Map(Vec<(Cbor, Cbor)>),
}

fn cbor_head(major: u8, length: u64, out: &mut Vec<u8>) {
    let major = major << 5;
    match length {
        0..=23 => out.push(major | length as u8),
        24..=0xff => out.extend([major | 24, length as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend((length as u16).to_be_bytes());
        }
        _ => {
            out.push(major | 26);
            out.extend((length as u32).to_be_bytes());
        }
    }
}

fn cbor(value: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    match value {
        Cbor::Int(n) if *n >= 0 => cbor_head(0, *n as u64, &mut out),
        Cbor::Int(n) => cbor_head(1, (-1 - *n) as u64, &mut out),
        Cbor::Bytes(b) => {
            cbor_head(2, b.len() as u64, &mut out);
            out.extend(b);
        }
        Cbor::Text(t) => {
            cbor_head(3, t.len() as u64, &mut out);
            out.extend(t.as_bytes());
        }
        Cbor::Array(items) => {
            cbor_head(4, items.len() as u64, &mut out);
            for item in items {
                out.extend(cbor(item));
            }
        }
        Cbor::Map(pairs) => {
            cbor_head(5, pairs.len() as u64, &mut out);
            for (k, v) in pairs {
                out.extend(cbor(k));
                out.extend(cbor(v));
            }
        }
    }
    out
}

/// An attestation object of format `fmt` with statement `statement` around `auth_data`.
fn attestation(fmt: &'static str, statement: Cbor, auth_data: Vec<u8>) -> String {
    b64(&cbor(&Cbor::Map(vec![
        (Cbor::Text("fmt"), Cbor::Text(fmt)),
        (Cbor::Text("attStmt"), statement),
        (Cbor::Text("authData"), Cbor::Bytes(auth_data)),
    ])))
}

/// The registration's authenticator data with its COSE key replaced by `key`.
fn with_key(auth_data: &[u8], key: Cbor) -> Vec<u8> {
    let id_length = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
    let mut data = auth_data[..55 + id_length].to_vec();
    data.extend(cbor(&key));
    data
}

/// Was a finding (medium), fixed (27e85f2, `passkey_changed`
/// notices): on the branch point this fails. A passkey signs in alone, with no password and no
/// second step, yet adding one told the owner nothing, while turning the second step on or off
/// emails a notice. Whoever holds a stolen session for a few minutes (a fresh login is all
/// registration asks) leaves a passkey behind that outlives a password reset (which, rightly,
/// keeps passkeys: see `a_password_reset_ends_passkey_sessions_and_keeps_the_passkeys`). Kept
/// as a regression test. Still worth doing: name the passkeys that can sign in in the
/// password-changed notice, and notify on `authd user passkeys --remove` too.
#[tokio::test]
async fn a_passkey_added_to_an_account_is_told_to_its_owner_by_email() {
    let app = spawn().await;
    user_with_passkey(&app, "ada@example.test").await;
    app.wait_for_background_mail().await;
    let notices = app.mail.messages_to("ada@example.test");
    assert_eq!(
        notices.len(),
        1,
        "the owner is told a passkey was added: {:?}",
        notices.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert!(
        notices[0].subject().to_lowercase().contains("passkey"),
        "{}",
        notices[0].subject()
    );
    assert_eq!(notices[0].code(), None, "a notice carries no code");
}

/// Was a finding (medium on PostgreSQL, low on SQLite), fixed as suggested: WebAuthn (L3 §7.1) says a credential id over
/// 1023 bytes fails the registration; webauthn-rs 0.6 lets up to 4096 through and authd stores
/// what it gets. On PostgreSQL a random id over ~2700 bytes does not fit the unique index
/// `passkeys_credential_id_key` ("index row size exceeds btree maximum"): a 500 any user can
/// cause at will. On SQLite the 4 KB id is stored. Fixed: in `register_passkey`, refuse
/// `internals.cred_id.len() > 1023` as `InvalidPasskey` (400) before the insert.
#[tokio::test]
async fn a_credential_id_longer_than_webauthn_allows_is_refused_not_stored_or_a_500() {
    let app = spawn().await;
    let (token, _) = user_with_passkey(&app, "ada@example.test").await;
    let mut statuses = Vec::new();
    for length in [4000, 1024] {
        let options = registration_options(&app, &token).await;
        let mut attacker = SoftAuthenticator::new();
        // Bytes that do not compress, as a real (random) credential id's.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let id = (0..length)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        attacker.behaviour.credential_id = Some(id);
        let credential = attacker
            .create(&options["publicKey"], &origin(&app))
            .unwrap();
        let response = register_answer(&app, &token, &options["ceremony"], &credential).await;
        statuses.push((length, response.status()));
    }
    assert_eq!(
        statuses,
        [
            (4000, StatusCode::BAD_REQUEST),
            (1024, StatusCode::BAD_REQUEST)
        ],
        "(credential id length, status)"
    );
    assert_eq!(passkeys_stored(&app).await, 1, "only the real one");
}

/// Was a finding (low, audit trail), fixed as suggested: when refused passkey answers are what locks an account's second
/// step (`rate_limit.otp_failures_per_account`, until `authd user unlock`), the trail has no
/// `second_factor_locked` event, which wrong codes do record: an administrator sees a frozen
/// account and no reason. `passkey_second_step` drops the `Ok(locks)` of `reserve`. Fixed: keep
/// it, and on a refusal with `locks` record `SecondFactorLocked` (detail "passkey"), as
/// `verify_otp` does.
#[tokio::test]
async fn refused_passkeys_that_lock_the_second_step_say_so_in_the_audit_trail() {
    let app = spawn_with(|s| s.rate_limit.otp_failures_per_account = 2).await;
    let (_, authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let data_dir = TempDir::new("authd-passkeys-review");
    let challenge = challenge_of(&app, "ada@example.test", &data_dir).await;
    let mut attacker = authenticator.clone();
    attacker.behaviour.sign_with_another_key = true;
    for _ in 0..2 {
        let options = second_step_options(&app, &challenge).await;
        let credential = attacker.get(&options["publicKey"], &origin(&app)).unwrap();
        problem(
            second_step(&app, &challenge, &options["ceremony"], &credential).await,
            StatusCode::UNAUTHORIZED,
            "passkey_rejected",
        )
        .await;
    }
    let options = second_step_options(&app, &challenge).await;
    let mut real = authenticator.clone();
    let credential = real.get(&options["publicKey"], &origin(&app)).unwrap();
    problem(
        second_step(&app, &challenge, &options["ceremony"], &credential).await,
        StatusCode::TOO_MANY_REQUESTS,
        "second_factor_locked",
    )
    .await;
    app.db.expect_events("second_factor_locked", 1).await;
}

/// Holds: refused second-step answers sent at once spend exactly the account's allowance, and
/// the lock then stops the real passkey too (no burst past the limit).
#[tokio::test]
async fn parallel_refused_second_step_passkeys_spend_exactly_the_allowance() {
    let app = spawn_with(|s| s.rate_limit.otp_failures_per_account = 3).await;
    let (_, authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let data_dir = TempDir::new("authd-passkeys-review");
    let challenge = challenge_of(&app, "ada@example.test", &data_dir).await;
    let mut attacker = authenticator.clone();
    attacker.behaviour.sign_with_another_key = true;
    let mut answers = Vec::new();
    for _ in 0..6 {
        let options = second_step_options(&app, &challenge).await;
        let credential = attacker.get(&options["publicKey"], &origin(&app)).unwrap();
        answers.push((options["ceremony"].clone(), credential));
    }
    let statuses: Vec<StatusCode> = join_all(
        answers
            .iter()
            .map(|(ceremony, credential)| second_step(&app, &challenge, ceremony, credential)),
    )
    .await
    .iter()
    .map(|r| r.status())
    .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count(),
        3,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    app.db.expect_events("passkey_login", 0).await;
}

/// Holds: a second step's ceremony finishes only the login it was started for: not a later
/// login of the same user, not another user's login, not a discoverable sign-in.
#[tokio::test]
async fn a_second_step_ceremony_finishes_only_its_own_login() {
    let app = spawn().await;
    let (_, mut ada) = user_with_passkey(&app, "ada@example.test").await;
    let (_, mut bob) = user_with_passkey(&app, "bob@example.test").await;
    let data_dir = TempDir::new("authd-passkeys-review");
    let first = challenge_of(&app, "ada@example.test", &data_dir).await;
    let options = second_step_options(&app, &first).await;
    let credential = ada.get(&options["publicKey"], &origin(&app)).unwrap();
    // A second login of Ada: the first challenge's ceremony does not finish it.
    let login = json_of(app.login("ada@example.test", PASSWORD).await).await;
    let second = login["challenge_token"].as_str().unwrap().to_owned();
    problem(
        second_step(&app, &second, &options["ceremony"], &credential).await,
        StatusCode::BAD_REQUEST,
        "invalid_ceremony",
    )
    .await;
    // Bob's login with Ada's ceremony (and Bob's own passkey).
    let bob_challenge = challenge_of(&app, "bob@example.test", &data_dir).await;
    let options = second_step_options(&app, &second).await;
    let credential = bob
        .get(&options["publicKey"], &origin(&app))
        .unwrap_or_else(|_| {
            bob.behaviour.credential_id = Some(bob.credential_ids()[0].clone());
            bob.get(&options["publicKey"], &origin(&app)).unwrap()
        });
    problem(
        second_step(&app, &bob_challenge, &options["ceremony"], &credential).await,
        StatusCode::BAD_REQUEST,
        "invalid_ceremony",
    )
    .await;
    // A discoverable ceremony does not finish a second step either.
    let options = login_options(&app).await;
    let credential = ada.get(&options["publicKey"], &origin(&app)).unwrap();
    problem(
        second_step(&app, &second, &options["ceremony"], &credential).await,
        StatusCode::BAD_REQUEST,
        "invalid_ceremony",
    )
    .await;
    app.db.expect_events("passkey_login", 0).await;
}

/// Holds: a registration ceremony of one user is not finished by another (the answer is not
/// stored for either).
#[tokio::test]
async fn another_users_registration_ceremony_registers_nothing() {
    let app = spawn().await;
    app.register("ada@example.test", false).await;
    app.register("mallory@example.test", false).await;
    let ada = app.access_token("ada@example.test").await;
    let mallory = app.access_token("mallory@example.test").await;
    let options = registration_options(&app, &ada).await;
    let mut authenticator = SoftAuthenticator::new();
    let credential = authenticator
        .create(&options["publicKey"], &origin(&app))
        .unwrap();
    problem(
        register_answer(&app, &mallory, &options["ceremony"], &credential).await,
        StatusCode::BAD_REQUEST,
        "invalid_ceremony",
    )
    .await;
    assert_eq!(passkeys_stored(&app).await, 0);
}

/// Holds: a disabled account's passkey neither signs in nor finishes a second step started
/// before the account was disabled; enabled again, it signs in.
#[tokio::test]
async fn a_disabled_accounts_passkey_opens_no_session() {
    let app = spawn().await;
    let (_, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let data_dir = TempDir::new("authd-passkeys-review");
    let challenge = challenge_of(&app, "ada@example.test", &data_dir).await;
    admin(
        &app.db_url,
        &data_dir,
        &["user", "disable", "ada@example.test"],
        "",
    )
    .await;
    problem(
        sign_in(&app, &mut authenticator).await,
        StatusCode::UNAUTHORIZED,
        "passkey_rejected",
    )
    .await;
    if let Ok(options) = app
        .post_json_with_token("/login/passkey/options", &challenge, &json!({}))
        .await
        .json::<Value>()
        .await
        && options["ceremony"].is_string()
    {
        let credential = authenticator
            .get(&options["publicKey"], &origin(&app))
            .unwrap();
        let response = second_step(&app, &challenge, &options["ceremony"], &credential).await;
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    assert_eq!(
        app.db
            .int("SELECT CAST(count(*) AS BIGINT) FROM sessions WHERE revoked_at IS NULL")
            .await,
        0
    );
    admin(
        &app.db_url,
        &data_dir,
        &["user", "enable", "ada@example.test"],
        "",
    )
    .await;
    assert_eq!(
        sign_in(&app, &mut authenticator).await.status(),
        StatusCode::OK
    );
}

/// Holds, and the rule chosen: a password reset proves only the mailbox, so it keeps the
/// passkeys (as it keeps the second step; removing them would let a mailbox thief strip them),
/// but every session ends, the passkey's included, refresh token and all.
#[tokio::test]
async fn a_password_reset_ends_passkey_sessions_and_keeps_the_passkeys() {
    let app = spawn().await;
    let (_, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let signed_in = json_of(sign_in(&app, &mut authenticator).await).await;
    app.wait_for_background_mail().await;
    let before = app.mail.messages_to("ada@example.test").len();
    assert_eq!(
        app.post_json("/password/forgot", &json!({"email": "ada@example.test"}))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    let message = app.mail.wait_for("ada@example.test", before + 1).await;
    let response = app
        .post_json(
            "/password/reset",
            &json!({"email": "ada@example.test", "code": message.code().unwrap(), "new_password": "a brand new passphrase 42"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    problem(
        app.get_with_token("/users/me", signed_in["access_token"].as_str().unwrap())
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    problem(
        app.post_json(
            "/token/refresh",
            &json!({"refresh_token": signed_in["refresh_token"]}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(
        sign_in(&app, &mut authenticator).await.status(),
        StatusCode::OK
    );
}

/// Holds: removing a passkey kills its session's refresh token too, not only its access token.
#[tokio::test]
async fn a_removed_passkeys_session_cannot_be_refreshed() {
    let app = spawn().await;
    let (token, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let signed_in = json_of(sign_in(&app, &mut authenticator).await).await;
    // Rotate once, so the live refresh token is a descendant of the sign-in's.
    let rotated = json_of(
        app.post_json(
            "/token/refresh",
            &json!({"refresh_token": signed_in["refresh_token"]}),
        )
        .await,
    )
    .await;
    let id = json_of(app.get_with_token("/passkeys", &token).await).await["passkeys"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let removed = app
        .client
        .delete(app.url(&format!("/passkeys/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    problem(
        app.post_json(
            "/token/refresh",
            &json!({"refresh_token": rotated["refresh_token"]}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
}

/// Holds: an attacker who knows a victim's credential id (it is in every second step's
/// `allowCredentials`) but not their random user handle cannot lock the victim's passkey
/// sign-ins, however often they try.
#[tokio::test]
async fn a_credential_id_alone_does_not_let_anyone_lock_a_victims_passkey() {
    let app = spawn_with(|s| s.rate_limit.login_failures_per_account = 3).await;
    let (_, mut victim) = user_with_passkey(&app, "ada@example.test").await;
    let mut attacker = victim.clone();
    attacker.behaviour.sign_with_another_key = true;
    for handle in [vec![0u8; 16], vec![1u8; 16], vec![], vec![7u8; 64]] {
        for _ in 0..3 {
            attacker.behaviour.user_handle_override = Some(handle.clone());
            let status = sign_in(&app, &mut attacker).await.status();
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
    }
    assert_eq!(sign_in(&app, &mut victim).await.status(), StatusCode::OK);
}

/// Holds: an account has at most 25 passkeys, even when the last registrations race.
#[tokio::test]
async fn registrations_racing_at_the_limit_stop_at_twenty_five_passkeys() {
    let app = spawn().await;
    let (token, _) = user_with_passkey(&app, "ada@example.test").await;
    for _ in 1..23 {
        add_passkey(&app, &token, &mut SoftAuthenticator::new(), "Passkey").await;
    }
    let mut answers = Vec::new();
    for _ in 0..4 {
        let options = registration_options(&app, &token).await;
        let credential = SoftAuthenticator::new()
            .create(&options["publicKey"], &origin(&app))
            .unwrap();
        answers.push((options["ceremony"].clone(), credential));
    }
    let statuses: Vec<StatusCode> = join_all(
        answers
            .iter()
            .map(|(ceremony, credential)| register_answer(&app, &token, ceremony, credential)),
    )
    .await
    .iter()
    .map(|r| r.status())
    .collect();
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(passkeys_stored(&app).await, 25);
    problem(
        app.post_json_with_token("/passkeys/register/options", &token, &json!({}))
            .await,
        StatusCode::CONFLICT,
        "passkey_limit_reached",
    )
    .await;
}

/// Holds: garbage registrations of every shape (other attestation formats, RSA and unknown
/// algorithms, broken base64, CBOR and client data, wrong types, huge fields) are refused with
/// a 4xx, store nothing, and leave the server answering.
#[tokio::test]
async fn garbage_registrations_of_every_shape_get_a_4xx_and_store_nothing() {
    let app = spawn().await;
    let (token, _) = user_with_passkey(&app, "ada@example.test").await;
    let options = registration_options(&app, &token).await;
    let genuine = SoftAuthenticator::new()
        .create(&options["publicKey"], &origin(&app))
        .unwrap();
    let auth_data = unb64(genuine["response"]["authenticatorData"].as_str().unwrap());
    let garbage = || Cbor::Bytes(vec![0x30; 70]);
    let ec = |alg| {
        Cbor::Map(vec![
            (Cbor::Int(1), Cbor::Int(2)),
            (Cbor::Int(3), Cbor::Int(alg)),
            (Cbor::Int(-1), Cbor::Int(1)),
            (Cbor::Int(-2), Cbor::Bytes(vec![1; 32])),
            (Cbor::Int(-3), Cbor::Bytes(vec![2; 32])),
        ])
    };
    let rsa = |n: Vec<u8>, e: Vec<u8>| {
        Cbor::Map(vec![
            (Cbor::Int(1), Cbor::Int(3)),
            (Cbor::Int(3), Cbor::Int(-257)),
            (Cbor::Int(-1), Cbor::Bytes(n)),
            (Cbor::Int(-2), Cbor::Bytes(e)),
        ])
    };
    let mut attestations = vec![
        attestation("none", Cbor::Map(vec![]), with_key(&auth_data, ec(-8))),
        attestation("none", Cbor::Map(vec![]), with_key(&auth_data, ec(-65535))),
        attestation(
            "none",
            Cbor::Map(vec![]),
            with_key(&auth_data, rsa(vec![0xff; 1024], vec![1, 0, 1])),
        ),
        attestation(
            "none",
            Cbor::Map(vec![]),
            with_key(&auth_data, rsa(vec![3], vec![])),
        ),
        attestation(
            "none",
            Cbor::Map(vec![]),
            with_key(&auth_data, Cbor::Text("not a key")),
        ),
        attestation("none", Cbor::Map(vec![]), auth_data[..40].to_vec()),
        attestation("none", Cbor::Map(vec![]), auth_data[..60].to_vec()),
        attestation("none", Cbor::Array(vec![]), vec![]),
        attestation("no-such-format", Cbor::Map(vec![]), auth_data.clone()),
        b64(&[0xbf, 0xbf, 0xbf, 0xbf]),
        b64(&[0x9f; 2000]),
        "!!!not base64!!!".to_owned(),
    ];
    for fmt in [
        "packed",
        "tpm",
        "android-key",
        "android-safetynet",
        "fido-u2f",
        "apple",
    ] {
        attestations.push(attestation(fmt, Cbor::Map(vec![]), auth_data.clone()));
        attestations.push(attestation(
            fmt,
            Cbor::Map(vec![
                (Cbor::Text("alg"), Cbor::Int(-7)),
                (Cbor::Text("sig"), garbage()),
                (Cbor::Text("x5c"), Cbor::Array(vec![garbage()])),
                (Cbor::Text("ver"), Cbor::Text("2.0")),
                (Cbor::Text("certInfo"), garbage()),
                (Cbor::Text("pubArea"), garbage()),
                (Cbor::Text("response"), garbage()),
            ]),
            auth_data.clone(),
        ));
    }
    let mut bodies: Vec<Value> = attestations
        .into_iter()
        .map(|object| {
            let mut credential = genuine.clone();
            credential["response"]["attestationObject"] = json!(object);
            credential
        })
        .collect();
    for (pointer, value) in [
        ("/response/clientDataJSON", json!(b64(b"{not json"))),
        (
            "/response/clientDataJSON",
            json!(b64(
                br#"{"type":"webauthn.get","challenge":"AA","origin":"x"}"#
            )),
        ),
        ("/response/clientDataJSON", json!(7)),
        ("/rawId", json!(b64(b"another id"))),
        ("/id", json!("+/+/+/==")),
        ("/type", json!("password")),
        ("/response", json!([])),
        ("/response/transports", json!(["carrier-pigeon"])),
        ("/response/clientDataJSON", json!("A".repeat(60_000))),
    ] {
        let mut credential = genuine.clone();
        *credential.pointer_mut(pointer).unwrap() = value;
        bodies.push(credential);
    }
    for credential in bodies {
        let options = registration_options(&app, &token).await;
        let response = register_answer(&app, &token, &options["ceremony"], &credential).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(
            status.is_client_error(),
            "{status}: {text} for {credential}"
        );
    }
    assert_eq!(passkeys_stored(&app).await, 1);
}

/// Holds: garbage sign-in answers of every shape, with a real credential's id and handle or
/// without, get a 4xx and open no session.
#[tokio::test]
async fn garbage_sign_in_answers_of_every_shape_get_a_4xx_and_open_no_session() {
    let app = spawn().await;
    let (_, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let options = login_options(&app).await;
    let genuine = authenticator
        .get(&options["publicKey"], &origin(&app))
        .unwrap();
    let auth_data = unb64(genuine["response"]["authenticatorData"].as_str().unwrap());
    let sessions = app
        .db
        .int("SELECT CAST(count(*) AS BIGINT) FROM sessions WHERE revoked_at IS NULL")
        .await;
    for (pointer, value) in [
        ("/response/authenticatorData", json!(b64(&auth_data[..10]))),
        ("/response/authenticatorData", json!(b64(&auth_data[..36]))),
        (
            "/response/authenticatorData",
            json!(b64(&[auth_data.as_slice(), &[0xa1, 0xff]].concat())),
        ),
        ("/response/authenticatorData", json!("")),
        ("/response/signature", json!(b64(&[0x30, 0x02, 0x01]))),
        ("/response/signature", json!("")),
        ("/response/signature", json!(b64(&vec![0x30; 40_000]))),
        ("/response/userHandle", json!(b64(&[1; 15]))),
        ("/response/userHandle", json!(null)),
        ("/response/userHandle", json!("%%%")),
        ("/response/clientDataJSON", json!(b64(b"[]"))),
        (
            "/response/clientDataJSON",
            json!(b64(br#"{"type":"webauthn.create","challenge":7}"#)),
        ),
        ("/rawId", json!(b64(&[9; 4096]))),
        ("/id", json!(true)),
        ("/response", json!({})),
    ] {
        let options = login_options(&app).await;
        let mut credential = genuine.clone();
        *credential.pointer_mut(pointer).unwrap() = value;
        let response = finish(&app, &options["ceremony"], &credential).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(
            status.is_client_error(),
            "{status}: {text} for {credential}"
        );
    }
    assert_eq!(
        app.db
            .int("SELECT CAST(count(*) AS BIGINT) FROM sessions WHERE revoked_at IS NULL")
            .await,
        sessions
    );
    app.db.end_locks().await;
    assert_eq!(
        sign_in(&app, &mut authenticator).await.status(),
        StatusCode::OK
    );
}

/// Was a finding (low, audit trail), fixed as suggested: the trail cannot tie a passkey sign-in to the passkey that made
/// it. `passkey_registered` names the passkey only by its (free, non-unique) name,
/// `passkey_removed` only by its id, and `passkey_login` by neither ("sign-in"): after a
/// takeover an administrator cannot tell which passkey signed in, whether it is the one
/// registered from the attacker's address, or whether removing it was enough. Fixed: put the
/// passkey id in the detail of all three (`registered`: `"{name}" {id}`; `login`:
/// `sign-in with {id}`), as `passkey_removed` already does.
#[tokio::test]
async fn passkey_events_name_the_passkey_so_a_sign_in_traces_to_its_registration() {
    let app = spawn().await;
    let (token, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    assert_eq!(
        sign_in(&app, &mut authenticator).await.status(),
        StatusCode::OK
    );
    let id = json_of(app.get_with_token("/passkeys", &token).await).await["passkeys"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.db.expect_events("passkey_login", 1).await;
    let registered = app
        .db
        .text("SELECT detail FROM security_events WHERE kind = 'passkey_registered'")
        .await;
    let login = app
        .db
        .text("SELECT detail FROM security_events WHERE kind = 'passkey_login'")
        .await;
    assert!(
        registered.contains(&id) && login.contains(&id),
        "passkey {id}: registered {registered:?}, login {login:?}"
    );
}

/// Was a finding (low, audit trail), fixed as suggested: a sign-in with a disabled account's passkey is recorded as "an
/// unknown credential" with no account, because `passkey_by_credential` filters disabled users
/// out: an administrator watching a disabled (perhaps compromised) account does not see its
/// passkey still being tried. Fixed: look the passkey up whatever its user's state, then refuse
/// with the user on the event and the detail "the account is disabled" (same 401 to the client).
#[tokio::test]
async fn a_disabled_accounts_passkey_attempt_is_audited_against_that_account() {
    let app = spawn().await;
    app.register("ada@example.test", false).await;
    let token = app.access_token("ada@example.test").await;
    let me = json_of(app.get_with_token("/users/me", &token).await).await;
    let ada: uuid::Uuid = me["id"].as_str().unwrap().parse().unwrap();
    let mut authenticator = SoftAuthenticator::new();
    add_passkey(&app, &token, &mut authenticator, "Passkey").await;
    let data_dir = TempDir::new("authd-passkeys-review");
    admin(
        &app.db_url,
        &data_dir,
        &["user", "disable", "ada@example.test"],
        "",
    )
    .await;
    problem(
        sign_in(&app, &mut authenticator).await,
        StatusCode::UNAUTHORIZED,
        "passkey_rejected",
    )
    .await;
    app.db.expect_events("passkey_rejected", 1).await;
    assert_eq!(
        app.db.event_user_ids("passkey_rejected").await,
        vec![Some(ada)]
    );
}

/// Holds: a credential id registered to one account cannot be registered by another (no
/// upsert that would hand Ada's passkey to Mallory); Ada's passkey goes on signing in as Ada.
#[tokio::test]
async fn another_accounts_credential_id_cannot_be_registered_again() {
    let app = spawn().await;
    let (_, mut ada) = user_with_passkey(&app, "ada@example.test").await;
    app.register("mallory@example.test", false).await;
    let mallory = app.access_token("mallory@example.test").await;
    let options = registration_options(&app, &mallory).await;
    let mut forger = SoftAuthenticator::new();
    forger.behaviour.credential_id = Some(ada.credential_ids()[0].clone());
    let credential = forger.create(&options["publicKey"], &origin(&app)).unwrap();
    problem(
        register_answer(&app, &mallory, &options["ceremony"], &credential).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    assert_eq!(passkeys_stored(&app).await, 1);
    let signed_in = json_of(sign_in(&app, &mut ada).await).await;
    let me = json_of(
        app.get_with_token("/users/me", signed_in["access_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(me["email"], "ada@example.test");
}

/// Holds, and the rule chosen: a second step frozen by wrong answers (until `authd user unlock`)
/// does not shut the owner's own passkey out of a sign-in: it is their way back in, and whoever
/// froze the step cannot use it.
#[tokio::test]
async fn a_frozen_second_step_leaves_the_owners_passkey_sign_in_open() {
    let app = spawn_with(|s| s.rate_limit.otp_failures_per_account = 1).await;
    let (_, mut authenticator) = user_with_passkey(&app, "ada@example.test").await;
    let data_dir = TempDir::new("authd-passkeys-review");
    let challenge = challenge_of(&app, "ada@example.test", &data_dir).await;
    problem(
        app.submit_code(&challenge, "000000").await,
        StatusCode::UNAUTHORIZED,
        "invalid_otp",
    )
    .await;
    problem(
        app.login("ada@example.test", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "second_factor_locked",
    )
    .await;
    assert_eq!(
        sign_in(&app, &mut authenticator).await.status(),
        StatusCode::OK
    );
}

/// Holds, and the rule chosen: an email change moves the account, not its passkeys: they go on
/// signing in (their user handle is not the address).
#[tokio::test]
async fn an_email_change_keeps_the_passkeys_signing_in() {
    let app = spawn().await;
    let (token, mut authenticator) = user_with_passkey(&app, "old@example.test").await;
    let response = app
        .post_json_with_token(
            "/email/change",
            &token,
            &json!({"new_email": "new@example.test"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let code = app
        .mail
        .wait_for("new@example.test", 1)
        .await
        .code()
        .unwrap();
    let response = app
        .post_json_with_token("/email/change/confirm", &token, &json!({"code": code}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let signed_in = json_of(sign_in(&app, &mut authenticator).await).await;
    let me = json_of(
        app.get_with_token("/users/me", signed_in["access_token"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(me["email"], "new@example.test");
}

/// Was a finding (low, denial of service): refused passkey sign-ins locked the account's
/// passkey sign-ins whoever sent them, yet what the lock takes is a credential id and the user
/// handle, which WebAuthn treats as public (any registration options of the account name both),
/// and a signature cannot be guessed. Fixed by keying the lock by the account and the client's
/// address: the attacker's address is locked, the owner's is not.
#[tokio::test]
async fn an_attacker_with_no_secret_cannot_lock_the_owner_out_of_their_passkey() {
    let app = spawn_with(|s| {
        s.rate_limit.login_failures_per_account = 3;
        // Clients told apart by the address a trusted proxy reports.
        s.rate_limit.client_ip_header = "x-forwarded-for".into();
    })
    .await;
    let (token, mut victim) = user_with_passkey(&app, "ada@example.test").await;
    // What any registration options of the account say (here: fetched with a stolen session).
    let options = registration_options(&app, &token).await;
    let excluded = unb64(
        options["publicKey"]["excludeCredentials"][0]["id"]
            .as_str()
            .unwrap(),
    );
    let mut attacker = SoftAuthenticator::new();
    attacker.behaviour.credential_id = Some(excluded);
    // A credential of the attacker's own key, under the victim's id and user handle.
    attacker
        .create(&options["publicKey"], &origin(&app))
        .unwrap();
    let sign_in_from = async |authenticator: &mut SoftAuthenticator, address: &str| {
        let options: Value = app
            .client
            .post(app.url("/login/passkey/options"))
            .header("x-forwarded-for", address)
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let credential = authenticator
            .get(&options["publicKey"], &origin(&app))
            .unwrap();
        app.client
            .post(app.url("/login/passkey"))
            .header("x-forwarded-for", address)
            .json(&json!({"ceremony": options["ceremony"], "credential": credential}))
            .send()
            .await
            .unwrap()
            .status()
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(sign_in_from(&mut attacker, "203.0.113.9").await);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS,
        ],
        "the attacker's address is locked after the allowance"
    );
    assert_eq!(
        sign_in_from(&mut victim, "198.51.100.7").await,
        StatusCode::OK,
        "the owner's passkey still signs in from the owner's address"
    );
    // And from the attacker's address the real passkey waits out the lock like anyone.
    assert_eq!(
        sign_in_from(&mut victim, "203.0.113.9").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Holds: without the password nothing says whether an address has passkeys: a wrong password
/// and an unknown address answer alike, and a discoverable sign-in's options name no account.
#[tokio::test]
async fn nothing_tells_a_stranger_whether_an_address_has_passkeys() {
    let app = spawn().await;
    user_with_passkey(&app, "ada@example.test").await;
    app.register("bob@example.test", false).await;
    let mut answers = Vec::new();
    for email in [
        "ada@example.test",
        "bob@example.test",
        "nobody@example.test",
    ] {
        let body = problem(
            app.login(email, "not the password").await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
        answers.push(body.to_string());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let options = login_options(&app).await;
    let text = options.to_string();
    assert!(
        !text.contains("ada")
            && options["publicKey"]["allowCredentials"]
                .as_array()
                .is_none_or(|l| l.is_empty()),
        "{text}"
    );
}
