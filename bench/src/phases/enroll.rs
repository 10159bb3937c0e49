//! The `enroll` phase: `POST /mfa/totp/enroll` in a closed loop, each client with a fresh
//! login of its own account: answers per second, p50, p99, authd's CPU per answer, and what
//! drawing the QR code (an SVG per answer) costs of it.
//!
//! Enrolling again before confirming replaces the waiting enrolment, so one account per client
//! is enrolled over and over; nothing is ever confirmed, and the accounts go after the phase.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::Value;

use crate::authenticator::fresh_access_token;
use crate::http::client;
use crate::tally::{Outcome, Tally, Window, error_kind, join_tallies, status_outcome};
use crate::workload::{Run, Workload};

pub async fn measure(w: &Workload, run: &mut Run) -> Result<()> {
    if !w.options.runs_phase("enroll") {
        return Ok(());
    }
    let prefix = format!("enroll-{:08x}-", rand::random::<u32>());
    let clients = w.options.login_connections;
    w.database
        .add_accounts(&prefix, clients, &w.stored_hash)
        .await?;
    // One login per client, untimed (bcrypt), just before the window: the window (at most
    // 122 s) ends well inside `session.fresh_login_secs` (300 s).
    let setup = client()?;
    let mut tokens = Vec::with_capacity(clients);
    for i in 1..=clients {
        let email = format!("{prefix}{i}@bench.test");
        tokens.push(fresh_access_token(&setup, &w.authd, &email).await?);
    }
    let window = w.long_window();
    let ((mut enrolments, sample), cpu) =
        tokio::join!(enrolments(w, window, &tokens), w.cpu.during(window));
    run.other_load(cpu.other);
    w.database.remove_accounts(&prefix).await?;

    let f = &mut run.figures;
    f.enroll_per_sec = enrolments.per_sec(&window);
    f.enroll_p50_ms = enrolments.percentile_ms(0.50);
    f.enroll_p99_ms = enrolments.percentile_ms(0.99);
    f.enroll_cpu_us = cpu.per_request(enrolments.ok, w.cpu.authd);
    run.note("enroll", &enrolments);
    // What authd draws per answer, drawn here on one core while authd is idle: an URI of the
    // phase's own answers, so the same size of QR code.
    if let Some((uri, svg_bytes)) = sample {
        let length = Duration::from_secs(w.options.secs).min(Duration::from_secs(2));
        run.figures.enroll_qr_us = tokio::task::spawn_blocking(move || qr_cost(&uri, length))
            .await
            .context("the QR drawing failed")??;
        run.figures.enroll_svg_bytes = svg_bytes;
    }
    Ok(())
}

/// One closed loop per client on its own fresh access token. Each answer must be a 200 with a
/// secret, an otpauth URI and an SVG. Also returns one answer's URI and the SVG's size.
async fn enrolments(
    w: &Workload,
    window: Window,
    tokens: &[String],
) -> (Tally, Option<(String, usize)>) {
    let url: reqwest::Url = format!("{}/mfa/totp/enroll", w.authd).parse().expect("URL");
    let sample = std::sync::Arc::new(std::sync::OnceLock::new());
    let workers = tokens.iter().map(|token| {
        let (url, sample) = (url.clone(), sample.clone());
        let auth = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(client) = client() else {
                return tally;
            };
            while window.is_open() {
                let began = Instant::now();
                let response = client
                    .post(url.clone())
                    .header(AUTHORIZATION, auth.clone())
                    .send()
                    .await;
                let outcome = match response {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => {
                        match r.json::<Value>().await {
                            Ok(v) => match (v["otpauth_uri"].as_str(), v["qr_svg"].as_str()) {
                                (Some(uri), Some(svg))
                                    if v["secret"].is_string() && svg.starts_with("<?xml") =>
                                {
                                    let _ = sample.set((uri.to_owned(), svg.len()));
                                    Outcome::Ok
                                }
                                _ => Outcome::Failed("enroll body".into()),
                            },
                            Err(_) => Outcome::Failed("enroll body".into()),
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
    let tally = join_tallies(workers).await;
    (tally, sample.get().cloned())
}

/// Microseconds per QR code SVG of `uri` drawn with authd's own `qr_svg`, on this thread.
fn qr_cost(uri: &str, length: Duration) -> Result<f64> {
    let began = Instant::now();
    let mut drawn = 0u64;
    while drawn < 10 || (began.elapsed() < length && drawn < 1_000_000) {
        let svg = authd::token::totp::qr_svg(uri).context("the URI does not fit a QR code")?;
        std::hint::black_box(svg);
        drawn += 1;
    }
    Ok(began.elapsed().as_secs_f64() * 1e6 / drawn as f64)
}
