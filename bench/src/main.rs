//! `make bench`: starts authd on a throwaway PostgreSQL database and measures, in one run, what
//! limits a login server (bcrypt) against what it must still do quickly (`/users/me`).
//!
//! A crate of its own in the workspace: the server carries none of its code or dependencies.
//! Everything is loopback, every loop is bounded in count and time, and a watchdog ends the run
//! (and the processes it started) if it ever outlives `--max-secs`.
//!
//! The figures:
//! 1. the bcrypt bound: one thread per core in this process, bcrypt verify at authd's cost;
//! 2. `POST /login` per second at saturation, and its ratio to the bound;
//! 3. `GET /users/me` per second and p50/p99 latency, idle; beside it the ceiling: a bare axum
//!    route (in a subprocess of this binary, on the same runtime and pool settings as authd)
//!    that calls authd's own store for the same user and session and returns the same JSON
//!    without checking any token,
//!    measured in one-second windows alternating with authd's;
//! 4. `/users/me` p99 at a fixed pace (1000 req/s by default: steady traffic, not a flood)
//!    while closed-loop logins saturate the CPU, against the p99 of the same pace when idle;
//! 5. the full two-factor flow (login, code from the SMTP sink in this process, `/login/otp`)
//!    per second;
//! 6. authd's resident memory after the run;
//! 7. `/users/me` p99 at the same pace while registrations with the policy's worst-case
//!    passwords run;
//! 8. `POST /token/refresh` per second, p50/p99, each client rotating its own session's chain;
//! 9. `POST /logout` latency, each logout after an untimed login.
//!
//! And what explains them: the CPU each process (authd, the ceiling, PostgreSQL, this load
//! generator) spends per `/users/me` answer, read from /proc; a control that sends the same
//! paced load to the ceiling, idle and during the same login storm (the ceiling hashes nothing,
//! so its p99 rise is the machine's); a burst of logins past the hashing queue, which must be
//! refused at once with 503; and how much CPU other processes took, which marks a disturbed run.
//! authd and the ceiling run in sessions of their own, as services do, so the scheduler's
//! autogroups treat them, PostgreSQL and the load generator as separate programs.

mod accounts;
mod ceiling;
mod cpu;
mod database;
mod figures;
mod http;
mod options;
mod process;
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::{Parser, Subcommand};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};
use testkit::smtp::{Behaviour, MailSink};

use crate::accounts::{PASSWORD, login_for_token, register, token_field};
use crate::ceiling::Ceiling;
use crate::cpu::{CpuMeter, CpuUse, Machine};
use crate::database::Database;
use crate::figures::{Figures, TOKEN_ALGORITHMS, TokenCost, median_figures};
use crate::http::{Http, client};
use crate::options::{Flags, Options};
use crate::process::{Authd, watchdog};
use crate::report::print_table;

/// Logins sent at once by the burst check: more than authd's hashing threads plus its default
/// queue limit (`password.max_queue`, default 32) on any machine with fewer than 64 cores.
const BURST_LOGINS: usize = 96;

