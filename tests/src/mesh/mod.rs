//! The local mesh: the real controller, the real node agent, and pods (a
//! client and N servers) each running an application and a real
//! `conduit-proxy` registered with the agent. Used by `conduit-demo`, the
//! `mesh_*` end-to-end tests and the mesh benchmark.
//!
//! ```text
//!   pod controller   conduit-controller (file discovery, tokens, issuer)
//!   pod client       curl / gRPC client  ->  conduit-proxy (uid 1337)
//!   pod web-N        conduit-mesh-app (HTTP/1.1 :8080, gRPC :9090) <- conduit-proxy
//!   host             conduit-ebpf agent (attached at the mesh's cgroup)
//! ```
//!
//! Services have a name (`web.default.svc.cluster.local`) and a virtual IP
//! (`10.96.<subnet>.10`); the client pod's `/etc/hosts` maps the one to the
//! other (clients run through `ip netns exec`, which bind-mounts
//! `/etc/netns/<netns>/hosts`), exactly like cluster DNS. The client's
//! connection to the virtual IP is captured by the agent's eBPF programs
//! into its proxy, which asks the controller for the endpoints and opens
//! mTLS to the chosen server pod's proxy on port 4143. Without a proxy the
//! virtual IP is unreachable (the client pod routes it so): connections
//! fail at once instead of hanging.

pub mod app;
pub mod controller;
pub mod faults;
pub mod load;
pub mod load_run;
pub mod proxy;
pub mod report;
pub mod scrape;
pub mod spec;
pub mod tls;

use crate::agent::Agent;
use crate::demo::Steps;
use crate::env::Env;
use crate::names::Names;
use crate::privilege;
use crate::status::StatusExt as _;
use anyhow::{Context, Result, anyhow};
use app::AppServer;
use controller::{Controller, ControllerFiles};
use proxy::{MeshProxy, ProxyConfig};
use spec::{Capture, MeshSpec};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

/// A running mesh. Fields drop in order: proxies, applications,
/// controller, agent, then the environment (pinned state, cgroups, pods).
#[derive(Debug)]
pub struct Mesh {
    /// Proxies by pod.
    pub proxies: BTreeMap<String, MeshProxy>,
    /// Server applications by pod.
    pub apps: BTreeMap<String, AppServer>,
    /// The controller (None while stopped).
    pub controller: Option<Controller>,
    /// The node agent.
    pub agent: Agent,
    /// What the mesh is made of.
    pub spec: MeshSpec,
    /// The controller's files.
    pub files: ControllerFiles,
    _hosts: HostsFile,
    /// Pods, cgroups, directories.
    pub env: Env,
}

impl Mesh {
    /// For the privileged test `test`: `Ok(None)` after a SKIPPED line when
    /// root, cgroup v2 or bpf is missing (a failure under
    /// `CONDUIT_REQUIRE_PRIVILEGED=1`); otherwise the mesh, up.
    pub fn privileged(test: &str, spec: MeshSpec) -> Result<Option<Self>> {
        if !privilege::check(test) {
            return Ok(None);
        }
        Self::up(Names::for_test(test), spec, &mut Steps::silent()).map(Some)
    }

