//! Resource use of other processes, read from `/proc`: resident memory
//! (`VmRSS`, `VmHWM`, and `RssAnon`: the private part, heap and stacks,
//! without the code pages every copy of a binary shares), CPU time (`utime`
//! and `stime` of `/proc/<pid>/stat`), the whole machine's idle and stolen
//! time (`/proc/stat`), and a sampler that follows a few processes and the
//! machine during a measurement.

use anyhow::{Context, Result};
use conduit_base::sync::Unpoisoned;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kb(&text, key)
        .map(|kb| kb * 1024)
        .with_context(|| format!("no {key} in {path}"))
}

/// Resident set size now.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS:")
}

/// Anonymous resident memory now (heap, stacks): what one more copy of the
/// process costs; its code pages are shared through the page cache.
pub fn rss_anon_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "RssAnon:")
}

/// Peak resident set size so far.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmHWM:")
}

fn parse_status_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time (user + system) the process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    cpu_times(pid).map(|t| t.total())
}

/// CPU time a process has used so far, in user space and in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// `utime`.
    pub user: Duration,
    /// `stime`: system calls, and interrupts and softirqs taken while the
    /// process ran (the receiving side of loopback TCP, for one).
    pub kernel: Duration,
}

impl CpuTimes {
    pub fn total(self) -> Duration {
        self.user + self.kernel
    }
}

/// [`CpuTimes`] of a process, from `/proc/<pid>/stat`.
pub fn cpu_times(pid: u32) -> Result<CpuTimes> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (user, kernel) =
        parse_stat_ticks(&text).with_context(|| format!("unexpected {path}: {text}"))?;
    let secs = |ticks: u64| Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64);
    Ok(CpuTimes {
        user: secs(user),
        kernel: secs(kernel),
    })
}

/// Time the process's threads have spent runnable but waiting for a CPU
/// (the second field of each `/proc/<pid>/task/<tid>/schedstat`), summed
/// over the threads alive now.
pub fn run_queue_wait(pid: u32) -> Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        ns += parse_schedstat_wait(&text)
            .with_context(|| format!("unexpected {}: {text}", path.display()))?;
    }
    Ok(Duration::from_nanos(ns))
}

/// The run-queue wait (second field, nanoseconds) of a `schedstat` line.
fn parse_schedstat_wait(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
}

/// `(utime, stime)` (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its last `)`.
fn parse_stat_ticks(text: &str) -> Option<(u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: field 3 (state) is f[0], so field n is f[n - 3].
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// Kernel clock ticks per second (`USER_HZ`): 100 on every Linux
/// architecture this runs on (it is part of the ABI of `/proc/<pid>/stat`).
fn clock_ticks() -> u64 {
    100
}

/// The whole machine's CPU time so far, in clock ticks, from the `cpu` line
/// of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// Every CPU's time: user, nice, system, idle, iowait, irq, softirq, steal.
    pub total: u64,
    /// Idle and waiting for I/O.
    pub idle: u64,
    /// Taken by the hypervisor for other guests.
    pub steal: u64,
    /// CPUs counted (`cpuN` lines).
    pub cpus: u32,
}

/// The machine's CPU time now.
pub fn machine_ticks() -> Result<MachineTicks> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_ticks(&text).context("no cpu line in /proc/stat")
}

fn parse_machine_ticks(text: &str) -> Option<MachineTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let cpus = text
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    (f.len() >= 5).then(|| MachineTicks {
        total: f.iter().sum(),
        idle: f[3] + f[4],
        steal: f.get(7).copied().unwrap_or(0),
        cpus: u32::try_from(cpus).unwrap_or(u32::MAX).max(1),
    })
}

/// How the machine's CPUs were spent between two [`MachineTicks`], in
/// cores (1.0 = one CPU for the whole time).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Machine {
    pub cpus: u32,
    pub idle: f64,
    pub steal: f64,
}

impl Machine {
    pub fn between(a: MachineTicks, b: MachineTicks) -> Machine {
        let total = b.total.saturating_sub(a.total);
        if total == 0 {
            return Machine {
                cpus: b.cpus,
                ..Machine::default()
            };
        }
        let cores = |t: u64| t as f64 / total as f64 * f64::from(b.cpus);
        Machine {
            cpus: b.cpus,
            idle: cores(b.idle.saturating_sub(a.idle)),
            steal: cores(b.steal.saturating_sub(a.steal)),
        }
    }
}

/// What a [`Sampler`] saw: each process, and the machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampled {
    /// One per pid, in the order given to [`Sampler::start`].
    pub usage: Vec<Usage>,
    pub machine: Machine,
}

/// What a [`Sampler`] saw of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Largest RSS seen, bytes.
    pub max_rss: u64,
    /// Largest anonymous RSS (`RssAnon`) seen, bytes.
    pub max_anon: u64,
    /// CPU used during the sampling, as a fraction of one core (1.0 = one
    /// core busy all the time).
    pub cpu: f64,
    /// The part of `cpu` spent in the kernel, the same way.
    pub kernel: f64,
    /// Time its threads were runnable but waited for a CPU, the same way
    /// (0.5 = half the time, summed over threads).
    pub wait: f64,
}