fn main() -> ExitCode {
    authd::install_crypto_provider();
    let cli = Cli::parse();
    if let Some(Mode::CeilingServer(args)) = cli.mode {
        return match ceiling::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("ceiling-server: error: {err:#}");
                ExitCode::from(2)
            }
        };
    }
    let options = match cli.options.checked() {
        Ok(options) => options,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    watchdog::arm(Duration::from_secs(options.max_secs));
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = bench(&options) => result,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    watchdog::stop_children();
    match outcome {
        Ok(passed) if passed || !options.strict => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// The load benchmark of authd. Needs DATABASE_URL: an admin URL of a PostgreSQL server on this
/// machine (`make bench` starts a throwaway one); creates and drops its own database there.
#[derive(Debug, Parser)]
#[command(name = "authd-bench", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    options: Flags,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Internal: the ceiling route, run by the bench in a process of its own.
    #[command(hide = true)]
    CeilingServer(ceiling::Args),
}

async fn bench(options: &Options) -> Result<bool> {
    let started = Instant::now();
    let admin_url = std::env::var("DATABASE_URL").context(
        "DATABASE_URL is not set: run `make bench`, or point it at a PostgreSQL admin URL",
    )?;
    ensure!(
        options.authd.is_file(),
        "{} does not exist: build it with `cargo build --release --bin authd`",
        options.authd.display()
    );
    let machine = Machine::read();
    println!("authd-bench: {machine}");
    println!(
        "authd: {} | bcrypt cost {} | pool {} connections | /users/me {} connections, \
         logins {}, 2FA flows {}, paced probe {} req/s on {} | {} run(s) of {} s windows",
        options.authd.display(),
        options.cost,
        options.max_connections,
        options.me_connections,
        options.login_connections,
        options.flow_connections,
        options.probe_rate,
        options.probe_connections,
        options.runs,
        options.secs
    );

    let work_dir = std::env::temp_dir().join(format!("authd-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir).context("cannot create the work directory")?;
    let database = Database::create(&admin_url).await?;
    let result = bench_on(options, &machine, &database, &work_dir).await;
    watchdog::stop_children();
    if let Err(err) = database.drop_it().await {
        eprintln!("warning: could not drop the bench database: {err:#}");
    }
    match &result {
        Ok(_) => {
            let _ = std::fs::remove_dir_all(&work_dir);
        }
        Err(_) => eprintln!("logs kept in {}", work_dir.display()),
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    result
}

async fn bench_on(
    options: &Options,
    machine: &Machine,
    database: &Database,
    work_dir: &Path,
) -> Result<bool> {
    let status = Command::new(&options.authd)
        .args(["migrate", "--database-url", &database.url])
        .current_dir(work_dir)
        .env_remove("DATABASE_URL")
        .output()
        .context("cannot run authd migrate")?;
    ensure!(
        status.status.success(),
        "authd migrate failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );

    let sink = MailSink::start(Behaviour::Accept).await?;
    let authd = Authd::start(options, database, &sink, work_dir).await?;
    let http = Http::new()?;

    // Accounts: one for /users/me, one per login client, one per two-factor flow (a new login
    // retires the user's open challenges, so flows must not share an account).
    let me_email = "me@bench.test".to_owned();
    let login_emails: Vec<String> = (0..options.login_connections)
        .map(|i| format!("login{i}@bench.test"))
        .collect();
    let flow_emails: Vec<String> = (0..options.flow_connections)
        .map(|i| format!("flow{i}@bench.test"))
        .collect();
    let setup = Instant::now();
    let mut accounts: Vec<(String, bool)> = vec![(me_email.clone(), false)];
    accounts.extend(login_emails.iter().map(|e| (e.clone(), false)));
    accounts.extend(flow_emails.iter().map(|e| (e.clone(), true)));
    for batch in accounts.chunks(8) {
        let mut registrations = tokio::task::JoinSet::new();
        for (email, two_factor) in batch.iter().cloned() {
            let (client, base) = (http.client.clone(), authd.base.clone());
            registrations.spawn(async move { register(&client, &base, &email, two_factor).await });
        }
        while let Some(result) = registrations.join_next().await {
            result.context("registration task")??;
        }
    }
    let (token, me_body) = login_for_token(&http, &authd.base, &me_email).await?;
    let me: Value = serde_json::from_slice(&me_body).context("/users/me body")?;
    let user_id = me["id"].as_str().context("/users/me has no id")?.to_owned();
    let session_id = http.current_session(&authd.base, &token).await?;
    println!(
        "setup: {} accounts registered in {:.1} s",
        accounts.len(),
        setup.elapsed().as_secs_f64()
    );

    if options.seed_users > 0 {
        let seeding = Instant::now();
        database.seed(options.seed_users, &me_email).await?;
        println!(
            "setup: {} more users with a live session each, seeded in {:.1} s",
            options.seed_users,
            seeding.elapsed().as_secs_f64()
        );
    }

    let ceiling = Ceiling::start(options, database, &user_id, &session_id, work_dir)?;
    let ceiling_body = http.get_me(&ceiling.base, &token).await?;
    ensure!(
        ceiling_body == me_body,
        "the ceiling does not return the same JSON as authd:\n  authd:   {}\n  ceiling: {}",
        String::from_utf8_lossy(&me_body),
        String::from_utf8_lossy(&ceiling_body)
    );

    let workload = Workload {
        options: options.clone(),
        authd: authd.base.clone(),
        ceiling: ceiling.base.clone(),
        token,
        login_emails,
        flow_emails,
        sink: sink.clone(),
        stored_hash: database.password_hash(&me_email).await?,
        cpu: CpuMeter {
            authd: authd.process.pid(),
            ceiling: ceiling.process.pid(),
            postmaster: database.postmaster_pid().await?,
        },
    };
    let mut runs = Vec::new();
    for run in 1..=options.runs {
        let figures = workload.measure().await?;
        if options.runs > 1 {
            println!("\n== run {run} of {}", options.runs);
            print_table(&figures, options, false);
        }
        runs.push(figures);
    }
    let (rss_kib, hwm_kib) = authd.memory_kib()?;
    let summary = median_figures(&runs);
    println!();
    if options.runs > 1 {
        println!("== medians of {} runs", options.runs);
    }
    println!("machine: {machine}");
    let passed = print_table(&summary, options, true);
    println!(
        " 6  authd resident memory after the run      {:.1} MiB (peak {:.1} MiB)",
        rss_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );
    if !summary.errors.is_empty() {
        println!("    non-2xx answers and failures: {:?}", summary.errors);
    }
    if let Some(path) = &options.json {
        let document = json!({
            "machine": machine.to_string(),
            "options": format!("{options:?}"),
            "runs": runs,
            "median": summary,
            "rss_kib": rss_kib,
            "peak_rss_kib": hwm_kib,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&document)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    drop(ceiling);
    authd.stop();
    Ok(passed)
}

// ---------------------------------------------------------------------------------------------
// Load generation

/// What one measured run needs.
struct Workload {
    options: Options,
    authd: String,
    ceiling: String,
    token: String,
    login_emails: Vec<String>,
    flow_emails: Vec<String>,
    sink: MailSink,
    stored_hash: String,
    cpu: CpuMeter,
}

/// Requests that finished inside a measurement window.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    refused: u64,
    latencies_us: Vec<u32>,
    /// When each successful request finished.
    finished: Vec<Instant>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
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
    fn per_sec(&self, window: &Window) -> f64 {
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
    fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let rank = ((p * self.latencies_us.len() as f64).ceil() as usize).max(1);
        f64::from(self.latencies_us[rank - 1]) / 1000.0
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

/// A warm-up, then a measurement window; workers stop starting requests at its end.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn after(warmup: Duration, length: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + length,
        }
    }

    fn length(&self) -> Duration {
        self.end - self.start
    }

    fn is_open(&self) -> bool {
        Instant::now() < self.end
    }

    /// Records one request if it finished inside the window. (Counting completions, not
    /// requests wholly inside, keeps slow requests such as logins from being undercounted
    /// at the window's edges.)
    fn record(&self, tally: &mut Tally, began: Instant, outcome: Outcome) {
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

enum Outcome {
    Ok,
    Refused,
    Failed(String),
}

impl Workload {
    async fn measure(&self) -> Result<Figures> {
        let o = &self.options;
        let secs = Duration::from_secs(o.secs);
        let mut f = Figures {
            me_connections: o.me_connections,
            ..Figures::default()
        };
        let mut errors = BTreeMap::new();
        let mut note = |phase: &str, tally: &Tally| {
            for (k, v) in &tally.errors {
                *errors.entry(format!("{phase} {k}")).or_insert(0) += v;
            }
        };

        let mut others = Vec::new();
        if o.runs_phase("bound") {
            let before = (Instant::now(), self.cpu.sample());
            let (bound, per_core) = self.bcrypt_bound(Duration::from_secs(4));
            others.push(CpuUse::between(before, (Instant::now(), self.cpu.sample())).other);
            f.bcrypt_bound = bound;
            f.bcrypt_per_core = per_core;
        }
        // authd and the ceiling in alternating one-second slices (authd first, then the ceiling
        // first, and so on), so a drift of the machine's speed over the run weighs on both alike
        // instead of on whichever had the worse window.
        let slices = o.secs;
        let (mut me, mut ceiling) = (Sample::default(), Sample::default());
        for slice in 0..slices {
            let order = if slice % 2 == 0 {
                [
                    (&self.authd, &mut me, "me"),
                    (&self.ceiling, &mut ceiling, "ceiling"),
                ]
            } else {
                [
                    (&self.ceiling, &mut ceiling, "ceiling"),
                    (&self.authd, &mut me, "me"),
                ]
            };
            for (base, sample, phase) in order {
                if o.runs_phase(phase) {
                    let window = Window::after(Duration::from_millis(250), Duration::from_secs(1));
                    let (tally, cpu) =
                        tokio::join!(self.users_me(base, window), self.cpu.during(window));
                    sample.add(tally, cpu, window.length());
                }
            }
        }
        if o.runs_phase("me") {
            (f.me_cpu_us, f.me_per_sec, f.me_p50_ms, f.me_p99_ms) = me.summary(self.cpu.authd);
            others.push(me.other());
            note("/users/me", &me.tally);
        }
        if o.runs_phase("ceiling") {
            (
                f.ceiling_cpu_us,
                f.ceiling_per_sec,
                f.ceiling_p50_ms,
                f.ceiling_p99_ms,
            ) = ceiling.summary(self.cpu.ceiling);
            others.push(ceiling.other());
            note("ceiling", &ceiling.tally);
        }
        // Logins take a quarter second each: give them a longer window for a steady count.
        let warm = Duration::from_secs(2);
        if o.runs_phase("login") {
            let window = Window::after(warm, secs * 2);
            let (logins, cpu) = tokio::join!(self.logins(window), self.cpu.during(window));
            others.push(cpu.other);
            f.logins_per_sec = logins.per_sec(&window);
            f.login_refusals = logins.refused;
            note("/login", &logins);
        }
        // A p99 needs many samples: the paced windows are as long as the login ones.
        if o.runs_phase("probe") {
            let window = Window::after(warm, secs * 2);
            let (mut probe, cpu) = tokio::join!(
                self.paced_users_me(&self.authd, window),
                self.cpu.during(window)
            );
            others.push(cpu.other);
            f.probe_rate = o.probe_rate;
            f.probe_idle_p50_ms = probe.percentile_ms(0.50);
            f.probe_idle_p99_ms = probe.percentile_ms(0.99);
            note("paced /users/me", &probe);
        }
        if o.runs_phase("mixed") {
            let window = Window::after(warm, secs * 2);
            let (logins, mut probe, cpu) = tokio::join!(
                self.logins(window),
                self.paced_users_me(&self.authd, window),
                self.cpu.during(window)
            );
            others.push(cpu.other);
            f.mixed_logins_per_sec = logins.per_sec(&window);
            f.probe_mixed_p50_ms = probe.percentile_ms(0.50);
            f.probe_mixed_p99_ms = probe.percentile_ms(0.99);
            note("mixed /login", &logins);
            note("mixed paced /users/me", &probe);
        }
        // The password policy (zxcvbn) at its most expensive, beside the same paced probe: it
        // runs on the hashing pool, so the probe should not notice more than logins do.
        if o.runs_phase("register") {
            let window = Window::after(warm, secs * 2);
            let (registrations, mut probe, cpu) = tokio::join!(
                self.registrations(window),
                self.paced_users_me(&self.authd, window),
                self.cpu.during(window)
            );
            others.push(cpu.other);
            f.registrations_per_sec = registrations.per_sec(&window);
            f.probe_register_p50_ms = probe.percentile_ms(0.50);
            f.probe_register_p99_ms = probe.percentile_ms(0.99);
            note("register", &registrations);
            note("register paced /users/me", &probe);
        }
        // The control: the same pace to the ceiling, idle and during the same login storm in
        // authd. The ceiling does no bcrypt, so whatever its p99 gains is the machine's.
        if o.runs_phase("control") {
            let window = Window::after(warm, secs * 2);
            let (mut probe, cpu) = tokio::join!(
                self.paced_users_me(&self.ceiling, window),
                self.cpu.during(window)
            );
            others.push(cpu.other);
            f.control_idle_p99_ms = probe.percentile_ms(0.99);
            note("paced ceiling", &probe);
            let window = Window::after(warm, secs * 2);
            let (logins, mut probe, cpu) = tokio::join!(
                self.logins(window),
                self.paced_users_me(&self.ceiling, window),
                self.cpu.during(window)
            );
            others.push(cpu.other);
            f.control_mixed_p99_ms = probe.percentile_ms(0.99);
            note("control /login", &logins);
            note("control paced ceiling", &probe);
        }
        if o.runs_phase("burst") {
            let (ok, refused, refusal_ms, other) = self.burst(BURST_LOGINS).await;
            f.burst_ok = ok;
            f.burst_refused = refused;
            f.burst_refusal_p50_ms = refusal_ms;
            let mut burst = Tally::default();
            if other > 0 {
                burst.errors.insert("not 200 or 503".into(), other);
            }
            note("burst", &burst);
        }
        if o.runs_phase("flow") {
            let window = Window::after(warm, secs * 2);
            let (flows, cpu) = tokio::join!(self.flows(window), self.cpu.during(window));
            others.push(cpu.other);
            f.flows_per_sec = flows.per_sec(&window);
            note("2FA flow", &flows);
        }
        // Refresh-token rotation: one session per login client, refreshed in a closed loop.
        if o.runs_phase("refresh") {
            let window = Window::after(warm, secs * 2);
            let (mut refreshes, cpu) =
                tokio::join!(self.refreshes(window), self.cpu.during(window));
            others.push(cpu.other);
            f.refreshes_per_sec = refreshes.per_sec(&window);
            f.refresh_p50_ms = refreshes.percentile_ms(0.50);
            f.refresh_p99_ms = refreshes.percentile_ms(0.99);
            note("refresh", &refreshes);
        }
        // Logout: each client logs in (not timed) and logs that session out (timed).
        if o.runs_phase("logout") {
            let window = Window::after(warm, secs * 2);
            let (mut logouts, cpu) = tokio::join!(self.logouts(window), self.cpu.during(window));
            others.push(cpu.other);
            f.logouts = logouts.ok;
            f.logout_p50_ms = logouts.percentile_ms(0.50);
            f.logout_p99_ms = logouts.percentile_ms(0.99);
            note("logout", &logouts);
        }
        if o.runs_phase("tokens") {
            // Two seconds per algorithm and operation is thousands of tokens: plenty.
            let length = secs.min(Duration::from_secs(2));
            f.token_costs = tokio::task::spawn_blocking(move || token_costs(length))
                .await
                .context("the tokens phase failed")??;
        }
        f.errors = errors;
        f.other_load = others.into_iter().fold(0.0, f64::max);
        Ok(f)
    }

    /// One thread per core, each verifying the stored hash of a bench account (authd's own
    /// check, at authd's cost) for `length`; the sum of their rates is what the machine can do.
    fn bcrypt_bound(&self, length: Duration) -> (f64, f64) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rates: Vec<f64> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..cores)
                .map(|_| {
                    scope.spawn(|| {
                        let began = Instant::now();
                        let mut checks = 0u32;
                        while began.elapsed() < length && checks < 10_000 {
                            assert!(authd::password::verify_hash(
                                PASSWORD.as_bytes(),
                                &self.stored_hash
                            ));
                            checks += 1;
                        }
                        f64::from(checks) / began.elapsed().as_secs_f64()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("bcrypt thread"))
                .collect()
        });
        let bound: f64 = rates.iter().sum();
        (bound, bound / cores as f64)
    }

    /// `GET /users/me` with the access token over `me_connections` keep-alive connections.
    async fn users_me(&self, base: &str, window: Window) -> Tally {
        let url: reqwest::Url = format!("{base}/users/me").parse().expect("a valid URL");
        let auth = HeaderValue::from_str(&format!("Bearer {}", self.token)).expect("header");
        let workers = (0..self.options.me_connections).map(|_| {
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

    /// `GET /users/me` at a fixed pace (`probe_rate` a second over `probe_connections`), the
    /// traffic a busy server keeps serving during a login storm. A request that could not be
    /// sent on time because the one before it was slow counts from when it was due, so a
    /// stall shows in full (no coordinated omission); timer lateness on our side does not.
    async fn paced_users_me(&self, base: &str, window: Window) -> Tally {
        let url: reqwest::Url = format!("{base}/users/me").parse().expect("URL");
        let auth = HeaderValue::from_str(&format!("Bearer {}", self.token)).expect("header");
        let connections = self.options.probe_connections;
        let interval = Duration::from_secs_f64(connections as f64 / self.options.probe_rate);
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

    /// Many logins at once, past the hashing queue: the excess must be refused quickly with
    /// 503, not queued without bound. Returns (answered, refused, median refusal ms, other).
    async fn burst(&self, count: usize) -> (u64, u64, f64, u64) {
        let url: reqwest::Url = format!("{}/login", self.authd).parse().expect("URL");
        let mut tasks = tokio::task::JoinSet::new();
        let gate = Arc::new(tokio::sync::Barrier::new(count));
        for i in 0..count {
            let url = url.clone();
            let gate = gate.clone();
            let body = json!({
                "email": self.login_emails[i % self.login_emails.len()],
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

    /// `POST /login` in a closed loop, one account per client.
    async fn logins(&self, window: Window) -> Tally {
        let url: reqwest::Url = format!("{}/login", self.authd).parse().expect("URL");
        let workers = self.login_emails.iter().map(|email| {
            let url = url.clone();
            let body = json!({"email": email, "password": PASSWORD});
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let Ok(client) = client() else {
                    return tally;
                };
                while window.is_open() {
                    let began = Instant::now();
                    let outcome = match client.post(url.clone()).json(&body).send().await {
                        Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                            Ok(v) if v["access_token"].is_string() => Outcome::Ok,
                            _ => Outcome::Failed("login body".into()),
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

    /// `POST /token/refresh` in a closed loop: each client logs in once, then always presents
    /// the refresh token of the answer before.
    async fn refreshes(&self, window: Window) -> Tally {
        let login: reqwest::Url = format!("{}/login", self.authd).parse().expect("URL");
        let url: reqwest::Url = format!("{}/token/refresh", self.authd)
            .parse()
            .expect("URL");
        let workers = self.login_emails.iter().map(|email| {
            let (login, url) = (login.clone(), url.clone());
            let body = json!({"email": email, "password": PASSWORD});
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let Ok(client) = client() else {
                    return tally;
                };
                let Some(mut token) = token_field(&client, &login, &body, "refresh_token").await
                else {
                    tally.errors.insert("login for a refresh token".into(), 1);
                    return tally;
                };
                while window.is_open() {
                    let began = Instant::now();
                    let body = json!({ "refresh_token": token });
                    let outcome = match client.post(url.clone()).json(&body).send().await {
                        Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                            Ok(v) => match v["refresh_token"].as_str() {
                                Some(next) => {
                                    token = next.to_owned();
                                    Outcome::Ok
                                }
                                None => Outcome::Failed("refresh body".into()),
                            },
                            Err(_) => Outcome::Failed("refresh body".into()),
                        },
                        Ok(r) => status_outcome(r.status()),
                        Err(err) => Outcome::Failed(error_kind(&err)),
                    };
                    let failed = !matches!(outcome, Outcome::Ok);
                    window.record(&mut tally, began, outcome);
                    if failed {
                        break;
                    }
                }
                tally
            })
        });
        join_tallies(workers).await
    }

    /// Each client in a loop: `POST /login` (not timed), then `POST /logout` of that session.
    async fn logouts(&self, window: Window) -> Tally {
        let login: reqwest::Url = format!("{}/login", self.authd).parse().expect("URL");
        let url: reqwest::Url = format!("{}/logout", self.authd).parse().expect("URL");
        let workers = self.login_emails.iter().map(|email| {
            let (login, url) = (login.clone(), url.clone());
            let body = json!({"email": email, "password": PASSWORD});
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let Ok(client) = client() else {
                    return tally;
                };
                while window.is_open() {
                    let Some(access) = token_field(&client, &login, &body, "access_token").await
                    else {
                        *tally
                            .errors
                            .entry("login before logout".into())
                            .or_insert(0) += 1;
                        continue;
                    };
                    let began = Instant::now();
                    let outcome = match client.post(url.clone()).bearer_auth(access).send().await {
                        Ok(r) if r.status() == reqwest::StatusCode::NO_CONTENT => Outcome::Ok,
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

    /// Registrations of new accounts with the passwords the policy check is slowest on
    /// (72 bytes of l33t spellings), one closed loop per login client. A refusal by the policy
    /// (422) counts as an answer: the check ran either way.
    async fn registrations(&self, window: Window) -> Tally {
        let url: reqwest::Url = format!("{}/register", self.authd).parse().expect("URL");
        let workers = (0..self.options.login_connections).map(|worker| {
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

    /// The whole second step: login, the code from the mail sink, `POST /login/otp`.
    async fn flows(&self, window: Window) -> Tally {
        let login: reqwest::Url = format!("{}/login", self.authd).parse().expect("URL");
        let otp: reqwest::Url = format!("{}/login/otp", self.authd).parse().expect("URL");
        let workers = self.flow_emails.iter().map(|email| {
            let (login, otp, sink) = (login.clone(), otp.clone(), self.sink.clone());
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

fn status_outcome(status: reqwest::StatusCode) -> Outcome {
    if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
        Outcome::Refused
    } else {
        Outcome::Failed(status.as_u16().to_string())
    }
}

fn error_kind(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timeout".into()
    } else if err.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

async fn join_tallies(workers: impl Iterator<Item = tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for worker in workers.collect::<Vec<_>>() {
        match worker.await {
            Ok(tally) => total.merge(tally),
            Err(_) => *total.errors.entry("worker panicked".into()).or_insert(0) += 1,
        }
    }
    total
}

/// Signing and full verification (the verified-token cache bypassed) of access tokens with
/// authd's own `TokenKeys`, for `length` per algorithm and operation on this thread: the
/// cryptographic cost per token a login, a refresh or a first request pays.
fn token_costs(length: Duration) -> Result<[TokenCost; 3]> {
    use authd::keyring::{KeyAlgorithm, KeyState, new_signing_key};
    use authd::keyset::{KeyMaterial, KeySet};
    use authd::token::{TokenKeys, TokenKind};

    let jwt = authd::config::Settings::defaults().jwt;
    let kek = [9u8; 32];
    let keys_for = |algorithm: &str| -> Result<TokenKeys> {
        let asymmetric = match algorithm {
            "ES256" => KeyAlgorithm::Es256,
            "EdDSA" => KeyAlgorithm::EdDsa,
            _ => return Ok(TokenKeys::new(&[7u8; 32], &jwt)),
        };
        let key = new_signing_key(&kek, asymmetric, KeyState::Current, chrono::Utc::now())?;
        let record = authd::store::SigningKeyRecord::from(key);
        let material = KeyMaterial {
            kek: Some(&kek),
            hs256_secret: None,
            algorithm: match asymmetric {
                KeyAlgorithm::Es256 => authd::config::JwtAlgorithm::Es256,
                KeyAlgorithm::EdDsa => authd::config::JwtAlgorithm::EdDsa,
            },
            retired_horizon_secs: 3_600,
        };
        let set = KeySet::from_records(&[record], &material, chrono::Utc::now())?;
        Ok(TokenKeys::with_set(set, &jwt))
    };
    let mut costs = [TokenCost::default(); 3];
    for (cost, algorithm) in costs.iter_mut().zip(TOKEN_ALGORITHMS) {
        let keys = keys_for(algorithm)?;
        let (user, session) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let mut tokens = Vec::new();
        let began = Instant::now();
        while began.elapsed() < length && tokens.len() < 200_000 {
            tokens.push(keys.issue_access(user, session)?.token);
        }
        cost.sign_us = began.elapsed().as_secs_f64() * 1e6 / tokens.len() as f64;
        let began = Instant::now();
        let mut verified = 0usize;
        for token in tokens.iter().cycle() {
            ensure!(
                keys.verify(TokenKind::Access, token).is_ok(),
                "{algorithm}: a token was refused"
            );
            verified += 1;
            if verified.is_multiple_of(64) && began.elapsed() >= length {
                break;
            }
        }
        cost.verify_us = began.elapsed().as_secs_f64() * 1e6 / verified as f64;
    }
    Ok(costs)
}
