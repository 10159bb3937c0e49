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
//! 9. `POST /logout` latency, each logout after an untimed login;
//! 10. the cost of signing and verifying one access token, per algorithm;
//! 11. `POST /password/forgot` per second, p50/p99, for addresses with an account and without,
//!     alternating (the answer must not tell them apart), and what the background did;
//! 12. `POST /email/verify` with a wrong code per second, p50/p99: the cost of a guess;
//! 13. `POST /mfa/totp/enroll` per second, p50/p99, authd's CPU per answer and what drawing
//!     the QR code costs of it;
//! 14. `POST /login/otp` with a wrong code of an authenticator app per second, p50/p99 and
//!     authd's CPU per guess: the cost of a guess at an app;
//! 15. whole passkey sign-ins per second (`POST /login/passkey/options`, the assertion of a
//!     software authenticator in this process, `POST /login/passkey`), p50/p99 of the two
//!     requests, authd's CPU per sign-in, and their ratio to password logins (figure 2).
//! 16. `authd user import` of a million users with precomputed bcrypt hashes (a child process
//!     of the authd under test, on a database of its own beside the bench's): rows per second,
//!     wall time and the importer's peak resident memory, for JSON Lines, the same file again
//!     (every row already there) and CSV.
//!
//! And what explains them: the CPU each process (authd, the ceiling, PostgreSQL, this load
//! generator) spends per `/users/me` answer, read from /proc; a control that sends the same
//! paced load to the ceiling, idle and during the same login storm (the ceiling hashes nothing,
//! so its p99 rise is the machine's); a burst of logins past the hashing queue, which must be
//! refused at once with 503; and how much CPU other processes took, which marks a disturbed run.
//! authd and the ceiling run in sessions of their own, as services do, so the scheduler's
//! autogroups treat them, PostgreSQL and the load generator as separate programs.
//!
//! This file is the runner: the command line, the setup, the phases in order, the report.
//! Each phase is a file in `phases/`; what they share is in files named by role.

mod accounts;
mod authenticator;
mod ceiling;
mod cpu;
mod database;
mod figures;
mod http;
mod options;
mod phases;
mod process;
mod report;
mod tally;
mod workload;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use testkit::smtp::{Behaviour, MailSink};

use crate::accounts::{login_for_token, register};
use crate::ceiling::Ceiling;
use crate::cpu::{CpuMeter, Machine};
use crate::database::Database;
use crate::figures::{Figures, median_figures};
use crate::http::Http;
use crate::options::{Flags, Options};
use crate::process::{Authd, watchdog};
use crate::report::print_table;
use crate::workload::{Run, Workload};

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
    process::migrate(&options.authd, database, work_dir)?;

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
        database: database.clone(),
    };
    let mut runs = Vec::new();
    for run in 1..=options.runs {
        let figures = measure(&workload).await?;
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

/// One measured run: every phase in the order they run, each measuring only when `--only`
/// names it. A new phase is a file in `phases/`, its name in `PHASES` and one line here.
async fn measure(w: &Workload) -> Result<Figures> {
    let mut run = Run::new(&w.options);
    phases::bound::measure(w, &mut run);
    phases::me::measure(w, &mut run).await;
    phases::login::measure(w, &mut run).await;
    phases::probe::measure(w, &mut run).await;
    phases::mixed::measure(w, &mut run).await;
    phases::register::measure(w, &mut run).await;
    phases::control::measure(w, &mut run).await;
    phases::burst::measure(w, &mut run).await;
    phases::flow::measure(w, &mut run).await;
    phases::refresh::measure(w, &mut run).await;
    phases::logout::measure(w, &mut run).await;
    phases::tokens::measure(w, &mut run).await?;
    phases::forgot::measure(w, &mut run).await?;
    phases::verify::measure(w, &mut run).await?;
    phases::enroll::measure(w, &mut run).await?;
    phases::totp::measure(w, &mut run).await?;
    phases::passkey::measure(w, &mut run).await?;
    phases::import::measure(w, &mut run).await?;
    Ok(run.finish())
}
