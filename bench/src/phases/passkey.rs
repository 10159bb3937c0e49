//! The `passkey` phase: whole passkey sign-ins in a closed loop, one account with one passkey
//! per client: sign-ins per second, p50 and p99 of the two requests, authd's CPU per sign-in,
//! and what the client's own signing costs.
//!
//! A sign-in is what a browser does with a discoverable passkey: `POST /login/passkey/options`
//! (no token: a ceremony and its challenge), the authenticator's assertion over that challenge
//! (`testkit::passkey::SoftAuthenticator`, an ECDSA P-256 signature made in this process), and
//! `POST /login/passkey`, which must answer 200 with an access and a refresh token. The latency
//! is the two requests' time alone; the signing between them is not counted in it. It is in
//! the rate, though: each client signs before it sends the second request, on the same machine
//! as authd, so the load generator's CPU per sign-in (and the signing alone, measured apart on
//! one core after the window) is printed beside authd's.
//!
//! The accounts are inserted by SQL and each turns a passkey on through the API (a password
//! login, the registration ceremony) and signs in once, untimed; they go after the phase.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::passkey::SoftAuthenticator;

use crate::authenticator::{fresh_access_token, post_expecting, post_ok};
use crate::http::client;
use crate::tally::{Outcome, Tally, Window, error_kind, join_tallies, status_outcome};
use crate::workload::{Run, Workload};

pub async fn measure(w: &Workload, run: &mut Run) -> Result<()> {
    if !w.options.runs_phase("passkey") {
        return Ok(());
    }
    let origin = browser_origin(&w.authd)?;
    let prefix = format!("passkey-{:08x}-", rand::random::<u32>());
    let clients = w.options.login_connections;
    w.database
        .add_accounts(&prefix, clients, &w.stored_hash)
        .await?;
    // Untimed: each account registers a passkey and signs in with it once, all at once (one
    // bcrypt login each, for the access token the registration needs).
    let mut setups = tokio::task::JoinSet::new();
    for i in 1..=clients {
        let (base, origin) = (w.authd.clone(), origin.clone());
        let email = format!("{prefix}{i}@bench.test");
        setups.spawn(async move { passkey_for(&base, &origin, &email).await });
    }
    let mut authenticators = Vec::with_capacity(clients);
    let mut sample = None;
    while let Some(done) = setups.join_next().await {
        let (authenticator, options) = done.context("a passkey setup task")??;
        sample.get_or_insert_with(|| (authenticator.clone(), options));
        authenticators.push(authenticator);
    }
    let window = w.long_window();
    let (mut sign_ins, cpu) = tokio::join!(
        sign_ins(w, window, &origin, authenticators),
        w.cpu.during(window)
    );
    run.other_load(cpu.other);
    w.database.remove_accounts(&prefix).await?;

    let f = &mut run.figures;
    f.passkey_per_sec = sign_ins.per_sec(&window);
    f.passkey_p50_ms = sign_ins.percentile_ms(0.50);
    f.passkey_p99_ms = sign_ins.percentile_ms(0.99);
    f.passkey_cpu_us = cpu.per_request(sign_ins.ok, w.cpu.authd);
    run.note("passkey", &sign_ins);
    // The client's signing alone, here on one core while authd is idle: a clone of one
    // authenticator answering the options of its setup sign-in (nothing is sent).
    if let Some((authenticator, options)) = sample {
        let length = Duration::from_secs(w.options.secs).min(Duration::from_secs(2));
        run.figures.passkey_sign_us = tokio::task::spawn_blocking(move || {
            signing_cost(authenticator, &options, &origin, length)
        })
        .await
        .context("the signing measurement failed")??;
    }
    Ok(())
}

