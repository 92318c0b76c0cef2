//! `conduit-mesh-app load`: the load loop of [`super::load`], run in the
//! client pod. Workers per protocol make one request at a time; stdin takes
//! `report` (pause, wait for the requests in flight, print a
//! `{"event":"report"}` line, resume), `peek` (requests finished and
//! succeeded so far in this phase) and `quit`.

use super::load::{Figures, LoadReport, LoadSpec, Record, figures};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use conduit_test_support::echo::{EchoClient, Msg};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// Wait before retrying a refused or unreachable connect.
const CONNECT_RETRY: Duration = Duration::from_millis(50);

struct Done {
    proto: &'static str,
    record: Record,
    error: Option<String>,
}

#[derive(Default)]
struct State {
    done: Mutex<Vec<Done>>,
    in_flight: AtomicUsize,
    paused: AtomicBool,
    retries: Mutex<BTreeMap<&'static str, u64>>,
    seq: AtomicU64,
}

impl State {
    fn retried(&self, proto: &'static str) {
        *self.retries.lock().unwrap().entry(proto).or_default() += 1;
    }
}

/// Runs the load loop until stdin says `quit` or closes.
pub async fn run(spec: LoadSpec) -> Result<()> {
    if spec.http.is_none() && spec.grpc.is_none() {
        bail!("nothing to load: give an HTTP URL and/or a gRPC target");
    }
    if spec.workers == 0 || spec.workers > 64 {
        bail!("workers must be 1 to 64, got {}", spec.workers);
    }
    let epoch = Instant::now();
    let state = Arc::new(State::default());
    if let Some(url) = &spec.http {
        let url: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        for w in 0..spec.workers {
            tokio::spawn(worker(
                state.clone(),
                spec.clone(),
                epoch,
                "http1",
                Proto::Http(url.clone(), None),
                w,
            ));
        }
    }
    if let Some(target) = &spec.grpc {
        for w in 0..spec.workers {
            tokio::spawn(worker(
                state.clone(),
                spec.clone(),
                epoch,
                "grpc",
                Proto::Grpc(target.clone(), None),
                w,
            ));
        }
    }
    let mut since = 0.0;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "report" => {
                state.paused.store(true, Ordering::SeqCst);
                while state.in_flight.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let now = epoch.elapsed().as_secs_f64() * 1e3;
                let done = std::mem::take(&mut *state.done.lock().unwrap());
                let retries = std::mem::take(&mut *state.retries.lock().unwrap());
                state.paused.store(false, Ordering::SeqCst);
                let report = summarize(&done, &retries, &spec, since, now);
                since = now;
                println!(
                    "{}",
                    serde_json::json!({"event": "report", "report": report})
                );
            }
            "peek" => {
                let done = state.done.lock().unwrap();
                let ok = done.iter().filter(|d| d.record.ok).count();
                println!(
                    "{}",
                    serde_json::json!({"event": "peek", "done": done.len(), "ok": ok})
                );
            }
            "quit" => break,
            other => eprintln!("unknown command {other:?}: report, quit"),
        }
    }
    Ok(())
}

fn summarize(
    done: &[Done],
    retries: &BTreeMap<&'static str, u64>,
    spec: &LoadSpec,
    from: f64,
    to: f64,
) -> LoadReport {
    let protos: Vec<&'static str> = [
        spec.http.as_ref().map(|_| "http1"),
        spec.grpc.as_ref().map(|_| "grpc"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let fig = |filter: &dyn Fn(&Done) -> bool| -> Figures {
        let mine: Vec<&Done> = done.iter().filter(|d| filter(d)).collect();
        let records: Vec<Record> = mine.iter().map(|d| d.record).collect();
        let mut f = figures(&records, from, to);
        for d in &mine {
            if let Some(e) = &d.error {
                let key: String = e.chars().take(100).collect();
                *f.errors.entry(format!("{}: {key}", d.proto)).or_default() += 1;
            }
        }
        f
    };
    let mut by_protocol = BTreeMap::new();
    for p in protos {
        let mut f = fig(&|d| d.proto == p);
        f.connect_retries = retries.get(p).copied().unwrap_or(0);
        by_protocol.insert(p.to_owned(), f);
    }
    let mut total = fig(&|_| true);
    total.connect_retries = retries.values().sum();
    LoadReport {
        window_ms: to - from,
        by_protocol,
        total,
    }
}

enum Proto {
    Http(hyper::Uri, Option<SendRequest<Empty<Bytes>>>),
    Grpc(String, Option<EchoClient<tonic::transport::Channel>>),
}

async fn worker(
    state: Arc<State>,
    spec: LoadSpec,
    epoch: Instant,
    name: &'static str,
    mut proto: Proto,
    w: usize,
) {
    loop {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        if state.paused.load(Ordering::SeqCst) {
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let seq = state.seq.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let r = tokio::time::timeout(spec.deadline, async {
            match &mut proto {
                Proto::Http(url, conn) => http_get(&state, url, conn, w, seq).await,
                Proto::Grpc(target, client) => grpc_unary(&state, target, client, seq).await,
            }
        })
        .await
        .unwrap_or_else(|_| Err(anyhow!("no answer within {:?}", spec.deadline)));
        if r.is_err() {
            // Start afresh: the connection may be what failed.
            match &mut proto {
                Proto::Http(_, c) => *c = None,
                Proto::Grpc(_, c) => *c = None,
            }
        }
        let ms = |t: Instant| t.duration_since(epoch).as_secs_f64() * 1e3;
        state.done.lock().unwrap().push(Done {
            proto: name,
            record: Record {
                start_ms: ms(start),
                end_ms: ms(Instant::now()),
                ok: r.is_ok(),
            },
            error: r.err().map(|e| format!("{e:#}")),
        });
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
        tokio::time::sleep(spec.pause).await;
    }
}

/// A connect that failed before anything was sent (refused: nothing
/// listens; unreachable: no route, e.g. a service IP without a proxy).
fn not_sent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | HostUnreachable | NetworkUnreachable
    )
}

