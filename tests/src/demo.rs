//! Building blocks of `conduit-demo`, kept apart so the demo can grow from
//! the capture demo into the full local mesh: a node (the machine checks,
//! pods on a bridge, the agent) and progress output for a newcomer.

use crate::agent::Agent;
use crate::bins;
use crate::cgroup::cgroup2_mount;
use crate::env::Env;
use crate::names::Names;
use crate::privilege;
use anyhow::{Context, Result, bail};
use std::time::Instant;

/// Numbered progress lines: `[2/6] creating pods ... done in 0.4s`.
#[derive(Debug)]
pub struct Steps {
    done: usize,
    total: usize,
    loud: bool,
}

impl Steps {
    /// `total` steps.
    pub fn new(total: usize) -> Self {
        Self {
            done: 0,
            total,
            loud: true,
        }
    }

    /// Steps that print nothing (tests: a failure carries its own error).
    pub fn silent() -> Self {
        Self {
            done: 0,
            total: 0,
            loud: false,
        }
    }

    /// Whether steps (and their details) are printed.
    pub fn loud(&self) -> bool {
        self.loud
    }

    /// Runs one step, printing its title, then `ok (time)` or the error.
    pub fn run<T>(&mut self, title: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        if crate::wait::interrupted() {
            bail!("interrupted");
        }
        self.done += 1;
        if !self.loud {
            return f().with_context(|| title.to_owned());
        }
        println!("[{}/{}] {title}", self.done, self.total);
        let start = Instant::now();
        let r = f();
        match &r {
            Ok(_) => println!("      ok ({:.1}s)", start.elapsed().as_secs_f64()),
            Err(e) => println!("      FAILED: {e:#}"),
        }
        r
    }
}

/// Checks the machine and says plainly what is missing.
pub fn check_machine() -> Result<String> {
    if let Some(reason) = privilege::missing() {
        bail!(
            "{reason}. The demo needs root, cgroup v2 and the bpf syscall: run it as root \
             (for example `sudo -E cargo xtask demo`)"
        );
    }
    let agent = bins::find(bins::AGENT)?;
    Ok(format!(
        "root, cgroup v2 at {}, bpf syscall; agent {}",
        cgroup2_mount()?.display(),
        agent.display()
    ))
}

/// A node: pods on a bridge, a cgroup tree of its own, and the node agent
/// attached to that cgroup. Drops the agent first, then everything else.
#[derive(Debug)]
pub struct Node {
    /// The running agent.
    pub agent: Agent,
    /// Pods, cgroups, run and pin directories.
    pub env: Env,
}

impl Node {
    /// Creates the pods (removing leftovers of an earlier run) and starts
    /// the agent. An agent that refuses to start (a kernel feature missing)
    /// is reported with its own words.
    pub fn up(names: Names, pods: &[&str], steps: &mut Steps) -> Result<Self> {
        let env = steps.run(
            &format!(
                "creating pods {} on a bridge (network namespaces + veth)",
                pods.join(", ")
            ),
            || {
                let env = Env::new(names, pods)?;
                for p in env.topology().pods() {
                    println!(
                        "      pod {:<8} netns {:<22} {} {}",
                        p.name,
                        p.netns().name(),
                        p.ipv4,
                        p.ipv6
                    );
                }
                Ok(env)
            },
        )?;
        let mut config = env.agent_config()?;
        config.echo_logs = false;
        let title = format!(
            "starting the node agent: conduit-ebpf agent --cgroup {} --socket {} --pin-dir {}",
            config.cgroup.display(),
            config.socket.display(),
            config.pin_dir.display()
        );
        let agent = steps.run(&title, || {
            config.start().context("the node agent did not start")
        })?;
        Ok(Self { agent, env })
    }
}

/// The demo's ending: `conduit-ebpf stat` over fresh traffic and the first
/// lines of `conduit-ebpf tap --pod client`, as a node operator runs them.
/// Returns stat's last table and tap's lines.
pub fn stat_and_tap(mesh: &crate::mesh::Mesh, requests: u32) -> Result<(String, Vec<String>)> {
    use crate::process::Spawn;
    use std::time::Duration;
    let pin_dir = mesh.agent.config.pin_dir.to_string_lossy().into_owned();
    let cli = |label: &str, args: &[&str]| -> Result<Spawn> {
        Ok(Spawn::new(label, crate::agent::agent_bin()?)
            .args(args.iter().copied())
            .args(["--pin-dir", &pin_dir])
            .quiet())
    };
    let t = Duration::from_secs(20);
    let mut stat = cli(
        "stat",
        &["stat", "--watch", "--interval", "1s", "--window", "60s"],
    )?
    .start()?;
    stat.wait_for_line("its first table", t, |l| l.contains("window"))?;
    let mut tap = cli("tap", &["tap", "--pod", "client", "--max", "6"])?.start()?;
    crate::wait_until("tap to listen on the client's proxy", t, || {
        let m = mesh.proxy(&mesh.spec.client).metrics()?;
        anyhow::ensure!(m.sum("conduit_tap_listeners", &[]) >= 1.0, "not yet");
        Ok(())
    })?;
    for i in 0..requests {
        let path = if i % 5 == 4 { "/status/500" } else { "/hello" };
        mesh.curl(&mesh.url_by_name("web", 80, path))?;
    }
    let grpc_target = format!(
        "http://{}:{}",
        mesh.spec.fqdn("web"),
        crate::mesh::spec::GRPC_PORT
    );
    mesh.grpc(&grpc_target, 3, 2, "hello again")?;
    tap.wait_exit(t)?;
    let svc = mesh.spec.fqdn("web");
    stat.wait_for_line("both services in the table", t, |l| {
        l.contains(&format!("{svc}:9090"))
    })?;
    // One more refresh, so the table holds everything sent.
    let shown = stat.stdout_lines().len();
    crate::wait_until("stat to refresh", t, || {
        anyhow::ensure!(stat.stdout_lines().len() > shown + 3, "not yet");
        Ok(())
    })?;
    let out = stat.stdout_lines().join("\n");
    let last = out
        .rsplit("\x1b[H\x1b[2J")
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_owned();
    Ok((last, tap.stdout_lines()))
}