/// The origin a browser has on authd's page: WebAuthn takes no IP address, so authd binds its
/// passkeys to `localhost` when its public URL is a loopback address (the bench sets none:
/// `http.addr`, 127.0.0.1), and the page is `http://localhost:PORT`.
fn browser_origin(base: &str) -> Result<String> {
    let mut url = reqwest::Url::parse(base).context("authd's base URL")?;
    url.set_host(Some("localhost"))
        .context("authd's base URL cannot name localhost")?;
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Turns a passkey on for an account without one, as a user does (a fresh login, the
/// registration ceremony), then signs in with it once to check the whole path. Returns the
/// authenticator and the options of that sign-in.
async fn passkey_for(base: &str, origin: &str, email: &str) -> Result<(SoftAuthenticator, Value)> {
    let client = client()?;
    let token = fresh_access_token(&client, base, email).await?;
    let options = post_ok(
        &client,
        format!("{base}/passkeys/register/options"),
        Some(&token),
        &json!({}),
    )
    .await?;
    ensure!(
        options["publicKey"]["rp"]["id"] == "localhost",
        "{email}: passkeys are not bound to localhost: {options}"
    );
    let mut authenticator = SoftAuthenticator::new();
    let credential = authenticator
        .create(&options["publicKey"], origin)
        .with_context(|| format!("{email}: the authenticator refused to register"))?;
    post_expecting(
        &client,
        format!("{base}/passkeys/register"),
        Some(&token),
        &json!({"ceremony": options["ceremony"], "credential": credential, "name": "Bench"}),
        StatusCode::CREATED,
    )
    .await?;
    let options = post_ok(
        &client,
        format!("{base}/login/passkey/options"),
        None,
        &json!({}),
    )
    .await?;
    let credential = authenticator
        .get(&options["publicKey"], origin)
        .with_context(|| format!("{email}: the authenticator refused to sign"))?;
    let signed_in = post_ok(
        &client,
        format!("{base}/login/passkey"),
        None,
        &json!({"ceremony": options["ceremony"], "credential": credential}),
    )
    .await?;
    ensure!(
        signed_in["access_token"].is_string() && signed_in["refresh_token"].is_string(),
        "{email}: the passkey sign-in answered no tokens: {signed_in}"
    );
    Ok((authenticator, options))
}

/// One closed loop per client with its own authenticator (so its own signature counter).
async fn sign_ins(
    w: &Workload,
    window: Window,
    origin: &str,
    authenticators: Vec<SoftAuthenticator>,
) -> Tally {
    let options: reqwest::Url = format!("{}/login/passkey/options", w.authd)
        .parse()
        .expect("URL");
    let finish: reqwest::Url = format!("{}/login/passkey", w.authd).parse().expect("URL");
    let workers = authenticators.into_iter().map(|mut authenticator| {
        let (options, finish, origin) = (options.clone(), finish.clone(), origin.to_owned());
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(client) = client() else {
                return tally;
            };
            while window.is_open() {
                let (outcome, began) =
                    sign_in(&client, &options, &finish, &mut authenticator, &origin).await;
                window.record(&mut tally, began, outcome);
            }
            tally
        })
    });
    join_tallies(workers).await
}

/// One whole sign-in. Returns how it ended and when, for the tally, it began: the second
/// request's start moved back by the first request's time, so its latency is the two
/// requests' time without the signing between them.
async fn sign_in(
    client: &reqwest::Client,
    options_url: &reqwest::Url,
    finish_url: &reqwest::Url,
    authenticator: &mut SoftAuthenticator,
    origin: &str,
) -> (Outcome, Instant) {
    let began = Instant::now();
    let options = match client
        .post(options_url.clone())
        .json(&json!({}))
        .send()
        .await
    {
        Ok(r) if r.status() == StatusCode::OK => match r.json::<Value>().await {
            Ok(v) if v["ceremony"].is_string() => v,
            _ => return (Outcome::Failed("options body".into()), began),
        },
        Ok(r) => return (status_outcome(r.status()), began),
        Err(err) => return (Outcome::Failed(error_kind(&err)), began),
    };
    let asked = began.elapsed();
    let Ok(credential) = authenticator.get(&options["publicKey"], origin) else {
        return (Outcome::Failed("authenticator".into()), began);
    };
    let body = json!({"ceremony": options["ceremony"], "credential": credential});
    let sent = Instant::now();
    let outcome = match client.post(finish_url.clone()).json(&body).send().await {
        Ok(r) if r.status() == StatusCode::OK => match r.json::<Value>().await {
            Ok(v) if v["access_token"].is_string() && v["refresh_token"].is_string() => Outcome::Ok,
            _ => Outcome::Failed("sign-in body".into()),
        },
        Ok(r) if r.status() == StatusCode::UNAUTHORIZED => match r.json::<Value>().await {
            Ok(v) => Outcome::Failed(format!("401 {}", v["code"].as_str().unwrap_or("body"))),
            Err(_) => Outcome::Failed("401 body".into()),
        },
        Ok(r) => status_outcome(r.status()),
        Err(err) => Outcome::Failed(error_kind(&err)),
    };
    (outcome, sent.checked_sub(asked).unwrap_or(sent))
}

/// Microseconds per assertion the soft authenticator signs for `options`, on this thread.
fn signing_cost(
    mut authenticator: SoftAuthenticator,
    options: &Value,
    origin: &str,
    length: Duration,
) -> Result<f64> {
    let public_key = &options["publicKey"];
    let began = Instant::now();
    let mut signed = 0u64;
    while signed < 10 || (began.elapsed() < length && signed < 1_000_000) {
        let credential = authenticator
            .get(public_key, origin)
            .context("the authenticator refused to sign")?;
        std::hint::black_box(credential);
        signed += 1;
    }
    Ok(began.elapsed().as_secs_f64() * 1e6 / signed as f64)
}
