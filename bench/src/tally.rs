//! What load workers count: requests that finished inside a measurement window, their
//! latencies and their failures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Requests that finished inside a measurement window.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub refused: u64,
    pub latencies_us: Vec<u32>,
    /// When each successful request finished.
    pub finished: Vec<Instant>,
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.latencies_us.extend(other.latencies_us);
        self.finished.extend(other.finished);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
    }

    /// Successful requests per second. With many answers, the count over the window; with few
    /// slow ones (logins), the intervals between the first and last answer inside it, which a
    /// count would quantise by up to one request per client at each edge of the window.
    pub fn per_sec(&self, window: &Window) -> f64 {
        if self.finished.len() < 2 || self.ok >= 1000 {
            return self.ok as f64 / window.length().as_secs_f64();
        }
        let first = self.finished.iter().min().expect("two or more");
        let last = self.finished.iter().max().expect("two or more");
        let span = (*last - *first).as_secs_f64();
        if span <= 0.0 {
            return self.ok as f64 / window.length().as_secs_f64();
        }
        (self.finished.len() - 1) as f64 / span
    }

    /// The p-quantile of the successful requests' latency, in milliseconds (nearest rank).
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let rank = ((p * self.latencies_us.len() as f64).ceil() as usize).max(1);
        f64::from(self.latencies_us[rank - 1]) / 1000.0
    }
}

/// A warm-up, then a measurement window; workers stop starting requests at its end.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn after(warmup: Duration, length: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + length,
        }
    }

    pub fn length(&self) -> Duration {
        self.end - self.start
    }

    pub fn is_open(&self) -> bool {
        Instant::now() < self.end
    }

    /// Records one request if it finished inside the window. (Counting completions, not
    /// requests wholly inside, keeps slow requests such as logins from being undercounted
    /// at the window's edges.)
    pub fn record(&self, tally: &mut Tally, began: Instant, outcome: Outcome) {
        let ended = Instant::now();
        if ended < self.start || ended > self.end {
            return;
        }
        match outcome {
            Outcome::Ok => {
                tally.ok += 1;
                tally.finished.push(ended);
                let micros = (ended - began).as_micros().min(u128::from(u32::MAX)) as u32;
                tally.latencies_us.push(micros);
            }
            Outcome::Refused => {
                tally.refused += 1;
                *tally.errors.entry("503".into()).or_insert(0) += 1;
            }
            Outcome::Failed(what) => *tally.errors.entry(what).or_insert(0) += 1,
        }
    }
}

/// How one request ended.
pub enum Outcome {
    Ok,
    Refused,
    Failed(String),
}

/// A status that is not the success a loop expects: a refusal (503) or a failure.
pub fn status_outcome(status: reqwest::StatusCode) -> Outcome {
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        Outcome::Refused
    } else {
        Outcome::Failed(status.as_u16().to_string())
    }
}

/// What kind of transport error ended a request, for the error counts.
pub fn error_kind(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timeout".into()
    } else if err.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

/// The tallies of a phase's workers, added up; a worker that panicked counts as an error.
pub async fn join_tallies(workers: impl Iterator<Item = tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for worker in workers.collect::<Vec<_>>() {
        match worker.await {
            Ok(tally) => total.merge(tally),
            Err(_) => *total.errors.entry("worker panicked".into()).or_insert(0) += 1,
        }
    }
    total
}
