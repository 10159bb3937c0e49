//! Login timing after `password.bcrypt_cost` is raised: a wrong password costs one bcrypt at
//! the configured cost for an account hashed before the raise, for one hashed since and for an
//! unknown address alike, however many accounts anyone registers at either cost.
//!
//! The same holds for a password reset: its answer takes as long whether or not the address has
//! an account (issue 22).
//!
//! The tests here assert a timer, because timing is the rule (issues 20 and 22).

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{TestApp, bcrypt_verifications, fresh_database, problem, test_settings};
use crate::smtp_sink::{Behaviour, MailSink};

const WRONG: &str = "not the password";

/// Rounds of samples (one sample of each kind per round).
pub(super) const SAMPLES: usize = 9;

/// Logins one sample is the fastest of: what else runs on the machine (the rest of the suite)
/// only ever adds time, so the fastest of a few back-to-back logins is what the login costs.
const TRIES: usize = 3;

/// Sends a wrong password for `email`; returns how long the answer took, after checking that it
/// is the usual refusal and that it cost exactly one bcrypt verification.
async fn time_wrong_password(app: &TestApp, email: &str) -> Duration {
    let before = bcrypt_verifications(app).await;
    let started = Instant::now();
    let response = app.login(email, WRONG).await;
    let took = started.elapsed();
    problem(response, StatusCode::UNAUTHORIZED, "invalid_credentials").await;
    assert_eq!(bcrypt_verifications(app).await - before, 1, "{email}");
    took
}

pub(super) fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// How many times longer the slower of `a` and `b` is.
fn factor(a: Duration, b: Duration) -> f64 {
    a.max(b).as_secs_f64() / a.min(b).as_secs_f64()
}

/// One sample: the fastest of [`TRIES`] wrong-password logins for the address `email(n)` gives.
pub(super) async fn sample(app: &TestApp, email: impl Fn(usize) -> String) -> Duration {
    let mut fastest = Duration::MAX;
    for n in 0..TRIES {
        fastest = fastest.min(time_wrong_password(app, &email(n)).await);
    }
    fastest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_cost_raise_outnumbered_old_accounts_answer_a_wrong_password_as_late_as_unknown_emails()
 {
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let mut settings = test_settings(&db_url, mail.port);
    settings.rate_limit.requests_per_ip_per_minute = 100_000;
    settings.rate_limit.login_failures_per_account = 1000;
    settings.password.bcrypt_cost = 4;
    // Each TestApp stays alive to the end: dropping one deletes its SQLite directory.
    let before_raise = TestApp::spawn_on(settings.clone(), mail.clone(), db_url.clone()).await;
    before_raise.register("dormant@example.test", false).await;
    before_raise.register("dormant2@example.test", false).await;

    settings.password.bcrypt_cost = 9;
    let raised = TestApp::spawn_on(settings.clone(), mail.clone(), db_url.clone()).await;
    // More accounts at the new cost than are left at the old one, as anyone could register.
    for n in 0..3 {
        raised
            .register(&format!("new{n}@example.test"), false)
            .await;
    }
    // A restart: whatever it reads from the stored hashes, it reads now.
    let app = TestApp::spawn_on(settings, mail, db_url).await;
    assert_eq!(
        app.db
            .text(
                "SELECT substr(password_hash, 1, 7) FROM users WHERE email = 'dormant@example.test'"
            )
            .await,
        "$2b$04$"
    );
    assert_eq!(
        app.db
            .text("SELECT substr(password_hash, 1, 7) FROM users WHERE email = 'new0@example.test'")
            .await,
        "$2b$09$"
    );
    // Connections and caches warm, so the first sample of each kind is not an outlier (the first
    // login also makes the metric series the samples read).
    problem(
        app.login("first@example.test", WRONG).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    time_wrong_password(&app, "dormant2@example.test").await;
    time_wrong_password(&app, "warm-up@example.test").await;

    let (mut old, mut new, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so a busy moment of the machine falls on every kind alike.
    for round in 0..SAMPLES {
        old.push(sample(&app, |_| "dormant@example.test".into()).await);
        new.push(sample(&app, |_| "new1@example.test".into()).await);
        unknown.push(sample(&app, |n| format!("nobody{round}-{n}@example.test")).await);
    }
    let (old, new, unknown) = (median(old), median(new), median(unknown));
    let medians = format!("medians: old {old:?}, new {new:?}, unknown {unknown:?}");
    assert!(factor(old, unknown) < 2.0, "{medians}");
    assert!(factor(new, unknown) < 2.0, "{medians}");
}

/// Asks for a reset of `email`; how long the answer took, once the server is done with the
/// email in the background (so each sample finds a quiet server).
async fn time_forgot(app: &TestApp, email: &str) -> Duration {
    let started = Instant::now();
    let response = app
        .post_json("/password/forgot", &serde_json::json!({"email": email}))
        .await;
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.wait_for_background_mail().await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_for_an_account_answers_as_fast_as_one_for_an_unknown_address() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 100_000;
        // Every request for the account sends its email: the known case does all its work.
        s.verification.resend_interval_secs = 0;
        s.verification.max_per_day = 100_000;
        s.mail.max_codes_per_account = 100_000;
    })
    .await;
    app.register("known@example.test", false).await;
    time_forgot(&app, "known@example.test").await;
    time_forgot(&app, "warm-up@example.test").await;
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for round in 0..SAMPLES {
        let mut fastest = (Duration::MAX, Duration::MAX);
        for n in 0..TRIES {
            fastest.0 = fastest.0.min(time_forgot(&app, "known@example.test").await);
            let nobody = format!("nobody{round}-{n}@example.test");
            fastest.1 = fastest.1.min(time_forgot(&app, &nobody).await);
        }
        known.push(fastest.0);
        unknown.push(fastest.1);
    }
    let sent = app.mail.messages_to("known@example.test").len();
    assert_eq!(
        sent,
        1 + SAMPLES * TRIES,
        "every request for the account sent its email"
    );
    let (known, unknown) = (median(known), median(unknown));
    let medians = format!("medians: known {known:?}, unknown {unknown:?}");
    assert!(factor(known, unknown) < 2.0, "{medians}");
}
