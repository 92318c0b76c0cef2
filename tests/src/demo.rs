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
