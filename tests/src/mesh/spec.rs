//! What a local mesh is made of: server pods (each with an identity),
//! services over them (name, virtual IP, ports), and the files the
//! controller reads, generated from that description.

use crate::names::Names;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The application's HTTP/1.1 port in every server pod.
pub const HTTP_PORT: u16 = 8080;
/// The application's gRPC port in every server pod.
pub const GRPC_PORT: u16 = 9090;
/// The proxy's inbound (mTLS) port.
pub const INBOUND_PORT: u16 = 4143;
/// The proxy's admin port (`/metrics`, `/ready`).
pub const ADMIN_PORT: u16 = 4191;
/// The controller's gRPC port (Destination, Identity).
pub const CONTROLLER_GRPC_PORT: u16 = 8086;
/// The controller's admin port.
pub const CONTROLLER_ADMIN_PORT: u16 = 9990;
/// Trust domain of every identity.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The controller's identity: its gRPC port serves TLS (the default, with
/// the controller's default namespace and service account) and every proxy
/// requires it (`--controller-identity`).
pub const CONTROLLER_IDENTITY: &str = "spiffe://cluster.local/ns/conduit/sa/conduit-controller";

/// A server pod: runs the application (HTTP/1.1 + gRPC) and a proxy.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Pod name (also the name the application puts in its answers).
    pub pod: String,
    /// Service account: the pod's identity and the token it holds.
    pub service_account: String,
}

/// A service: a name (`name.ns.svc.cluster.local`), a virtual IP and
/// ports, backed by server pods.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// DNS label.
    pub name: String,
    /// Last octet of its virtual IP `10.96.<subnet>.<octet>`.
    pub ip_octet: u8,
    /// `(service port, application port)`.
    pub ports: Vec<(u16, u16)>,
    /// Server pods behind it.
    pub endpoints: Vec<String>,
    /// The identity discovery announces for its endpoints; `None`: each
    /// pod's own service account (the truth). Set it to make discovery lie
    /// (a peer then presents another identity than the one expected).
    pub announced_service_account: Option<String>,
    /// An IPv6 service: virtual IP `fd96::<subnet>:0:0:0:<octet>` and its
    /// endpoints' IPv6 addresses.
    pub ipv6: bool,
}

/// How the client pod's outbound connections reach its proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// The agent's eBPF programs (proxies register with the agent).
    Ebpf,
    /// iptables `REDIRECT` in the client pod (nat OUTPUT, every uid but the
    /// proxy's, to the service range and the pod subnet); proxies do not
    /// register with the agent. Only outbound: peer proxies reach the
    /// servers' proxies on 4143 directly.
    Iptables,
    /// Nothing: proxies run but nothing is sent to them (the client reaches
    /// pods directly; service IPs are unreachable).
    None,
}

/// A whole mesh: one client pod, the servers, the services.
#[derive(Debug, Clone)]
pub struct MeshSpec {
    /// Kubernetes-style namespace of every pod and service.
    pub namespace: String,
    /// The client pod's name.
    pub client: String,
    /// The client pod's service account.
    pub client_service_account: String,
    /// Server pods.
    pub servers: Vec<ServerSpec>,
    /// Services.
    pub services: Vec<ServiceSpec>,
    /// Extra arguments for every `conduit-proxy`.
    pub proxy_args: Vec<String>,
    /// What every `conduit-proxy` is started under (None: directly).
    pub proxy_launcher: Option<crate::mesh::proxy::Launcher>,
    /// Extra arguments for the agent.
    pub agent_args: Vec<String>,
    /// Extra arguments for the controller (`--leaf-lifetime 6s`, ...).
    pub controller_args: Vec<String>,
    /// Applications print nothing per request (benchmarks).
    pub quiet_apps: bool,
    /// How traffic is captured.
    pub capture: Capture,
}

