//! The figures of one measured run, and their medians over several runs.

use std::collections::BTreeMap;

/// The figures of one measured run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Figures {
    pub bcrypt_per_core: f64,
    pub bcrypt_bound: f64,
    pub logins_per_sec: f64,
    pub login_refusals: u64,
    pub me_per_sec: f64,
    pub me_p50_ms: f64,
    pub me_p99_ms: f64,
    pub ceiling_per_sec: f64,
    pub ceiling_p50_ms: f64,
    pub ceiling_p99_ms: f64,
    pub me_connections: usize,
    pub probe_rate: f64,
    pub probe_idle_p50_ms: f64,
    pub probe_idle_p99_ms: f64,
    pub probe_mixed_p50_ms: f64,
    pub probe_mixed_p99_ms: f64,
    pub mixed_logins_per_sec: f64,
    /// Paced /users/me while registrations with worst-case passwords for the policy run.
    pub probe_register_p50_ms: f64,
    pub probe_register_p99_ms: f64,
    pub registrations_per_sec: f64,
    pub flows_per_sec: f64,
    pub refreshes_per_sec: f64,
    pub refresh_p50_ms: f64,
    pub refresh_p99_ms: f64,
    pub logouts: u64,
    pub logout_p50_ms: f64,
    pub logout_p99_ms: f64,
    /// `POST /password/forgot` for addresses that have an account (`known`) and that have none,
    /// alternating on each connection: answers per second, p50, p99 of each.
    pub forgot_known_per_sec: f64,
    pub forgot_known_p50_ms: f64,
    pub forgot_known_p99_ms: f64,
    pub forgot_unknown_per_sec: f64,
    pub forgot_unknown_p50_ms: f64,
    pub forgot_unknown_p99_ms: f64,
    /// What authd's background work did with the phase's requests, by outcome (`sent`,
    /// `limited`, `no_account`, `dropped`, `failed`): its `account_mails_total` counters.
    pub forgot_mails: BTreeMap<String, u64>,
    /// `POST /email/verify` with a wrong code for an account with a live code: guesses per
    /// second, p50, p99.
    pub verify_guesses_per_sec: f64,
    pub verify_p50_ms: f64,
    pub verify_p99_ms: f64,
    /// `POST /mfa/totp/enroll` with a fresh login: answers per second, p50, p99, CPU per
    /// answer in microseconds ([authd, PostgreSQL, this load generator]), and what drawing one
    /// answer's QR code (`qr_svg`) costs on one core, in microseconds, and its size in bytes.
    pub enroll_per_sec: f64,
    pub enroll_p50_ms: f64,
    pub enroll_p99_ms: f64,
    pub enroll_cpu_us: [f64; 3],
    pub enroll_qr_us: f64,
    pub enroll_svg_bytes: usize,
    /// `POST /login/otp` with a wrong code of an authenticator app: guesses per second, p50,
    /// p99, CPU per guess in microseconds ([authd, PostgreSQL, this load generator]).
    pub totp_guesses_per_sec: f64,
    pub totp_p50_ms: f64,
    pub totp_p99_ms: f64,
    pub totp_cpu_us: [f64; 3],
    /// Whole passkey sign-ins (`POST /login/passkey/options`, the authenticator's assertion,
    /// `POST /login/passkey`): sign-ins per second, p50, p99 of the two requests (the signing
    /// between them left out), CPU per sign-in in microseconds ([authd, PostgreSQL, this load
    /// generator]), and what the soft authenticator's signing of one assertion costs on one
    /// core of this process, in microseconds.
    pub passkey_per_sec: f64,
    pub passkey_p50_ms: f64,
    pub passkey_p99_ms: f64,
    pub passkey_cpu_us: [f64; 3],
    pub passkey_sign_us: f64,
    /// `authd user import` of `import_rows` users: the JSON Lines file into an empty table, the
    /// same file again (every row already there), the CSV file into an empty table.
    pub import_rows: u64,
    pub import_jsonl: ImportRun,
    pub import_again: ImportRun,
    pub import_csv: ImportRun,
    /// CPU per `/users/me` answer, microseconds: [server, PostgreSQL, this load generator].
    pub me_cpu_us: [f64; 3],
    pub ceiling_cpu_us: [f64; 3],
    /// The largest share of the machine's CPU that other processes took during a window.
    pub other_load: f64,
    pub control_idle_p99_ms: f64,
    pub control_mixed_p99_ms: f64,
    pub burst_ok: u64,
    pub burst_refused: u64,
    pub burst_refusal_p50_ms: f64,
    /// Microseconds per access token signed and per one verified in full (no cache), by
    /// algorithm: HS256, ES256, EdDSA.
    pub token_costs: [TokenCost; 3],
    pub errors: BTreeMap<String, u64>,
}

/// What one token of one algorithm costs authd, on one core.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct TokenCost {
    pub sign_us: f64,
    pub verify_us: f64,
}

/// One `authd user import FILE`, a child process timed from its start to its end.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ImportRun {
    pub file_bytes: u64,
    pub secs: f64,
    pub rows_per_sec: f64,
    /// The importer's peak resident memory (`ru_maxrss` of `wait4`), KiB.
    pub peak_rss_kib: u64,
    /// The importer's CPU (user + system) and PostgreSQL's meanwhile, seconds.
    pub importer_cpu_secs: f64,
    pub postgres_cpu_secs: f64,
}

