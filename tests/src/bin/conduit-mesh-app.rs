//! The mesh's application, in every pod of the local mesh (demo, end-to-end
//! tests, mesh benchmark):
//!
//! * `serve`: an HTTP/1.1 server (hyper) and a gRPC server (tonic, the
//!   echo service of test-support's `proto/echo.proto`: unary, client and
//!   server streaming, bidirectional streaming) whose every answer names the
//!   server, so a test sees where the mesh sent each call;
//! * `grpc`: a real gRPC client (tonic) making unary and server-streaming
//!   calls, printing one JSON line with what it got;
//! * `grpc-bidi`: one long-lived bidirectional stream; each line read on
//!   stdin is sent as a message and its answer printed as a JSON line (to
//!   hold an established stream open while something else changes).
//!
//! The HTTP server answers `/status/500...` with a 500, `/delay/<ms>...`
//! after that many milliseconds, and echoes trace headers (`traceparent`,
//! `b3`, ...) back as `echo-<name>`.
//!
//! HTTP/1.1 clients are real ones (curl); names resolve through the pod's
//! /etc/hosts (see docs/demo.md).

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use conduit_test_support::echo::pb::echo_server::{Echo, EchoServer};
use conduit_test_support::echo::{EchoClient, Msg};
use conduit_tests::mesh::app::{GrpcReport, HttpAnswer};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;
use tokio_stream::{Stream, StreamExt};

#[derive(Parser)]
#[command(about = "conduit mesh test application (HTTP/1.1 + gRPC)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTP/1.1 and gRPC.
    Serve {
        /// Name put in every answer.
        #[arg(long)]
        name: String,
        /// HTTP/1.1 listen address (`[::]:port` serves IPv4 too).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// gRPC listen address.
        #[arg(long)]
        grpc: Option<SocketAddr>,
        /// Do not print a line per request (benchmarks).
        #[arg(long)]
        quiet: bool,
    },
    /// gRPC calls: `--unary` unary calls, then one server stream of `--stream` messages.
    Grpc {
        /// `http://host:port` (a name is resolved by the system resolver).
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1)]
        unary: u32,
        #[arg(long, default_value_t = 3)]
        stream: u32,
        /// Text sent in each request (echoed back in the payload).
        #[arg(long, default_value = "hello")]
        text: String,
        /// Bound on everything, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// One bidirectional stream; a message per stdin line.
    GrpcBidi {
        #[arg(long)]
        target: String,
    },
    /// Steady load with every request accounted for (JSON `LoadSpec`);
    /// `report` on stdin prints the figures since the last report.
    Load {
        #[arg(long)]
        spec: String,
    },
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match Cli::parse().cmd {
            Cmd::Serve {
                name,
                http,
                grpc,
                quiet,
            } => serve(name, http, grpc, quiet).await,
            Cmd::Grpc {
                target,
                unary,
                stream,
                text,
                timeout_ms,
            } => {
                let start = Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_millis(timeout_ms),
                    grpc_calls(&target, unary, stream, &text),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {timeout_ms} ms")));
                let report = match r {
                    Ok((unary, stream)) => GrpcReport {
                        ok: true,
                        unary,
                        stream,
                        error: None,
                        millis: start.elapsed().as_millis() as u64,
                    },
                    Err(e) => GrpcReport {
                        ok: false,
                        unary: Vec::new(),
                        stream: Vec::new(),
                        error: Some(format!("{e:#}")),
                        millis: start.elapsed().as_millis() as u64,
                    },
                };
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
            Cmd::GrpcBidi { target } => bidi(&target).await,
            Cmd::Load { spec } => {
                let spec = serde_json::from_str(&spec).context("bad --spec")?;
                conduit_tests::mesh::load_run::run(spec).await
            }
        }
    })
}

async fn serve(
    name: String,
    http: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    quiet: bool,
) -> Result<()> {
    let name: Arc<str> = name.into();
    let mut tasks = tokio::task::JoinSet::new();
    let mut bound = Vec::new();
    if let Some(addr) = http {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding HTTP on {addr}"))?;
        bound.push(("http", l.local_addr()?));
        tasks.spawn(http_loop(l, name.clone(), quiet));
    }
    if let Some(addr) = grpc {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding gRPC on {addr}"))?;
        bound.push(("grpc", l.local_addr()?));
        let svc = EchoServer::new(Svc {
            name: name.clone(),
            quiet,
        });
        tasks.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
                .await
                .context("gRPC server")
        });
    }
    anyhow::ensure!(
        !bound.is_empty(),
        "nothing to serve: give --http and/or --grpc"
    );
    let listening: Vec<_> = bound
        .iter()
        .map(|(k, a)| serde_json::json!({"kind": k, "addr": a}))
        .collect();
    println!(
        "{}",
        serde_json::json!({"event": "listening", "addrs": listening})
    );
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

