//! `conduit-ebpf top`: the busiest paths, live. Built on tap
//! ([`crate::tap`]): every request the selected proxies see is counted by
//! (pod, direction, authority, method, path); the table, sorted by request
//! count, is redrawn every `--interval` (in place on a terminal). At most
//! [`MAX_KEYS`] distinct paths are kept; later ones are counted as `(other)`.

use crate::stat::parse_duration;
use crate::stat::table::{ms, pct};
use crate::tap::{Arrival, Source, success};
use anyhow::{Result, bail};
use conduit_register::tap::{TapEvent, TapMessage};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub const MAX_KEYS: usize = 10_000;

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
    /// Print each table as one JSON array.
    #[arg(long)]
    pub json: bool,
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
}

/// The counts so far.
#[derive(Debug, Default)]
pub struct Top {
    rows: HashMap<Key, Row>,
}

impl Top {
    pub fn add(&mut self, pod: &str, e: &TapEvent) {
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
    }

    /// The `n` busiest, with rates over `elapsed`.
    pub fn table(&self, n: usize, elapsed: Duration) -> Vec<Row> {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut rows: Vec<Row> = self
            .rows
            .iter()
            .map(|(k, r)| Row {
                key: Some(k.clone()),
                rps: r.count as f64 / secs,
                success: Some(r.successes as f64 / r.count as f64),
                mean_ms: Some(r.sum_us as f64 / r.count as f64 / 1000.0),
                max_ms: Some(r.max_us as f64 / 1000.0),
                ..r.clone()
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
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
        let mut top = Top::default();
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
                    Some(Arrival::Message(pod, TapMessage::Request(e))) => top.add(&pod, &e),
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
        }
    }

    #[test]
    fn busiest_first_with_success_and_latency() {
        let mut t = Top::default();
        for i in 0..4 {
            t.add(
                "default/client",
                &event("/a", if i == 0 { 500 } else { 200 }, 1000 * (i + 1)),
            );
        }
        t.add("default/client", &event("/b", 200, 500));
        let rows = t.table(10, Duration::from_secs(2));
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
        let mut t = Top::default();
        for i in 0..MAX_KEYS + 5 {
            t.add("p", &event(&format!("/{i}"), 200, 1));
        }
        assert_eq!(t.rows.len(), MAX_KEYS + 1);
        let other = t.table(MAX_KEYS + 1, Duration::from_secs(1));
        assert_eq!(other[0].key.as_ref().unwrap().path, "(other)");
        assert_eq!(other[0].count, 5);
    }
}
