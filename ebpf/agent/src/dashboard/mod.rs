//! `conduit-ebpf dashboard --listen 127.0.0.1:PORT`: a small live web page
//! of the node's traffic. A background task scrapes the enrolled proxies
//! every `--interval` (as `stat --watch` does) and keeps the last
//! `--history` of snapshots (bounded); `GET /` renders, on the server, the
//! service graph over the last `--window` and, per service, p50/p99 latency
//! over the history, as inline SVG in one HTML page that reloads itself.
//! `GET /api/stat` gives the same figures as `stat --json`. No script, no
//! external resources.

pub mod svg;

use crate::proxies::Select;
use crate::stat::{self, Report, Snapshot, parse_duration};
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// Snapshots kept at most, whatever `--history` and `--interval` say.
pub const MAX_SNAPSHOTS: usize = 600;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Address to serve the page on.
    #[arg(long, default_value = "127.0.0.1:8084")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub select: Select,
    /// Time between scrapes (and page reloads).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
    /// The graph's figures cover this much time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub window: Duration,
    /// The latency charts cover this much time.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub history: Duration,
    #[arg(long, default_value = crate::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

struct State {
    snapshots: Mutex<VecDeque<Snapshot>>,
    window: Duration,
    history: Duration,
    refresh_s: u64,
}

impl State {
    fn keep(&self, s: Snapshot) {
        let mut h = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        h.push_back(s);
        while h.len() > MAX_SNAPSHOTS
            || (h.len() > 2 && h.back().map(|b| b.at.duration_since(h[1].at)) >= Some(self.history))
        {
            h.pop_front();
        }
    }

    /// The report over the last window and the latency series per service.
    fn figures(&self) -> (Report, BTreeMap<String, svg::Series>, f64) {
        let h = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        let Some(last) = h.back() else {
            return (
                Report {
                    window_s: 0.0,
                    routes: vec![],
                    tcp: vec![],
                    identities: BTreeMap::new(),
                },
                BTreeMap::new(),
                0.0,
            );
        };
        let start = h
            .iter()
            .rev()
            .find(|s| last.at.duration_since(s.at) >= self.window)
            .or(h.front())
            .unwrap_or(last);
        let report = stat::report(start, last, None);
        let mut series: BTreeMap<String, svg::Series> = BTreeMap::new();
        for (a, b) in h.iter().zip(h.iter().skip(1)) {
            let ago = last.at.duration_since(b.at).as_secs_f64();
            let mut step: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
            for r in stat::report(a, b, None)
                .routes
                .into_iter()
                .filter(|r| r.direction == "outbound")
            {
                let e = step.entry(r.dst).or_default();
                e.0 = max(e.0, r.p50_ms);
                e.1 = max(e.1, r.p99_ms);
            }
            for (dst, (p50, p99)) in step {
                if series.len() < svg::MAX_NODES || series.contains_key(&dst) {
                    series.entry(dst).or_default().push((ago, p50, p99));
                }
            }
        }
        let span = h
            .front()
            .map_or(0.0, |f| last.at.duration_since(f.at).as_secs_f64());
        (report, series, span)
    }
}

fn max(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn page(state: &State) -> String {
    let (report, series, span) = state.figures();
    let mut charts = String::new();
    for (dst, s) in &series {
        charts.push_str(&svg::latency_chart(
            &format!("{dst}: latency (outbound)"),
            s,
            span.max(1.0),
        ));
    }
    if charts.is_empty() {
        charts.push_str("<p>no outbound HTTP requests yet</p>");
    }
    let services: Vec<String> = series.keys().map(|s| svg::esc(s)).collect();
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh}">
<title>conduit-ebpf dashboard</title>
<style>body{{font-family:sans-serif;margin:16px;background:#fff}} .charts svg{{margin:4px}}</style></head>
<body>
<h1>conduit-ebpf: this node's mesh</h1>
<p id="summary">{n} routes over the last {w:.0} s; services: <span id="services">{services}</span></p>
{graph}
<h2>latency per service, last {span:.0} s</h2>
<div class="charts">{charts}</div>
<p>edges: calls from a pod to a service, and a service to the pods that serve it, labelled with requests/s, success, p99 (solid: mTLS, dashed: plaintext; red: success under 95%). Reloads every {refresh} s.</p>
</body></html>
"#,
        refresh = state.refresh_s,
        n = report.routes.len(),
        w = report.window_s,
        services = services.join(", "),
        graph = svg::graph(&report),
    )
}

fn respond(state: &State, path: &str) -> http::Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/" => (200, "text/html; charset=utf-8", page(state)),
        "/api/stat" => (
            200,
            "application/json",
            serde_json::to_string(&state.figures().0).unwrap_or_default(),
        ),
        _ => (
            404,
            "text/plain",
            "not found: try / or /api/stat\n".to_owned(),
        ),
    };
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

pub fn run(o: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(o.listen)
            .await
            .with_context(|| format!("binding {}", o.listen))?;
        let state = Arc::new(State {
            snapshots: Mutex::new(VecDeque::new()),
            window: o.window,
            history: o.history,
            refresh_s: o.interval.as_secs().max(1),
        });
        let sampler = state.clone();
        let (pin_dir, select, interval) = (o.pin_dir.clone(), o.select.clone(), o.interval);
        tokio::spawn(async move {
            loop {
                match stat::scrape(&pin_dir, &select).await {
                    Ok(s) => sampler.keep(s),
                    Err(e) => warn!("scraping the proxies: {e:#}"),
                }
                tokio::time::sleep(interval).await;
            }
        });
        info!(listen = %listener.local_addr()?, "dashboard serving");
        println!("dashboard on http://{}/", listener.local_addr()?);
        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    warn!("accept: {e}");
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let rsp = match req.method() {
                        &http::Method::GET => respond(&state, req.uri().path()),
                        _ => http::Response::builder()
                            .status(405)
                            .body(Full::new(Bytes::from_static(b"GET only\n")))
                            .unwrap_or_default(),
                    };
                    async move { Ok::<_, std::convert::Infallible>(rsp) }
                });
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                let _ = b
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}
