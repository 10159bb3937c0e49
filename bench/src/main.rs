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

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};
use sqlx::Connection;
use testkit::smtp::{Behaviour, MailSink};

/// The password of every bench account: strong enough for any password policy, under 72 bytes.
const PASSWORD: &str = "Tangerine-Quasar-81-Lattice-vow";
/// Logins sent at once by the burst check: more than authd's hashing threads plus its default
/// queue limit (`password.max_queue`, default 32) on any machine with fewer than 64 cores.
const BURST_LOGINS: usize = 96;
/// Longest any single request may take before the bench counts it as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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

#[derive(Debug, Clone, clap::Args)]
struct Flags {
    /// authd binary (default: `authd` beside this binary)
    #[arg(long, value_name = "PATH")]
    authd: Option<PathBuf>,
    /// bcrypt cost for authd and the bound
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(4..=31))]
    cost: u32,
    /// measure N times after one setup and report medians
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=9))]
    runs: u64,
    /// closed-loop /users/me: N one-second windows on authd and N on the ceiling, alternating;
    /// the login, paced and 2FA windows are 2N seconds long
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    secs: u64,
    /// concurrent /users/me connections
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    me_connections: u64,
    /// concurrent /login clients
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    login_connections: u64,
    /// concurrent two-factor flows
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    flow_connections: u64,
    /// paced /users/me load for the latency comparison, requests per second (1..=100000)
    #[arg(long, default_value_t = 1000.0)]
    probe_rate: f64,
    /// connections that share the paced load
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    probe_connections: u64,
    /// database pool size of authd and of the ceiling
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_connections: u32,
    /// also write every run's figures as JSON
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// exit 1 when a target is missed (default: report it, exit 0; exit 2 when the run itself
    /// fails)
    #[arg(long)]
    strict: bool,
    /// watchdog: give up after this long (default 60 + 40 x secs x runs)
    #[arg(long, default_value_t = 0)]
    max_secs: u64,
    /// comma list of bound,me,ceiling,login,probe,mixed,control,burst,flow,register,refresh,
    /// logout
    #[arg(long, value_delimiter = ',', value_parser = PHASES)]
    only: Option<Vec<String>>,
    /// before measuring, add this many users with one live session each (COPY-free:
    /// generate_series in PostgreSQL), to measure on a populated database
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=5_000_000))]
    seed_users: u64,
}

/// Every phase `--only` can name.
const PHASES: [&str; 13] = [
    "bound", "me", "ceiling", "login", "probe", "mixed", "control", "burst", "flow", "register",
    "refresh", "logout", "tokens",
];

/// The options with their defaults resolved, for the run.
#[derive(Debug, Clone)]
struct Options {
    authd: PathBuf,
    cost: u32,
    runs: usize,
    secs: u64,
    me_connections: usize,
    login_connections: usize,
    flow_connections: usize,
    probe_rate: f64,
    probe_connections: usize,
    max_connections: u32,
    json: Option<PathBuf>,
    strict: bool,
    max_secs: u64,
    only: Option<Vec<String>>,
    seed_users: u64,
}

impl Flags {
    fn checked(self) -> Result<Options> {
        ensure!(
            (1.0..=100_000.0).contains(&self.probe_rate),
            "--probe-rate must be 1..=100000"
        );
        let authd = self.authd.unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("authd")))
                .unwrap_or_else(|| PathBuf::from("target/release/authd"))
        });
        let max_secs = match self.max_secs {
            // A run takes about 20 windows of `secs` plus setup: leave it twice that.
            0 => 60 + 40 * self.secs * self.runs,
            set => set,
        };
        let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(Options {
            authd,
            cost: self.cost,
            runs: count(self.runs),
            secs: self.secs,
            me_connections: count(self.me_connections),
            login_connections: count(self.login_connections),
            flow_connections: count(self.flow_connections),
            probe_rate: self.probe_rate,
            probe_connections: count(self.probe_connections),
            max_connections: self.max_connections,
            json: self.json,
            strict: self.strict,
            max_secs,
            only: self.only,
            seed_users: self.seed_users,
        })
    }
}

