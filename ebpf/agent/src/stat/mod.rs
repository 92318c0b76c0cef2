//! `conduit-ebpf stat`: per pod and destination, inbound and outbound,
//! request rate, success rate, p50/p95/p99 latency, peer identities and
//! mTLS share, and each pod's TCP connections and bytes, over a window.
//!
//! How: the enrolled proxies are found in the agent's pinned state
//! ([`crate::proxies`]) and their `/metrics` scraped from inside each pod's
//! network namespace twice, `--window` apart (default 30 s); the table is
//! the difference ([`window`]). With `--watch` a scrape every `--interval`
//! refreshes the table in place, always over the last `--window`. No
//! Prometheus server is involved.

pub mod prom;
pub mod table;
pub mod window;

use crate::proxies::{self, Proxy, Select};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use window::{RouteStat, TcpStat, Totals};

#[derive(Debug, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub select: Select,
    /// Only destinations naming this service (`web`, `web.default.svc.cluster.local`,
    /// or the whole `host:port`).
    #[arg(long)]
    pub to: Option<String>,
    /// The window the figures cover (e.g. `30s`, `1m`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub window: Duration,
    /// Machine-readable output (one JSON object; one per refresh with --watch).
    #[arg(long)]
    pub json: bool,
    /// Refresh every --interval until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: time between refreshes.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
    #[arg(long, default_value = crate::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// `250ms`, `30s`, `2m`, or seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 500ms, 30s or 2m");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Whether destination label `dst` names `service`.
pub fn to_matches(service: &str, dst: &str) -> bool {
    let host = dst.rsplit_once(':').map_or(dst, |(h, _)| h);
    dst == service
        || host == service
        || host
            .strip_prefix(service)
            .is_some_and(|r| r.starts_with('.'))
}

/// One scrape of every selected proxy.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub pods: BTreeMap<String, Totals>,
}

/// Scrapes the proxies of the pods `select` matches (concurrently); a proxy
/// that does not answer is reported on stderr and left out.
pub async fn scrape(pin_dir: &Path, select: &Select) -> Result<Snapshot> {
    let found = proxies::find(pin_dir, select)?;
    let at = Instant::now();
    let tasks: Vec<_> = found
        .into_iter()
        .map(|p: Proxy| {
            tokio::spawn(async move {
                let r = proxies::get_text(p.pid, p.admin_port, "/metrics").await;
                (p.pod(), r)
            })
        })
        .collect();
    let mut pods = BTreeMap::new();
    for t in tasks {
        let (pod, r) = t.await?;
        match r {
            Ok(text) => {
                pods.insert(pod, window::totals(&prom::parse(&text)));
            }
            Err(e) => eprintln!("warning: pod {pod}: reading its proxy's metrics: {e:#}"),
        }
    }
    Ok(Snapshot { at, pods })
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub window_s: f64,
    pub routes: Vec<RouteStat>,
    pub tcp: Vec<TcpStat>,
    /// Pod -> its proxy's own identity (pods whose proxy has one).
    pub identities: BTreeMap<String, String>,
}

/// What happened between two snapshots (pods missing from `old` are left
/// out: their window has not begun).
pub fn report(old: &Snapshot, new: &Snapshot, to: Option<&str>) -> Report {
    let secs = new.at.duration_since(old.at).as_secs_f64();
    let mut routes = Vec::new();
    let mut tcp = Vec::new();
    let mut identities = BTreeMap::new();
    for (pod, n) in &new.pods {
        if let Some(id) = &n.identity {
            identities.insert(pod.clone(), id.clone());
        }
        let Some(o) = old.pods.get(pod) else { continue };
        let (r, t) = window::diff(pod, o, n, secs);
        routes.extend(
            r.into_iter()
                .filter(|r| to.is_none_or(|s| to_matches(s, &r.dst))),
        );
        tcp.extend(t);
    }
    Report {
        window_s: secs,
        routes,
        tcp,
        identities,
    }
}

fn print(r: &Report, json: bool, clear: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
    } else {
        if clear {
            // Cursor home and clear the screen: refresh in place.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        write!(out, "{}", table::render(&r.routes, &r.tcp, r.window_s))?;
    }
    out.flush()?;
    Ok(())
}

pub fn run(o: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let first = scrape(&o.pin_dir, &o.select).await?;
        if first.pods.is_empty() {
            eprintln!("no enrolled pod matches (see `conduit-ebpf status`)");
        }
        if !o.watch {
            tokio::time::sleep(o.window).await;
            let second = scrape(&o.pin_dir, &o.select).await?;
            return print(&report(&first, &second, o.to.as_deref()), o.json, false);
        }
        let mut history = VecDeque::from([first]);
        loop {
            tokio::time::sleep(o.interval).await;
            let now = scrape(&o.pin_dir, &o.select).await?;
            history.push_back(now);
            trim(&mut history, o.window);
            if let (Some(a), Some(b)) = (history.front(), history.back()) {
                print(&report(a, b, o.to.as_deref()), o.json, true)?;
            }
        }
    })
}

/// Keeps the newest snapshot at least `window` older than the last one, and
/// everything after it.
pub fn trim(history: &mut VecDeque<Snapshot>, window: Duration) {
    let Some(last) = history.back().map(|s| s.at) else {
        return;
    };
    while history.len() > 2 && last.duration_since(history[1].at) >= window {
        history.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn service_names() {
        for (svc, dst, want) in [
            ("web", "web.default.svc.cluster.local:80", true),
            (
                "web.default.svc.cluster.local",
                "web.default.svc.cluster.local:80",
                true,
            ),
            (
                "web.default.svc.cluster.local:80",
                "web.default.svc.cluster.local:80",
                true,
            ),
            ("web", "webshop.default.svc.cluster.local:80", false),
            ("web", "10.96.0.10:80", false),
            ("10.96.0.10", "10.96.0.10:80", true),
            ("web", "app:8080", false),
        ] {
            assert_eq!(to_matches(svc, dst), want, "{svc} {dst}");
        }
    }

    #[test]
    fn history_keeps_one_window() {
        let t0 = Instant::now();
        let snap = |s: u64| Snapshot {
            at: t0 + Duration::from_secs(s),
            pods: BTreeMap::new(),
        };
        let mut h: VecDeque<Snapshot> = (0..=10).map(|s| snap(s * 2)).collect();
        trim(&mut h, Duration::from_secs(5));
        // last at 20 s: the newest at least 5 s older is 14 s.
        assert_eq!(h.front().unwrap().at, t0 + Duration::from_secs(14));
        let mut short: VecDeque<Snapshot> = (0..2).map(snap).collect();
        trim(&mut short, Duration::from_secs(60));
        assert_eq!(short.len(), 2);
    }
}
