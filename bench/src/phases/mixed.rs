//! The `mixed` phase: the paced `/users/me` of `probe` while closed-loop logins saturate the
//! CPU; its p99 against the idle one is a target.

use crate::phases::login::logins;
use crate::phases::probe::paced_users_me;
use crate::workload::{Run, Workload};

pub async fn measure(w: &Workload, run: &mut Run) {
    if !w.options.runs_phase("mixed") {
        return;
    }
    let window = w.long_window();
    let (logins, mut probe, cpu) = tokio::join!(
        logins(w, window),
        paced_users_me(w, &w.authd, window),
        w.cpu.during(window)
    );
    run.other_load(cpu.other);
    run.figures.mixed_logins_per_sec = logins.per_sec(&window);
    run.figures.probe_mixed_p50_ms = probe.percentile_ms(0.50);
    run.figures.probe_mixed_p99_ms = probe.percentile_ms(0.99);
    run.note("mixed /login", &logins);
    run.note("mixed paced /users/me", &probe);
}