impl Options {
    fn runs_phase(&self, phase: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|p| p == phase))
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// The figures of one measured run.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Figures {
    bcrypt_per_core: f64,
    bcrypt_bound: f64,
    logins_per_sec: f64,
    login_refusals: u64,
    me_per_sec: f64,
    me_p50_ms: f64,
    me_p99_ms: f64,
    ceiling_per_sec: f64,
    ceiling_p50_ms: f64,
    ceiling_p99_ms: f64,
    me_connections: usize,
    probe_rate: f64,
    probe_idle_p50_ms: f64,
    probe_idle_p99_ms: f64,
    probe_mixed_p50_ms: f64,
    probe_mixed_p99_ms: f64,
    mixed_logins_per_sec: f64,
    /// Paced /users/me while registrations with worst-case passwords for the policy run.
    probe_register_p50_ms: f64,
    probe_register_p99_ms: f64,
    registrations_per_sec: f64,
    flows_per_sec: f64,
    refreshes_per_sec: f64,
    refresh_p50_ms: f64,
    refresh_p99_ms: f64,
    logouts: u64,
    logout_p50_ms: f64,
    logout_p99_ms: f64,
    /// CPU per `/users/me` answer, microseconds: [server, PostgreSQL, this load generator].
    me_cpu_us: [f64; 3],
    ceiling_cpu_us: [f64; 3],
    /// The largest share of the machine's CPU that other processes took during a window.
    other_load: f64,
    control_idle_p99_ms: f64,
    control_mixed_p99_ms: f64,
    burst_ok: u64,
    burst_refused: u64,
    burst_refusal_p50_ms: f64,
    /// Microseconds per access token signed and per one verified in full (no cache), by
    /// algorithm: HS256, ES256, EdDSA.
    token_costs: [TokenCost; 3],
    errors: BTreeMap<String, u64>,
}

/// What one token of one algorithm costs authd, on one core.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
struct TokenCost {
    sign_us: f64,
    verify_us: f64,
}

/// The algorithms the tokens phase measures, in the order of `Figures::token_costs`.
const TOKEN_ALGORITHMS: [&str; 3] = ["HS256", "ES256", "EdDSA"];

