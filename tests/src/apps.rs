//! The test's applications and proxy, running in pods: a server, a client
//! (one connection per run) and the test proxy, all speaking the JSON lines
//! of [`crate::report`].

use crate::bins;
use crate::env::{Env, PROXY_UID};
use crate::process::{Process, Spawn};
use crate::report::{
    ClientOutcome, ClientReport, FloodReport, ProxyEvent, Reply, ServerEvent, Side,
};
use crate::wait::{fatal, wait_until};
use anyhow::{Context, Result, anyhow, bail};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// How long a process may take to start listening or to register.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a `flood` may take to be pushed back or reach its limit.
const FLOOD_TIMEOUT: Duration = Duration::from_secs(30);

/// A test server listening on `[::]:<port>` (IPv4 and IPv6) in a pod.
#[derive(Debug)]
pub struct TestServer {
    /// The server process.
    pub process: Process,
    /// Its name (in every reply).
    pub name: String,
}

impl TestServer {
    /// Starts server `name` in `pod` on `port`.
    pub fn start(env: &Env, pod: &str, port: u16, name: &str) -> Result<Self> {
        let mut process = env
            .spawn(pod, "app", bins::find(bins::TEST_APP)?)?
            .args([
                "server",
                "--name",
                name,
                "--listen",
                &format!("[::]:{port}"),
            ])
            .start()?;
        process.wait_for_line("listening", START_TIMEOUT, |l| {
            l.contains(r#""event":"listening""#)
        })?;
        Ok(Self {
            process,
            name: name.to_owned(),
        })
    }

    /// The connections it accepted so far.
    pub fn accepted(&self) -> Vec<(SocketAddr, SocketAddr)> {
        parse_lines::<ServerEvent>(&self.process.stdout_lines())
            .into_iter()
            .filter_map(|e| match e {
                ServerEvent::Accepted { local, peer } => Some((local, peer)),
                ServerEvent::Listening { .. } => None,
            })
            .collect()
    }
}

/// Runs the test client once in `pod`: it dials `addr`, sends a line and
/// reads the reply line.
pub fn client(env: &Env, pod: &str, addr: SocketAddr) -> Result<ClientReport> {
    client_as(env, pod, addr, None)
}

/// [`client`], run as `uid` (its own gid too) when given.
pub fn client_as(env: &Env, pod: &str, addr: SocketAddr, uid: Option<u32>) -> Result<ClientReport> {
    let mut spawn = env.spawn(pod, "app", bins::find(bins::TEST_APP)?)?;
    if let Some(uid) = uid {
        spawn = spawn.user(uid, uid);
    }
    let spawn = spawn.args([
        "client",
        "--connect",
        &addr.to_string(),
        "--send",
        &format!("hello from {pod}"),
    ]);
    last_report(spawn, Duration::from_secs(15), "client")
}

/// Runs a test application to its end and parses the JSON report of its
/// last stdout line.
fn last_report<T: serde::de::DeserializeOwned>(
    spawn: Spawn,
    timeout: Duration,
    what: &str,
) -> Result<T> {
    let done = spawn.quiet().run(timeout)?;
    let line = done
        .stdout()
        .last()
        .ok_or_else(|| {
            anyhow!(
                "the {what} printed nothing ({}): {}",
                done.status,
                done.stderr()
            )
        })?
        .to_owned();
    serde_json::from_str(&line).with_context(|| format!("{what} output: {line}"))
}

/// Runs the test application's `flood` in `pod` against `addr`: how many
/// bytes a connection whose peer never reads takes before it pushes back.
pub fn flood(env: &Env, pod: &str, addr: SocketAddr, limit: u64) -> Result<FloodReport> {
    let spawn = env
        .spawn(pod, "app", bins::find(bins::TEST_APP)?)?
        .args(["flood", "--connect", &addr.to_string()])
        .args(["--limit", &limit.to_string()]);
    last_report(spawn, FLOOD_TIMEOUT, "flood")
}

/// The other direction of [`flood`]: `flood --listen` in `server_pod` on
/// `port` writes to the one connection it accepts, which a client in
/// `client_pod` opens and never reads (`hold`).
pub fn flood_back(
    env: &Env,
    server_pod: &str,
    port: u16,
    client_pod: &str,
    limit: u64,
) -> Result<FloodReport> {
    let mut server = env
        .spawn(server_pod, "server", bins::find(bins::TEST_APP)?)?
        .args(["flood", "--listen", &format!("[::]:{port}")])
        .args(["--limit", &limit.to_string()])
        .start()?;
    server.wait_for_line("listening", START_TIMEOUT, |l| {
        l.contains(r#""event":"listening""#)
    })?;
    let addr = env.pod(server_pod).v4(port);
    let _holder = env
        .spawn(client_pod, "app", bins::find(bins::TEST_APP)?)?
        .args(["hold", "--connect", &addr.to_string()])
        .start()?;
    let line = server.wait_for_line("its report", FLOOD_TIMEOUT, |l| {
        l.contains(r#""accepted":"#)
    })?;
    serde_json::from_str(&line).with_context(|| format!("flood output: {line}"))
}

impl ClientReport {
    /// The reply, or an error saying what failed.
    pub fn reply(&self) -> Result<(&SocketAddr, &Reply)> {
        match &self.outcome {
            ClientOutcome::Replied { peer, reply, .. } => Ok((peer, reply)),
            ClientOutcome::Failed { step, error } => {
                bail!("dialling {} failed at {step}: {error}", self.dialled)
            }
        }
    }

    /// Ok when a proxy answered (the connection was captured); returns the
    /// original destination it recovered and the side that accepted.
    pub fn captured(&self) -> Result<(SocketAddr, Side)> {
        match self.reply()? {
            (
                _,
                Reply::Proxy {
                    original_dst, side, ..
                },
            ) => Ok((*original_dst, *side)),
            (_, other) => bail!("not captured: {other:?}"),
        }
    }

    /// Ok when the server `name` answered (directly or relayed).
    pub fn served_by(&self, name: &str) -> Result<&Reply> {
        match self.reply()? {
            (_, r @ Reply::Server { name: n, .. }) if n == name => Ok(r),
            (_, other) => bail!("expected server {name} to answer, got {other:?}"),
        }
    }
}

/// How the test proxy handles what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Answer each connection with a [`Reply::Proxy`] line.
    Report,
    /// Connect to the original destination and relay both ways.
    Relay,
    /// Hold each connection open for a while without reading from it.
    Hold,
}

impl ProxyMode {
    fn arg(self) -> &'static str {
        match self {
            ProxyMode::Report => "report",
            ProxyMode::Relay => "relay",
            ProxyMode::Hold => "hold",
        }
    }
}

/// The test proxy in a pod, as uid 1337.
#[derive(Debug)]
pub struct TestProxy {
    /// The proxy process.
    pub process: Process,
}

impl TestProxy {
    /// Starts the proxy for `pod`; registers with the agent at `socket` if
    /// given (and waits for the enrolment), else only listens.
    pub fn start(env: &Env, pod: &str, mode: ProxyMode, socket: Option<&Path>) -> Result<Self> {
        Self::start_with(env, pod, mode, socket, &[])
    }

