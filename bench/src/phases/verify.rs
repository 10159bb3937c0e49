//! The `verify` phase: `POST /email/verify` with a wrong code for accounts that have a live
//! verification code, in a closed loop: what one guess costs (guesses per second, p50, p99).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Result;
use serde_json::{Value, json};

use crate::http::client;
use crate::tally::{Outcome, Tally, Window, error_kind, join_tallies, status_outcome};
use crate::workload::{Run, Workload};

/// Wrong tries one code takes before it dies: authd's own `MAX_CODE_ATTEMPTS`. Each account is
/// guessed at exactly this many times, so every guess meets a live code with tries left and
/// pays the whole check (the atomic `UPDATE` and the audit event), never the shortcut of a dead
/// one.
const GUESSES_PER_CODE: usize = authd::auth::MAX_CODE_ATTEMPTS as usize;

/// Accounts with a live code made for each run, per second of its window (warm-up included):
/// enough for several thousand guesses a second. A guess past them is counted as an error
/// (`pool used up`), not as a guess.
const ACCOUNTS_PER_SEC: u64 = 3_000;

pub async fn measure(w: &Workload, run: &mut Run) -> Result<()> {
    if !w.options.runs_phase("verify") {
        return Ok(());
    }
    let prefix = format!("verify-{:08x}-", rand::random::<u32>());
    let pool = usize::try_from(ACCOUNTS_PER_SEC * (2 + 2 * w.options.secs))?;
    w.database
        .add_accounts(&prefix, pool, &w.stored_hash)
        .await?;
    w.database.add_verification_codes(&prefix).await?;
    let window = w.long_window();
    let (mut guesses, cpu) = tokio::join!(guesses(w, window, &prefix, pool), w.cpu.during(window));
    run.other_load(cpu.other);
    w.database.remove_accounts(&prefix).await?;
    run.figures.verify_guesses_per_sec = guesses.per_sec(&window);
    run.figures.verify_p50_ms = guesses.percentile_ms(0.50);
    run.figures.verify_p99_ms = guesses.percentile_ms(0.99);
    run.note("verify", &guesses);
    Ok(())
}

/// One closed loop per login client: a random six-digit code for the next account's address,
/// each account `GUESSES_PER_CODE` times. The answer must be 400 `invalid_code`. (One guess in a
/// million would match a real code; these codes' stored hashes are random, so none does.)
async fn guesses(w: &Workload, window: Window, prefix: &str, pool: usize) -> Tally {
    let url: reqwest::Url = format!("{}/email/verify", w.authd).parse().expect("URL");
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..w.options.login_connections).map(|_| {
        let (url, prefix, next) = (url.clone(), prefix.to_owned(), next.clone());
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(client) = client() else {
                return tally;
            };
            while window.is_open() {
                let account = next.fetch_add(1, Ordering::Relaxed) / GUESSES_PER_CODE + 1;
                if account > pool {
                    window.record(
                        &mut tally,
                        Instant::now(),
                        Outcome::Failed("pool used up".into()),
                    );
                    break;
                }
                let body = json!({
                    "email": format!("{prefix}{account}@bench.test"),
                    "code": format!("{:06}", rand::random::<u32>() % 1_000_000),
                });
                let began = Instant::now();
                let outcome = match client.post(url.clone()).json(&body).send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::BAD_REQUEST => {
                        match r.json::<Value>().await {
                            Ok(v) if v["code"] == "invalid_code" => Outcome::Ok,
                            _ => Outcome::Failed("400 body".into()),
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
