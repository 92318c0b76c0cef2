//! `conduit-ebpf tap`: the requests of one or more pods' proxies as they
//! finish. Each selected proxy is asked for `GET /tap?<filter>` on its
//! operator listener (loopback in the pod, reached by entering the pod's
//! network namespace, see [`crate::proxies`]); the filter is applied by the
//! proxy, so unwanted events never leave it. Lines from every pod are
//! merged as they come.

use crate::proxies::{self, DEFAULT_CONTROL_PORT, Proxy, Select};
use crate::stat::parse_duration;
use crate::stat::table::short_identity;
use anyhow::{Context, Result, bail};
use conduit_register::tap::{TapEvent, TapFilter, TapMessage};
use http_body_util::BodyExt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest line accepted from a proxy.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, clap::Args)]
pub struct Filter {
    /// `inbound` or `outbound`.
    #[arg(long)]
    pub direction: Option<String>,
    /// HTTP method, e.g. GET.
    #[arg(long)]
    pub method: Option<String>,
    /// Path prefix, e.g. /api.
    #[arg(long)]
    pub path: Option<String>,
    /// Status class: 2xx, 4xx, 5xx ...
    #[arg(long)]
    pub status: Option<String>,
}

impl Filter {
    pub fn to_tap(&self) -> Result<TapFilter> {
        let mut f = TapFilter::default();
        for (k, v) in [
            ("direction", &self.direction),
            ("method", &self.method),
            ("path", &self.path),
            ("status", &self.status),
        ] {
            if let Some(v) = v {
                f.set(k, v).with_context(|| format!("--{k}"))?;
            }
        }
        Ok(f)
    }
}

/// Where the proxies are and how to reach their tap.
#[derive(Debug, Clone, clap::Args)]
pub struct Source {
    #[command(flatten)]
    pub select: Select,
    #[command(flatten)]
    pub filter: Filter,
    /// Events each proxy queues for this listener before dropping (and
    /// counting) more.
    #[arg(long, default_value_t = 256)]
    pub buffer: usize,
    /// The proxies' operator port (`--control-addr`).
    #[arg(long, default_value_t = DEFAULT_CONTROL_PORT)]
    pub control_port: u16,
    /// For proxies started with `--control-token-file`: a file holding the
    /// same token.
    #[arg(long)]
    pub control_token_file: Option<PathBuf>,
    #[arg(long, default_value = crate::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub source: Source,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many requests.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop after this long (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
}

/// What arrives from the proxies.
#[derive(Debug)]
pub enum Arrival {
    Message(String, TapMessage),
    /// A proxy refused or the stream broke.
    Failed(String, String),
}

/// Opens a tap stream to every selected proxy; everything arrives on one
/// channel (bounded: a slow reader slows the streams, and the proxies drop).
pub fn open(source: &Source) -> Result<(mpsc::Receiver<Arrival>, usize)> {
    let filter = source.filter.to_tap()?;
    let found = proxies::find(&source.pin_dir, &source.select)?;
    if found.is_empty() {
        bail!("no enrolled pod matches (see `conduit-ebpf status`)");
    }
    let mut query = filter.to_query();
    if !query.is_empty() {
        query.push('&');
    }
    query.push_str(&format!("buffer={}", source.buffer.max(1)));
    let path = format!("/tap?{query}");
    let token: Option<std::sync::Arc<str>> = match &source.control_token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .into(),
        ),
        None => None,
    };
    let (tx, rx) = mpsc::channel(1024);
    let n = found.len();
    for p in found {
        let (tx, path, port, token) =
            (tx.clone(), path.clone(), source.control_port, token.clone());
        tokio::spawn(async move {
            let pod = p.pod();
            if let Err(e) = stream(&p, port, &path, token.as_deref(), &tx).await {
                let _ = tx.send(Arrival::Failed(pod, format!("{e:#}"))).await;
            }
        });
    }
    Ok((rx, n))
}

async fn stream(
    p: &Proxy,
    port: u16,
    path: &str,
    token: Option<&str>,
    tx: &mpsc::Sender<Arrival>,
) -> Result<()> {
    let rsp = proxies::get_with(p.pid, port, path, token).await?;
    let status = rsp.status();
    let mut body = rsp.into_body();
    if status != http::StatusCode::OK {
        let text = http_body_util::Limited::new(body, 4096)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        bail!("the proxy refused to tap ({status}): {text}");
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the tap stream")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let msg: TapMessage = serde_json::from_slice(line).context("a malformed tap line")?;
            if tx.send(Arrival::Message(p.pod(), msg)).await.is_err() {
                return Ok(());
            }
        }
        if pending.len() > MAX_LINE {
            bail!("a tap line longer than {MAX_LINE} bytes");
        }
    }
    bail!("the proxy closed the tap stream")
}