/// Follows processes during a measurement: RSS and anonymous RSS every
/// 50 ms (the largest of each is kept) and CPU time from start to stop; and
/// the machine's idle and stolen CPU time over the same span.
pub struct Sampler {
    pids: Vec<u32>,
    cpu_start: Vec<Option<CpuTimes>>,
    wait_start: Vec<Option<Duration>>,
    machine_start: Option<MachineTicks>,
    started: Instant,
    stop: Arc<AtomicBool>,
    max: Arc<Mutex<Vec<(u64, u64)>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    /// Starts following `pids`.
    pub fn start(pids: &[u32]) -> Sampler {
        let pids = pids.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(Mutex::new(vec![(0u64, 0u64); pids.len()]));
        let (s, m, p) = (stop.clone(), max.clone(), pids.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let now: Vec<(u64, u64)> = p.iter().map(|&pid| memory(pid)).collect();
                let mut m = m.locked();
                for (slot, v) in m.iter_mut().zip(now) {
                    *slot = (slot.0.max(v.0), slot.1.max(v.1));
                }
                drop(m);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler {
            cpu_start: pids.iter().map(|&p| cpu_times(p).ok()).collect(),
            wait_start: pids.iter().map(|&p| run_queue_wait(p).ok()).collect(),
            machine_start: machine_ticks().ok(),
            pids,
            started: Instant::now(),
            stop,
            max,
            thread,
        }
    }

    /// Stops; one [`Usage`] per pid, in the order given to
    /// [`Sampler::start`], and the machine's share.
    pub fn stop(self) -> Sampled {
        // Every end reading at one instant, before the memory thread is
        // joined (up to one 50 ms sleep), so the processes' CPU, their
        // waits and the machine's idle time cover the same span as `wall`.
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let machine = match (self.machine_start, machine_ticks().ok()) {
            (Some(a), Some(b)) => Machine::between(a, b),
            _ => Machine::default(),
        };
        let share = |start: Option<Duration>, now: Option<Duration>| match (start, now) {
            (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() / wall,
            _ => 0.0,
        };
        let mut usage: Vec<Usage> = self
            .pids
            .iter()
            .zip(self.cpu_start.into_iter().zip(self.wait_start))
            .map(|(&pid, (cpu, wait))| {
                let now = cpu_times(pid).ok();
                Usage {
                    cpu: share(cpu.map(CpuTimes::total), now.map(CpuTimes::total)),
                    kernel: share(cpu.map(|c| c.kernel), now.map(|c| c.kernel)),
                    wait: share(wait, run_queue_wait(pid).ok()),
                    ..Usage::default()
                }
            })
            .collect();
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let max = self.max.locked().clone();
        for ((u, (rss, anon)), &pid) in usage.iter_mut().zip(max).zip(&self.pids) {
            let (rss_now, anon_now) = memory(pid);
            u.max_rss = rss.max(rss_now);
            u.max_anon = anon.max(anon_now);
        }
        Sampled { usage, machine }
    }
}

/// (RSS, anonymous RSS) now; zeros for a process that is gone.
fn memory(pid: u32) -> (u64, u64) {
    (
        rss_bytes(pid).unwrap_or(0),
        rss_anon_bytes(pid).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(1024));
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(2048));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(stat), Some((250, 75)));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_schedstat_wait("5000 7000 3\n"), Some(7000));
        assert_eq!(parse_schedstat_wait("5000\n"), None);
    }

    #[test]
    fn parses_and_differences_the_machine_line() {
        let a = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1\n";
        let a = parse_machine_ticks(a).unwrap();
        assert_eq!(
            a,
            MachineTicks {
                total: 1000,
                idle: 850,
                steal: 0,
                cpus: 2
            }
        );
        // 200 ticks later: 100 busy, 60 idle, 40 stolen, over two CPUs.
        let b = "cpu  180 0 70 850 60 0 0 40 0 0\ncpu0 1\ncpu1 1\n";
        let m = Machine::between(a, parse_machine_ticks(b).unwrap());
        assert_eq!(m.cpus, 2);
        assert!((m.idle - 0.6).abs() < 1e-9, "{m:?}");
        assert!((m.steal - 0.4).abs() < 1e-9, "{m:?}");
        // Nothing elapsed, or a line that is not /proc/stat's.
        assert_eq!(Machine::between(a, a).idle, 0.0);
        assert_eq!(parse_machine_ticks("cpu  1 2\n"), None);
        assert_eq!(parse_machine_ticks("intr 1\n"), None);
        assert_eq!(parse_machine_ticks("cpu  1 x 3 4 5\n"), None);
    }

    #[test]
    fn samples_this_process() {
        let me = std::process::id();
        let rss = rss_bytes(me).unwrap();
        assert!(rss > 0);
        // The peak is read after the RSS: other test threads may allocate in
        // between, and VmHWM never decreases.
        assert!(peak_rss_bytes(me).unwrap() >= rss);
        assert!(run_queue_wait(me).is_ok());
        let s = Sampler::start(&[me]);
        // Burn CPU until the kernel has accounted at least two ticks.
        let t0 = cpu_time(me).unwrap();
        let mut x = 0u64;
        while cpu_time(me).unwrap() < t0 + Duration::from_millis(20) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let sampled = s.stop();
        assert!(sampled.machine.cpus >= 1, "{sampled:?}");
        let u = sampled.usage;
        assert_eq!(u.len(), 1);
        assert!(u[0].max_rss > 0);
        assert!(u[0].max_anon > 0 && u[0].max_anon <= u[0].max_rss);
        assert!(u[0].cpu > 0.0, "{u:?}");
        assert!(u[0].kernel >= 0.0 && u[0].kernel <= u[0].cpu, "{u:?}");
    }
}
