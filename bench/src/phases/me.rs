//! The `me` and `ceiling` phases: closed-loop `GET /users/me` on authd and on the ceiling,
//! in alternating one-second slices, with the CPU each process spends per answer.

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderValue};

use crate::cpu::CpuUse;
use crate::http::client;
use crate::tally::{Outcome, Tally, Window, error_kind, join_tallies, status_outcome};
use crate::workload::{Run, Workload};

pub async fn measure(w: &Workload, run: &mut Run) {
    let o = &w.options;
    // authd and the ceiling in alternating one-second slices (authd first, then the ceiling
    // first, and so on), so a drift of the machine's speed over the run weighs on both alike
    // instead of on whichever had the worse window.
    let slices = o.secs;
    let (mut me, mut ceiling) = (Sample::default(), Sample::default());
    for slice in 0..slices {
        let order = if slice % 2 == 0 {
            [
                (&w.authd, &mut me, "me"),
                (&w.ceiling, &mut ceiling, "ceiling"),
            ]
        } else {
            [
                (&w.ceiling, &mut ceiling, "ceiling"),
                (&w.authd, &mut me, "me"),
            ]
        };
        for (base, sample, phase) in order {
            if o.runs_phase(phase) {
                let window = Window::after(Duration::from_millis(250), Duration::from_secs(1));
                let (tally, cpu) = tokio::join!(users_me(w, base, window), w.cpu.during(window));
                sample.add(tally, cpu, window.length());
            }
        }
    }
    if o.runs_phase("me") {
        let f = &mut run.figures;
        (f.me_cpu_us, f.me_per_sec, f.me_p50_ms, f.me_p99_ms) = me.summary(w.cpu.authd);
        run.other_load(me.other());
        run.note("/users/me", &me.tally);
    }
    if o.runs_phase("ceiling") {
        let f = &mut run.figures;
        (
            f.ceiling_cpu_us,
            f.ceiling_per_sec,
            f.ceiling_p50_ms,
            f.ceiling_p99_ms,
        ) = ceiling.summary(w.cpu.ceiling);
        run.other_load(ceiling.other());
        run.note("ceiling", &ceiling.tally);
    }
}

/// The closed-loop `/users/me` windows of one server, added up.
#[derive(Default)]
struct Sample {
    tally: Tally,
    cpu: Option<CpuUse>,
    measured: Duration,
}

impl Sample {
    fn add(&mut self, tally: Tally, cpu: CpuUse, length: Duration) {
        self.tally.merge(tally);
        self.measured += length;
        self.cpu = Some(match self.cpu.take() {
            None => cpu,
            Some(mut sum) => {
                for (s, more) in sum.seconds.iter_mut().zip(cpu.seconds) {
                    *s += more;
                }
                sum.other = sum.other.max(cpu.other);
                sum
            }
        });
    }

    /// CPU per answer (`server`, PostgreSQL, load generator), answers/s, p50 and p99 (ms).
    fn summary(&mut self, server: u32) -> ([f64; 3], f64, f64, f64) {
        let cpu_us = self
            .cpu
            .as_ref()
            .map_or([f64::NAN; 3], |cpu| cpu.per_request(self.tally.ok, server));
        let per_sec = self.tally.ok as f64 / self.measured.as_secs_f64().max(f64::MIN_POSITIVE);
        let p50 = self.tally.percentile_ms(0.50);
        (cpu_us, per_sec, p50, self.tally.percentile_ms(0.99))
    }

    /// The largest share of the machine other processes took in one of the windows.
    fn other(&self) -> f64 {
        self.cpu.as_ref().map_or(0.0, |cpu| cpu.other)
    }
}

/// `GET /users/me` with the access token over `me_connections` keep-alive connections.
async fn users_me(w: &Workload, base: &str, window: Window) -> Tally {
    let url: reqwest::Url = format!("{base}/users/me").parse().expect("a valid URL");
    let auth = HeaderValue::from_str(&format!("Bearer {}", w.token)).expect("header");
    let workers = (0..w.options.me_connections).map(|_| {
        let url = url.clone();
        let auth = auth.clone();
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let Ok(client) = client() else {
                return tally;
            };
            while window.is_open() {
                let began = Instant::now();
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
            }
            tally
        })
    });
    join_tallies(workers).await
}
