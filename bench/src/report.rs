//! Formatting of durations, sizes and differences, the machine's load
//! average, and the one-proxy-against-direct results table of
//! `conduit-proxy-bench` (Markdown, so it can be pasted into
//! docs/benchmarks.md).

pub use crate::loadgen::Load;
use crate::loadgen::{Protocol, Sample};
use std::time::Duration;

pub struct Row {
    pub protocol: Protocol,
    pub load: Load,
    pub path: &'static str,
    pub sample: Sample,
    /// Largest proxy RSS and anonymous RSS seen during the run (proxy rows).
    pub rss: Option<crate::procstat::Usage>,
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

pub fn fmt_mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// `+123 µs` (proxy minus direct).
pub fn added(proxy: Option<Duration>, direct: Option<Duration>) -> String {
    match crate::stats::added(proxy, direct) {
        Some(n) if n >= 0 => format!("+{}", fmt_dur(Duration::from_nanos(n as u64))),
        Some(n) => format!(
            "-{}",
            fmt_dur(Duration::from_nanos(n.unsigned_abs() as u64))
        ),
        None => "-".into(),
    }
}

/// The machine's 1-minute load average and CPU count, from /proc.
pub fn load_average() -> Option<(f64, usize)> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let load = text.split_whitespace().next()?.parse().ok()?;
    Some((
        load,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    ))
}

pub struct Summary {
    pub idle_rss: u64,
    pub idle_after: u64,
    /// RSS after an idle pause following the runs, and the pause.
    pub settled: Option<(u64, std::time::Duration)>,
    pub peak_rss: u64,
    pub load_before: Option<(f64, usize)>,
    pub load_after: Option<(f64, usize)>,
}

pub fn print(rows: &[Row], sum: &Summary, command: &str) {
    println!(
        "| protocol | load | path | p50 | p99 | p99.9 | throughput | errors | new conns | proxy RSS (anon) |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for pair in rows.chunks(2) {
        for r in pair {
            let s = &r.sample;
            println!(
                "| {} | {} | {} | {} | {} | {} | {:.0} req/s | {} | {} | {} |",
                r.protocol.label(),
                r.load,
                r.path,
                fmt_opt(s.quantile(0.5)),
                fmt_opt(s.quantile(0.99)),
                fmt_opt(s.quantile(0.999)),
                s.throughput(),
                s.errors,
                s.connections,
                r.rss.map_or_else(String::new, |u| format!(
                    "{} ({})",
                    fmt_mb(u.max_rss),
                    fmt_mb(u.max_anon)
                )),
            );
        }
        if let [d, p] = pair {
            let q = |s: &Sample, x| s.quantile(x);
            println!(
                "| {} | {} | **proxy − direct** | {} | {} | {} | {:.2}× | | | |",
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
    for pair in rows.chunks(2) {
        if let [d, p] = pair {
            let q = |s: &Sample, x| s.quantile(x);
            match p.load {
                Load::Rate(_) => println!(
                    "- {} at {}: added p50 {}, added p99 {}",
                    p.protocol.label(),
                    p.load,
                    added(q(&p.sample, 0.5), q(&d.sample, 0.5)),
                    added(q(&p.sample, 0.99), q(&d.sample, 0.99)),
                ),
                Load::Max(_) => println!(
                    "- {} maximum rate: {:.0} req/s through the proxy, {:.0} direct ({:.2}× of direct)",
                    p.protocol.label(),
                    p.sample.throughput(),
                    d.sample.throughput(),
                    p.sample.throughput() / d.sample.throughput().max(1e-9),
                ),
            }
        }
    }
    let settled = sum.settled.map_or(String::new(), |(rss, after)| {
        format!(", {} after {}s idle", fmt_mb(rss), after.as_secs())
    });
    let largest = |field: fn(&crate::procstat::Usage) -> u64| {
        rows.iter()
            .filter_map(|r| r.rss)
            .map(|u| field(&u))
            .max()
            .unwrap_or(0)
    };
    println!(
        "- proxy RSS: idle {} at start, {} idle after the runs{settled}, peak {} (VmHWM); largest under load {}, of which anonymous (heap, stacks; the code pages are shared by every proxy on a node) {}",
        fmt_mb(sum.idle_rss),
        fmt_mb(sum.idle_after),
        fmt_mb(sum.peak_rss),
        fmt_mb(largest(|u| u.max_rss)),
        fmt_mb(largest(|u| u.max_anon)),
    );
    if let (Some((before, cpus)), Some((after, _))) = (sum.load_before, sum.load_after) {
        println!(
            "- machine: {cpus} CPUs, load average {before:.2} before, {after:.2} after (the benchmark itself adds about 2)"
        );
    }
    let lag = rows
        .iter()
        .map(|r| r.sample.max_send_lag)
        .max()
        .unwrap_or_default();
    println!(
        "- open-loop latencies are measured from each request's scheduled send time \
         (worst pacer lag {}); max rows are closed loop",
        fmt_dur(lag)
    );
    println!("- command: {command}");
}

/// The last `n` lines of a log file (empty when it cannot be read): what a
/// benchmark prints when a process it started misbehaves.
pub fn log_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
