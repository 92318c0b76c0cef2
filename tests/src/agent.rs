//! Running the real node agent (`conduit-ebpf agent`) and its CLI
//! (`status`, `cleanup`) for a test.

use crate::bins;
use crate::process::{Process, Spawn};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// How long the agent may take to load and attach its programs.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where an agent attaches, listens and pins.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The `conduit-ebpf` binary.
    pub bin: PathBuf,
    /// cgroup the programs attach to (`--cgroup`).
    pub cgroup: PathBuf,
    /// Registration socket (`--socket`).
    pub socket: PathBuf,
    /// Pin directory (`--pin-dir`).
    pub pin_dir: PathBuf,
    /// Further arguments (`--sockmap-fastpath`, `--exclude-cidr ...`).
    pub extra_args: Vec<String>,
    /// Copy the agent's log lines to stderr (tests: yes; the demo: only on failure).
    pub echo_logs: bool,
}

impl AgentConfig {
    /// Starts `conduit-ebpf agent` and waits until it logs `agent ready`.
    pub fn start(&self) -> Result<Agent> {
        if let Some(dir) = self.socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut spawn = Spawn::new("agent", &self.bin)
            .arg("agent")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("CONDUIT_AGENT_LOG").unwrap_or_else(|_| "info".into()),
            );
        if !self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--socket-group"))
        {
            // The socket is mode 0660: the test proxies' group may register.
            spawn = spawn
                .arg("--socket-group")
                .arg(crate::env::PROXY_UID.to_string());
        }
        if !self.echo_logs {
            spawn = spawn.quiet();
        }
        let mut process = spawn.start()?;
        process
            .wait_for_line("agent ready", READY_TIMEOUT, |l| l.contains("agent ready"))
            .context("the agent did not become ready")?;
        Ok(Agent {
            process,
            config: self.clone(),
        })
    }

    fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new(&self.bin)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .env("NO_COLOR", "1")
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output()
            .with_context(|| format!("running {} {}", self.bin.display(), args.join(" ")))
    }

    /// `conduit-ebpf status --json`, parsed.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        let out = self.cli(&["status", "--json"])?;
        if !out.status.success() {
            bail!(
                "conduit-ebpf status --json failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "conduit-ebpf status --json printed no JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `conduit-ebpf status --json`, typed.
    pub fn status(&self) -> Result<crate::status::Status> {
        let v = self.status_json()?;
        serde_json::from_value(v.clone()).with_context(|| format!("unexpected status --json: {v}"))
    }

    /// `conduit-ebpf status` (the operator's table), as text.
    pub fn status_text(&self) -> Result<String> {
        let out = self.cli(&["status"])?;
        if !out.status.success() {
            bail!(
                "conduit-ebpf status failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `conduit-ebpf cleanup`.
    pub fn cleanup(&self) -> Result<()> {
        let out = self.cli(&["cleanup"])?;
        if !out.status.success() {
            bail!(
                "conduit-ebpf cleanup failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// A running agent; on drop it gets SIGTERM (pinned state stays: the test
/// environment runs `conduit-ebpf cleanup` when it is dropped).
#[derive(Debug)]
pub struct Agent {
    /// The agent process.
    pub process: Process,
    /// How it was started.
    pub config: AgentConfig,
}

impl Agent {
    /// SIGTERM; waits for it to exit and fails if it did not exit cleanly.
    pub fn stop(mut self) -> Result<()> {
        let status = self.process.terminate(Duration::from_secs(10))?;
        if !status.success() {
            bail!(
                "the agent exited with {status} on SIGTERM; output:\n{}",
                self.process.output_text()
            );
        }
        Ok(())
    }
}

/// The agent binary, as found by [`bins::find`].
pub fn agent_bin() -> Result<PathBuf> {
    bins::find(bins::AGENT)
}