    /// Brings the whole mesh up, one step at a time.
    pub fn up(names: Names, spec: MeshSpec, steps: &mut Steps) -> Result<Self> {
        let loud = steps.loud();
        let detail = |line: &str| {
            if loud {
                println!("      {line}");
            }
        };
        let pods = spec.pods();
        let pod_refs: Vec<&str> = pods.iter().map(String::as_str).collect();
        let env = steps.run(
            &format!(
                "creating pods {} (network namespaces on a bridge)",
                pods.join(", ")
            ),
            || {
                let env = Env::new(names, &pod_refs)?;
                for p in env.topology().pods() {
                    detail(&format!(
                        "pod {:<10} netns {:<24} {}",
                        p.name,
                        p.netns().name(),
                        p.ipv4
                    ));
                }
                Ok(env)
            },
        )?;
        let dir = env.run_dir().join("mesh");
        let files = ControllerFiles::in_dir(&dir);
        let hosts = steps.run(
            "writing the controller's discovery file, tokens and issuer; the client's /etc/hosts",
            || {
                std::fs::create_dir_all(dir.join("tokens"))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
                let pod_ip = |p: &str, v6: bool| match v6 {
                    true => IpAddr::V6(env.pod(p).ipv6),
                    false => IpAddr::V4(env.pod(p).ipv4),
                };
                write(
                    &files.discovery,
                    &spec::discovery_yaml(&spec, &env.names, pod_ip)?,
                )?;
                write(&files.tokens, &spec::tokens_yaml(&spec)?)?;
                for pod in spec.pods().iter().skip(1) {
                    let sa = spec.service_account(pod);
                    write(&dir.join("tokens").join(pod), &spec::token(&spec, sa))?;
                }
                files.make_issuer()?;
                for svc in &spec.services {
                    detail(&format!(
                        "service {:<32} ip {:<12} ports {:?} endpoints {}",
                        spec.fqdn(&svc.name),
                        spec::service_ip(&env.names, svc),
                        svc.ports,
                        svc.endpoints.join(", ")
                    ));
                }
                let client = env.pod(&spec.client);
                let hosts =
                    HostsFile::write(client.netns().name(), &spec::hosts_file(&spec, &env.names))?;
                let vips = format!("10.96.{}.0/24", env.names.subnet);
                match spec.capture {
                    Capture::Iptables => {
                        let pods = format!("10.77.{}.0/24", env.names.subnet);
                        for dst in [&vips, &pods] {
                            let uid = crate::env::PROXY_UID.to_string();
                            client.netns().exec(
                                "iptables",
                                &[
                                    "-w",
                                    "-t",
                                    "nat",
                                    "-A",
                                    "OUTPUT",
                                    "-p",
                                    "tcp",
                                    "-d",
                                    dst,
                                    "-m",
                                    "owner",
                                    "!",
                                    "--uid-owner",
                                    &uid,
                                    "-j",
                                    "REDIRECT",
                                    "--to-ports",
                                    "4140",
                                ],
                            )?;
                        }
                    }
                    Capture::Ebpf | Capture::None => {
                        client.netns().ip(&["route", "add", "unreachable", &vips])?;
                    }
                }
                Ok(hosts)
            },
        )?;
        let mut agent_config = env.agent_config()?;
        agent_config.extra_args = spec.agent_args.clone();
        agent_config.echo_logs = !loud;
        let agent = steps.run(
            &format!(
                "starting the node agent: conduit-ebpf agent --cgroup {} --pin-dir {}",
                agent_config.cgroup.display(),
                agent_config.pin_dir.display()
            ),
            || agent_config.start().context("the node agent did not start"),
        )?;
        let controller = steps.run(
            "starting conduit-controller in pod controller (file discovery, token file, issuer, gRPC over TLS)",
            || Controller::start(&env, "controller", &files, &spec.controller_args),
        )?;
        let apps = steps.run(
            "starting the application in each server pod (HTTP/1.1 :8080, gRPC :9090)",
            || {
                spec.servers
                    .iter()
                    .map(|s| {
                        let app = AppServer::start(
                            &env,
                            &s.pod,
                            spec::HTTP_PORT,
                            spec::GRPC_PORT,
                            spec.quiet_apps,
                        )?;
                        Ok((s.pod.clone(), app))
                    })
                    .collect::<Result<BTreeMap<_, _>>>()
            },
        )?;
        let mut mesh = Self {
            proxies: BTreeMap::new(),
            apps,
            controller: Some(controller),
            agent,
            spec,
            files,
            _hosts: hosts,
            env,
        };
        let meshed: Vec<String> = mesh.spec.pods().into_iter().skip(1).collect();
        steps.run(
            "starting conduit-proxy in every pod (uid 1337, no capabilities): certified by the controller, registered with the agent",
            || {
                for pod in &meshed {
                    mesh.start_proxy(pod)?;
                    detail(&format!("pod {pod:<10} identity {}", mesh.identity(pod)));
                }
                Ok(())
            },
        )?;
        Ok(mesh)
    }

    /// The pods that run a proxy: the client and the servers.
    pub fn meshed_pods(&self) -> Vec<String> {
        self.spec.pods().into_iter().skip(1).collect()
    }

    /// The SPIFFE identity of `pod`.
    pub fn identity(&self, pod: &str) -> String {
        self.spec.identity(self.spec.service_account(pod))
    }

    /// The virtual IP of service `name`.
    pub fn service_ip(&self, name: &str) -> IpAddr {
        spec::service_ip(&self.env.names, self.spec.service(name))
    }

    /// `http://<fqdn>:<port><path>` of service `name`.
    pub fn url_by_name(&self, name: &str, port: u16, path: &str) -> String {
        format!("http://{}:{port}{path}", self.spec.fqdn(name))
    }

    /// `http://<service ip>:<port><path>` (`[ip]` for IPv6).
    pub fn url_by_ip(&self, name: &str, port: u16, path: &str) -> String {
        format!(
            "http://{}{path}",
            SocketAddr::new(self.service_ip(name), port)
        )
    }

    /// How `pod`'s proxy is (re)started.
    pub fn proxy_config(&self, pod: &str) -> Result<ProxyConfig> {
        let controller = self.controller.as_ref().map(|c| c.grpc).unwrap_or_else(|| {
            (self.env.pod("controller").ipv4, spec::CONTROLLER_GRPC_PORT).into()
        });
        let sa = self.spec.service_account(pod).to_owned();
        Ok(ProxyConfig {
            pod: pod.to_owned(),
            namespace: self.spec.namespace.clone(),
            identity: self.spec.identity(&sa),
            service_account: sa,
            token_file: self.token_file(pod),
            trust_anchors: self.files.issuer_cert.clone(),
            controller,
            agent_socket: (self.spec.capture == Capture::Ebpf)
                .then(|| self.agent.config.socket.clone()),
            extra_args: self.spec.proxy_args.clone(),
            launcher: self.spec.proxy_launcher.clone(),
        })
    }

