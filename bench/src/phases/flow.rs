//! The `flow` phase: the full two-factor login per second (login, the code from the SMTP sink
//! in this process, `POST /login/otp`), one closed loop per two-factor account.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::smtp::MailSink;

use crate::accounts::PASSWORD;
use crate::http::client;
use crate::tally::{Outcome, Tally, Window, error_kind, join_tallies, status_outcome};
use crate::workload::{Run, Workload};

pub async fn measure(w: &Workload, run: &mut Run) {
    if !w.options.runs_phase("flow") {
        return;
    }
    let window = w.long_window();
    let (flows, cpu) = tokio::join!(flows(w, window), w.cpu.during(window));
    run.other_load(cpu.other);
    run.figures.flows_per_sec = flows.per_sec(&window);
    run.note("2FA flow", &flows);
}

/// The whole second step: login, the code from the mail sink, `POST /login/otp`.
async fn flows(w: &Workload, window: Window) -> Tally {
    let login: reqwest::Url = format!("{}/login", w.authd).parse().expect("URL");
    let otp: reqwest::Url = format!("{}/login/otp", w.authd).parse().expect("URL");
    let workers = w.flow_emails.iter().map(|email| {
        let (login, otp, sink) = (login.clone(), otp.clone(), w.sink.clone());
        let email = email.clone();
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(client) = client() else {
                return tally;
            };
            while window.is_open() {
                let began = Instant::now();
                let outcome = one_flow(&client, &login, &otp, &sink, &email).await;
                window.record(&mut tally, began, outcome);
            }
            tally
        })
    });
    join_tallies(workers).await
}

async fn one_flow(
    client: &reqwest::Client,
    login: &reqwest::Url,
    otp: &reqwest::Url,
    sink: &MailSink,
    email: &str,
) -> Outcome {
    sink.forget(email);
    let body = json!({"email": email, "password": PASSWORD});
    let challenge = match client.post(login.clone()).json(&body).send().await {
        Ok(r) if r.status().is_success() => match r.json::<Value>().await {
            Ok(v) => match v["challenge_token"].as_str() {
                Some(token) => token.to_owned(),
                None => return Outcome::Failed("no challenge".into()),
            },
            Err(_) => return Outcome::Failed("login body".into()),
        },
        Ok(r) => return status_outcome(r.status()),
        Err(err) => return Outcome::Failed(error_kind(&err)),
    };
    // authd answers only after the relay accepted the message, so the code is already here.
    let Some(code) = sink.take_code(email, Duration::from_secs(5)).await else {
        return Outcome::Failed("no code mailed".into());
    };
    match client
        .post(otp.clone())
        .bearer_auth(challenge)
        .json(&json!({"otp": code}))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => match r.json::<Value>().await {
            Ok(v) if v["access_token"].is_string() => Outcome::Ok,
            _ => Outcome::Failed("otp body".into()),
        },
        Ok(r) => status_outcome(r.status()),
        Err(err) => Outcome::Failed(error_kind(&err)),
    }
}
