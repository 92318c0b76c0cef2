//! Changing a [`Snapshot`] one object at a time, and what each change
//! touches: the services whose views may differ and the addresses whose
//! (cluster IP or pod IP) views may differ. The backend recomputes only the
//! watched targets a change touches ([`Snapshot::affects`]), so a change to
//! one service costs that service's views, not the cluster's.
//!
//! Replaying an object's changes in order gives the same index as
//! [`Snapshot::build`] over the resulting objects (unit-tested), with one
//! difference left on purpose: when two live pods claim one IP (only
//! transiently, while an IP is reused), removing either unindexes the IP
//! only if it is still its own; a full rebuild (every relist) settles it.

use super::{Key, PodEntry, PodRef, ServiceEntry, Snapshot, is_tcp, key, mesh};
use crate::model::Target;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

/// What a change may have changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// Services (`namespace`, `name`) whose views may have changed.
    pub services: HashSet<(String, String)>,
    /// Addresses whose views may have changed (old and new cluster IPs of a
    /// changed service, old and new IPs of a changed pod).
    pub ips: HashSet<IpAddr>,
}

impl Touched {
    pub fn extend(&mut self, other: Touched) {
        self.services.extend(other.services);
        self.ips.extend(other.ips);
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.ips.is_empty()
    }
}

impl Snapshot {
    /// Whether `target`'s view may have changed by `touched` (the
    /// [`crate::store::ViewStore::update`] filter of this backend): a
    /// service name of a touched service, or an address that is touched or
    /// is the cluster IP of a touched service.
    pub fn affects(&self, touched: &Touched, target: &Target) -> bool {
        match target {
            Target::Service {
                name, namespace, ..
            } => touched
                .services
                .contains(&(namespace.clone(), name.clone())),
            Target::Addr(addr) => {
                touched.ips.contains(&addr.ip())
                    || self
                        .by_cluster_ip
                        .get(&addr.ip())
                        .is_some_and(|k| touched.services.contains(k))
            }
        }
    }

