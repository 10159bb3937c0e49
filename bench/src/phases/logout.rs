//! The `logout` phase: `POST /logout` latency, each logout after an untimed login.

use std::time::Instant;

use serde_json::json;

use crate::accounts::{PASSWORD, token_field};
use crate::http::client;
use crate::tally::{Outcome, Tally, Window, error_kind, join_tallies, status_outcome};
use crate::workload::{Run, Workload};

/// Logout: each client logs in (not timed) and logs that session out (timed).
pub async fn measure(w: &Workload, run: &mut Run) {
    if !w.options.runs_phase("logout") {
        return;
    }
    let window = w.long_window();
    let (mut logouts, cpu) = tokio::join!(logouts(w, window), w.cpu.during(window));
    run.other_load(cpu.other);
    run.figures.logouts = logouts.ok;
    run.figures.logout_p50_ms = logouts.percentile_ms(0.50);
    run.figures.logout_p99_ms = logouts.percentile_ms(0.99);
    run.note("logout", &logouts);
}

/// Each client in a loop: `POST /login` (not timed), then `POST /logout` of that session.
async fn logouts(w: &Workload, window: Window) -> Tally {
    let login: reqwest::Url = format!("{}/login", w.authd).parse().expect("URL");
    let url: reqwest::Url = format!("{}/logout", w.authd).parse().expect("URL");
    let workers = w.login_emails.iter().map(|email| {
        let (login, url) = (login.clone(), url.clone());
        let body = json!({"email": email, "password": PASSWORD});
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(client) = client() else {
                return tally;
            };
            while window.is_open() {
                let Some(access) = token_field(&client, &login, &body, "access_token").await else {
                    *tally
                        .errors
                        .entry("login before logout".into())
                        .or_insert(0) += 1;
                    continue;
                };
                let began = Instant::now();
                let outcome = match client.post(url.clone()).bearer_auth(access).send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => Outcome::Ok,
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
