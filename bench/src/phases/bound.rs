//! The bound: bcrypt verify at authd's cost on every core of this process, what the machine
//! can check per second; logins and 2FA flows are measured against it.

use std::time::{Duration, Instant};

use crate::accounts::PASSWORD;
use crate::cpu::CpuUse;
use crate::workload::{Run, Workload};

pub fn measure(w: &Workload, run: &mut Run) {
    if !w.options.runs_phase("bound") {
        return;
    }
    let before = (Instant::now(), w.cpu.sample());
    let (bound, per_core) = bcrypt_bound(w, Duration::from_secs(4));
    run.other_load(CpuUse::between(before, (Instant::now(), w.cpu.sample())).other);
    run.figures.bcrypt_bound = bound;
    run.figures.bcrypt_per_core = per_core;
}

/// One thread per core, each verifying the stored hash of a bench account (authd's own
/// check, at authd's cost) for `length`; the sum of their rates is what the machine can do.
fn bcrypt_bound(w: &Workload, length: Duration) -> (f64, f64) {
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
                            &w.stored_hash
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