impl Figures {
    fn login_ratio(&self) -> f64 {
        ratio(self.logins_per_sec, self.bcrypt_bound)
    }
    fn me_ratio(&self) -> f64 {
        ratio(self.me_per_sec, self.ceiling_per_sec)
    }
    fn p99_ratio(&self) -> f64 {
        ratio(self.probe_mixed_p99_ms, self.probe_idle_p99_ms)
    }
    fn register_p99_ratio(&self) -> f64 {
        ratio(self.probe_register_p99_ms, self.probe_idle_p99_ms)
    }
    fn flow_ratio(&self) -> f64 {
        ratio(self.flows_per_sec, self.bcrypt_bound)
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
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
            ceiling: ceiling._process.pid(),
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

/// Prints the figures and the three targets; returns whether every target passed.
/// Prints the figures of the phases that ran (`--only`); says whether every target that was
/// measured was met.
fn print_table(f: &Figures, o: &Options, final_table: bool) -> bool {
    let ran = |phases: &[&str]| phases.iter().all(|p| o.runs_phase(p));
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let login_ok = !ran(&["bound", "login"]) || f.login_ratio() >= 0.9;
    let p99_ok = !ran(&["probe", "mixed"]) || f.p99_ratio() <= 3.0;
    let me_ok = !ran(&["me", "ceiling"]) || f.me_ratio() >= 0.8;
    let register_ok = !ran(&["probe", "register"]) || f.register_p99_ratio() <= 3.0;
    println!(" #  figure                                   value");
    if ran(&["bound"]) {
        println!(
            " 1  bcrypt bound (cores x checks/s of one)  {:.2} checks/s ({:.2} per core)",
            f.bcrypt_bound, f.bcrypt_per_core
        );
    }
    if ran(&["bound", "login"]) {
        println!(
            " 2  logins/s at saturation                  {:.2} /s = {:.3} of the bound   target >= 0.90  {}",
            f.logins_per_sec,
            f.login_ratio(),
            verdict(login_ok)
        );
    } else if ran(&["login"]) {
        println!(
            " 2  logins/s at saturation                  {:.2} /s",
            f.logins_per_sec
        );
    }
    let closed_loop = |label: String, per_sec: f64, p50: f64, p99: f64| {
        println!("{label:<44}{per_sec:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms");
    };
    if ran(&["me"]) {
        let label = format!(" 3  /users/me idle, {:>3} connections", f.me_connections);
        closed_loop(label, f.me_per_sec, f.me_p50_ms, f.me_p99_ms);
    }
    if ran(&["ceiling"]) {
        let label = "    ceiling: bare axum route, same query".to_owned();
        closed_loop(label, f.ceiling_per_sec, f.ceiling_p50_ms, f.ceiling_p99_ms);
    }
    if ran(&["me", "ceiling"]) {
        println!(
            "    /users/me vs ceiling                    {:.3} x the ceiling's req/s          target >= 0.80  {}",
            f.me_ratio(),
            verdict(me_ok)
        );
        println!(
            "    CPU per answer, us: server {:.0} + postgres {:.0} + load generator {:.0} (authd) | {:.0} + {:.0} + {:.0} (ceiling)",
            f.me_cpu_us[0],
            f.me_cpu_us[1],
            f.me_cpu_us[2],
            f.ceiling_cpu_us[0],
            f.ceiling_cpu_us[1],
            f.ceiling_cpu_us[2]
        );
    }
    if ran(&["probe"]) {
        println!(
            "    /users/me idle, paced {:>5.0} req/s       p50 {:.2} ms, p99 {:.2} ms",
            f.probe_rate, f.probe_idle_p50_ms, f.probe_idle_p99_ms
        );
    }
    if ran(&["probe", "mixed"]) {
        println!(
            " 4  same pace under login saturation        p99 {:.2} ms = {:.2} x idle p99     target <= 3.0   {}",
            f.probe_mixed_p99_ms,
            f.p99_ratio(),
            verdict(p99_ok)
        );
    }
    if ran(&["mixed"]) {
        println!(
            "    (p50 {:.2} ms; logins meanwhile {:.2} /s = {:.3} of the bound)",
            f.probe_mixed_p50_ms,
            f.mixed_logins_per_sec,
            ratio(f.mixed_logins_per_sec, f.bcrypt_bound)
        );
    }
    if ran(&["probe", "register"]) {
        println!(
            " 7  same pace under worst-case registrations p99 {:.2} ms = {:.2} x idle p99     target <= 3.0   {}",
            f.probe_register_p99_ms,
            f.register_p99_ratio(),
            verdict(register_ok)
        );
    }
    if ran(&["register"]) {
        println!(
            "    (p50 {:.2} ms; registrations meanwhile {:.2} /s, 72-byte l33t passwords)",
            f.probe_register_p50_ms, f.registrations_per_sec
        );
    }
    if ran(&["control"]) {
        println!(
            "    control: same pace to the ceiling       p99 {:.2} ms idle, {:.2} ms under the same logins = {:.2} x:",
            f.control_idle_p99_ms,
            f.control_mixed_p99_ms,
            ratio(f.control_mixed_p99_ms, f.control_idle_p99_ms)
        );
        println!(
            "             the machine's share; authd's p99 under logins is {:.2} x the ceiling's",
            ratio(f.probe_mixed_p99_ms, f.control_mixed_p99_ms)
        );
    }
    if ran(&["flow"]) {
        let of_bound = match ran(&["bound"]) {
            true => format!(" = {:.3} of the bound", f.flow_ratio()),
            false => String::new(),
        };
        println!(
            " 5  2FA flows/s (login, code, /login/otp)   {:.2} /s{of_bound}",
            f.flows_per_sec
        );
    }
    if ran(&["refresh"]) {
        println!(
            " 8  refreshes/s (POST /token/refresh)      {:.0} /s, p50 {:.2} ms, p99 {:.2} ms",
            f.refreshes_per_sec, f.refresh_p50_ms, f.refresh_p99_ms
        );
    }
    if ran(&["logout"]) {
        println!(
            " 9  POST /logout latency ({} answers)      p50 {:.2} ms, p99 {:.2} ms",
            f.logouts, f.logout_p50_ms, f.logout_p99_ms
        );
    }
    if ran(&["tokens"]) {
        for (name, cost) in TOKEN_ALGORITHMS.iter().zip(f.token_costs) {
            println!(
                "10  {name:<6} access token, one core          sign {:.1} us, verify {:.1} us",
                cost.sign_us, cost.verify_us
            );
        }
    }
    if f.burst_ok + f.burst_refused > 0 {
        println!(
            "    burst of {BURST_LOGINS} logins at once: {} answered, {} refused with 503 (median refusal {:.1} ms)",
            f.burst_ok, f.burst_refused, f.burst_refusal_p50_ms
        );
    }
    println!(
        "    other processes took up to {:.0}% of the machine's CPU during a window{}",
        f.other_load * 100.0,
        if f.other_load > 0.1 {
            ": figures are disturbed, run again on a quiet machine"
        } else {
            ""
        }
    );
    if !final_table && !f.errors.is_empty() {
        println!("    non-2xx answers and failures: {:?}", f.errors);
    }
    login_ok && p99_ok && me_ok && register_ok
}

fn median_figures(runs: &[Figures]) -> Figures {
    let m = |get: fn(&Figures) -> f64| median(runs.iter().map(get).collect());
    let mut errors = BTreeMap::new();
    for run in runs {
        for (k, v) in &run.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
    }
    Figures {
        bcrypt_per_core: m(|f| f.bcrypt_per_core),
        bcrypt_bound: m(|f| f.bcrypt_bound),
        logins_per_sec: m(|f| f.logins_per_sec),
        login_refusals: runs.iter().map(|f| f.login_refusals).sum(),
        me_per_sec: m(|f| f.me_per_sec),
        me_p50_ms: m(|f| f.me_p50_ms),
        me_p99_ms: m(|f| f.me_p99_ms),
        ceiling_per_sec: m(|f| f.ceiling_per_sec),
        ceiling_p50_ms: m(|f| f.ceiling_p50_ms),
        ceiling_p99_ms: m(|f| f.ceiling_p99_ms),
        me_connections: runs[0].me_connections,
        probe_rate: m(|f| f.probe_rate),
        probe_idle_p50_ms: m(|f| f.probe_idle_p50_ms),
        probe_idle_p99_ms: m(|f| f.probe_idle_p99_ms),
        probe_mixed_p50_ms: m(|f| f.probe_mixed_p50_ms),
        probe_mixed_p99_ms: m(|f| f.probe_mixed_p99_ms),
        mixed_logins_per_sec: m(|f| f.mixed_logins_per_sec),
        probe_register_p50_ms: m(|f| f.probe_register_p50_ms),
        probe_register_p99_ms: m(|f| f.probe_register_p99_ms),
        registrations_per_sec: m(|f| f.registrations_per_sec),
        flows_per_sec: m(|f| f.flows_per_sec),
        refreshes_per_sec: m(|f| f.refreshes_per_sec),
        refresh_p50_ms: m(|f| f.refresh_p50_ms),
        refresh_p99_ms: m(|f| f.refresh_p99_ms),
        logouts: runs.iter().map(|f| f.logouts).sum(),
        logout_p50_ms: m(|f| f.logout_p50_ms),
        logout_p99_ms: m(|f| f.logout_p99_ms),
        token_costs: std::array::from_fn(|i| TokenCost {
            sign_us: median(runs.iter().map(|f| f.token_costs[i].sign_us).collect()),
            verify_us: median(runs.iter().map(|f| f.token_costs[i].verify_us).collect()),
        }),
        other_load: m(|f| f.other_load),
        control_idle_p99_ms: m(|f| f.control_idle_p99_ms),
        control_mixed_p99_ms: m(|f| f.control_mixed_p99_ms),
        burst_ok: runs.iter().map(|f| f.burst_ok).sum(),
        burst_refused: runs.iter().map(|f| f.burst_refused).sum(),
        burst_refusal_p50_ms: m(|f| f.burst_refusal_p50_ms),
        me_cpu_us: [0, 1, 2].map(|i| median(runs.iter().map(|f| f.me_cpu_us[i]).collect())),
        ceiling_cpu_us: [0, 1, 2]
            .map(|i| median(runs.iter().map(|f| f.ceiling_cpu_us[i]).collect())),
        errors,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
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

/// One keep-alive connection per worker, no proxy from the environment, bounded waits.
fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(1)
        .build()
        .context("cannot build an HTTP client")
}

/// The client the setup uses.
struct Http {
    client: reqwest::Client,
}

impl Http {
    fn new() -> Result<Http> {
        Ok(Http { client: client()? })
    }

    /// The id of the session an access token belongs to, from `GET /sessions`.
    async fn current_session(&self, base: &str, token: &str) -> Result<String> {
        let response = self
            .client
            .get(format!("{base}/sessions"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("GET {base}/sessions"))?;
        ensure!(
            response.status().is_success(),
            "GET {base}/sessions answered {}",
            response.status()
        );
        let body: Value = response.json().await?;
        body["sessions"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["current"] == true))
            .and_then(|s| s["id"].as_str())
            .map(str::to_owned)
            .context("GET /sessions lists no current session")
    }

    async fn get_me(&self, base: &str, token: &str) -> Result<Vec<u8>> {
        let response = self
            .client
            .get(format!("{base}/users/me"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("GET {base}/users/me"))?;
        ensure!(
            response.status().is_success(),
            "GET {base}/users/me answered {}",
            response.status()
        );
        Ok(response.bytes().await?.to_vec())
    }
}

async fn register(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    two_factor: bool,
) -> Result<()> {
    let response = client
        .post(format!("{base}/register"))
        .json(&json!({"email": email, "password": PASSWORD, "two_factor_enabled": two_factor}))
        .send()
        .await
        .context("POST /register")?;
    let status = response.status();
    ensure!(
        status == reqwest::StatusCode::CREATED,
        "POST /register {email} answered {status}: {}",
        response.text().await.unwrap_or_default()
    );
    Ok(())
}

/// Logs in and returns one string field of the answer (`access_token`, `refresh_token`).
async fn token_field(
    client: &reqwest::Client,
    login: &reqwest::Url,
    body: &Value,
    field: &str,
) -> Option<String> {
    let response = client.post(login.clone()).json(body).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let answer: Value = response.json().await.ok()?;
    answer[field].as_str().map(str::to_owned)
}

/// Logs in the /users/me account; returns its access token and its `/users/me` body.
async fn login_for_token(http: &Http, base: &str, email: &str) -> Result<(String, Vec<u8>)> {
    let response = http
        .client
        .post(format!("{base}/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .context("POST /login")?;
    ensure!(
        response.status().is_success(),
        "POST /login answered {}",
        response.status()
    );
    let body: Value = response.json().await?;
    let token = body["access_token"]
        .as_str()
        .context("no access_token in the login answer")?
        .to_owned();
    let me = http.get_me(base, &token).await?;
    Ok((token, me))
}

// ---------------------------------------------------------------------------------------------
// Processes: authd and the ceiling, each in a session of its own like a service

/// The authd under test.
struct Authd {
    base: String,
    process: Process,
}

impl Authd {
    async fn start(
        options: &Options,
        database: &Database,
        sink: &MailSink,
        work_dir: &Path,
    ) -> Result<Authd> {
        let port = testkit::free_port()?;
        let log = std::fs::File::create(work_dir.join("authd.log"))?;
        let mut command = Command::new(&options.authd);
        command
            .arg("serve")
            .current_dir(work_dir)
            .env_remove("DATABASE_URL")
            .env("AUTHD_HTTP__ADDR", format!("127.0.0.1:{port}"))
            .env("AUTHD_DATA_DIR", work_dir.join("data"))
            .env("AUTHD_DATABASE__URL", &database.url)
            .env(
                "AUTHD_DATABASE__MAX_CONNECTIONS",
                options.max_connections.to_string(),
            )
            .env("AUTHD_JWT__SECRET", random_secret())
            .env("AUTHD_PASSWORD__BCRYPT_COST", options.cost.to_string())
            .env("AUTHD_MAIL__TRANSPORT", "smtp")
            .env("AUTHD_MAIL__SMTP__HOST", "127.0.0.1")
            .env("AUTHD_MAIL__SMTP__PORT", sink.port.to_string())
            .env("AUTHD_MAIL__SMTP__TLS", "none")
            // One client address sends everything: a per-address limit would measure itself.
            // Only that limit is lifted; the account lockout checks stay in the login path.
            .env("AUTHD_RATE_LIMIT__REQUESTS_PER_IP_PER_MINUTE", "1000000000")
            .env("AUTHD_HTTP__MAX_CONNECTIONS_PER_IP", "100000")
            // The 2FA phase logs the same few accounts in many times a second.
            .env("AUTHD_MAIL__MAX_CODES_PER_ACCOUNT", "1000000000")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let process = Process::spawn(command, "authd")?;
        let base = format!("http://127.0.0.1:{port}");
        wait_until_healthy(&base, &process, &work_dir.join("authd.log")).await?;
        Ok(Authd { base, process })
    }

    /// VmRSS and VmHWM of the authd process, in KiB.
    fn memory_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .context("cannot read authd's /proc status")?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("no {name} in /proc status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    fn stop(self) {
        drop(self.process);
    }
}

async fn wait_until_healthy(base: &str, process: &Process, log: &Path) -> Result<()> {
    let client = client()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if process.has_exited() {
            bail!(
                "{} exited at start:\n{}",
                process.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{} did not answer /healthz within 20 s", process.name)
}

/// The ceiling server: this binary again, in `ceiling-server` mode.
struct Ceiling {
    base: String,
    _process: Process,
}

impl Ceiling {
    fn start(
        options: &Options,
        database: &Database,
        user_id: &str,
        session_id: &str,
        work_dir: &Path,
    ) -> Result<Ceiling> {
        let log = std::fs::File::create(work_dir.join("ceiling.log"))?;
        // For profiling the ceiling like authd (e.g. under callgrind): a program to run it with.
        let mut command = match std::env::var_os("AUTHD_BENCH_CEILING_WRAPPER") {
            Some(wrapper) => {
                let mut command = Command::new(wrapper);
                command.arg(std::env::current_exe()?);
                command
            }
            None => Command::new(std::env::current_exe()?),
        };
        command
            .args([
                "ceiling-server",
                "--database-url",
                &database.url,
                "--user-id",
                user_id,
                "--session-id",
                session_id,
                "--max-connections",
                &options.max_connections.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut process = Process::spawn(command, "ceiling")?;
        let stdout = process.child.stdout.take().context("ceiling stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("cannot read the ceiling's port")?;
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected first line from the ceiling: {line:?}"))?;
        Ok(Ceiling {
            base: format!("http://{addr}"),
            _process: process,
        })
    }
}

/// A child process that is asked to stop (SIGTERM, then SIGKILL) when dropped, and dies with
/// this process whatever happens to it.
struct Process {
    child: Child,
    name: &'static str,
}

mod sys {
    unsafe extern "C" {
        pub fn setsid() -> i32;
        pub fn prctl(option: i32, ...) -> i32;
        pub fn kill(pid: i32, signal: i32) -> i32;
    }
    pub const PR_SET_PDEATHSIG: i32 = 1;
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;
}

impl Process {
    fn spawn(mut command: Command, name: &'static str) -> Result<Process> {
        // SAFETY: between fork and exec only async-signal-safe calls: setsid and prctl.
        unsafe {
            command.pre_exec(|| {
                // A session of its own, like a service: the scheduler's autogroups then share
                // the CPU between authd, PostgreSQL and this load generator as between services.
                sys::setsid();
                sys::prctl(sys::PR_SET_PDEATHSIG, sys::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        watchdog::register(child.id());
        Ok(Process { child, name })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn has_exited(&self) -> bool {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z ") || s.contains(") X "))
            .unwrap_or(true)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill only reads its arguments; pid is our own child, not yet reaped.
        unsafe { sys::kill(pid, sys::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                watchdog::unregister(self.child.id());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        watchdog::unregister(self.child.id());
    }
}

/// Ends the run if it overstays, taking the processes it started with it.
mod watchdog {
    use std::sync::Mutex;
    use std::time::Duration;

    static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

    pub fn arm(limit: Duration) {
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            eprintln!(
                "error: the bench ran longer than {} s: stopping",
                limit.as_secs()
            );
            stop_children();
            std::process::exit(3);
        });
    }

    pub fn register(pid: u32) {
        CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
    }

    pub fn unregister(pid: u32) {
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid);
    }

    /// SIGKILL to every child still registered (normal stops unregister first).
    pub fn stop_children() {
        let pids = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|e| e.into_inner()));
        for pid in pids {
            // SAFETY: kill only reads its arguments; these are our own children.
            unsafe { super::sys::kill(pid as i32, super::sys::SIGKILL) };
        }
    }
}

fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..48)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The throwaway database

struct Database {
    admin_url: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin_url: &str) -> Result<Database> {
        let name = format!("authd_bench_{}", std::process::id());
        let url = testkit::postgres::create_database(admin_url, &name)
            .await
            .context("cannot create the bench database on DATABASE_URL")?;
        Ok(Database {
            admin_url: admin_url.to_owned(),
            url,
            name,
        })
    }

    /// The stored bcrypt hash of an account: the bound verifies exactly what authd verifies.
    async fn password_hash(&self, email: &str) -> Result<String> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(&mut conn)
            .await
            .context("cannot read the stored hash")?;
        conn.close().await?;
        Ok(hash)
    }

    /// Adds `count` users, each with one live session, in two set-based statements; every
    /// seeded user has the password hash of `like` (so at authd's cost). Then ANALYZE, so the
    /// planner sees the tables as they now are.
    async fn seed(&self, count: u64, like: &str) -> Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let count = i64::try_from(count)?;
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, two_factor_enabled, created_at)
             SELECT gen_random_uuid(), 'seed' || i || '@seed.test',
                    (SELECT password_hash FROM users WHERE email = $2), false, now()
             FROM generate_series(1, $1) AS i",
        )
        .bind(count)
        .bind(like)
        .execute(&mut conn)
        .await
        .context("cannot seed users")?;
        sqlx::query(
            "INSERT INTO sessions (id, user_id, family, refresh_hash, created_at, last_used_at,
                                   expires_at, absolute_expires_at, client_ip, user_agent)
             SELECT gen_random_uuid(), id, decode(md5(id::text), 'hex'),
                    sha256(convert_to(id::text, 'UTF8')), now(), now(),
                    now() + interval '30 days', now() + interval '90 days', '127.0.0.1', 'seed'
             FROM users WHERE email LIKE 'seed%@seed.test'",
        )
        .execute(&mut conn)
        .await
        .context("cannot seed sessions")?;
        sqlx::query("ANALYZE").execute(&mut conn).await?;
        conn.close().await?;
        Ok(())
    }

    /// The PostgreSQL server process whose children serve our connections.
    async fn postmaster_pid(&self) -> Result<u32> {
        let mut conn = sqlx::PgConnection::connect(&self.url).await?;
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        conn.close().await?;
        let stat = std::fs::read_to_string(format!("/proc/{backend}/stat"))
            .context("PostgreSQL must run on this machine")?;
        stat_field(&stat, 4)
            .map(|ppid| ppid as u32)
            .context("no parent in /proc stat")
    }

    async fn drop_it(&self) -> Result<()> {
        Ok(testkit::postgres::drop_database(&self.admin_url, &self.name).await?)
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting: who spent the CPU during a window

/// The processes whose CPU time is accounted: servers, PostgreSQL (every child of its
/// postmaster) and this process (the load generator).
#[derive(Debug, Clone, Copy)]
struct CpuMeter {
    authd: u32,
    ceiling: u32,
    postmaster: u32,
}

/// CPU seconds used during a window by: [authd, ceiling, postgres, load generator], and the
/// share of the machine's CPU that every other process took meanwhile.
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    seconds: [f64; 4],
    other: f64,
    meter: Option<CpuMeter>,
}

impl CpuUse {
    fn between(before: (Instant, [f64; 5]), after: (Instant, [f64; 5])) -> CpuUse {
        let mut seconds = [0.0; 4];
        for (i, s) in seconds.iter_mut().enumerate() {
            *s = after.1[i] - before.1[i];
        }
        let ours: f64 = seconds.iter().sum();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let capacity = (after.0 - before.0).as_secs_f64() * cores;
        CpuUse {
            seconds,
            other: ((after.1[4] - before.1[4] - ours) / capacity).clamp(0.0, 1.0),
            meter: None,
        }
    }

    /// Microseconds per answer: [the measured server, postgres, load generator].
    fn per_request(&self, answers: u64, server: u32) -> [f64; 3] {
        let Some(meter) = self.meter else {
            return [f64::NAN; 3];
        };
        let server = if server == meter.authd {
            self.seconds[0]
        } else {
            self.seconds[1]
        };
        let per = |s: f64| s * 1e6 / answers.max(1) as f64;
        [per(server), per(self.seconds[2]), per(self.seconds[3])]
    }
}

impl CpuMeter {
    /// CPU seconds so far: [authd, ceiling, postgres, load generator, the whole machine].
    fn sample(&self) -> [f64; 5] {
        let postgres: f64 = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter(|stat| stat_field(stat, 4) == Some(u64::from(self.postmaster)))
            .map(|stat| cpu_seconds(&stat))
            .sum();
        let of = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| cpu_seconds(&s))
                .unwrap_or(0.0)
        };
        [
            of(self.authd),
            of(self.ceiling),
            postgres,
            of(std::process::id()),
            machine_busy_seconds(),
        ]
    }

    /// CPU used between the window's start and end.
    async fn during(&self, window: Window) -> CpuUse {
        tokio::time::sleep_until(window.start.into()).await;
        let before = (Instant::now(), self.sample());
        tokio::time::sleep_until(window.end.into()).await;
        let mut cpu = CpuUse::between(before, (Instant::now(), self.sample()));
        cpu.meter = Some(*self);
        cpu
    }
}

/// Field `n` (1-based, as in proc(5)) of a /proc/PID/stat line, for the numeric fields after
/// the command name.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    let after_comm = stat.rsplit_once(')')?.1;
    after_comm.split_whitespace().nth(n - 3)?.parse().ok()
}

/// CPU time the whole machine spent busy (not idle, not waiting for I/O), from /proc/stat.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    busy as f64 / 100.0
}

/// utime + stime of a /proc/PID/stat line, in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds(stat: &str) -> f64 {
    (stat_field(stat, 14).unwrap_or(0) + stat_field(stat, 15).unwrap_or(0)) as f64 / 100.0
}

// ---------------------------------------------------------------------------------------------
// The machine

struct Machine {
    cores: usize,
    cpu: String,
    memory_gib: f64,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU".into(), |(_, v)| v.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            memory_gib: kib / 1024.0 / 1024.0,
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cores, {}, {:.1} GiB memory",
            self.cores, self.cpu, self.memory_gib
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The ceiling: the least a server can do to answer /users/me from PostgreSQL

mod ceiling {
    use anyhow::{Context, Result};
    use axum::Router;
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::get;
    use uuid::Uuid;

