//! The paths the same load is sent through, each a complete local mesh of
//! its own (controller, agent, a client pod and a server pod, each with a
//! real conduit-proxy certified by the controller) so that all of them are
//! up at once and measurements can alternate between them:
//!
//! * `direct`: capture off; the load generator calls the server pod's
//!   address, no proxy on the way;
//! * `ebpf`: the agent's eBPF capture sends the client's connection to the
//!   service IP into its proxy, mTLS to the server pod's proxy (4143);
//! * `iptables`: the same proxies without the agent: iptables nat OUTPUT
//!   `REDIRECT` in the client pod (all uids but the proxy's);
//! * `sockmap`: like `ebpf`, with the agent's `--sockmap-fastpath` (local
//!   app-to-proxy bytes go socket to socket with sk_msg);
//! * `policy`: like `ebpf`, the server pod's proxy enforcing a 100-rule
//!   inbound policy (99 rules that do not match, then the one that allows);
//! * `plugin`: like `policy`, the allowing rule asking an authorization
//!   plugin (the example plugin, in the controller's pod) about every request.

use crate::callgrind::{Callgrind, Profiled};
use crate::pod::{BenchServer, LoadClient};
use anyhow::{Context, Result, bail};
use conduit_bench::loadgen::{Load, Protocol, Sample};
use conduit_tests::demo::Steps;
use conduit_tests::mesh::spec::{Capture, MeshSpec, ServiceSpec};
use conduit_tests::mesh::{Mesh, report};
use conduit_tests::names::Names;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The benchmark server's port in the server pod.
pub const SERVER_PORT: u16 = 8081;
/// The service port the client calls (to SERVER_PORT).
pub const SERVICE_PORT: u16 = 80;
/// The benchmark service's name.
pub const SERVICE: &str = "bench";
/// The server pod.
pub const SERVER_POD: &str = "web-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Ebpf,
    Iptables,
    Sockmap,
    Policy,
    Plugin,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Kind> {
        Ok(match s {
            "direct" => Kind::Direct,
            "ebpf" => Kind::Ebpf,
            "iptables" => Kind::Iptables,
            "sockmap" | "fastpath" => Kind::Sockmap,
            "policy" => Kind::Policy,
            "plugin" => Kind::Plugin,
            other => {
                bail!("unknown path {other:?} (direct, ebpf, iptables, sockmap, policy, plugin)")
            }
        })
    }

    /// Short name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Ebpf => "eBPF",
            Kind::Iptables => "iptables",
            Kind::Sockmap => "eBPF + sockmap",
            Kind::Policy => "eBPF + 100-rule policy",
            Kind::Plugin => "eBPF + policy + plugin",
        }
    }

    /// What the path is, for progress lines.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Direct => "direct: client pod to server pod, no proxy",
            Kind::Ebpf => "eBPF capture, two proxies, mTLS",
            Kind::Iptables => {
                "iptables REDIRECT, the same two proxies, mTLS, no agent registration"
            }
            Kind::Sockmap => "eBPF capture with --sockmap-fastpath, two proxies, mTLS",
            Kind::Policy => "eBPF capture, two proxies, mTLS, a 100-rule inbound policy",
            Kind::Plugin => {
                "eBPF capture, two proxies, mTLS, a 100-rule policy whose allowing rule asks a plugin"
            }
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Ebpf => "ebpf",
            Kind::Iptables => "iptables",
            Kind::Sockmap => "sockmap",
            Kind::Policy => "policy",
            Kind::Plugin => "plugin",
        }
    }

    /// The names of the path's mesh: `mesh-bench-<path>` on subnets
    /// 10.77.240-245, outside the tests' hashed range (20..220) and the
    /// demo's (0), so a benchmark can run beside them; a `--callgrind` run's
    /// `mesh-cost-<path>` on 246-251, so that it can run beside a timing run
    /// (a second run of the same names would remove the first one's pods).
    fn names(self, callgrind: bool) -> Names {
        let (run, first) = if callgrind {
            ("mesh-cost", 246)
        } else {
            ("mesh-bench", 240)
        };
        Names::with_subnet(&format!("{run}-{}", self.key()), first + self as u8)
    }

    fn spec(self, names: &Names, callgrind: Option<&Callgrind>) -> MeshSpec {
        let mut spec = MeshSpec::with_servers(1);
        spec.services = vec![ServiceSpec {
            name: SERVICE.into(),
            ip_octet: 10,
            ports: vec![(SERVICE_PORT, SERVER_PORT)],
            endpoints: vec![SERVER_POD.into()],
            announced_service_account: None,
            ipv6: false,
        }];
        spec.quiet_apps = true;
        spec.proxy_args = vec!["--log".into(), "warn".into()];
        // The direct path's proxies carry no request: they run as usual.
        spec.proxy_launcher = callgrind
            .filter(|_| self != Kind::Direct)
            .map(|cg| cg.launcher(self));
        spec.capture = match self {
            Kind::Direct => Capture::None,
            Kind::Ebpf | Kind::Sockmap | Kind::Policy | Kind::Plugin => Capture::Ebpf,
            Kind::Iptables => Capture::Iptables,
        };
        if self == Kind::Sockmap {
            spec.agent_args = vec!["--sockmap-fastpath".into()];
        }
        if let Some(file) = crate::policy::policy_file(self, names) {
            spec.controller_args = vec!["--policy-file".into(), file.display().to_string()];
        }
        spec
    }
}

