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
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The proxy binary.
pub const PROXY: &str = "conduit-proxy";

/// How long a proxy may take to be certified and ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a proxy is started under instead of directly: the same process
/// (pid, uid, cgroup, network namespace, environment), the proxy's code
/// run by a profiler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    /// valgrind's callgrind (instruction counts). The profile of `pod`'s
    /// proxy is `<dir>/<prefix>-<pod>.<pid>`, written when it exits; the
    /// dumps asked of it while it runs (`callgrind_control --dump`) are
    /// `<that>.1`, `<that>.2`, ... `dir` must be writable by the proxy's uid.
    Callgrind {
        /// Where the profiles go.
        dir: PathBuf,
        /// Names this mesh's profiles (e.g. the benchmark path).
        prefix: String,
    },
}

impl Launcher {
    /// The program to start and its arguments before the proxy's own.
    pub fn command(&self, proxy: &Path, pod: &str) -> (PathBuf, Vec<OsString>) {
        match self {
            Launcher::Callgrind { dir, prefix } => {
                let out = dir.join(format!("{prefix}-{pod}.%p"));
                let mut out_arg = OsString::from("--callgrind-out-file=");
                out_arg.push(out.as_os_str());
                (
                    PathBuf::from("valgrind"),
                    vec![
                        "--tool=callgrind".into(),
                        out_arg,
                        proxy.as_os_str().to_owned(),
                    ],
                )
            }
        }
    }

    /// The profile of `pod`'s proxy running as `pid` (without a dump's
    /// `.<n>`).
    pub fn profile(&self, pod: &str, pid: u32) -> PathBuf {
        match self {
            Launcher::Callgrind { dir, prefix } => dir.join(format!("{prefix}-{pod}.{pid}")),
        }
    }

    /// How long a proxy started this way may take to be ready (valgrind
    /// runs it some 50 times slower).
    pub fn ready_timeout(&self) -> Duration {
        match self {
            Launcher::Callgrind { .. } => READY_TIMEOUT * 4,
        }
    }
}

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
    /// Started under this instead of directly (None: directly).
    pub launcher: Option<Launcher>,
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
        let bin = bins::find(PROXY)?;
        let (program, launcher_args) = match &config.launcher {
            Some(l) => l.command(&bin, &config.pod),
            None => (bin, Vec::new()),
        };
        let process = env
            .spawn(&config.pod, "proxy", program)?
            .user(PROXY_UID, PROXY_UID)
            .args(launcher_args)
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
        let timeout = self
            .config
            .launcher
            .as_ref()
            .map_or(READY_TIMEOUT, Launcher::ready_timeout);
        let process = &mut self.process;
        let r = wait_until(&format!("the proxy of {pod} to be ready"), timeout, || {
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
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_launcher_names_the_profile_by_prefix_pod_and_pid() {
        let l = Launcher::Callgrind {
            dir: PathBuf::from("/tmp/cg"),
            prefix: "ebpf".into(),
        };
        let (program, args) = l.command(Path::new("/bin/conduit-proxy"), "web-1");
        assert_eq!(program, Path::new("valgrind"));
        assert_eq!(
            args,
            [
                "--tool=callgrind",
                "--callgrind-out-file=/tmp/cg/ebpf-web-1.%p",
                "/bin/conduit-proxy"
            ]
            .map(OsString::from)
        );
        assert_eq!(l.profile("web-1", 42), Path::new("/tmp/cg/ebpf-web-1.42"));
        assert!(l.ready_timeout() > READY_TIMEOUT);
    }
}
