//! The results table (Markdown, so it can be pasted into docs/benchmarks.md).

use crate::loadgen::{Protocol, Sample};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Open loop at this many requests per second.
    Rate(u32),
    /// Closed loop with this many concurrent requests.
    Max(usize),
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Rate(r) => write!(f, "{r} req/s"),
            Load::Max(c) => write!(f, "max (c={c})"),
        }
    }
}

pub struct Row {
    pub protocol: Protocol,
    pub load: Load,
    pub path: &'static str,
    pub sample: Sample,
    /// Largest proxy RSS seen during the run (proxy rows).
    pub rss: Option<u64>,
}

pub fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

pub fn fmt_opt(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), fmt_dur)
}

fn fmt_mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// `+123 µs` (proxy minus direct).
fn added(proxy: Option<Duration>, direct: Option<Duration>) -> String {
    match (proxy, direct) {
        (Some(p), Some(d)) if p >= d => format!("+{}", fmt_dur(p - d)),
        (Some(p), Some(d)) => format!("-{}", fmt_dur(d - p)),
        _ => "-".into(),
    }
}

pub fn print(rows: &[Row], idle_rss: u64, idle_after: u64, peak_rss: u64, command: &str) {
    println!("| protocol | load | path | p50 | p99 | p99.9 | throughput | errors | proxy RSS |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    for pair in rows.chunks(2) {
        for r in pair {
            let s = &r.sample;
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.0} req/s | {} | {} |",
                r.protocol.label(),
                r.load,
                r.path,
                fmt_opt(s.quantile(0.5)),
                fmt_opt(s.quantile(0.99)),
                fmt_opt(s.quantile(0.999)),
                s.throughput(),
                s.errors,
                r.rss.map_or_else(|| "".into(), fmt_mb),
            );
        }
        if let [d, p] = pair {
            let q = |s: &Sample, x| s.quantile(x);
            println!(
                "| {} | {} | **proxy − direct** | {} | {} | {} | {:.2}× | | |",
                p.protocol.label(),
                p.load,
                added(q(&p.sample, 0.5), q(&d.sample, 0.5)),
                added(q(&p.sample, 0.99), q(&d.sample, 0.99)),
                added(q(&p.sample, 0.999), q(&d.sample, 0.999)),
                p.sample.throughput() / d.sample.throughput().max(1e-9),
            );
        }
    }
    println!();
    println!(
        "proxy RSS: idle {} at start, {} idle after the runs, peak {} (VmHWM)",
        fmt_mb(idle_rss),
        fmt_mb(idle_after),
        fmt_mb(peak_rss)
    );
    let lag = rows
        .iter()
        .map(|r| r.sample.max_send_lag)
        .max()
        .unwrap_or_default();
    println!(
        "open-loop latencies are measured from each request's scheduled send time \
         (worst pacer lag {}); max rows are closed loop",
        fmt_dur(lag)
    );
    println!("command: {command}");
}