impl MeshSpec {
    /// The demo's mesh: pods `client`, `web-1`, `web-2` (service account
    /// `web`), service `web` with port 80 (HTTP/1.1, to 8080) and 9090
    /// (gRPC), namespace `default`.
    pub fn demo() -> Self {
        Self::with_servers(2)
    }

    /// Like [`MeshSpec::demo`] with `n` servers `web-1` .. `web-n`.
    pub fn with_servers(n: usize) -> Self {
        let servers: Vec<ServerSpec> = (1..=n)
            .map(|i| ServerSpec {
                pod: format!("web-{i}"),
                service_account: "web".into(),
            })
            .collect();
        Self {
            namespace: "default".into(),
            client: "client".into(),
            client_service_account: "client".into(),
            services: vec![ServiceSpec {
                name: "web".into(),
                ip_octet: 10,
                ports: vec![(80, HTTP_PORT), (GRPC_PORT, GRPC_PORT)],
                endpoints: servers.iter().map(|s| s.pod.clone()).collect(),
                announced_service_account: None,
                ipv6: false,
            }],
            servers,
            proxy_args: Vec::new(),
            proxy_launcher: None,
            agent_args: Vec::new(),
            controller_args: Vec::new(),
            quiet_apps: false,
            capture: Capture::Ebpf,
        }
    }

    /// Pod names in creation order: `controller`, the client, the servers.
    pub fn pods(&self) -> Vec<String> {
        let mut pods = vec!["controller".to_owned(), self.client.clone()];
        pods.extend(self.servers.iter().map(|s| s.pod.clone()));
        pods
    }

    /// The server `pod`.
    pub fn server(&self, pod: &str) -> Option<&ServerSpec> {
        self.servers.iter().find(|s| s.pod == pod)
    }

    /// The service `name`; panics if there is none (a bug in the caller).
    pub fn service(&self, name: &str) -> &ServiceSpec {
        self.services
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no service {name} in this mesh"))
    }

    /// Service account of any pod (client or server).
    pub fn service_account(&self, pod: &str) -> &str {
        self.server(pod)
            .map_or(&self.client_service_account, |s| &s.service_account)
    }

