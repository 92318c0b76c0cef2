//! The mesh's applications: the server (`conduit-mesh-app serve`, HTTP/1.1
//! and gRPC) in each server pod, and the real clients run in the client pod:
//! curl for HTTP/1.1 and `conduit-mesh-app grpc` / `grpc-bidi` (tonic) for
//! gRPC. Clients run through `ip netns exec`, which bind-mounts
//! `/etc/netns/<netns>/hosts` over `/etc/hosts`: that is how service names
//! resolve to service IPs (see [`super::spec::hosts_file`]).

use crate::bins;
use crate::env::Env;
use crate::process::{Finished, Process, Spawn};
use crate::wait::{fatal, wait_until};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// The mesh application binary.
pub const MESH_APP: &str = "conduit-mesh-app";

/// What the HTTP server answers (JSON body), so a test sees which server
/// answered and what reached it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HttpAnswer {
    /// The server's name (its pod).
    pub server: String,
    /// Request method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// HTTP version the server saw (`HTTP/1.1`).
    pub version: String,
    /// Host header.
    pub host: String,
    /// The server's peer (through the mesh: its own pod's proxy, at the
    /// pod's own address).
    pub peer: SocketAddr,
}

/// What `conduit-mesh-app grpc` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrpcReport {
    /// All calls succeeded.
    pub ok: bool,
    /// The server that answered each unary call.
    pub unary: Vec<String>,
    /// The server that sent each message of the server stream.
    pub stream: Vec<String>,
    /// What failed.
    pub error: Option<String>,
    /// Time taken.
    pub millis: u64,
}

/// A server application in a pod.
#[derive(Debug)]
pub struct AppServer {
    /// The process.
    pub process: Process,
}

impl AppServer {
    /// Starts `conduit-mesh-app serve` in `pod`'s cgroup `<pod>/app`.
    pub fn start(env: &Env, pod: &str, http: u16, grpc: u16, quiet: bool) -> Result<Self> {
        let mut spawn = env
            .spawn(pod, "app", bins::find(MESH_APP)?)?
            .args(["serve", "--name", pod])
            .args(["--http", &format!("[::]:{http}")])
            .args(["--grpc", &format!("[::]:{grpc}")]);
        if quiet {
            spawn = spawn.arg("--quiet");
        }
        let mut process = spawn.start()?;
        process.wait_for_line("listening", Duration::from_secs(20), |l| {
            l.contains(r#""event":"listening""#)
        })?;
        Ok(Self { process })
    }

    /// HTTP requests it answered so far (when not quiet).
    pub fn http_requests(&self) -> Vec<HttpAnswer> {
        self.process
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "http")
            .filter_map(|v| serde_json::from_value(v["answer"].clone()).ok())
            .collect()
    }

