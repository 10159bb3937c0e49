//! The `register` phase: the paced `/users/me` of `probe` while registrations with the
//! password policy's worst-case passwords run.

use std::time::Instant;

use serde_json::json;

use crate::http::client;
use crate::phases::probe::paced_users_me;
use crate::tally::{Outcome, Tally, Window, error_kind, join_tallies, status_outcome};
use crate::workload::{Run, Workload};

/// The password policy (zxcvbn) at its most expensive, beside the same paced probe: it runs on
/// the hashing pool, so the probe should not notice more than logins do.
pub async fn measure(w: &Workload, run: &mut Run) {
    if !w.options.runs_phase("register") {
        return;
    }
    let window = w.long_window();
    let (registrations, mut probe, cpu) = tokio::join!(
        registrations(w, window),
        paced_users_me(w, &w.authd, window),
        w.cpu.during(window)
    );
    run.other_load(cpu.other);
    run.figures.registrations_per_sec = registrations.per_sec(&window);
    run.figures.probe_register_p50_ms = probe.percentile_ms(0.50);
    run.figures.probe_register_p99_ms = probe.percentile_ms(0.99);
    run.note("register", &registrations);
    run.note("register paced /users/me", &probe);
}

/// Registrations of new accounts with the passwords the policy check is slowest on
/// (72 bytes of l33t spellings), one closed loop per login client. A refusal by the policy
/// (422) counts as an answer: the check ran either way.
async fn registrations(w: &Workload, window: Window) -> Tally {
    let url: reqwest::Url = format!("{}/register", w.authd).parse().expect("URL");
    let workers = (0..w.options.login_connections).map(|worker| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(client) = client() else {
                return tally;
            };
            let mut n = 0u64;
            while window.is_open() {
                n += 1;
                let email = format!("reg-{worker}-{n}-{}@bench.test", uuid_suffix());
                let body = json!({"email": email, "password": worst_case_password(n)});
                let began = Instant::now();
                let outcome = match client.post(url.clone()).json(&body).send().await {
                    Ok(r)
                        if r.status() == reqwest::StatusCode::CREATED
                            || r.status() == reqwest::StatusCode::UNPROCESSABLE_ENTITY =>
                    {
                        match r.bytes().await {
                            Ok(_) => Outcome::Ok,
                            Err(_) => Outcome::Failed("body".into()),
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

/// 72 bytes that zxcvbn spends the longest on: every character has l33t readings, so the
/// matcher tries every combination of substitutions over every dictionary.
fn worst_case_password(n: u64) -> String {
    const L33T: &[u8] = b"4@8(6#!|1+0$57%2";
    (0..72)
        .map(|i| L33T[(i + n as usize) % L33T.len()] as char)
        .collect()
}

/// A few random hex digits, so registrations of two runs never collide.
fn uuid_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}
