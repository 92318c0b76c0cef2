//! An index over the API server's Services, EndpointSlices and Pods, and the
//! destination view of a target computed from it (pure functions, so the
//! rules are unit-tested without a server).
//!
//! Rules:
//! * A service name with a port the service declares (TCP), or its cluster
//!   IP and that port, resolves to the endpoints of the service's
//!   EndpointSlices: the slice port with the service port's name gives the
//!   endpoint port; without one (a headless service without ports) the
//!   service's target port is resolved, by name through the pod's container
//!   ports when it is named, else the asked port is used.
//! * Endpoints that are `ready` are used. Only when none is, endpoints that
//!   are `serving` and `terminating` are used (as kube-proxy does), so a
//!   rolling shutdown does not turn into connection refusals.
//! * Only slices of one address family are used: the family of the cluster
//!   IP asked for, or for names the service's first `ipFamilies` entry.
//! * A headless service without ports accepts any port (the endpoints'
//!   port is the asked one). ExternalName services do not exist here (the
//!   proxy forwards to what DNS gave the application).
//! * A pod IP (of a running pod, not on the host network) and a port is the
//!   pod itself.
//! * Identity: `spiffe://<td>/ns/<ns>/sa/<sa>` of the endpoint's pod, only
//!   when the pod is meshed (it is the identity its proxy will present);
//!   meshed inbound port from [`super::mesh`].

use super::mesh;
use crate::model::{DestinationView, EndpointInfo, Target};
use conduit_identity::SpiffeId;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `(namespace, name)`
type Key = (String, String);

#[derive(Debug)]
struct ServiceEntry {
    ports: Vec<ServicePort>,
    headless: bool,
    /// Address family used for names: true for IPv6.
    ipv6_first: bool,
}

#[derive(Debug)]
struct PodEntry {
    namespace: String,
    name: String,
    service_account: String,
    node: Option<String>,
    meshed_inbound_port: Option<u16>,
    /// Named container ports, for named target ports.
    named_ports: HashMap<String, u16>,
}

/// The indexed state of the cluster.
#[derive(Debug, Default)]
pub struct Snapshot {
    trust_domain: String,
    cluster_domain: String,
    services: HashMap<Key, ServiceEntry>,
    by_cluster_ip: HashMap<IpAddr, Key>,
    slices: HashMap<Key, Vec<Arc<EndpointSlice>>>,
    pods_by_name: HashMap<Key, Arc<PodEntry>>,
    pods_by_ip: HashMap<IpAddr, Arc<PodEntry>>,
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn is_tcp(protocol: Option<&String>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

impl Snapshot {
    /// An empty snapshot (nothing exists yet).
    pub fn empty(trust_domain: &str, cluster_domain: &str) -> Snapshot {
        Snapshot {
            trust_domain: trust_domain.into(),
            cluster_domain: cluster_domain.into(),
            ..Default::default()
        }
    }

    /// Indexes the given objects.
    pub fn build(
        trust_domain: &str,
        cluster_domain: &str,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        pods: &[Arc<Pod>],
    ) -> Snapshot {
        let mut snap = Snapshot::empty(trust_domain, cluster_domain);
        for svc in services {
            let (Some(k), Some(spec)) = (key(&svc.metadata), svc.spec.as_ref()) else {
                continue;
            };
            if spec.type_.as_deref() == Some("ExternalName") {
                continue;
            }
            let ips: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .filter_map(|ip| ip.parse().ok())
                .collect();
            let headless = spec.cluster_ip.as_deref() == Some("None") || ips.is_empty();
            for ip in &ips {
                snap.by_cluster_ip.insert(*ip, k.clone());
            }
            let ipv6_first = match spec.ip_families.as_ref().and_then(|f| f.first()) {
                Some(f) => f == "IPv6",
                None => ips.first().is_some_and(IpAddr::is_ipv6),
            };
            snap.services.insert(
                k,
                ServiceEntry {
                    ports: spec
                        .ports
                        .iter()
                        .flatten()
                        .filter(|p| is_tcp(p.protocol.as_ref()))
                        .cloned()
                        .collect(),
                    headless,
                    ipv6_first,
                },
            );
        }
        for slice in slices {
            let svc = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(svc)) = (&slice.metadata.namespace, svc) {
                snap.slices
                    .entry((ns.clone(), svc.clone()))
                    .or_default()
                    .push(slice.clone());
            }
        }
        for pod in pods {
            snap.add_pod(pod);
        }
        snap
    }

    fn add_pod(&mut self, pod: &Pod) {
        let Some((namespace, name)) = key(&pod.metadata) else {
            return;
        };
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        let terminal = matches!(phase, Some("Succeeded" | "Failed"));
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let entry = Arc::new(PodEntry {
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            node: spec.and_then(|s| s.node_name.clone()),
            meshed_inbound_port: mesh::meshed_inbound_port(pod),
            named_ports: spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
                .collect(),
            namespace: namespace.clone(),
            name: name.clone(),
        });
        if !terminal && !host_network {
            let ips = status
                .iter()
                .flat_map(|s| s.pod_ips.iter().flatten().map(|p| p.ip.as_str()))
                .chain(status.and_then(|s| s.pod_ip.as_deref()));
            for ip in ips.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                self.pods_by_ip.insert(ip, entry.clone());
            }
        }
        self.pods_by_name.insert((namespace, name), entry);
    }