    use authd::domain::User;
    use authd::store::Store;

    #[derive(Debug, clap::Args)]
    pub struct Args {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        user_id: Uuid,
        #[arg(long)]
        session_id: Uuid,
        #[arg(long, default_value_t = 10)]
        max_connections: u32,
    }

    #[derive(Clone)]
    struct Ceiling {
        store: Store,
        user_id: Uuid,
        session_id: Uuid,
    }

    /// `ceiling-server --database-url URL --user-id UUID --session-id UUID --max-connections N`:
    /// serves `GET /users/me` for that user and session on a free loopback port, printed as
    /// "listening on ADDR".
    /// The same runtime (Tokio's default multi-thread), and authd's own store (pool settings,
    /// statement, row mapping) as authd; no token check, no middleware.
    pub fn main(args: &Args) -> Result<()> {
        let mut settings = authd::Settings::defaults();
        settings.database.url = args.database_url.clone().into();
        settings.database.max_connections = args.max_connections;
        let (user_id, session_id) = (args.user_id, args.session_id);
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async move {
            let store = Store::connect_lazy(&settings)?;
            let state = Ceiling {
                store,
                user_id,
                session_id,
            };
            let app = Router::new().route("/users/me", get(me)).with_state(state);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("listening on {}", listener.local_addr()?);
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    if let Ok(mut term) =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        term.recv().await;
                    }
                })
                .await
                .context("ceiling server failed")
        })
    }

    async fn me(State(state): State<Ceiling>) -> Result<axum::Json<User>, StatusCode> {
        // A kid, as /users/me passes its token's: the same revoked-key lookup is made.
        state
            .store
            .find_session_user(
                state.user_id,
                state.session_id,
                Some("ceiling-kid"),
                chrono::Utc::now(),
            )
            .await
            .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?
            .map(axum::Json)
            .ok_or(StatusCode::NOT_FOUND)
    }
}

/// Signing and full verification (the verified-token cache bypassed) of access tokens with
/// authd's own `TokenKeys`, for `length` per algorithm and operation on this thread: the
/// cryptographic cost per token a login, a refresh or a first request pays.
fn token_costs(length: Duration) -> Result<[TokenCost; 3]> {
    use authd::keys::{KeyAlgorithm, KeyState, new_signing_key};
    use authd::keys::{KeyMaterial, KeySet};
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
