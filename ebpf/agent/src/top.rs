//! `conduit-ebpf top`: the busiest paths, live. Built on tap
//! ([`crate::tap`]): every request the selected proxies see is counted by
//! (pod, direction, authority, method, path); the table, sorted by request
//! count, is redrawn every `--interval` (in place on a terminal). At most
//! [`MAX_KEYS`] distinct paths are kept; later ones are counted as `(other)`.
//!
//! `RPS` is the recent rate, over the last `--window` (default 10 s), as
//! `linkerd viz top` shows it: each path keeps per-second buckets of the
//! window ([`Buckets`]), so a path that went quiet drops to 0 within the
//! window instead of decaying over everything seen since `top` started.
//! `COUNT`, `SUCCESS`, `MEAN` and `MAX` are since `top` started.

use crate::stat::parse_duration;
use crate::stat::table::{ms, pct};
use crate::tap::{Arrival, Source, success};
use anyhow::{Result, bail};
use conduit_register::tap::{TapEvent, TapMessage};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub const MAX_KEYS: usize = 10_000;
/// Width of one rate bucket.
pub const BUCKET: Duration = Duration::from_secs(1);
/// Longest `--window` (buckets kept per path).
pub const MAX_WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub source: Source,
    /// Redraw this often.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Rows shown.
    #[arg(long, default_value_t = 20)]
    pub rows: usize,
    /// Stop after this long, printing the table a last time.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// The recent rate (RPS) is over this last stretch (1s to 5m, whole seconds).
    #[arg(long, default_value = "10s", value_parser = parse_window)]
    pub window: Duration,
    /// Print each table as one JSON array.
    #[arg(long)]
    pub json: bool,
}

fn parse_window(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d < BUCKET || d > MAX_WINDOW || d.subsec_nanos() != 0 {
        return Err(format!(
            "--window {s}: whole seconds from {}s to {}s",
            BUCKET.as_secs(),
            MAX_WINDOW.as_secs()
        ));
    }
    Ok(d)
}

/// Requests per [`BUCKET`] over the last buckets of a window: `(bucket
/// index since start, requests)`, oldest first, at most `n` kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(VecDeque<(u64, u64)>);

impl Buckets {
    /// Counts one request at `now` (time since start), keeping `n` buckets.
    pub fn add(&mut self, now: Duration, n: u64) {
        let idx = bucket_of(now);
        match self.0.back_mut() {
            Some((i, c)) if *i == idx => *c += 1,
            _ => self.0.push_back((idx, 1)),
        }
        while self.0.front().is_some_and(|&(i, _)| i + n <= idx) {
            self.0.pop_front();
        }
    }

    /// Requests per second over the window of `n` buckets ending at `now`:
    /// the requests of the current (partial) bucket and the `n - 1` before
    /// it, over the time they cover (less at the start, when less time has
    /// passed).
    pub fn rate(&self, now: Duration, n: u64) -> f64 {
        let cur = bucket_of(now);
        let first = (cur + 1).saturating_sub(n);
        let count: u64 = self
            .0
            .iter()
            .filter(|&&(i, _)| i >= first && i <= cur)
            .map(|&(_, c)| c)
            .sum();
        let covered = now.saturating_sub(BUCKET * u32::try_from(first).unwrap_or(u32::MAX));
        count as f64 / covered.as_secs_f64().max(1e-3)
    }
}