    /// Number of services indexed.
    pub fn services(&self) -> usize {
        self.services.len()
    }

    /// The view of `target` (the [`crate::store::ViewFn`] of this backend).
    pub fn view(snap: &Arc<Snapshot>, target: &Target) -> DestinationView {
        match target {
            Target::Service {
                name,
                namespace,
                port,
            } => snap.service_view(&(namespace.clone(), name.clone()), *port, None),
            Target::Addr(addr) => {
                if let Some(k) = snap.by_cluster_ip.get(&addr.ip()) {
                    return snap.service_view(k, addr.port(), Some(addr.ip().is_ipv6()));
                }
                match snap.pods_by_ip.get(&addr.ip()) {
                    Some(pod) => DestinationView {
                        exists: true,
                        name: None,
                        endpoints: vec![snap.endpoint(*addr, Some(pod), None, None)],
                    },
                    None => DestinationView::default(),
                }
            }
        }
    }

    fn service_view(&self, k: &Key, port: u16, ipv6: Option<bool>) -> DestinationView {
        let Some(svc) = self.services.get(k) else {
            return DestinationView::default();
        };
        let svc_port = svc.ports.iter().find(|p| p.port == i32::from(port));
        if svc_port.is_none() && !(svc.headless && svc.ports.is_empty()) {
            return DestinationView::default();
        }
        let ipv6 = ipv6.unwrap_or(svc.ipv6_first);
        let family = if ipv6 { "IPv6" } else { "IPv4" };
        let port_name = svc_port.and_then(|p| p.name.clone()).unwrap_or_default();
        let mut ready = BTreeMap::new();
        let mut terminating = BTreeMap::new();
        for slice in self.slices.get(k).into_iter().flatten() {
            if slice.address_type != family {
                continue;
            }
            let slice_port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| {
                    p.name.clone().unwrap_or_default() == port_name && is_tcp(p.protocol.as_ref())
                })
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok());
            for ep in slice.endpoints.iter().flatten() {
                // Addresses are fungible; consumers may use the first only.
                let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                    continue;
                };
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        Some((
                            r.namespace.clone().unwrap_or_else(|| k.0.clone()),
                            r.name.clone()?,
                        ))
                    })
                    .and_then(|pk| self.pods_by_name.get(&pk))
                    .or_else(|| self.pods_by_ip.get(&ip));
                let target_port = slice_port
                    .or_else(|| resolve_target_port(svc_port, pod.map(|p| &**p)))
                    .unwrap_or(port);
                let c = ep.conditions.as_ref();
                let is_ready = c.and_then(|c| c.ready).unwrap_or(true);
                let is_serving = c.and_then(|c| c.serving).unwrap_or(is_ready);
                let is_terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                let addr = SocketAddr::new(ip, target_port);
                let info = self.endpoint(addr, pod, Some(&k.1), ep.zone.as_deref());
                if is_ready && !is_terminating {
                    ready.insert(addr, info);
                } else if is_serving && is_terminating {
                    terminating.insert(addr, info);
                }
            }
        }
        let chosen = if ready.is_empty() { terminating } else { ready };
        DestinationView {
            exists: true,
            name: Some(Target::service_name(&k.1, &k.0, port, &self.cluster_domain)),
            endpoints: chosen.into_values().collect(),
        }
    }

    fn endpoint(
        &self,
        addr: SocketAddr,
        pod: Option<&Arc<PodEntry>>,
        service: Option<&str>,
        zone: Option<&str>,
    ) -> EndpointInfo {
        let mut labels = BTreeMap::new();
        if let Some(s) = service {
            labels.insert("service".to_string(), s.to_string());
        }
        if let Some(z) = zone {
            labels.insert("zone".to_string(), z.to_string());
        }
        if let Some(p) = pod {
            labels.insert("namespace".into(), p.namespace.clone());
            labels.insert("pod".into(), p.name.clone());
            labels.insert("serviceaccount".into(), p.service_account.clone());
            if let Some(n) = &p.node {
                labels.insert("node".into(), n.clone());
            }
        }
        let meshed = pod.and_then(|p| p.meshed_inbound_port);
        EndpointInfo {
            addr,
            weight: 1,
            identity: pod
                .filter(|p| p.meshed_inbound_port.is_some())
                .and_then(|p| {
                    // Names the API server accepted always parse; anything
                    // else gets no identity (proxies then refuse it).
                    SpiffeId::new(&self.trust_domain, &p.namespace, &p.service_account)
                        .inspect_err(|e| tracing::warn!(pod = %p.name, error = %e, "pod has no mesh identity"))
                        .ok()
                }),
            meshed_inbound_port: meshed,
            labels,
        }
    }
}

/// The service's target port for one pod: a number, or a name looked up in
/// the pod's container ports.
fn resolve_target_port(svc_port: Option<&ServicePort>, pod: Option<&PodEntry>) -> Option<u16> {
    let sp = svc_port?;
    match &sp.target_port {
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n != 0),
        Some(IntOrString::String(name)) => pod?.named_ports.get(name).copied(),
        None => u16::try_from(sp.port).ok(),
    }
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