async fn http_get(
    state: &State,
    url: &hyper::Uri,
    conn: &mut Option<SendRequest<Empty<Bytes>>>,
    w: usize,
    seq: u64,
) -> Result<()> {
    let host = url.host().ok_or_else(|| anyhow!("URL without a host"))?;
    let port = url.port_u16().unwrap_or(80);
    loop {
        let sender = match conn {
            Some(s) if !s.is_closed() => s,
            _ => {
                let addr = tokio::net::lookup_host((host, port))
                    .await
                    .with_context(|| format!("resolving {host}"))?
                    .next()
                    .ok_or_else(|| anyhow!("{host} has no address"))?;
                let tcp = match tokio::net::TcpStream::connect(addr).await {
                    Ok(t) => t,
                    Err(e) if not_sent(&e) => {
                        state.retried("http1");
                        tokio::time::sleep(CONNECT_RETRY).await;
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("connecting to {addr}")),
                };
                let _ = tcp.set_nodelay(true);
                let (s, c) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await?;
                tokio::spawn(c);
                conn.insert(s)
            }
        };
        if sender.ready().await.is_err() {
            // Closed before this request was written (e.g. the proxy
            // answered the previous one with `Connection: close`).
            *conn = None;
            continue;
        }
        let req = hyper::Request::get(format!(
            "{}?w={w}&n={seq}",
            url.path_and_query().map_or("/", |p| p.as_str())
        ))
        .header(hyper::header::HOST, format!("{host}:{port}"))
        .body(Empty::new())?;
        let rsp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) if e.is_canceled() => {
                *conn = None;
                continue;
            }
            Err(e) => return Err(e).context("HTTP request"),
        };
        let status = rsp.status();
        let body = rsp.into_body().collect().await?.to_bytes();
        if status != 200 {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        let a: super::app::HttpAnswer =
            serde_json::from_slice(&body).context("not a server answer")?;
        anyhow::ensure!(!a.server.is_empty(), "answer without a server");
        return Ok(());
    }
}

async fn grpc_unary(
    state: &State,
    target: &str,
    client: &mut Option<EchoClient<tonic::transport::Channel>>,
    seq: u64,
) -> Result<()> {
    let text = format!("load-{seq}");
    loop {
        let c = match client {
            Some(c) => c,
            None => {
                let ch = tonic::transport::Endpoint::from_shared(target.to_owned())?
                    .connect_timeout(Duration::from_secs(2));
                match ch.connect().await {
                    Ok(ch) => client.insert(EchoClient::new(ch)),
                    Err(e) if connect_refused(&e) => {
                        state.retried("grpc");
                        tokio::time::sleep(CONNECT_RETRY).await;
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("connecting to {target}")),
                }
            }
        };
        let m = match c
            .unary(Msg {
                text: text.clone(),
                payload: Vec::new(),
                count: 0,
            })
            .await
        {
            Ok(m) => m.into_inner(),
            // Nothing was sent: retried on a fresh channel.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Internal
                ) && status_not_sent(&s) =>
            {
                state.retried("grpc");
                *client = None;
                tokio::time::sleep(CONNECT_RETRY).await;
                continue;
            }
            Err(s) => bail!("gRPC {:?}: {}", s.code(), s.message()),
        };
        anyhow::ensure!(m.payload == text.as_bytes(), "payload not echoed");
        return Ok(());
    }
}

fn connect_refused(e: &tonic::transport::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && not_sent(io)
        {
            return true;
        }
        src = s.source();
    }
    false
}

/// A call that never left this client: its connection was refused, or
/// hyper canceled it before sending (the stream raced a GOAWAY): what gRPC
/// calls a transparent retry.
fn status_not_sent(s: &tonic::Status) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && not_sent(io)
        {
            return true;
        }
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_canceled())
        {
            return true;
        }
        // Refused, or cut by a graceful GOAWAY (the server's drain): the
        // server did not process the stream (RFC 9113, 8.7).
        if e.downcast_ref::<h2::Error>().is_some_and(|h2| {
            h2.is_remote()
                && (h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
        }) {
            return true;
        }
        src = e.source();
    }
    false
}