    /// Adds or replaces a Service.
    pub fn upsert_service(&mut self, svc: &Service) -> Touched {
        let Some(k) = key(&svc.metadata) else {
            return Touched::default();
        };
        let mut touched = self.remove_service(&k);
        let Some(spec) = svc.spec.as_ref() else {
            return touched;
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            return touched;
        }
        let mut ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        ips.dedup();
        let headless = spec.cluster_ip.as_deref() == Some("None") || ips.is_empty();
        for ip in &ips {
            self.by_cluster_ip.insert(*ip, k.clone());
            touched.ips.insert(*ip);
        }
        let ipv6_first = match spec.ip_families.as_ref().and_then(|f| f.first()) {
            Some(f) => f == "IPv6",
            None => ips.first().is_some_and(IpAddr::is_ipv6),
        };
        self.services.insert(
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
                cluster_ips: ips,
            },
        );
        touched
    }

    /// Removes the Service `(namespace, name)` (its slices stay: they are
    /// used again if it comes back).
    pub fn remove_service(&mut self, k: &Key) -> Touched {
        let mut touched = Touched::default();
        touched.services.insert(k.clone());
        if let Some(old) = self.services.remove(k) {
            for ip in old.cluster_ips {
                if self.by_cluster_ip.get(&ip) == Some(k) {
                    self.by_cluster_ip.remove(&ip);
                }
                touched.ips.insert(ip);
            }
        }
        touched
    }

    /// Adds or replaces an EndpointSlice (it may have moved to another
    /// service by its label).
    pub fn upsert_slice(&mut self, slice: Arc<EndpointSlice>) -> Touched {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(super::SERVICE_NAME_LABEL))
            .zip(slice.metadata.namespace.as_ref())
            .map(|(svc, ns)| (ns.clone(), svc.clone()));
        let Some(sk) = key(&slice.metadata) else {
            // Nameless (not from an API server): indexed, never replaced.
            if let Some(owner) = owner {
                self.index_slice(&owner, &slice, 1);
                self.slices.entry(owner).or_default().push(slice);
            }
            return Touched::default();
        };
        let mut touched = self.remove_slice(&sk);
        if let Some(owner) = owner {
            self.index_slice(&owner, &slice, 1);
            self.slices.entry(owner.clone()).or_default().push(slice);
            self.slice_owner.insert(sk, owner.clone());
            touched.services.insert(owner);
        }
        touched
    }

    /// Removes the EndpointSlice `(namespace, name)`.
    pub fn remove_slice(&mut self, sk: &Key) -> Touched {
        let mut touched = Touched::default();
        let Some(owner) = self.slice_owner.remove(sk) else {
            return touched;
        };
        let slices = self.slices.entry(owner.clone()).or_default();
        let pos = slices
            .iter()
            .position(|s| s.metadata.name.as_ref() == Some(&sk.1));
        let removed = pos.map(|i| slices.swap_remove(i));
        if slices.is_empty() {
            self.slices.remove(&owner);
        }
        if let Some(old) = removed {
            self.index_slice(&owner, &old, -1);
        }
        touched.services.insert(owner);
        touched
    }

    /// Counts (`delta` 1) or uncounts (-1) the pod references of `slice`'s
    /// endpoints as users by service `owner`.
    fn index_slice(&mut self, owner: &Key, slice: &EndpointSlice, delta: i32) {
        for ep in slice.endpoints.iter().flatten() {
            let ip = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok());
            let name = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    Some((
                        r.namespace.clone().unwrap_or_else(|| owner.0.clone()),
                        r.name.clone()?,
                    ))
                });
            let refs = ip.map(PodRef::Ip).into_iter().chain(name.map(PodRef::Name));
            for r in refs {
                let users = self.pod_users.entry(r.clone()).or_default();
                let n = users.entry(owner.clone()).or_default();
                *n = n.saturating_add_signed(delta);
                if *n == 0 {
                    users.remove(owner);
                }
                if users.is_empty() {
                    self.pod_users.remove(&r);
                }
            }
        }
    }

    /// Adds or replaces a Pod.
    pub fn upsert_pod(&mut self, pod: &Pod) -> Touched {
        let Some((namespace, name)) = key(&pod.metadata) else {
            return Touched::default();
        };
        let pk = (namespace.clone(), name.clone());
        let mut touched = self.remove_pod(&pk);
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        let terminal = matches!(phase, Some("Succeeded" | "Failed"));
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let mut ips: Vec<IpAddr> = Vec::new();
        if !terminal && !host_network {
            let all = status
                .iter()
                .flat_map(|s| s.pod_ips.iter().flatten().map(|p| p.ip.as_str()))
                .chain(status.and_then(|s| s.pod_ip.as_deref()));
            for ip in all.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
        }
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
            namespace,
            name,
            ips,
        });
        for ip in &entry.ips {
            self.pods_by_ip.insert(*ip, entry.clone());
        }
        self.touch_pod_users(&pk, &entry.ips, &mut touched);
        self.pods_by_name.insert(pk, entry);
        touched
    }

    /// Removes the Pod `(namespace, name)`.
    pub fn remove_pod(&mut self, pk: &Key) -> Touched {
        let mut touched = Touched::default();
        let Some(old) = self.pods_by_name.remove(pk) else {
            return touched;
        };
        for ip in &old.ips {
            if self
                .pods_by_ip
                .get(ip)
                .is_some_and(|p| Arc::ptr_eq(p, &old))
            {
                self.pods_by_ip.remove(ip);
            }
        }
        self.touch_pod_users(pk, &old.ips, &mut touched);
        touched
    }

    /// Marks the pod's addresses and the services whose slices refer to it.
    fn touch_pod_users(&self, pk: &Key, ips: &[IpAddr], touched: &mut Touched) {
        touched.ips.extend(ips.iter().copied());
        let refs = ips
            .iter()
            .map(|ip| PodRef::Ip(*ip))
            .chain([PodRef::Name(pk.clone())]);
        for r in refs {
            if let Some(users) = self.pod_users.get(&r) {
                touched.services.extend(users.keys().cloned());
            }
        }
    }
}