impl ImportRun {
    /// The median of each figure over the runs (the peak memory: the largest).
    fn median(runs: &[ImportRun]) -> ImportRun {
        let m = |get: fn(&ImportRun) -> f64| median(runs.iter().map(get).collect());
        ImportRun {
            file_bytes: runs.iter().map(|r| r.file_bytes).max().unwrap_or(0),
            secs: m(|r| r.secs),
            rows_per_sec: m(|r| r.rows_per_sec),
            peak_rss_kib: runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0),
            importer_cpu_secs: m(|r| r.importer_cpu_secs),
            postgres_cpu_secs: m(|r| r.postgres_cpu_secs),
        }
    }
}

/// The algorithms the tokens phase measures, in the order of `Figures::token_costs`.
pub const TOKEN_ALGORITHMS: [&str; 3] = ["HS256", "ES256", "EdDSA"];

impl Figures {
    pub fn login_ratio(&self) -> f64 {
        ratio(self.logins_per_sec, self.bcrypt_bound)
    }
    pub fn me_ratio(&self) -> f64 {
        ratio(self.me_per_sec, self.ceiling_per_sec)
    }
    pub fn p99_ratio(&self) -> f64 {
        ratio(self.probe_mixed_p99_ms, self.probe_idle_p99_ms)
    }
    pub fn register_p99_ratio(&self) -> f64 {
        ratio(self.probe_register_p99_ms, self.probe_idle_p99_ms)
    }
    pub fn flow_ratio(&self) -> f64 {
        ratio(self.flows_per_sec, self.bcrypt_bound)
    }
    /// Passkey sign-ins per second against password logins (bcrypt) per second.
    pub fn passkey_ratio(&self) -> f64 {
        ratio(self.passkey_per_sec, self.logins_per_sec)
    }
}

/// `a / b`, or NaN when there is no `b` (a phase that did not run).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// The median of each figure over the runs; counts of answers and errors are summed.
pub fn median_figures(runs: &[Figures]) -> Figures {
    let m = |get: fn(&Figures) -> f64| median(runs.iter().map(get).collect());
    let mut errors = BTreeMap::new();
    let mut forgot_mails = BTreeMap::new();
    for run in runs {
        for (k, v) in &run.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &run.forgot_mails {
            *forgot_mails.entry(k.clone()).or_insert(0) += v;
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
        forgot_known_per_sec: m(|f| f.forgot_known_per_sec),
        forgot_known_p50_ms: m(|f| f.forgot_known_p50_ms),
        forgot_known_p99_ms: m(|f| f.forgot_known_p99_ms),
        forgot_unknown_per_sec: m(|f| f.forgot_unknown_per_sec),
        forgot_unknown_p50_ms: m(|f| f.forgot_unknown_p50_ms),
        forgot_unknown_p99_ms: m(|f| f.forgot_unknown_p99_ms),
        forgot_mails,
        verify_guesses_per_sec: m(|f| f.verify_guesses_per_sec),
        verify_p50_ms: m(|f| f.verify_p50_ms),
        verify_p99_ms: m(|f| f.verify_p99_ms),
        enroll_per_sec: m(|f| f.enroll_per_sec),
        enroll_p50_ms: m(|f| f.enroll_p50_ms),
        enroll_p99_ms: m(|f| f.enroll_p99_ms),
        enroll_cpu_us: [0, 1, 2].map(|i| median(runs.iter().map(|f| f.enroll_cpu_us[i]).collect())),
        enroll_qr_us: m(|f| f.enroll_qr_us),
        enroll_svg_bytes: runs.iter().map(|f| f.enroll_svg_bytes).max().unwrap_or(0),
        totp_guesses_per_sec: m(|f| f.totp_guesses_per_sec),
        totp_p50_ms: m(|f| f.totp_p50_ms),
        totp_p99_ms: m(|f| f.totp_p99_ms),
        totp_cpu_us: [0, 1, 2].map(|i| median(runs.iter().map(|f| f.totp_cpu_us[i]).collect())),
        passkey_per_sec: m(|f| f.passkey_per_sec),
        passkey_p50_ms: m(|f| f.passkey_p50_ms),
        passkey_p99_ms: m(|f| f.passkey_p99_ms),
        passkey_cpu_us: [0, 1, 2]
            .map(|i| median(runs.iter().map(|f| f.passkey_cpu_us[i]).collect())),
        passkey_sign_us: m(|f| f.passkey_sign_us),
        import_rows: runs.iter().map(|f| f.import_rows).max().unwrap_or(0),
        import_jsonl: ImportRun::median(&runs.iter().map(|f| f.import_jsonl).collect::<Vec<_>>()),
        import_again: ImportRun::median(&runs.iter().map(|f| f.import_again).collect::<Vec<_>>()),
        import_csv: ImportRun::median(&runs.iter().map(|f| f.import_csv).collect::<Vec<_>>()),
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

/// The median of the values that are numbers, NaN when there are none.
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