/// `06:40:00.123` (UTC) of a unix time in microseconds.
pub fn clock(ts_us: u64) -> String {
    let ms = ts_us / 1000 % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Whether a request succeeded: the proxy's classification (the one its
/// metrics count); from a proxy without it, not 5xx and gRPC OK when gRPC.
pub fn success(e: &TapEvent) -> bool {
    e.success
        .unwrap_or_else(|| e.status < 500 && e.grpc_status.is_none_or(|s| s == 0))
}

/// One human line for an event.
pub fn line(pod: &str, e: &TapEvent) -> String {
    let status = match e.grpc_status {
        Some(g) => format!("{} grpc-status={g}", e.status),
        None => e.status.to_string(),
    };
    format!(
        "{} {pod} {:<8} {} {}{} -> {status} {:.2}ms {}B peer={}",
        clock(e.ts_us),
        e.direction,
        e.method,
        e.authority,
        e.path,
        e.latency_us as f64 / 1000.0,
        e.rsp_bytes,
        e.peer_identity
            .as_deref()
            .map_or_else(|| "-".into(), short_identity),
    )
}

/// One JSON line: the event's fields and `pod`, or `{"pod", "dropped"}`.
pub fn json_line(pod: &str, m: &TapMessage) -> String {
    let mut v = match m {
        TapMessage::Request(e) => serde_json::to_value(e).unwrap_or_default(),
        TapMessage::Dropped { total } => serde_json::json!({ "dropped": total }),
    };
    if let Some(o) = v.as_object_mut() {
        o.insert("pod".into(), pod.into());
    }
    v.to_string()
}

pub fn run(o: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (mut rx, mut live) = open(&o.source)?;
        let deadline = o.duration.map(|d| tokio::time::Instant::now() + d);
        let mut seen = 0u64;
        let mut out = std::io::stdout();
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                    Ok(n) => n,
                    Err(_) => return Ok(()),
                },
                None => rx.recv().await,
            };
            let Some(a) = next else { return Ok(()) };
            match a {
                Arrival::Failed(pod, e) => {
                    eprintln!("pod {pod}: {e}");
                    live -= 1;
                    if live == 0 {
                        bail!("no tap stream left");
                    }
                }
                Arrival::Message(pod, m) => {
                    let text = match (&m, o.json) {
                        (_, true) => json_line(&pod, &m),
                        (TapMessage::Request(e), false) => line(&pod, e),
                        (TapMessage::Dropped { total }, false) => {
                            format!("# {pod}: {total} events dropped so far (this listener read too slowly)")
                        }
                    };
                    if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
                        return Ok(());
                    }
                    if matches!(m, TapMessage::Request(_)) {
                        seen += 1;
                        if o.max.is_some_and(|m| seen >= m) {
                            return Ok(());
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> TapEvent {
        TapEvent {
            ts_us: 1_796_280_000_123_456,
            direction: "outbound".into(),
            client: "127.0.0.1:5".into(),
            peer_identity: Some("spiffe://cluster.local/ns/default/sa/web".into()),
            dst: "web.default.svc.cluster.local:80".into(),
            method: "GET".into(),
            authority: "web.default.svc.cluster.local".into(),
            path: "/hello".into(),
            version: "HTTP/1.1".into(),
            status: 200,
            grpc_status: None,
            latency_us: 1234,
            duration_us: 1300,
            req_bytes: None,
            rsp_bytes: 152,
            success: None,
        }
    }

    #[test]
    fn human_and_json_lines() {
        assert_eq!(
            line("default/client", &event()),
            "06:40:00.123 default/client outbound GET web.default.svc.cluster.local/hello -> 200 1.23ms 152B peer=default/web"
        );
        let j: serde_json::Value = serde_json::from_str(&json_line(
            "default/client",
            &TapMessage::Request(Box::new(event())),
        ))
        .unwrap();
        assert_eq!(j["pod"], "default/client");
        assert_eq!(j["status"], 200);
        let d = json_line("p", &TapMessage::Dropped { total: 7 });
        assert_eq!(d, r#"{"dropped":7,"pod":"p"}"#);
    }

    #[test]
    fn success_is_the_proxys_classification_else_status_and_grpc_status() {
        // (status, grpc-status, the proxy's classification, success)
        let cases = [
            // A proxy without the field: read from status and grpc-status.
            (200, None, None, true),
            (200, Some(14), None, false),
            (503, Some(0), None, false),
            (404, None, None, true),
            // The proxy's classification decides: a gRPC stream that ended
            // without a status (no grpc-status to read) or a gRPC-Web
            // call's trailers frame (not in `grpc_status`).
            (200, None, Some(false), false),
            (200, None, Some(true), true),
            (503, None, Some(false), false),
        ];
        for (status, grpc_status, classified, want) in cases {
            let mut e = event();
            (e.status, e.grpc_status, e.success) = (status, grpc_status, classified);
            assert_eq!(success(&e), want, "{status} {grpc_status:?} {classified:?}");
        }
    }

    #[test]
    fn filter_flags() {
        let f = Filter {
            direction: Some("inbound".into()),
            method: None,
            path: Some("/api".into()),
            status: Some("5xx".into()),
        };
        assert_eq!(
            f.to_tap().unwrap().to_query(),
            "direction=inbound&path=/api&status=5xx"
        );
        let bad = Filter {
            direction: Some("sideways".into()),
            method: None,
            path: None,
            status: None,
        };
        assert!(format!("{:#}", bad.to_tap().unwrap_err()).contains("--direction"));
    }
}
