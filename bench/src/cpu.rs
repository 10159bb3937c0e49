//! CPU accounting from /proc: who spent the CPU during a window (the servers, PostgreSQL, this
//! load generator, everything else), and what the machine is.

use std::time::Instant;

use crate::tally::Window;

/// The processes whose CPU time is accounted: servers, PostgreSQL (every child of its
/// postmaster) and this process (the load generator).
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pub authd: u32,
    pub ceiling: u32,
    pub postmaster: u32,
}

/// CPU seconds used during a window by: [authd, ceiling, postgres, load generator], and the
/// share of the machine's CPU that every other process took meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub seconds: [f64; 4],
    pub other: f64,
    meter: Option<CpuMeter>,
}

impl CpuUse {
    pub fn between(before: (Instant, [f64; 5]), after: (Instant, [f64; 5])) -> CpuUse {
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
    pub fn per_request(&self, answers: u64, server: u32) -> [f64; 3] {
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
    pub fn sample(&self) -> [f64; 5] {
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

    /// CPU seconds of PostgreSQL so far, with its backends that have exited: the live children
    /// of the postmaster, and the postmaster itself with the children it has reaped (a
    /// connection's backend ends with the connection, so a child process of the bench that
    /// connects, works and exits leaves its backends' CPU only there).
    pub fn postgres_with_exited(&self) -> f64 {
        let live: f64 = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .filter(|stat| stat_field(stat, 4) == Some(u64::from(self.postmaster)))
            .map(|stat| cpu_seconds(&stat))
            .sum();
        let postmaster = std::fs::read_to_string(format!("/proc/{}/stat", self.postmaster))
            .map(|stat| {
                let reaped =
                    stat_field(&stat, 16).unwrap_or(0) + stat_field(&stat, 17).unwrap_or(0);
                cpu_seconds(&stat) + reaped as f64 / 100.0
            })
            .unwrap_or(0.0);
        live + postmaster
    }

    /// CPU used between the window's start and end.
    pub async fn during(&self, window: Window) -> CpuUse {
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
pub fn stat_field(stat: &str, n: usize) -> Option<u64> {
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

pub struct Machine {
    cores: usize,
    cpu: String,
    memory_gib: f64,
}

impl Machine {
    pub fn read() -> Machine {
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
