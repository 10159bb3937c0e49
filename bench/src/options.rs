//! The command-line flags of a bench run and the options they resolve to.

use std::path::PathBuf;

use anyhow::{Result, ensure};

#[derive(Debug, Clone, clap::Args)]
pub struct Flags {
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
    /// watchdog: give up after this long (default 60 + 48 x secs x runs)
    #[arg(long, default_value_t = 0)]
    max_secs: u64,
    /// comma list of bound,me,ceiling,login,probe,mixed,control,burst,flow,register,refresh,
    /// logout,tokens,forgot,verify,enroll,totp,passkey,import
    #[arg(long, value_delimiter = ',', value_parser = PHASES)]
    only: Option<Vec<String>>,
    /// before measuring, add this many users with one live session each (COPY-free:
    /// generate_series in PostgreSQL), to measure on a populated database
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=5_000_000))]
    seed_users: u64,
    /// users in the files the import phase imports (`authd user import`, JSON Lines and CSV)
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    import_rows: u64,
}

/// Every phase `--only` can name.
pub const PHASES: [&str; 19] = [
    "bound", "me", "ceiling", "login", "probe", "mixed", "control", "burst", "flow", "register",
    "refresh", "logout", "tokens", "forgot", "verify", "enroll", "totp", "passkey", "import",
];

/// The options with their defaults resolved, for the run.
#[derive(Debug, Clone)]
pub struct Options {
    pub authd: PathBuf,
    pub cost: u32,
    pub runs: usize,
    pub secs: u64,
    pub me_connections: usize,
    pub login_connections: usize,
    pub flow_connections: usize,
    pub probe_rate: f64,
    pub probe_connections: usize,
    pub max_connections: u32,
    pub json: Option<PathBuf>,
    pub strict: bool,
    pub max_secs: u64,
    pub only: Option<Vec<String>>,
    pub seed_users: u64,
    pub import_rows: u64,
}

impl Flags {
    pub fn checked(self) -> Result<Options> {
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
        // authd runs in a work directory of its own: a relative path would point elsewhere.
        let authd = std::path::absolute(&authd)
            .map_err(|err| anyhow::anyhow!("--authd {}: {err}", authd.display()))?;
        let imports = self
            .only
            .as_ref()
            .is_none_or(|only| only.iter().any(|p| p == "import"));
        let max_secs = match self.max_secs {
            // A run takes about 24 windows of `secs` plus setup: leave it twice that; the
            // import phase's three imports as many seconds again as at 5,000 rows/s.
            0 => {
                let import_secs = if imports { self.import_rows / 5_000 } else { 0 };
                60 + (48 * self.secs + import_secs) * self.runs
            }
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
            import_rows: self.import_rows,
        })
    }
}

impl Options {
    pub fn runs_phase(&self, phase: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|p| p == phase))
    }
}
