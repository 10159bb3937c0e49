//! The `control` phase: the paced load of `probe` sent to the ceiling, idle and during the
//! same login storm in authd. The ceiling does no bcrypt, so whatever its p99 gains is the
//! machine's.

use crate::phases::login::logins;
use crate::phases::probe::paced_users_me;
use crate::workload::{Run, Workload};

pub async fn measure(w: &Workload, run: &mut Run) {
    if !w.options.runs_phase("control") {
        return;
    }
    let window = w.long_window();
    let (mut probe, cpu) =
        tokio::join!(paced_users_me(w, &w.ceiling, window), w.cpu.during(window));
    run.other_load(cpu.other);
    run.figures.control_idle_p99_ms = probe.percentile_ms(0.99);
    run.note("paced ceiling", &probe);
    let window = w.long_window();
    let (logins, mut probe, cpu) = tokio::join!(
        logins(w, window),
        paced_users_me(w, &w.ceiling, window),
        w.cpu.during(window)
    );
    run.other_load(cpu.other);
    run.figures.control_mixed_p99_ms = probe.percentile_ms(0.99);
    run.note("control /login", &logins);
    run.note("control paced ceiling", &probe);
}