fn bucket_of(t: Duration) -> u64 {
    (t.as_nanos() / BUCKET.as_nanos()) as u64
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub struct Key {
    pub pod: String,
    pub direction: String,
    pub authority: String,
    pub method: String,
    pub path: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Row {
    #[serde(flatten)]
    pub key: Option<Key>,
    pub count: u64,
    pub successes: u64,
    pub rps: f64,
    pub success: Option<f64>,
    pub mean_ms: Option<f64>,
    pub max_ms: Option<f64>,
    #[serde(skip)]
    sum_us: u64,
    #[serde(skip)]
    max_us: u64,
    #[serde(skip)]
    recent: Buckets,
}

/// The counts so far.
#[derive(Debug)]
pub struct Top {
    rows: HashMap<Key, Row>,
    /// Buckets in the rate window.
    window: u64,
}

impl Top {
    /// Rates over the last `window` (whole [`BUCKET`]s, at least one).
    pub fn new(window: Duration) -> Top {
        Top {
            rows: HashMap::new(),
            window: (window.as_nanos() / BUCKET.as_nanos()).max(1) as u64,
        }
    }

    /// Counts `e`, seen at `now` (time since start).
    pub fn add(&mut self, pod: &str, e: &TapEvent, now: Duration) {
        let mut key = Key {
            pod: pod.to_owned(),
            direction: e.direction.clone(),
            authority: e.authority.clone(),
            method: e.method.clone(),
            path: e.path.clone(),
        };
        if !self.rows.contains_key(&key) && self.rows.len() >= MAX_KEYS {
            key = Key {
                pod: pod.to_owned(),
                direction: e.direction.clone(),
                authority: "(other)".into(),
                method: "-".into(),
                path: "(other)".into(),
            };
        }
        let r = self.rows.entry(key).or_default();
        r.count += 1;
        r.successes += u64::from(success(e));
        r.sum_us += e.latency_us;
        r.max_us = r.max_us.max(e.latency_us);
        r.recent.add(now, self.window);
    }

    /// The `n` busiest now (recent rate, then count), at `now` (time since
    /// start).
    pub fn table(&self, n: usize, now: Duration) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .rows
            .iter()
            .map(|(k, r)| Row {
                key: Some(k.clone()),
                rps: r.recent.rate(now, self.window),
                success: Some(r.successes as f64 / r.count as f64),
                mean_ms: Some(r.sum_us as f64 / r.count as f64 / 1000.0),
                max_ms: Some(r.max_us as f64 / 1000.0),
                ..r.clone()
            })
            .collect();
        rows.sort_by(|a, b| {
            b.rps
                .total_cmp(&a.rps)
                .then_with(|| b.count.cmp(&a.count))
                .then_with(|| a.key.cmp(&b.key))
        });
        rows.truncate(n);
        rows
    }
}

pub fn render(rows: &[Row], dropped: u64) -> String {
    let mut out = String::new();
    let kw = |f: fn(&Key) -> usize, min: usize| {
        rows.iter()
            .filter_map(|r| r.key.as_ref())
            .map(f)
            .max()
            .unwrap_or(min)
            .max(min)
    };
    let pw = kw(|k| k.pod.len(), 3);
    let aw = kw(|k| k.authority.len(), 9);
    out.push_str(&format!(
        "{:<pw$}  {:<8}  {:<aw$}  {:<6}  {:<24}  {:>6}  {:>7}  {:>8}  {:>8}  {:>8}\n",
        "POD", "DIR", "AUTHORITY", "METHOD", "PATH", "COUNT", "RPS", "SUCCESS", "MEAN", "MAX"
    ));
    for r in rows {
        let Some(k) = &r.key else { continue };
        out.push_str(&format!(
            "{:<pw$}  {:<8}  {:<aw$}  {:<6}  {:<24}  {:>6}  {:>7.2}  {:>8}  {:>8}  {:>8}\n",
            k.pod,
            k.direction,
            k.authority,
            k.method,
            k.path,
            r.count,
            r.rps,
            pct(r.success),
            ms(r.mean_ms),
            ms(r.max_ms)
        ));
    }
    if dropped > 0 {
        out.push_str(&format!(
            "({dropped} events dropped by the proxies: this reader was too slow)\n"
        ));
    }
    out
}

pub fn run(o: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tty = std::io::stdout().is_terminal();
    rt.block_on(async {
        let (mut rx, mut live) = crate::tap::open(&o.source)?;
        let start = Instant::now();
        let mut top = Top::new(o.window);
        let mut dropped: HashMap<String, u64> = HashMap::new();
        let mut tick = tokio::time::interval(o.interval);
        tick.tick().await;
        let end = o.duration.map(|d| tokio::time::Instant::now() + d);
        let show = |top: &Top, dropped: &HashMap<String, u64>, last: bool| -> Result<()> {
            let rows = top.table(o.rows, start.elapsed());
            let mut out = std::io::stdout().lock();
            if o.json {
                writeln!(out, "{}", serde_json::to_string(&rows)?)?;
            } else {
                if tty && !last {
                    write!(out, "\x1b[H\x1b[2J")?;
                }
                write!(out, "{}", render(&rows, dropped.values().sum()))?;
                if !tty {
                    writeln!(out)?;
                }
            }
            out.flush()?;
            Ok(())
        };
        loop {
            let stop = async {
                match end {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                a = rx.recv() => match a {
                    Some(Arrival::Message(pod, TapMessage::Request(e))) => top.add(&pod, &e, start.elapsed()),
                    Some(Arrival::Message(pod, TapMessage::Dropped { total })) => {
                        dropped.insert(pod, total);
                    }
                    Some(Arrival::Failed(pod, e)) => {
                        eprintln!("pod {pod}: {e}");
                        live -= 1;
                        if live == 0 {
                            bail!("no tap stream left");
                        }
                    }
                    None => return show(&top, &dropped, true),
                },
                _ = tick.tick() => show(&top, &dropped, false)?,
                _ = stop => return show(&top, &dropped, true),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(path: &str, status: u16, latency_us: u64) -> TapEvent {
        TapEvent {
            ts_us: 0,
            direction: "outbound".into(),
            client: "127.0.0.1:5".into(),
            peer_identity: None,
            dst: "web:80".into(),
            method: "GET".into(),
            authority: "web".into(),
            path: path.into(),
            version: "HTTP/1.1".into(),
            status,
            grpc_status: None,
            latency_us,
            duration_us: latency_us,
            req_bytes: None,
            rsp_bytes: 0,
            success: None,
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn busiest_first_with_success_and_latency() {
        let mut t = Top::new(Duration::from_secs(10));
        for i in 0..4 {
            t.add(
                "default/client",
                &event("/a", if i == 0 { 500 } else { 200 }, 1000 * (i + 1)),
                S / 2,
            );
        }
        t.add("default/client", &event("/b", 200, 500), S / 2);
        let rows = t.table(10, S * 2);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key.as_ref().unwrap().path, "/a");
        assert_eq!(rows[0].count, 4);
        assert_eq!(rows[0].rps, 2.0);
        assert_eq!(rows[0].success, Some(0.75));
        assert_eq!(rows[0].mean_ms, Some(2.5));
        assert_eq!(rows[0].max_ms, Some(4.0));
        assert_eq!(t.table(1, Duration::from_secs(1)).len(), 1);
        let text = render(&rows, 3);
        assert!(text.lines().nth(1).unwrap().contains("/a"), "{text}");
        assert!(
            text.contains("75.00%") && text.contains("3 events dropped"),
            "{text}"
        );
    }

    #[test]
    fn distinct_paths_are_bounded() {
        let mut t = Top::new(Duration::from_secs(10));
        for i in 0..MAX_KEYS + 5 {
            t.add("p", &event(&format!("/{i}"), 200, 1), S);
        }
        assert_eq!(t.rows.len(), MAX_KEYS + 1);
        let other = t.table(MAX_KEYS + 1, Duration::from_secs(1));
        assert_eq!(other[0].key.as_ref().unwrap().path, "(other)");
        assert_eq!(other[0].count, 5);
    }

    /// The window's rate: (requests as (time ms, how many), window in
    /// buckets, now ms, expected requests/s).
    #[test]
    fn rate_is_over_the_recent_window() {
        type Case = (&'static [(u64, u64)], u64, u64, f64);
        let table: &[Case] = &[
            // 10/s for 30 s, window 10 s, asked at 30 s: 10/s.
            (&[(0, 300)], 10, 30_000, 10.0),
            // 100 requests in the first second, then silence: gone after
            // the window (since-start would still say 100/20 s = 5/s).
            (&[(500, 100)], 10, 20_000, 0.0),
            // ... but within the window: 100 over the 10 s it covers.
            (&[(500, 100)], 10, 9_999, 100.0 / 9.999),
            // Before a whole window has passed: over the time so far.
            (&[(0, 40)], 10, 4_000, 10.0),
            // A burst in the current partial second counts over the
            // covered time: 9 full seconds before it plus 0.5 s.
            (&[(29_250, 19)], 10, 29_500, 2.0),
            // Window of one bucket: only the current second.
            (&[(1_000, 5), (1_800, 5)], 1, 1_900, 10.0 / 0.9),
        ];
        for &(events, n, now_ms, want) in table {
            let mut b = Buckets::default();
            for &(at, count) in events {
                // `count` requests spread over the time from `at`.
                let spread = if events.len() == 1 && count > 1 && at == 0 {
                    (now_ms - at) / count
                } else {
                    0
                };
                for k in 0..count {
                    b.add(Duration::from_millis(at + k * spread), n);
                }
            }
            assert!(
                b.0.len() as u64 <= n,
                "{events:?}: {} buckets kept",
                b.0.len()
            );
            let got = b.rate(Duration::from_millis(now_ms), n);
            assert!(
                (got - want).abs() < 1e-6,
                "{events:?} n={n} now={now_ms}ms: {got}, want {want}"
            );
        }
    }

    #[test]
    fn quiet_paths_fall_below_busy_ones() {
        let mut t = Top::new(Duration::from_secs(5));
        // /old: 50 requests at the start; /new: 10 in the last seconds.
        for _ in 0..50 {
            t.add("p", &event("/old", 200, 1), S / 2);
        }
        for i in 0..10 {
            t.add("p", &event("/new", 200, 1), S * 20 + S * i / 4);
        }
        let rows = t.table(10, S * 23);
        assert_eq!(rows[0].key.as_ref().unwrap().path, "/new");
        assert_eq!(rows[1].rps, 0.0);
        assert_eq!(rows[1].count, 50, "COUNT stays since start");
        assert!(parse_window("0s").is_err() && parse_window("1500ms").is_err());
        assert_eq!(parse_window("30s").unwrap(), S * 30);
    }
}