async fn http_loop(l: tokio::net::TcpListener, name: Arc<str>, quiet: bool) -> Result<()> {
    loop {
        let (s, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("accept failed: {e}");
                continue;
            }
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let name = name.clone();
                async move {
                    if let Some(d) = delay(req.uri().path()) {
                        tokio::time::sleep(d).await;
                    }
                    Ok::<_, Infallible>(answer(&name, peer, quiet, &req))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
        });
    }
}

fn answer(
    name: &str,
    peer: SocketAddr,
    quiet: bool,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let a = HttpAnswer {
        server: name.to_owned(),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", req.version()),
        host: req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        peer: conduit_tests::report::canonical(peer),
    };
    let body = serde_json::to_string(&a).unwrap_or_default();
    if !quiet {
        println!("{}", serde_json::json!({"event": "http", "answer": a}));
    }
    let status = if a.path.starts_with("/status/500") {
        500
    } else {
        200
    };
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    // Trace context as the application received it, so a test sees what
    // the proxies passed on.
    for (k, v) in req.headers() {
        if TRACE_HEADERS.contains(&k.as_str()) {
            b = b.header(format!("echo-{k}"), v);
        }
    }
    b.body(Full::new(Bytes::from(body + "\n")))
        .unwrap_or_default()
}

/// W3C trace context and B3 headers, echoed back as `echo-<name>`.
const TRACE_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

/// `/delay/<ms>`: answer after that long (at most 10 s).
fn delay(path: &str) -> Option<Duration> {
    let ms: u64 = path
        .strip_prefix("/delay/")?
        .split('/')
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms.min(10_000)))
}

struct Svc {
    name: Arc<str>,
    quiet: bool,
}

