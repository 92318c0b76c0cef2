//! The real `conduit-proxy` in a pod: unprivileged (uid 1337, no
//! capabilities) in the pod's cgroup `<pod>/proxy`, registered with the
//! node agent, discovering through the controller and certified by it.

use crate::bins;
use crate::env::{Env, PROXY_UID};
use crate::mesh::scrape;
use crate::mesh::spec::ADMIN_PORT;
use crate::process::Process;
use crate::wait::{fatal, wait_until};
use anyhow::{Result, anyhow};
use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The proxy binary.
pub const PROXY: &str = "conduit-proxy";

/// How long a proxy may take to be certified and ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How one pod's proxy is started.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Pod name.
    pub pod: String,
    /// Pod namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
    /// SPIFFE identity it asks the controller to certify.
    pub identity: String,
    /// File holding its token.
    pub token_file: PathBuf,
    /// Trust anchors (PEM).
    pub trust_anchors: PathBuf,
    /// The controller's gRPC address.
    pub controller: SocketAddr,
    /// The agent's registration socket (None: do not register).
    pub agent_socket: Option<PathBuf>,
    /// Further arguments.
    pub extra_args: Vec<String>,
}

impl ProxyConfig {
    /// The command-line arguments (see `conduit-proxy --help`).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        if let Some(s) = &self.agent_socket {
            a.extend([
                "--agent-socket".to_owned(),
                s.to_string_lossy().into_owned(),
            ]);
        }
        a.extend(
            [
                "--pod-name",
                &self.pod,
                "--pod-namespace",
                &self.namespace,
                "--service-account",
                &self.service_account,
                "--controller-addr",
                &self.controller.to_string(),
                "--controller-identity",
                super::spec::CONTROLLER_IDENTITY,
                "--identity",
                &self.identity,
                "--identity-token-file",
                &self.token_file.to_string_lossy(),
                "--identity-trust-anchors",
                &self.trust_anchors.to_string_lossy(),
                "--admin-addr",
                &format!("0.0.0.0:{ADMIN_PORT}"),
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct MeshProxy {
    /// The process.
    pub process: Process,
    /// Its admin address, reachable from the host.
    pub admin: SocketAddr,
    /// How it was started.
    pub config: ProxyConfig,
}

impl MeshProxy {
    /// Starts the proxy and waits until its `/ready` says 200 (it holds a
    /// certificate).
    pub fn start(env: &Env, config: &ProxyConfig) -> Result<Self> {
        let admin = SocketAddr::from((env.pod(&config.pod).ipv4, ADMIN_PORT));
        let process = env
            .spawn(&config.pod, "proxy", bins::find(PROXY)?)?
            .user(PROXY_UID, PROXY_UID)
            .args(config.args())
            .env("CONDUIT_PROXY_LOG", "info")
            .env(
                conduit_base::malloc::TUNABLES_VAR,
                conduit_base::malloc::PROXY_TUNABLES,
            )
            .start()?;
        let mut proxy = Self {
            process,
            admin,
            config: config.clone(),
        };
        proxy.wait_ready()?;
        Ok(proxy)
    }

    /// Waits until `/ready` answers 200.
    pub fn wait_ready(&mut self) -> Result<()> {
        let (admin, pod) = (self.admin, self.config.pod.clone());
        let process = &mut self.process;
        let r = wait_until(
            &format!("the proxy of {pod} to be ready"),
            READY_TIMEOUT,
            || {
                if let Some(s) = process.exited() {
                    return Err(fatal(format!(
                        "the proxy of {pod} exited ({s}):\n{}",
                        process.output_text()
                    )));
                }
                match scrape::get(admin, "/ready")? {
                    (200, _) => Ok(()),
                    (code, body) => Err(anyhow!("/ready: {code} {body}")),
                }
            },
        );
        r.map_err(|e| {
            if self.process.exited().is_some() {
                return e;
            }
            let lines = self.process.output_text();
            let tail: Vec<&str> = lines.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            e.context(format!("the proxy's last output:\n{}", tail.join("\n")))
        })
    }

    /// Its `/metrics`.
    pub fn metrics(&self) -> Result<scrape::Metrics> {
        scrape::metrics(self.admin)
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill(mut self) -> Result<()> {
        self.process.signal(Signal::SIGKILL)?;
        self.process.wait_exit(Duration::from_secs(5))?;
        Ok(())
    }
}
