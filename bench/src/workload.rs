//! What every phase of a run works with: the servers, the accounts and the CPU meter
//! (`Workload`), and the record of what the phases measured (`Run`).

use std::collections::BTreeMap;
use std::time::Duration;

use testkit::smtp::MailSink;

use crate::cpu::CpuMeter;
use crate::database::Database;
use crate::figures::Figures;
use crate::options::Options;
use crate::tally::{Tally, Window};

/// What one measured run needs.
pub struct Workload {
    pub options: Options,
    pub authd: String,
    pub ceiling: String,
    pub token: String,
    pub login_emails: Vec<String>,
    pub flow_emails: Vec<String>,
    pub sink: MailSink,
    pub stored_hash: String,
    pub cpu: CpuMeter,
    /// The bench's database: the account-route phases add (and remove) their own accounts.
    pub database: Database,
}

impl Workload {
    /// The window of the login, paced, registration, 2FA, refresh, logout, forgot, verify,
    /// enroll, totp and passkey phases: two seconds of warm-up, then 2 x `--secs`. Logins take a quarter second each, so they need a
    /// longer window for a steady count; a p99 needs many samples, so the paced windows are as
    /// long as the login ones.
    pub fn long_window(&self) -> Window {
        Window::after(
            Duration::from_secs(2),
            Duration::from_secs(self.options.secs) * 2,
        )
    }
}

/// What the phases of one run have measured so far.
pub struct Run {
    pub figures: Figures,
    errors: BTreeMap<String, u64>,
    others: Vec<f64>,
}

impl Run {
    pub fn new(options: &Options) -> Run {
        Run {
            figures: Figures {
                me_connections: options.me_connections,
                ..Figures::default()
            },
            errors: BTreeMap::new(),
            others: Vec::new(),
        }
    }

    /// Counts the failures of a tally under the name of what it measured.
    pub fn note(&mut self, phase: &str, tally: &Tally) {
        for (k, v) in &tally.errors {
            *self.errors.entry(format!("{phase} {k}")).or_insert(0) += v;
        }
    }

    /// Records the share of the machine's CPU other processes took during a window.
    pub fn other_load(&mut self, share: f64) {
        self.others.push(share);
    }

    /// The figures, with the failures of every phase and the most other processes took.
    pub fn finish(self) -> Figures {
        let mut f = self.figures;
        f.errors = self.errors;
        f.other_load = self.others.into_iter().fold(0.0, f64::max);
        f
    }
}
