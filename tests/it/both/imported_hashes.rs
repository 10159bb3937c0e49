//! Accounts whose password hash another system made (issue 25): bcrypt of any cost and
//! spelling, Argon2id (argon2-cffi, Authelia) and Django's pbkdf2_sha256, put in the users'
//! rows as `authd user import` will. They log in with their old password, are re-hashed to a
//! bcrypt at the configured cost at the first login, and answer a wrong password no sooner
//! than an unknown address does.
//!
//! The hashes are `tests/fixtures/hashes.json`, made by `scripts/make-hash-fixtures.py` with
//! pyca/bcrypt, argon2-cffi and Django.

use reqwest::StatusCode;
use serde_json::Value;

use super::timing::{SAMPLES, median, sample};
use crate::helpers::{
    EVENTS_DEADLINE, PASSWORD, TestApp, TestDb, problem, test_settings, wait_until,
};
use crate::smtp_sink::{Behaviour, MailSink};

const WRONG: &str = "correct horse batterz";

fn fixtures() -> Value {
    serde_json::from_str(include_str!("../../fixtures/hashes.json")).unwrap()
}

/// The one fixture hash that `matches`.
fn fixture(matches: impl Fn(&Value) -> bool) -> String {
    let all = fixtures();
    let found: Vec<&Value> = all["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| matches(f))
        .collect();
    assert_eq!(found.len(), 1, "one fixture expected");
    found[0]["hash"].as_str().unwrap().to_owned()
}

fn imported(params: &str, password: &str) -> String {
    fixture(|f| f["params"] == params && f["password"] == password)
}

fn bcrypt(prefix: &str, cost: u64) -> String {
    fixture(|f| f["cost"] == cost && f["hash"].as_str().unwrap().starts_with(prefix))
}

/// Replaces the stored hash of `email` by `hash`, as the importer writes it.
async fn store_hash(app: &TestApp, email: &str, hash: &str) {
    let updated = match &*app.db {
        TestDb::Postgres(pool) => {
            sqlx::query("UPDATE users SET password_hash = $1 WHERE email = $2")
                .bind(hash)
                .bind(email)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected()
        }
        TestDb::Sqlite(pool) => sqlx::query("UPDATE users SET password_hash = ?1 WHERE email = ?2")
            .bind(hash)
            .bind(email)
            .execute(pool)
            .await
            .unwrap()
            .rows_affected(),
    };
    assert_eq!(updated, 1, "{email}");
}

async fn stored_hash(app: &TestApp, email: &str) -> String {
    match &*app.db {
        TestDb::Postgres(pool) => {
            sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
                .bind(email)
                .fetch_one(pool)
                .await
        }
        TestDb::Sqlite(pool) => {
            sqlx::query_scalar("SELECT password_hash FROM users WHERE email = ?1")
                .bind(email)
                .fetch_one(pool)
                .await
        }
    }
    .unwrap()
}

/// Registers `email` and gives it `hash` instead of the one registration made.
async fn account_with(app: &TestApp, email: &str, hash: &str) {
    app.register(email, false).await;
    store_hash(app, email, hash).await;
}

#[tokio::test]
async fn imported_hashes_log_in_with_the_old_password_and_become_bcrypts_at_the_first_login() {
    let app = TestApp::spawn().await;
    assert_eq!(app.settings.password.bcrypt_cost, 4);
    let cases = [
        bcrypt("$2y$", 5),
        bcrypt("$2a$", 6),
        bcrypt("$2b$", 7),
        imported("argon2-cffi defaults", PASSWORD),
        imported("small, 2 lanes, 16-byte tag", PASSWORD),
        imported("Django default", PASSWORD),
        imported("1 iterations", PASSWORD),
    ];
    for (n, hash) in cases.iter().enumerate() {
        let email = format!("imported{n}@example.test");
        account_with(&app, &email, hash).await;
        problem(
            app.login(&email, WRONG).await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
        assert_eq!(
            &stored_hash(&app, &email).await,
            hash,
            "a wrong password changes nothing"
        );
        let response = app.login(&email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "{hash}");
        let mut now = String::new();
        let upgraded = wait_until(EVENTS_DEADLINE, async || {
            now = stored_hash(&app, &email).await;
            now.starts_with("$2b$04$")
        })
        .await;
        assert!(upgraded, "{hash} is still {now}");
        assert!(authd::password::verify_hash(PASSWORD.as_bytes(), &now));
        // The new hash is the one the password opens now.
        assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
        problem(
            app.login(&email, WRONG).await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
    }
}

#[tokio::test]
async fn an_imported_password_authd_would_refuse_logs_in_and_keeps_its_hash() {
    // 40 × "é" is 80 bytes: past bcrypt's 72, so authd cannot make a bcrypt of it. The system
    // the hash comes from took it whole, and so does the login; the hash stays until the user
    // sets a password authd takes.
    let app = TestApp::spawn().await;
    let long = "é".repeat(40);
    for (n, params) in ["small", "1000 iterations"].into_iter().enumerate() {
        let email = format!("long{n}@example.test");
        let hash = imported(params, &long);
        account_with(&app, &email, &hash).await;
        for _ in 0..2 {
            assert_eq!(app.login(&email, &long).await.status(), StatusCode::OK);
            // No upgrade is started (the password does not parse), so nothing can change it.
            assert_eq!(stored_hash(&app, &email).await, hash);
        }
        let cut = &long[..72];
        problem(
            app.login(&email, cut).await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
    }
}

/// Timed, as `timing.rs` is (timing is the rule): with the cheapest hashes the fixtures have
/// (Argon2id over 1 MiB once, PBKDF2 of 1 iteration), an unpadded check would answer in well
/// under a millisecond against a bcrypt at cost 9. Each login is also checked to cost exactly
/// one verification on the pool; the unit tests in `src/password` count the bcrypt rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_account_answers_a_wrong_password_no_sooner_than_an_unknown_address() {
    let db_url = crate::helpers::fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let mut settings = test_settings(&db_url, mail.port);
    settings.rate_limit.requests_per_ip_per_minute = 100_000;
    settings.rate_limit.login_failures_per_account = 1000;
    settings.password.bcrypt_cost = 9;
    let app = TestApp::spawn_on(settings, mail, db_url).await;
    account_with(&app, "argon2@example.test", &imported("small", PASSWORD)).await;
    account_with(
        &app,
        "pbkdf2@example.test",
        &imported("1 iterations", PASSWORD),
    )
    .await;
    // The first login makes the metric series the samples read; then warm connections and
    // caches.
    problem(
        app.login("first@example.test", WRONG).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    for email in [
        "argon2@example.test",
        "pbkdf2@example.test",
        "warm-up@example.test",
    ] {
        sample(&app, |_| email.to_owned()).await;
    }
    let (mut argon2, mut pbkdf2, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..SAMPLES {
        argon2.push(sample(&app, |_| "argon2@example.test".into()).await);
        pbkdf2.push(sample(&app, |_| "pbkdf2@example.test".into()).await);
        unknown.push(sample(&app, |n| format!("nobody{round}-{n}@example.test")).await);
    }
    let (argon2, pbkdf2, unknown) = (median(argon2), median(pbkdf2), median(unknown));
    let medians = format!("medians: argon2 {argon2:?}, pbkdf2 {pbkdf2:?}, unknown {unknown:?}");
    // No sooner: at most twice as fast, the margin `timing.rs` allows for noise.
    let half = unknown / 2;
    assert!(argon2 > half, "{medians}");
    assert!(pbkdf2 > half, "{medians}");
}
