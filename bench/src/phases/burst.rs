//! The `burst` check: many logins at once, past authd's hashing queue, which must refuse the
//! excess at once with 503.

use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use crate::accounts::PASSWORD;
use crate::http::client;
use crate::tally::Tally;
use crate::workload::{Run, Workload};

/// Logins sent at once by the burst check: more than authd's hashing threads plus its default
/// queue limit (`password.max_queue`, default 32) on any machine with fewer than 64 cores.
pub const BURST_LOGINS: usize = 96;

pub async fn measure(w: &Workload, run: &mut Run) {
    if !w.options.runs_phase("burst") {
        return;
    }
    let (ok, refused, refusal_ms, other) = burst(w, BURST_LOGINS).await;
    run.figures.burst_ok = ok;
    run.figures.burst_refused = refused;
    run.figures.burst_refusal_p50_ms = refusal_ms;
    let mut burst = Tally::default();
    if other > 0 {
        burst.errors.insert("not 200 or 503".into(), other);
    }
    run.note("burst", &burst);
}

/// Many logins at once, past the hashing queue: the excess must be refused quickly with
/// 503, not queued without bound. Returns (answered, refused, median refusal ms, other).
async fn burst(w: &Workload, count: usize) -> (u64, u64, f64, u64) {
    let url: reqwest::Url = format!("{}/login", w.authd).parse().expect("URL");
    let mut tasks = tokio::task::JoinSet::new();
    let gate = Arc::new(tokio::sync::Barrier::new(count));
    for i in 0..count {
        let url = url.clone();
        let gate = gate.clone();
        let body = json!({
            "email": w.login_emails[i % w.login_emails.len()],
            "password": PASSWORD
        });
        tasks.spawn(async move {
            let client = client().ok()?;
            gate.wait().await;
            let began = Instant::now();
            let status = client.post(url).json(&body).send().await.ok()?.status();
            Some((status, began.elapsed()))
        });
    }
    let (mut ok, mut refused, mut other) = (0, 0, 0);
    let mut refusals = Tally::default();
    while let Some(result) = tasks.join_next().await {
        match result.ok().flatten() {
            Some((status, _)) if status.is_success() => ok += 1,
            Some((reqwest::StatusCode::SERVICE_UNAVAILABLE, took)) => {
                refused += 1;
                refusals
                    .latencies_us
                    .push(took.as_micros().min(u128::from(u32::MAX)) as u32);
            }
            _ => other += 1,
        }
    }
    (ok, refused, refusals.percentile_ms(0.5), other)
}