    fn token_file(&self, pod: &str) -> PathBuf {
        self.env.run_dir().join("mesh").join("tokens").join(pod)
    }

    /// Starts `pod`'s proxy and waits until it is ready and the agent has
    /// enrolled the pod.
    pub fn start_proxy(&mut self, pod: &str) -> Result<()> {
        let config = self.proxy_config(pod)?;
        let proxy = MeshProxy::start(&self.env, &config)?;
        self.proxies.insert(pod.to_owned(), proxy);
        if config.agent_socket.is_some() {
            self.wait_enrolled(pod, true)?;
        }
        Ok(())
    }

    /// Kills `pod`'s proxy (SIGKILL) and waits until the agent has
    /// removed the pod (capture stopped).
    pub fn kill_proxy(&mut self, pod: &str) -> Result<()> {
        let proxy = self
            .proxies
            .remove(pod)
            .ok_or_else(|| anyhow!("no proxy running in {pod}"))?;
        let registered = proxy.config.agent_socket.is_some();
        proxy.kill()?;
        if registered {
            self.wait_enrolled(pod, false)?;
        }
        Ok(())
    }

    /// Waits until the agent's status lists `pod` (or no longer does).
    pub fn wait_enrolled(&self, pod: &str, enrolled: bool) -> Result<()> {
        let what = if enrolled { "enroll" } else { "remove" };
        crate::wait::wait_until(
            &format!("the agent to {what} pod {pod}"),
            Duration::from_secs(20),
            || {
                let status = self.agent.config.status()?;
                let names = status.pod_names();
                if names.contains(&pod) == enrolled {
                    Ok(())
                } else {
                    Err(anyhow!("enrolled pods: {names:?}"))
                }
            },
        )
    }

    /// Stops the controller (SIGTERM).
    pub fn stop_controller(&mut self) -> Result<()> {
        match self.controller.take() {
            Some(c) => c.stop(),
            None => Ok(()),
        }
    }

    /// Starts the controller again (same files, same issuer).
    pub fn start_controller(&mut self) -> Result<()> {
        if self.controller.is_none() {
            self.controller = Some(Controller::start(
                &self.env,
                "controller",
                &self.files,
                &self.spec.controller_args,
            )?);
        }
        Ok(())
    }

    /// The proxy of `pod`; panics if none runs (a bug in the caller).
    pub fn proxy(&self, pod: &str) -> &MeshProxy {
        self.proxies
            .get(pod)
            .unwrap_or_else(|| panic!("no proxy running in {pod}"))
    }

    /// The application of server `pod`.
    pub fn app(&self, pod: &str) -> &AppServer {
        self.apps
            .get(pod)
            .unwrap_or_else(|| panic!("no application in {pod}"))
    }

    /// Whether `a` came through its server pod's own proxy: the proxy
    /// reaches the application at the pod's own address (never loopback),
    /// so the application's peer is one of its pod's IPs.
    pub fn via_own_proxy(&self, a: &app::HttpAnswer) -> bool {
        let pod = self.env.pod(&a.server);
        a.peer.ip() == IpAddr::V4(pod.ipv4) || a.peer.ip() == IpAddr::V6(pod.ipv6)
    }

    /// curl (HTTP/1.1) from the client pod.
    pub fn curl(&self, url: &str) -> Result<app::CurlResult> {
        app::curl(&self.env, &self.spec.client, url, Duration::from_secs(5))
    }

    /// gRPC calls from the client pod (`target`: `http://host:port`).
    pub fn grpc(
        &self,
        target: &str,
        unary: u32,
        stream: u32,
        text: &str,
    ) -> Result<app::GrpcReport> {
        app::grpc(&self.env, &self.spec.client, target, unary, stream, text)
    }

    /// A long-lived bidirectional gRPC stream from the client pod.
    pub fn bidi(&self, target: &str) -> Result<app::Bidi> {
        app::Bidi::open(&self.env, &self.spec.client, target)
    }
}

fn write(path: &std::path::Path, content: &str) -> Result<()> {
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// `/etc/netns/<netns>/hosts`, removed (with its directory) on drop.
#[derive(Debug)]
struct HostsFile {
    dir: PathBuf,
}

impl HostsFile {
    fn write(netns: &str, content: &str) -> Result<Self> {
        let dir = PathBuf::from("/etc/netns").join(netns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write(&dir.join("hosts"), content)?;
        Ok(Self { dir })
    }
}

impl Drop for HostsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir(PathBuf::from("/etc/netns"));
    }
}