/// One path, up and ready to measure.
pub struct Path {
    pub kind: Kind,
    /// Where the load generator sends requests.
    pub target: SocketAddr,
    /// (label, pid) of the proxies on the way.
    pub proxies: Vec<(&'static str, u32)>,
    /// (label, pid) of the load generator and the server: what the direct
    /// path has too.
    pub apps: Vec<(&'static str, u32)>,
    /// The same proxies when they run under callgrind (`--callgrind`).
    pub profiled: Vec<Profiled>,
    pub client: LoadClient,
    // Dropped before the mesh (fields drop in order).
    _server: BenchServer,
    _plugin: Option<conduit_tests::process::Process>,
    pub mesh: Mesh,
}

impl Path {
    /// Brings the path's mesh up (with `--callgrind`, its proxies under
    /// callgrind unless the path is direct), starts the server and the load
    /// generator and checks one request of each protocol gets through.
    pub fn up(kind: Kind, protocols: &[Protocol], callgrind: Option<&Callgrind>) -> Result<Path> {
        let names = kind.names(callgrind.is_some());
        let policy_file = crate::policy::policy_file(kind, &names);
        if let Some(file) = &policy_file {
            std::fs::create_dir_all(file.parent().unwrap_or(std::path::Path::new("/tmp")))?;
            std::fs::write(file, "")?;
        }
        let spec = kind.spec(&names, callgrind);
        let launcher = spec.proxy_launcher.clone();
        let mesh = Mesh::up(names, spec, &mut Steps::new(6))?;
        let plugin = match policy_file {
            None => None,
            Some(file) => Some(crate::policy::install(kind, &mesh, &file)?),
        }
        .flatten();
        let server = BenchServer::start(&mesh.env, SERVER_POD, SERVER_PORT)?;
        let client_pod = mesh.spec.client.clone();
        let client = LoadClient::start(&mesh.env, &client_pod)?;
        let (target, pods) = match kind {
            Kind::Direct => (mesh.env.pod(SERVER_POD).v4(SERVER_PORT), Vec::new()),
            _ => (
                SocketAddr::from((mesh.service_ip(SERVICE), SERVICE_PORT)),
                vec![
                    ("client proxy", client_pod.as_str()),
                    ("server proxy", SERVER_POD),
                ],
            ),
        };
        let proxies: Vec<(&'static str, u32)> = pods
            .iter()
            .map(|&(label, pod)| (label, mesh.proxy(pod).process.pid()))
            .collect();
        let profiled = match &launcher {
            None => Vec::new(),
            Some(l) => pods
                .iter()
                .zip(&proxies)
                .map(|(&(label, pod), &(_, pid))| Profiled {
                    label,
                    pid,
                    profile: l.profile(pod, pid),
                })
                .collect(),
        };
        let apps = vec![("load generator", client.pid()), ("server", server.pid())];
        let mut path = Path {
            kind,
            target,
            proxies,
            apps,
            profiled,
            client,
            _server: server,
            _plugin: plugin,
            mesh,
        };
        for &p in protocols {
            path.check(p).with_context(|| {
                format!("{}: no {} request got through", kind.label(), p.label())
            })?;
        }
        Ok(path)
    }

    fn check(&mut self, protocol: Protocol) -> Result<()> {
        let started = Instant::now();
        let s = self.measure(protocol, Load::Max(1), Duration::from_millis(300))?;
        if s.latencies.is_empty() {
            let logs: Vec<String> = self
                .mesh
                .proxies
                .iter()
                .map(|(pod, p)| {
                    let text = p.process.output_text();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    format!("proxy of {pod}:\n{}", tail.join("\n"))
                })
                .collect();
            bail!(
                "{} errors in {:?} calling {}; {}",
                s.errors,
                started.elapsed(),
                self.target,
                logs.join("\n")
            );
        }
        Ok(())
    }

    /// What the server pod's proxy saw, from its metrics: the requests it
    /// forwarded inbound and the peer identities they came with (mTLS).
    /// Proves the proxied paths really went through both proxies with the
    /// client's certificate, and the direct path through none.
    pub fn verify(&self) -> Result<String> {
        let m = self.mesh.proxy(SERVER_POD).metrics()?;
        let n = report::requests(&m, "inbound");
        let ids = report::identities(&m, "inbound");
        match self.kind {
            Kind::Direct if n > 0.0 => {
                bail!("direct: {n} requests went through the server's proxy")
            }
            Kind::Direct => Ok("direct: no request through the server pod's proxy".into()),
            _ => {
                let client = self.mesh.identity(&self.mesh.spec.client);
                if n == 0.0 || !ids.contains(&client) {
                    bail!(
                        "{}: the server pod's proxy counted {n} inbound requests, peer identities {ids:?} (expected {client})",
                        self.kind.label()
                    );
                }
                Ok(format!(
                    "{}: the server pod's proxy forwarded {n:.0} requests inbound, peer identity {}",
                    self.kind.label(),
                    ids.join(", ")
                ))
            }
        }
    }

    /// One measurement through this path.
    pub fn measure(
        &mut self,
        protocol: Protocol,
        load: Load,
        duration: Duration,
    ) -> Result<Sample> {
        self.client.run(self.target, protocol, load, duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callgrind_runs_have_names_and_subnets_of_their_own() {
        let timing = Kind::Ebpf.names(false);
        assert_eq!(
            (timing.test.as_str(), timing.subnet),
            ("mesh-bench-ebpf", 241)
        );
        let cost = Kind::Ebpf.names(true);
        assert_eq!((cost.test.as_str(), cost.subnet), ("mesh-cost-ebpf", 247));
        assert_eq!(Kind::Plugin.names(false).subnet, 245);
        assert_eq!(Kind::Plugin.names(true).subnet, 251);
        assert_eq!(
            crate::policy::policy_file(Kind::Policy, &Kind::Policy.names(false)),
            Some(std::env::temp_dir().join("conduit-mesh-bench-policy/policy.yaml"))
        );
        assert_eq!(crate::policy::policy_file(Kind::Ebpf, &cost), None);
    }
}
