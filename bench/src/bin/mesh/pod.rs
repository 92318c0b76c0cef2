//! The benchmark's processes inside pods: the HTTP server (`serve`, the
//! `conduit-bench` hyper server: HTTP/1.1 and HTTP/2 prior knowledge on one
//! port) and the load generator (`client`), which stays up for the whole
//! run so its connections stay warm, takes one JSON command per line on
//! stdin, writes each measurement to a file and says `{"done":<id>}`.
//! Both are this same binary, started through the harness in a pod's
//! network namespace and cgroup (so the agent's capture applies to the
//! load generator exactly as to an application).

use anyhow::{Context, Result, anyhow, bail};
use conduit_bench::loadgen::{self, Load, Protocol, Sample, Target};
use conduit_tests::env::Env;
use conduit_tests::process::Process;
use conduit_tests::wait::fatal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One measurement asked of the load generator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub target: SocketAddr,
    pub protocol: Protocol,
    pub load: Load,
    pub duration: Duration,
    /// Where the [`Sample`] is written (JSON).
    pub out: PathBuf,
}

/// The load generator's answer line.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    done: u64,
    error: Option<String>,
}

/// `conduit-mesh-bench serve`: serve on `addrs` until stdin closes.
pub fn serve(addrs: &[SocketAddr]) -> Result<()> {
    let servers = addrs
        .iter()
        .map(|a| conduit_bench::server::Server::bind(*a))
        .collect::<Result<Vec<_>>>()?;
    let bound: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    println!(
        "{}",
        serde_json::json!({ "event": "listening", "addrs": bound })
    );
    // The harness closes stdin (then signals) to stop us.
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
    Ok(())
}

/// `conduit-mesh-bench client`: run commands from stdin until it closes.
pub fn client() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("client runtime")?;
    let mut targets: HashMap<(SocketAddr, Protocol), Target> = HashMap::new();
    println!("{}", serde_json::json!({ "event": "ready" }));
    for line in std::io::stdin().lock().lines() {
        let line = line.context("reading commands")?;
        if line.trim().is_empty() {
            continue;
        }
        let (id, result) = match serde_json::from_str::<Command>(&line) {
            Ok(cmd) => {
                let target = targets
                    .entry((cmd.target, cmd.protocol))
                    .or_insert_with(|| {
                        rt.block_on(async { Target::new(cmd.target, cmd.protocol) })
                    });
                let sample = loadgen::run(rt.handle(), target, cmd.load, cmd.duration);
                let r = serde_json::to_vec(&sample)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| {
                        std::fs::write(&cmd.out, b)
                            .with_context(|| format!("writing {}", cmd.out.display()))
                    });
                (cmd.id, r)
            }
            Err(e) => (0, Err(anyhow!("bad command {line:?}: {e}"))),
        };
        let answer = Answer {
            done: id,
            error: result.err().map(|e| format!("{e:#}")),
        };
        println!("{}", serde_json::to_string(&answer)?);
    }
    Ok(())
}

/// The load generator running in a pod, seen from the host.
pub struct LoadClient {
    process: Process,
    dir: PathBuf,
    next: u64,
}

impl LoadClient {
    /// Starts `conduit-mesh-bench client` in `pod` (cgroup `<pod>/bench`,
    /// as root: an ordinary application, captured like one).
    pub fn start(env: &Env, pod: &str) -> Result<LoadClient> {
        let exe = std::env::current_exe().context("finding this program")?;
        let mut process = env
            .spawn(pod, "bench", &exe)?
            .arg("client")
            .quiet()
            .start()?;
        process.wait_for_line("ready", Duration::from_secs(20), |l| {
            l.contains(r#""event":"ready""#)
        })?;
        let dir = env.run_dir().join("bench");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(LoadClient {
            process,
            dir,
            next: 1,
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Runs one measurement and returns what it measured.
    pub fn run(
        &mut self,
        target: SocketAddr,
        protocol: Protocol,
        load: Load,
        duration: Duration,
    ) -> Result<Sample> {
        let id = self.next;
        self.next += 1;
        let out = self.dir.join(format!("sample-{id}.json"));
        let cmd = Command {
            id,
            target,
            protocol,
            load,
            duration,
            out: out.clone(),
        };
        self.process.send_line(&serde_json::to_string(&cmd)?)?;
        let done = format!(r#"{{"done":{id},"#);
        let line = self.process.wait_for_line(
            &format!("measurement {id} done"),
            duration + Duration::from_secs(60),
            |l| l.starts_with(&done),
        )?;
        let answer: Answer = serde_json::from_str(&line)
            .with_context(|| format!("load generator answered {line:?}"))?;
        if let Some(e) = answer.error {
            bail!("the load generator failed: {e}");
        }
        let sample = read_sample(&out)?;
        let _ = std::fs::remove_file(&out);
        Ok(sample)
    }
}

fn read_sample(path: &Path) -> Result<Sample> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The benchmark server in a pod.
pub struct BenchServer {
    process: Process,
}

impl BenchServer {
    /// Starts `conduit-mesh-bench serve` in `pod` (cgroup `<pod>/bench`).
    pub fn start(env: &Env, pod: &str, port: u16) -> Result<BenchServer> {
        let exe = std::env::current_exe().context("finding this program")?;
        let mut process = env
            .spawn(pod, "bench", &exe)?
            .args(["serve", "--listen", &format!("[::]:{port}")])
            .quiet()
            .start()?;
        process
            .wait_for_line("listening", Duration::from_secs(20), |l| {
                l.contains(r#""event":"listening""#)
            })
            .map_err(|e| {
                fatal(format!(
                    "the benchmark server in {pod} did not start: {e:#}"
                ))
            })?;
        Ok(BenchServer { process })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
