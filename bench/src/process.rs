//! The processes the bench starts: authd under test, each child in a session of its own like a
//! service, stopped when dropped, and a watchdog that ends the run if it overstays.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use testkit::smtp::MailSink;

use crate::database::Database;
use crate::http::client;
use crate::options::Options;

/// The authd under test.
pub struct Authd {
    pub base: String,
    pub process: Process,
}

impl Authd {
    pub async fn start(
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
            // The totp phase guesses at one challenge per client for its whole window: a
            // challenge's tries and an account's wrong codes would end it after 5 and 100, and
            // only a login (bcrypt) makes another challenge. A guess runs the same statements
            // whatever the bound; no other phase sends a wrong code.
            .env("AUTHD_OTP__MAX_ATTEMPTS", "1000000000")
            .env("AUTHD_RATE_LIMIT__OTP_FAILURES_PER_ACCOUNT", "1000000000")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let process = Process::spawn(command, "authd")?;
        let base = format!("http://127.0.0.1:{port}");
        wait_until_healthy(&base, &process, &work_dir.join("authd.log")).await?;
        Ok(Authd { base, process })
    }

    /// VmRSS and VmHWM of the authd process, in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
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

    pub fn stop(self) {
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

/// A child process that is asked to stop (SIGTERM, then SIGKILL) when dropped, and dies with
/// this process whatever happens to it.
pub struct Process {
    pub child: Child,
    name: &'static str,
}

mod sys {
    unsafe extern "C" {
        pub fn setsid() -> i32;
        pub fn prctl(option: i32, ...) -> i32;
        pub fn kill(pid: i32, signal: i32) -> i32;
        pub fn wait4(pid: i32, status: *mut i32, options: i32, usage: *mut Rusage) -> i32;
    }

    /// `struct timeval` of Linux.
    #[repr(C)]
    #[derive(Default)]
    pub struct Timeval {
        pub sec: std::ffi::c_long,
        pub usec: std::ffi::c_long,
    }

    /// `struct rusage` of Linux: two times, then fourteen longs, `ru_maxrss` (KiB) first.
    #[repr(C)]
    #[derive(Default)]
    pub struct Rusage {
        pub utime: Timeval,
        pub stime: Timeval,
        pub maxrss: std::ffi::c_long,
        pub rest: [std::ffi::c_long; 13],
    }
    pub const PR_SET_PDEATHSIG: i32 = 1;
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;
}

impl Process {
    pub fn spawn(mut command: Command, name: &'static str) -> Result<Process> {
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

    pub fn pid(&self) -> u32 {
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

/// How a child that ran to its end ended: its wait status, its wall time from spawn to end,
/// its own peak resident memory (KiB) and CPU time (user + system, seconds).
pub struct Ended {
    pub status: i32,
    pub wall: Duration,
    pub max_rss_kib: u64,
    pub cpu_secs: f64,
}

impl Ended {
    pub fn exited_zero(&self) -> bool {
        self.status == 0
    }
}

/// Runs `command` as a child in a session of its own (as [`Process::spawn`]) to its end, and
/// reaps it with `wait4`, which gives the child's own resource use: the peak resident memory
/// of that process, unlike `RUSAGE_CHILDREN`, which is the largest of every child reaped.
pub async fn run_to_end(command: Command, name: &'static str) -> Result<Ended> {
    let began = Instant::now();
    let process = Process::spawn(command, name)?;
    let pid = process.pid();
    // Reaped by wait4 below, so never signalled by the drop (the pid may be reused).
    std::mem::forget(process);
    let reaped = tokio::task::spawn_blocking(move || {
        let mut status = 0;
        let mut usage = sys::Rusage::default();
        loop {
            // SAFETY: status and usage are valid for writes; pid is our own child, not reaped.
            let got = unsafe { sys::wait4(pid as i32, &mut status, 0, &mut usage) };
            if got == pid as i32 {
                return Ok((status, usage));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    })
    .await
    .context("the wait for a child failed")?;
    watchdog::unregister(pid);
    let (status, usage) = reaped.with_context(|| format!("cannot wait for {name}"))?;
    let seconds = |t: &sys::Timeval| t.sec as f64 + t.usec as f64 / 1e6;
    Ok(Ended {
        status,
        wall: began.elapsed(),
        max_rss_kib: u64::try_from(usage.maxrss).unwrap_or(0),
        cpu_secs: seconds(&usage.utime) + seconds(&usage.stime),
    })
}

/// `authd migrate` on `database`, run in `work_dir`.
pub fn migrate(authd: &Path, database: &Database, work_dir: &Path) -> Result<()> {
    let output = Command::new(authd)
        .args(["migrate", "--database-url", &database.url])
        .current_dir(work_dir)
        .env_remove("DATABASE_URL")
        .output()
        .context("cannot run authd migrate")?;
    anyhow::ensure!(
        output.status.success(),
        "authd migrate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Ends the run if it overstays, taking the processes it started with it.
pub mod watchdog {
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

pub fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..48)
        .map(|_| char::from(rng.sample(rand::distr::Alphanumeric)))
        .collect()
}