    /// gRPC messages it answered so far (when not quiet).
    pub fn grpc_calls(&self) -> usize {
        self.process
            .stdout_lines()
            .iter()
            .filter(|l| l.contains(r#""event":"grpc""#))
            .count()
    }
}

/// A command run in a pod through `ip netns exec` (so `/etc/netns/<ns>/*`
/// files apply), in the pod's cgroup `<pod>/app`, as root like an ordinary
/// application.
pub fn in_pod(env: &Env, pod: &str, program: &str) -> Result<Spawn> {
    let ns = env.pod(pod).netns().name().to_owned();
    Ok(Spawn::new(format!("{pod}/{program}"), "ip")
        .args(["netns", "exec", &ns, program])
        .cgroup(&env.pod_cgroup(pod, "app")?)?
        .quiet())
}

/// What curl did.
#[derive(Debug)]
pub struct CurlResult {
    /// curl's exit code (0: a response came; 7: could not connect; 28: timeout; ...).
    pub exit: i32,
    /// HTTP status (0 without a response).
    pub status: u16,
    /// Response body.
    pub body: String,
    /// curl's error message.
    pub stderr: String,
    /// Total time.
    pub seconds: f64,
}

impl CurlResult {
    /// The server's answer, or an error saying what curl got.
    pub fn answer(&self) -> Result<HttpAnswer> {
        if self.exit != 0 || self.status != 200 {
            bail!(
                "curl failed: exit {}, HTTP {}, {}{}",
                self.exit,
                self.status,
                self.stderr.trim(),
                self.body.trim()
            );
        }
        serde_json::from_str(self.body.trim())
            .with_context(|| format!("not a server answer: {}", self.body))
    }
}

/// `curl` in `pod` (HTTP/1.1, `max_time` bound) for `url`.
pub fn curl(env: &Env, pod: &str, url: &str, max_time: Duration) -> Result<CurlResult> {
    let done = in_pod(env, pod, "curl")?
        .args(["--http1.1", "-sS", "--max-time"])
        .arg(format!("{:.1}", max_time.as_secs_f64()))
        .args(["-w", "\n@@%{http_code} %{time_total}", url])
        .run(max_time + Duration::from_secs(5))?;
    let out: Vec<&str> = done.stdout().collect();
    let (body, trailer) = match out.iter().rposition(|l| l.starts_with("@@")) {
        Some(i) => (out[..i].join("\n"), out[i].trim_start_matches("@@")),
        None => (out.join("\n"), "000 0"),
    };
    let mut t = trailer.split_whitespace();
    Ok(CurlResult {
        exit: done.status.code().unwrap_or(-1),
        status: t.next().and_then(|c| c.parse().ok()).unwrap_or(0),
        seconds: t.next().and_then(|c| c.parse().ok()).unwrap_or(0.0),
        body,
        stderr: done.stderr(),
    })
}

/// `conduit-mesh-app grpc` in `pod` against `target` (`http://name:port`).
pub fn grpc(
    env: &Env,
    pod: &str,
    target: &str,
    unary: u32,
    stream: u32,
    text: &str,
) -> Result<GrpcReport> {
    let bin = bins::find(MESH_APP)?;
    let done: Finished = in_pod(env, pod, &bin.to_string_lossy())?
        .args(["grpc", "--target", target])
        .args([
            "--unary",
            &unary.to_string(),
            "--stream",
            &stream.to_string(),
        ])
        .args(["--text", text, "--timeout-ms", "10000"])
        .run(Duration::from_secs(20))?;
    let line = done
        .stdout()
        .last()
        .ok_or_else(|| {
            anyhow!(
                "the gRPC client printed nothing ({}): {}",
                done.status,
                done.stderr()
            )
        })?
        .to_owned();
    serde_json::from_str(&line).with_context(|| format!("gRPC client output: {line}"))
}

/// A long-lived bidirectional gRPC stream from a pod.
#[derive(Debug)]
pub struct Bidi {
    /// The client process.
    pub process: Process,
    sent: usize,
}

/// One answer on a [`Bidi`] stream.
#[derive(Debug, Clone, Deserialize)]
pub struct BidiAnswer {
    /// The server that answered.
    pub server: String,
    /// The text echoed.
    pub text: String,
    /// Round trip in microseconds.
    pub micros: u64,
}

impl Bidi {
    /// Opens the stream from `pod` to `target`.
    pub fn open(env: &Env, pod: &str, target: &str) -> Result<Self> {
        let bin = bins::find(MESH_APP)?;
        let mut process = in_pod(env, pod, &bin.to_string_lossy())?
            .args(["grpc-bidi", "--target", target])
            .start()?;
        process.wait_for_line("the stream to open", Duration::from_secs(10), |l| {
            l.contains(r#""event":"open""#)
        })?;
        Ok(Self { process, sent: 0 })
    }

    /// Sends `text` and waits for its answer.
    pub fn send(&mut self, text: &str) -> Result<BidiAnswer> {
        self.process.send_line(text)?;
        self.sent += 1;
        let want = self.sent;
        wait_until(
            "an answer on the bidi stream",
            Duration::from_secs(10),
            || {
                let lines = self.process.stdout_lines();
                if let Some(e) = lines.iter().find(|l| l.contains(r#""event":"error""#)) {
                    return Err(fatal(format!("the stream failed: {e}")));
                }
                let answers: Vec<&String> = lines
                    .iter()
                    .filter(|l| l.contains(r#""event":"answer""#))
                    .collect();
                match answers.get(want - 1) {
                    Some(l) => Ok(serde_json::from_str(l)?),
                    None => Err(anyhow!("{} answers, want {want}", answers.len())),
                }
            },
        )
    }
}
