//! The `totp` phase: `POST /login/otp` with a wrong code of the app for accounts that log in
//! with an authenticator app, in a closed loop: what one guess at an app costs (guesses per
//! second, p50, p99, authd's CPU per guess).
//!
//! Each guess pays the whole check: the challenge token, the open-challenge lookup, the
//! account's counter of wrong codes, the account's factors, unsealing the secret (AES-256-GCM),
//! HMAC-SHA1 for the three time steps of the window, the atomic `UPDATE` that counts the
//! challenge's try, and the audit event. A challenge takes `otp.max_attempts` wrong codes and
//! only a login (bcrypt) makes another, so the bench's authd allows 10^9 per challenge (and
//! per account): one challenge per client is guessed for the whole window, with the same
//! statements as a challenge's first five tries (see `process.rs`).

use std::time::Instant;

use anyhow::{Context, Result};
use authd::token::totp::TotpSecret;
use serde_json::{Value, json};

use crate::authenticator::{challenge_token, turn_on_app, wrong_code};
use crate::http::client;
use crate::tally::{Outcome, Tally, Window, error_kind, join_tallies, status_outcome};
use crate::workload::{Run, Workload};

pub async fn measure(w: &Workload, run: &mut Run) -> Result<()> {
    if !w.options.runs_phase("totp") {
        return Ok(());
    }
    let prefix = format!("totp-{:08x}-", rand::random::<u32>());
    let clients = w.options.login_connections;
    w.database
        .add_accounts(&prefix, clients, &w.stored_hash)
        .await?;
    // Untimed: each account turns its app on (a login, enrolment, the first code) and logs in
    // for a challenge, all of them at once (bcrypt: two logins each).
    let mut setups = tokio::task::JoinSet::new();
    for i in 1..=clients {
        let (base, email) = (w.authd.clone(), format!("{prefix}{i}@bench.test"));
        setups.spawn(async move {
            let client = client()?;
            let secret = turn_on_app(&client, &base, &email).await?;
            let challenge = challenge_token(&client, &base, &email).await?;
            anyhow::Ok((secret, challenge))
        });
    }
    let mut challenges = Vec::with_capacity(clients);
    while let Some(done) = setups.join_next().await {
        challenges.push(done.context("a totp setup task")??);
    }
    let window = w.long_window();
    let (mut guesses, cpu) = tokio::join!(guesses(w, window, challenges), w.cpu.during(window));
    run.other_load(cpu.other);
    w.database.remove_accounts(&prefix).await?;
    let f = &mut run.figures;
    f.totp_guesses_per_sec = guesses.per_sec(&window);
    f.totp_p50_ms = guesses.percentile_ms(0.50);
    f.totp_p99_ms = guesses.percentile_ms(0.99);
    f.totp_cpu_us = cpu.per_request(guesses.ok, w.cpu.authd);
    run.note("totp", &guesses);
    Ok(())
}

/// One closed loop per client on its own challenge: a code the app does not show now. The
/// answer must be 401 `invalid_otp`.
async fn guesses(w: &Workload, window: Window, challenges: Vec<(TotpSecret, String)>) -> Tally {
    let url: reqwest::Url = format!("{}/login/otp", w.authd).parse().expect("URL");
    let workers = challenges.into_iter().map(|(secret, challenge)| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(client) = client() else {
                return tally;
            };
            while window.is_open() {
                let body = json!({ "otp": wrong_code(&secret) });
                let began = Instant::now();
                let outcome = match client
                    .post(url.clone())
                    .bearer_auth(&challenge)
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                        match r.json::<Value>().await {
                            Ok(v) if v["code"] == "invalid_otp" => Outcome::Ok,
                            Ok(v) => Outcome::Failed(format!(
                                "401 {}",
                                v["code"].as_str().unwrap_or("body")
                            )),
                            Err(_) => Outcome::Failed("401 body".into()),
                        }
                    }
                    Ok(r) => status_outcome(r.status()),
                    Err(err) => Outcome::Failed(error_kind(&err)),
                };
                window.record(&mut tally, began, outcome);
            }
            tally
        })
    });
    join_tallies(workers).await
}
