//! The `login` phase: `POST /login` per second at saturation, one closed loop per client. Its
//! loop is also the login storm of the `mixed` and `control` phases.

use std::time::Instant;

use serde_json::{Value, json};

use crate::accounts::PASSWORD;
use crate::http::client;
use crate::tally::{Outcome, Tally, Window, error_kind, join_tallies, status_outcome};
use crate::workload::{Run, Workload};

pub async fn measure(w: &Workload, run: &mut Run) {
    if !w.options.runs_phase("login") {
        return;
    }
    let window = w.long_window();
    let (logins, cpu) = tokio::join!(logins(w, window), w.cpu.during(window));
    run.other_load(cpu.other);
    run.figures.logins_per_sec = logins.per_sec(&window);
    run.figures.login_refusals = logins.refused;
    run.note("/login", &logins);
}

/// `POST /login` in a closed loop, one account per client.
pub async fn logins(w: &Workload, window: Window) -> Tally {
    let url: reqwest::Url = format!("{}/login", w.authd).parse().expect("URL");
    let workers = w.login_emails.iter().map(|email| {
        let url = url.clone();
        let body = json!({"email": email, "password": PASSWORD});
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(client) = client() else {
                return tally;
            };
            while window.is_open() {
                let began = Instant::now();
                let outcome = match client.post(url.clone()).json(&body).send().await {
                    Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                        Ok(v) if v["access_token"].is_string() => Outcome::Ok,
                        _ => Outcome::Failed("login body".into()),
                    },
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