    /// Like [`TestProxy::start`], with further arguments (`--skip-inbound-port 9090`, ...).
    pub fn start_with(
        env: &Env,
        pod: &str,
        mode: ProxyMode,
        socket: Option<&Path>,
        extra: &[&str],
    ) -> Result<Self> {
        let mut spawn = env
            .spawn(pod, "proxy", bins::find(bins::TEST_PROXY)?)?
            .user(PROXY_UID, PROXY_UID)
            .args(["--pod", pod, "--namespace", "default"])
            .args(["--mode", mode.arg()])
            .args(extra);
        if let Some(s) = socket {
            spawn = spawn.arg("--agent-socket").arg(s);
        }
        let mut proxy = Self {
            process: spawn.start()?,
        };
        proxy
            .process
            .wait_for_line("listening", START_TIMEOUT, |l| {
                l.contains(r#""event":"listening""#)
            })?;
        if socket.is_some() {
            proxy.wait_registered(1)?;
        }
        Ok(proxy)
    }

    /// Starts the proxy for `pod` registering with the agent at `socket`,
    /// without waiting for the enrolment (which may be refused: the proxy
    /// keeps retrying).
    pub fn start_unenrolled(env: &Env, pod: &str, socket: &Path) -> Result<Self> {
        let mut proxy = Self {
            process: env
                .spawn(pod, "proxy", bins::find(bins::TEST_PROXY)?)?
                .user(PROXY_UID, PROXY_UID)
                .args(["--pod", pod, "--namespace", "default", "--mode", "report"])
                .arg("--agent-socket")
                .arg(socket)
                .start()?,
        };
        proxy
            .process
            .wait_for_line("listening", START_TIMEOUT, |l| {
                l.contains(r#""event":"listening""#)
            })?;
        Ok(proxy)
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<ProxyEvent> {
        parse_lines(&self.process.stdout_lines())
    }

    /// The accepted connections so far: (side, peer, original destination).
    pub fn accepted(&self) -> Vec<(Side, SocketAddr, SocketAddr)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                ProxyEvent::Accepted {
                    side,
                    peer,
                    original_dst,
                    ..
                } => Some((side, peer, original_dst)),
                _ => None,
            })
            .collect()
    }

    fn count(&self, want: &ProxyEvent) -> usize {
        self.events().iter().filter(|e| *e == want).count()
    }

    /// Waits until the proxy has been enrolled `n` times in total.
    pub fn wait_registered(&mut self, n: usize) -> Result<()> {
        wait_until("the proxy to register", START_TIMEOUT, || {
            if let Some(s) = self.process.exited() {
                return Err(fatal(format!(
                    "the proxy exited ({s}):\n{}",
                    self.process.output_text()
                )));
            }
            let got = self.count(&ProxyEvent::Registered);
            if got >= n {
                Ok(())
            } else {
                Err(anyhow!("registered {got} times, want {n}"))
            }
        })
    }

    /// Waits until the proxy has seen its registration end `n` times in total.
    pub fn wait_unregistered(&mut self, n: usize) -> Result<()> {
        wait_until("the proxy's registration to end", START_TIMEOUT, || {
            let got = self.count(&ProxyEvent::Unregistered);
            if got >= n {
                Ok(())
            } else {
                Err(anyhow!("unregistered {got} times, want {n}"))
            }
        })
    }

    /// Tells the proxy to close its registration (it keeps listening).
    pub fn unregister(&mut self) -> Result<()> {
        self.process.send_line("unregister")
    }

    /// Tells the proxy to register again.
    pub fn register(&mut self) -> Result<()> {
        self.process.send_line("register")
    }
}

fn parse_lines<T: serde::de::DeserializeOwned>(lines: &[String]) -> Vec<T> {
    lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
