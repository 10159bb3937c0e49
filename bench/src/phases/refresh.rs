//! The `refresh` phase: `POST /token/refresh` per second and its p50/p99, each client rotating
//! its own session's chain.

use std::time::Instant;

use serde_json::{Value, json};

use crate::accounts::{PASSWORD, token_field};
use crate::http::client;
use crate::tally::{Outcome, Tally, Window, error_kind, join_tallies, status_outcome};
use crate::workload::{Run, Workload};

/// Refresh-token rotation: one session per login client, refreshed in a closed loop.
pub async fn measure(w: &Workload, run: &mut Run) {
    if !w.options.runs_phase("refresh") {
        return;
    }
    let window = w.long_window();
    let (mut refreshes, cpu) = tokio::join!(refreshes(w, window), w.cpu.during(window));
    run.other_load(cpu.other);
    run.figures.refreshes_per_sec = refreshes.per_sec(&window);
    run.figures.refresh_p50_ms = refreshes.percentile_ms(0.50);
    run.figures.refresh_p99_ms = refreshes.percentile_ms(0.99);
    run.note("refresh", &refreshes);
}

/// `POST /token/refresh` in a closed loop: each client logs in once, then always presents
/// the refresh token of the answer before.
async fn refreshes(w: &Workload, window: Window) -> Tally {
    let login: reqwest::Url = format!("{}/login", w.authd).parse().expect("URL");
    let url: reqwest::Url = format!("{}/token/refresh", w.authd).parse().expect("URL");
    let workers = w.login_emails.iter().map(|email| {
        let (login, url) = (login.clone(), url.clone());
        let body = json!({"email": email, "password": PASSWORD});
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(client) = client() else {
                return tally;
            };
            let Some(mut token) = token_field(&client, &login, &body, "refresh_token").await else {
                tally.errors.insert("login for a refresh token".into(), 1);
                return tally;
            };
            while window.is_open() {
                let began = Instant::now();
                let body = json!({ "refresh_token": token });
                let outcome = match client.post(url.clone()).json(&body).send().await {
                    Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                        Ok(v) => match v["refresh_token"].as_str() {
                            Some(next) => {
                                token = next.to_owned();
                                Outcome::Ok
                            }
                            None => Outcome::Failed("refresh body".into()),
                        },
                        Err(_) => Outcome::Failed("refresh body".into()),
                    },
                    Ok(r) => status_outcome(r.status()),
                    Err(err) => Outcome::Failed(error_kind(&err)),
                };
                let failed = !matches!(outcome, Outcome::Ok);
                window.record(&mut tally, began, outcome);
                if failed {
                    break;
                }
            }
            tally
        })
    });
    join_tallies(workers).await
}
