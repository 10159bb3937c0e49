//! The `probe` phase: `GET /users/me` at a fixed pace on an idle authd, the p50/p99 the
//! `mixed` and `register` phases compare with. Its paced load is theirs and `control`'s too.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderValue};

use crate::http::client;
use crate::tally::{Outcome, Tally, Window, error_kind, join_tallies, status_outcome};
use crate::workload::{Run, Workload};

pub async fn measure(w: &Workload, run: &mut Run) {
    if !w.options.runs_phase("probe") {
        return;
    }
    let window = w.long_window();
    let (mut probe, cpu) = tokio::join!(paced_users_me(w, &w.authd, window), w.cpu.during(window));
    run.other_load(cpu.other);
    run.figures.probe_rate = w.options.probe_rate;
    run.figures.probe_idle_p50_ms = probe.percentile_ms(0.50);
    run.figures.probe_idle_p99_ms = probe.percentile_ms(0.99);
    run.note("paced /users/me", &probe);
}

/// `GET /users/me` at a fixed pace (`probe_rate` a second over `probe_connections`), the
/// traffic a busy server keeps serving during a login storm. A request that could not be
/// sent on time because the one before it was slow counts from when it was due, so a
/// stall shows in full (no coordinated omission); timer lateness on our side does not.
pub async fn paced_users_me(w: &Workload, base: &str, window: Window) -> Tally {
    let url: reqwest::Url = format!("{base}/users/me").parse().expect("URL");
    let auth = HeaderValue::from_str(&format!("Bearer {}", w.token)).expect("header");
    let connections = w.options.probe_connections;
    let interval = Duration::from_secs_f64(connections as f64 / w.options.probe_rate);
    let origin = Instant::now();
    let workers = (0..connections).map(|c| {
        let (url, auth) = (url.clone(), auth.clone());
        let offset = interval.mul_f64(c as f64 / connections as f64);
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(client) = client() else {
                return tally;
            };
            let mut due = origin + offset;
            while due < window.end {
                tokio::time::sleep_until(due.into()).await;
                let now = Instant::now();
                // Behind schedule only if the previous answer came after this one was due.
                let began = if now > due + Duration::from_millis(2) {
                    due
                } else {
                    now
                };
                let response = client
                    .get(url.clone())
                    .header(AUTHORIZATION, auth.clone())
                    .send()
                    .await;
                let outcome = match response {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(_) => Outcome::Ok,
                        Err(_) => Outcome::Failed("body".into()),
                    },
                    Ok(r) => status_outcome(r.status()),
                    Err(err) => Outcome::Failed(error_kind(&err)),
                };
                window.record(&mut tally, began, outcome);
                due += interval;
            }
            tally
        })
    });
    join_tallies(workers).await
}