    /// Every service account in the mesh (each gets a token).
    pub fn service_accounts(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .servers
            .iter()
            .map(|s| s.service_account.clone())
            .chain([self.client_service_account.clone()])
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The SPIFFE ID of service account `sa`.
    pub fn identity(&self, sa: &str) -> String {
        format!("spiffe://{TRUST_DOMAIN}/ns/{}/sa/{sa}", self.namespace)
    }

    /// The fully qualified name of service `name`.
    pub fn fqdn(&self, name: &str) -> String {
        format!("{name}.{}.svc.cluster.local", self.namespace)
    }
}

/// The virtual IP of a service: `10.96.<subnet>.<octet>`, or
/// `fd96:0:0:<subnet>::<octet>` for an IPv6 one (only reachable through the
/// proxy: the client pod routes the IPv4 range as unreachable, and has no
/// route for the IPv6 one, so without a proxy a connection fails at once).
pub fn service_ip(names: &Names, svc: &ServiceSpec) -> IpAddr {
    if svc.ipv6 {
        IpAddr::V6(Ipv6Addr::new(
            0xfd96,
            0,
            0,
            u16::from(names.subnet),
            0,
            0,
            0,
            u16::from(svc.ip_octet),
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 96, names.subnet, svc.ip_octet))
    }
}

/// The controller's discovery file (see docs/controller.md), as YAML.
/// `pod_ip` gives each server pod's address of a family (`true`: IPv6).
pub fn discovery_yaml(
    spec: &MeshSpec,
    names: &Names,
    pod_ip: impl Fn(&str, bool) -> IpAddr,
) -> serde_norway::Result<String> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct File {
        services: Vec<Service>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Service {
        name: String,
        namespace: String,
        #[serde(rename = "clusterIP")]
        cluster_ip: String,
        ports: Vec<Port>,
        endpoints: Vec<Endpoint>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Port {
        port: u16,
        target_port: u16,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Endpoint {
        ip: String,
        service_account: String,
        meshed: bool,
        inbound_port: u16,
        labels: BTreeMap<String, String>,
    }
    let services = spec
        .services
        .iter()
        .map(|svc| Service {
            name: svc.name.clone(),
            namespace: spec.namespace.clone(),
            cluster_ip: service_ip(names, svc).to_string(),
            ports: svc
                .ports
                .iter()
                .map(|&(port, target_port)| Port { port, target_port })
                .collect(),
            endpoints: svc
                .endpoints
                .iter()
                .map(|pod| Endpoint {
                    ip: pod_ip(pod, svc.ipv6).to_string(),
                    service_account: svc
                        .announced_service_account
                        .clone()
                        .unwrap_or_else(|| spec.service_account(pod).to_owned()),
                    meshed: true,
                    inbound_port: INBOUND_PORT,
                    labels: BTreeMap::from([("pod".to_owned(), pod.clone())]),
                })
                .collect(),
        })
        .collect();
    serde_norway::to_string(&File { services })
}

/// The controller's token file: one token per service account.
pub fn tokens_yaml(spec: &MeshSpec) -> serde_norway::Result<String> {
    #[derive(Serialize)]
    struct File {
        tokens: Vec<Token>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Token {
        token: String,
        namespace: String,
        service_account: String,
        /// The pods of the service account (their labels, as the discovery
        /// file has them): whose inbound policy the token may watch.
        pods: BTreeMap<String, BTreeMap<String, String>>,
    }
    let tokens = spec
        .service_accounts()
        .into_iter()
        .map(|sa| Token {
            token: token(spec, &sa),
            namespace: spec.namespace.clone(),
            pods: spec
                .pods()
                .into_iter()
                .filter(|p| p != "controller" && spec.service_account(p) == sa)
                .map(|p| (p.clone(), BTreeMap::from([("pod".to_owned(), p)])))
                .collect(),
            service_account: sa,
        })
        .collect();
    serde_norway::to_string(&File { tokens })
}

/// The token of service account `sa` (deterministic: local use only).
pub fn token(spec: &MeshSpec, sa: &str) -> String {
    format!("local-mesh-token-{}-{sa}", spec.namespace)
}

/// The client pod's /etc/hosts: every service's name resolves to its
/// virtual IP, as cluster DNS would.
pub fn hosts_file(spec: &MeshSpec, names: &Names) -> String {
    let mut s = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for svc in &spec.services {
        let fqdn = spec.fqdn(&svc.name);
        let short = format!("{}.{}.svc", svc.name, spec.namespace);
        s.push_str(&format!("{} {fqdn} {short}\n", service_ip(names, svc)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_files() {
        let spec = MeshSpec::demo();
        let names = Names::with_subnet("m", 7);
        assert_eq!(spec.pods(), ["controller", "client", "web-1", "web-2"]);
        let y = discovery_yaml(&spec, &names, |p, _| {
            if p == "web-1" {
                Ipv4Addr::new(10, 77, 7, 4).into()
            } else {
                Ipv4Addr::new(10, 77, 7, 5).into()
            }
        })
        .unwrap();
        assert!(y.contains("clusterIP: 10.96.7.10"), "{y}");
        assert!(y.contains("targetPort: 8080"), "{y}");
        assert!(y.contains("ip: 10.77.7.5"), "{y}");
        assert!(y.contains("serviceAccount: web"), "{y}");
        let t = tokens_yaml(&spec).unwrap();
        assert!(t.contains("serviceAccount: client") && t.contains("serviceAccount: web"));
        let h = hosts_file(&spec, &names);
        assert!(h.contains("10.96.7.10 web.default.svc.cluster.local web.default.svc"));
        assert_eq!(
            spec.identity("web"),
            "spiffe://cluster.local/ns/default/sa/web"
        );
    }
}