impl Svc {
    fn reply(&self, kind: &str, req: &Msg, count: u32) -> Msg {
        if !self.quiet {
            println!(
                "{}",
                serde_json::json!({"event": "grpc", "call": kind, "text": req.text})
            );
        }
        Msg {
            text: self.name.to_string(),
            payload: req.text.clone().into_bytes(),
            count,
        }
    }
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, tonic::Status>> + Send>>;

/// At most this many answers per server stream.
const MAX_STREAM: u32 = 10_000;

#[tonic::async_trait]
impl Echo for Svc {
    async fn unary(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, tonic::Status> {
        Ok(tonic::Response::new(self.reply("unary", req.get_ref(), 0)))
    }

    /// One answer after the whole stream: the last message's text, and in
    /// `count` how many messages came (nothing is kept but the last).
    async fn client_stream(
        &self,
        req: tonic::Request<tonic::Streaming<Msg>>,
    ) -> Result<tonic::Response<Msg>, tonic::Status> {
        let mut input = req.into_inner();
        let (mut last, mut n) = (Msg::default(), 0u32);
        while let Some(m) = input.next().await {
            last = m?;
            n = n.saturating_add(1);
        }
        Ok(tonic::Response::new(self.reply("client_stream", &last, n)))
    }

    type ServerStreamStream = MsgStream;

    async fn server_stream(
        &self,
        req: tonic::Request<Msg>,
    ) -> Result<tonic::Response<MsgStream>, tonic::Status> {
        let req = req.into_inner();
        if req.count > MAX_STREAM {
            return Err(tonic::Status::invalid_argument(format!(
                "count {} > {MAX_STREAM}",
                req.count
            )));
        }
        let msgs: Vec<_> = (0..req.count)
            .map(|i| Ok(self.reply("server_stream", &req, i)))
            .collect();
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(msgs))))
    }

    type BidiStream = MsgStream;

    async fn bidi(
        &self,
        req: tonic::Request<tonic::Streaming<Msg>>,
    ) -> Result<tonic::Response<MsgStream>, tonic::Status> {
        let mut input = req.into_inner();
        let (name, quiet) = (self.name.clone(), self.quiet);
        let out = async_stream(move |tx| async move {
            let svc = Svc { name, quiet };
            let mut i = 0;
            while let Some(m) = input.next().await {
                let m = match m {
                    Ok(m) => svc.reply("bidi", &m, i),
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                };
                i += 1;
                if tx.send(Ok(m)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(out))
    }
}

/// A stream fed by a task through a small bounded channel.
fn async_stream<F, Fut>(f: F) -> MsgStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Msg, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn connect(target: &str) -> Result<EchoClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(target.to_owned())
        .with_context(|| format!("bad target {target}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {target}"))?;
    Ok(EchoClient::new(ch))
}

/// Unary calls, then one server stream; the servers that answered each.
async fn grpc_calls(
    target: &str,
    unary: u32,
    stream: u32,
    text: &str,
) -> Result<(Vec<String>, Vec<String>)> {
    let mut client = connect(target).await?;
    let mut unary_from = Vec::new();
    for i in 0..unary {
        let m = client
            .unary(Msg {
                text: text.to_owned(),
                payload: Vec::new(),
                count: 0,
            })
            .await
            .with_context(|| format!("unary call {i}"))?
            .into_inner();
        anyhow::ensure!(
            m.payload == text.as_bytes(),
            "unary: payload not echoed: {m:?}"
        );
        unary_from.push(m.text);
    }
    let mut stream_from = Vec::new();
    if stream > 0 {
        let mut s = client
            .server_stream(Msg {
                text: text.to_owned(),
                payload: Vec::new(),
                count: stream,
            })
            .await
            .context("server stream call")?
            .into_inner();
        while let Some(m) = s.next().await {
            let m = m.context("server stream message")?;
            anyhow::ensure!(
                m.count as usize == stream_from.len(),
                "stream message {} out of order",
                m.count
            );
            stream_from.push(m.text);
        }
        anyhow::ensure!(
            stream_from.len() == stream as usize,
            "server stream ended after {} of {stream} messages",
            stream_from.len()
        );
    }
    Ok((unary_from, stream_from))
}

/// One bidi stream: each stdin line is a message; prints each answer (or
/// the error that ended the stream) as a JSON line.
async fn bidi(target: &str) -> Result<()> {
    let mut client = connect(target).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(16);
    let mut answers = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("opening the bidi stream")?
        .into_inner();
    println!("{}", serde_json::json!({"event": "open"}));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let sent = Instant::now();
        if tx
            .send(Msg {
                text: line.clone(),
                payload: Vec::new(),
                count: 0,
            })
            .await
            .is_err()
        {
            break;
        }
        match answers.next().await {
            Some(Ok(m)) => println!(
                "{}",
                serde_json::json!({"event": "answer", "server": m.text, "text": String::from_utf8_lossy(&m.payload), "count": m.count, "micros": sent.elapsed().as_micros() as u64})
            ),
            Some(Err(e)) => {
                println!(
                    "{}",
                    serde_json::json!({"event": "error", "error": e.to_string()})
                );
                return Ok(());
            }
            None => {
                println!(
                    "{}",
                    serde_json::json!({"event": "error", "error": "stream ended"})
                );
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared echo service's every call kind, served on loopback by the
    /// mesh application: each answer names the server.
    #[tokio::test]
    async fn every_call_kind_is_answered_with_the_servers_name() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = format!("http://{}", l.local_addr().unwrap());
        let svc = EchoServer::new(Svc {
            name: "server-1".into(),
            quiet: true,
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );

        let (unary, stream) = grpc_calls(&target, 2, 3, "hi").await.unwrap();
        assert_eq!(unary, ["server-1", "server-1"]);
        assert_eq!(stream, ["server-1", "server-1", "server-1"]);

        let mut client = connect(&target).await.unwrap();
        let msg = |text: &str| Msg {
            text: text.into(),
            payload: Vec::new(),
            count: 0,
        };
        let sent = [msg("a"), msg("b"), msg("c")];
        let got = client
            .client_stream(tokio_stream::iter(sent))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (got.text.as_str(), got.payload.as_slice(), got.count),
            ("server-1", &b"c"[..], 3)
        );
        let none = client
            .client_stream(tokio_stream::iter(Vec::<Msg>::new()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((none.text.as_str(), none.count), ("server-1", 0));
    }
}
