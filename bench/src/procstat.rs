//! Resource use of other processes, read from `/proc`: resident memory
//! (`VmRSS`, `VmHWM`, and `RssAnon`: the private part, heap and stacks,
//! without the code pages every copy of a binary shares) and CPU time (`utime + stime` of `/proc/<pid>/stat`),
//! and a sampler that follows a few processes during a measurement.

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
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_ticks(&text).with_context(|| format!("unexpected {path}: {text}"))?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted after its last `)`.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: field 3 (state) is f[0], so field n is f[n - 3].
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Kernel clock ticks per second (`USER_HZ`): 100 on every Linux
/// architecture this runs on (it is part of the ABI of `/proc/<pid>/stat`).
fn clock_ticks() -> u64 {
    100
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
}

/// Follows processes during a measurement: RSS and anonymous RSS every
/// 50 ms (the largest of each is kept) and CPU time from start to stop.
pub struct Sampler {
    pids: Vec<u32>,
    cpu_start: Vec<Option<Duration>>,
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
            cpu_start: pids.iter().map(|&p| cpu_time(p).ok()).collect(),
            pids,
            started: Instant::now(),
            stop,
            max,
            thread,
        }
    }

    /// Stops; one [`Usage`] per pid, in the order given to [`Sampler::start`].
    pub fn stop(self) -> Vec<Usage> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let mut max = self.max.locked().clone();
        for (slot, &pid) in max.iter_mut().zip(&self.pids) {
            let v = memory(pid);
            *slot = (slot.0.max(v.0), slot.1.max(v.1));
        }
        self.pids
            .iter()
            .zip(self.cpu_start)
            .zip(max)
            .map(|((&pid, start), (max_rss, max_anon))| {
                let cpu = match (start, cpu_time(pid).ok()) {
                    (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() / wall,
                    _ => 0.0,
                };
                Usage {
                    max_rss,
                    max_anon,
                    cpu,
                }
            })
            .collect()
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
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn samples_this_process() {
        let me = std::process::id();
        let rss = rss_bytes(me).unwrap();
        assert!(rss > 0);
        // The peak is read after the RSS: other test threads may allocate in
        // between, and VmHWM never decreases.
        assert!(peak_rss_bytes(me).unwrap() >= rss);
        let s = Sampler::start(&[me]);
        // Burn CPU until the kernel has accounted at least two ticks.
        let t0 = cpu_time(me).unwrap();
        let mut x = 0u64;
        while cpu_time(me).unwrap() < t0 + Duration::from_millis(20) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        let u = s.stop();
        assert_eq!(u.len(), 1);
        assert!(u[0].max_rss > 0);
        assert!(u[0].max_anon > 0 && u[0].max_anon <= u[0].max_rss);
        assert!(u[0].cpu > 0.0, "{u:?}");
    }
}
