//! The `forgot` phase: `POST /password/forgot` in a closed loop, alternating an address that
//! has an account with one that has none; answers per second, p50 and p99 of each, and what
//! authd's background work did with them.
//!
//! The answer must not tell the two apart: the same 202, in about the same time. Both kinds go
//! through the same connections in turn, so whatever the background work of one costs weighs
//! on the other's latency alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use crate::http::{account_mails, client};
use crate::tally::{Outcome, Tally, Window, error_kind, status_outcome};
use crate::workload::{Run, Workload};

/// Accounts made for each run, per second of its window (warm-up included): more than the
/// known addresses a run asks for at thousands of answers a second, so each is asked once and
/// the per-account email limits (one reset email per `verification.resend_interval_secs`)
/// never turn a known address into the cheap path. Past the pool, addresses are asked again
/// (and the background reports them `limited`).
const ACCOUNTS_PER_SEC: u64 = 12_000;

/// The longest the phase waits for authd's background work to account for every request.
const SETTLE: Duration = Duration::from_secs(30);

pub async fn measure(w: &Workload, run: &mut Run) -> Result<()> {
    if !w.options.runs_phase("forgot") {
        return Ok(());
    }
    // A prefix of its own per run: the accounts of an earlier run are gone, and with them
    // any doubt about their limits.
    let prefix = format!("forgot-{:08x}-", rand::random::<u32>());
    let pool = usize::try_from(ACCOUNTS_PER_SEC * (2 + 2 * w.options.secs))?;
    w.database
        .add_accounts(&prefix, pool, &w.stored_hash)
        .await?;
    let window = w.long_window();
    let setup = client()?;
    let before = account_mails(&setup, &w.authd, "reset_password").await?;
    let answered = Arc::new(AtomicU64::new(0));
    let ((mut known, mut unknown), cpu) = tokio::join!(
        forgets(w, window, &prefix, pool, &answered),
        w.cpu.during(window)
    );
    run.other_load(cpu.other);
    let mails = settled_mails(&setup, w, &before, answered.load(Ordering::Relaxed)).await?;
    w.database.remove_accounts(&prefix).await?;

    let f = &mut run.figures;
    f.forgot_known_per_sec = known.per_sec(&window);
    f.forgot_known_p50_ms = known.percentile_ms(0.50);
    f.forgot_known_p99_ms = known.percentile_ms(0.99);
    f.forgot_unknown_per_sec = unknown.per_sec(&window);
    f.forgot_unknown_p50_ms = unknown.percentile_ms(0.50);
    f.forgot_unknown_p99_ms = unknown.percentile_ms(0.99);
    f.forgot_mails = mails;
    run.note("forgot known", &known);
    run.note("forgot unknown", &unknown);
    Ok(())
}

/// One closed loop per login client: even requests name the next account of the pool, odd ones
/// an address no account has (the same shape and length). Returns (known, unknown).
async fn forgets(
    w: &Workload,
    window: Window,
    prefix: &str,
    pool: usize,
    answered: &Arc<AtomicU64>,
) -> (Tally, Tally) {
    let url: reqwest::Url = format!("{}/password/forgot", w.authd).parse().expect("URL");
    let next_account = Arc::new(AtomicUsize::new(0));
    let workers = (0..w.options.login_connections).map(|worker| {
        let (url, prefix) = (url.clone(), prefix.to_owned());
        let (next_account, answered) = (next_account.clone(), answered.clone());
        tokio::spawn(async move {
            let (mut known, mut unknown) = (Tally::default(), Tally::default());
            let Ok(client) = client() else {
                return (known, unknown);
            };
            let mut n = 0u64;
            while window.is_open() {
                n += 1;
                let has_account = n.is_multiple_of(2);
                let email = if has_account {
                    let i = next_account.fetch_add(1, Ordering::Relaxed) % pool + 1;
                    format!("{prefix}{i}@bench.test")
                } else {
                    format!("{prefix}{worker}x{n}@bench.test")
                };
                let began = Instant::now();
                let outcome = match client
                    .post(url.clone())
                    .json(&json!({ "email": email }))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => match r.bytes().await {
                        Ok(_) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            Outcome::Ok
                        }
                        Err(_) => Outcome::Failed("body".into()),
                    },
                    Ok(r) => status_outcome(r.status()),
                    Err(err) => Outcome::Failed(error_kind(&err)),
                };
                let tally = if has_account {
                    &mut known
                } else {
                    &mut unknown
                };
                window.record(tally, began, outcome);
            }
            (known, unknown)
        })
    });
    let (mut known, mut unknown) = (Tally::default(), Tally::default());
    for worker in workers.collect::<Vec<_>>() {
        match worker.await {
            Ok((k, u)) => {
                known.merge(k);
                unknown.merge(u);
            }
            Err(_) => *known.errors.entry("worker panicked".into()).or_insert(0) += 1,
        }
    }
    (known, unknown)
}

/// authd's reset-email outcomes since `before`, once they account for every answered request
/// (the background work outlives its answer), or after `SETTLE` as they are then.
async fn settled_mails(
    client: &reqwest::Client,
    w: &Workload,
    before: &BTreeMap<String, u64>,
    answered: u64,
) -> Result<BTreeMap<String, u64>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = account_mails(client, &w.authd, "reset_password").await?;
        let delta: BTreeMap<String, u64> = now
            .iter()
            .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        if delta.values().sum::<u64>() >= answered || Instant::now() >= deadline {
            return Ok(delta);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
