//! The discovery file: YAML parsed into a [`Snapshot`], and the view of a
//! target computed from it.
//!
//! ```yaml
//! services:
//!   - name: web
//!     namespace: default
//!     clusterIP: 10.96.0.10        # optional (headless without)
//!     ports:
//!       - port: 80
//!         targetPort: 8080         # default: port
//!     endpoints:
//!       - ip: 10.0.0.2               # (or addr:)
//!         weight: 1                # default 1
//!         serviceAccount: web      # identity spiffe://<td>/ns/default/sa/web
//!         meshed: true             # runs a conduit proxy
//!         inboundPort: 4143        # default 4143 when meshed
//!         labels: {pod: web-0}
//! ```

use crate::model::{DestinationView, EndpointInfo, Target, is_dns_label};
use conduit_identity::SpiffeId;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Default inbound port of a meshed endpoint's proxy.
pub const DEFAULT_INBOUND_PORT: u16 = 4143;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileSpec {
    #[serde(default)]
    services: Vec<ServiceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceSpec {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<IpAddr>,
    ports: Vec<PortSpec>,
    #[serde(default)]
    endpoints: Vec<EndpointSpec>,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortSpec {
    port: u16,
    #[serde(default)]
    target_port: Option<u16>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EndpointSpec {
    #[serde(alias = "addr")]
    ip: IpAddr,
    #[serde(default = "default_weight")]
    weight: u32,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    meshed: bool,
    #[serde(default)]
    inbound_port: Option<u16>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

/// Why a discovery file was refused. The message names the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Yaml(String),
    #[error("line {line}: {message}")]
    Invalid { line: usize, message: String },
}

/// One endpoint as stored: address without port, plus what describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Backend {
    ip: IpAddr,
    weight: u32,
    identity: Option<SpiffeId>,
    meshed_inbound_port: Option<u16>,
    labels: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Service {
    /// service port -> target port
    ports: BTreeMap<u16, u16>,
    backends: Vec<Backend>,
}

/// The parsed file, indexed for lookups.
#[derive(Debug, Default)]
pub struct Snapshot {
    cluster_domain: String,
    services: HashMap<(String, String), Service>,
    by_cluster_ip: HashMap<IpAddr, (String, String)>,
    by_pod_ip: HashMap<IpAddr, Backend>,
}

/// Settings that shape how the file is read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub trust_domain: String,
    pub cluster_domain: String,
}

impl Snapshot {
    /// An empty snapshot (nothing exists).
    pub fn empty(cluster_domain: &str) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            cluster_domain: cluster_domain.into(),
            ..Default::default()
        })
    }

    /// Parses and validates a discovery file.
    pub fn parse(text: &str, settings: &Settings) -> Result<Snapshot, ConfigError> {
        let spec: FileSpec = if text.trim().is_empty() {
            FileSpec {
                services: Vec::new(),
            }
        } else {
            conduit_policy::yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?
        };
        let mut snap = Snapshot {
            cluster_domain: settings.cluster_domain.clone(),
            ..Default::default()
        };
        let mut pod_ips = HashSet::new();
        let names: Vec<String> = spec.services.iter().map(|s| s.name.clone()).collect();
        for (i, svc) in spec.services.into_iter().enumerate() {
            let nth = names[..i].iter().filter(|n| **n == svc.name).count();
            let invalid = |message: String| ConfigError::Invalid {
                line: line_of_service(text, nth, &svc.name),
                message: format!("services[{i}] ({}): {message}", svc.name),
            };
            if !is_dns_label(&svc.name) {
                return Err(invalid("name must be a DNS label (a-z, 0-9, '-')".into()));
            }
            if !is_dns_label(&svc.namespace) {
                return Err(invalid(format!(
                    "namespace {:?} must be a DNS label",
                    svc.namespace
                )));
            }
            if svc.ports.is_empty() {
                return Err(invalid("a service needs at least one port".into()));
            }
            let mut ports = BTreeMap::new();
            for p in &svc.ports {
                if p.port == 0 || p.target_port == Some(0) {
                    return Err(invalid("ports must be 1-65535".into()));
                }
                if ports
                    .insert(p.port, p.target_port.unwrap_or(p.port))
                    .is_some()
                {
                    return Err(invalid(format!("port {} listed twice", p.port)));
                }
                let _ = &p.name;
            }
            let mut backends = Vec::new();
            let mut seen = HashSet::new();
            for (j, ep) in svc.endpoints.iter().enumerate() {
                if !seen.insert(ep.ip) {
                    return Err(invalid(format!(
                        "endpoints[{j}]: ip {} listed twice",
                        ep.ip
                    )));
                }
                let identity = match (&ep.identity, &ep.service_account) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(format!(
                            "endpoints[{j}]: give identity or serviceAccount, not both"
                        )));
                    }
                    (Some(id), None) => {
                        Some(SpiffeId::parse(id).map_err(|e| {
                            invalid(format!("endpoints[{j}]: identity {id:?}: {e}"))
                        })?)
                    }
                    (None, Some(sa)) => {
                        if !is_dns_subdomain(sa) {
                            return Err(invalid(format!(
                                "endpoints[{j}]: serviceAccount {sa:?} is not a valid name"
                            )));
                        }
                        Some(
                            SpiffeId::new(&settings.trust_domain, &svc.namespace, sa).map_err(
                                |e| invalid(format!("endpoints[{j}]: serviceAccount {sa:?}: {e}")),
                            )?,
                        )
                    }
                    (None, None) => None,
                };
                let meshed_inbound_port = match (ep.meshed, ep.inbound_port) {
                    (true, Some(0)) => {
                        return Err(invalid(format!("endpoints[{j}]: inboundPort 0")));
                    }
                    (true, p) => Some(p.unwrap_or(DEFAULT_INBOUND_PORT)),
                    (false, Some(_)) => {
                        return Err(invalid(format!(
                            "endpoints[{j}]: inboundPort given but meshed is false"
                        )));
                    }
                    (false, None) => None,
                };
                let backend = Backend {
                    ip: ep.ip,
                    weight: ep.weight,
                    identity,
                    meshed_inbound_port,
                    labels: ep.labels.clone(),
                };
                // A pod may back several services; the first description wins
                // for pod-IP targets, and they must agree.
                if pod_ips.insert(ep.ip) {
                    snap.by_pod_ip.insert(ep.ip, backend.clone());
                } else if let Some(prev) = snap.by_pod_ip.get(&ep.ip)
                    && (prev.identity != backend.identity
                        || prev.meshed_inbound_port != backend.meshed_inbound_port)
                {
                    return Err(invalid(format!(
                        "endpoints[{j}]: ip {} appears in another service with a different identity or mesh setting",
                        ep.ip
                    )));
                }
                backends.push(backend);
            }
            let key = (svc.name.clone(), svc.namespace.clone());
            if snap.services.contains_key(&key) {
                return Err(invalid(format!(
                    "service {}.{} defined twice",
                    svc.name, svc.namespace
                )));
            }
            if let Some(ip) = svc.cluster_ip
                && let Some(other) = snap.by_cluster_ip.insert(ip, key.clone())
            {
                return Err(invalid(format!(
                    "clusterIP {ip} is also used by {}.{}",
                    other.0, other.1
                )));
            }
            snap.services.insert(key, Service { ports, backends });
        }
        Ok(snap)
    }

    /// The view of `target` in this snapshot.
    pub fn view(snap: &Arc<Snapshot>, target: &Target) -> DestinationView {
        match target {
            Target::Service {
                name,
                namespace,
                port,
            } => snap.service_view(&(name.clone(), namespace.clone()), *port),
            Target::Addr(addr) => {
                if let Some(key) = snap.by_cluster_ip.get(&addr.ip()) {
                    return snap.service_view(key, addr.port());
                }
                match snap.by_pod_ip.get(&addr.ip()) {
                    Some(b) => DestinationView {
                        exists: true,
                        name: None,
                        endpoints: vec![endpoint(b, addr.port())],
                    },
                    None => DestinationView::default(),
                }
            }
        }
    }

    fn service_view(&self, key: &(String, String), port: u16) -> DestinationView {
        let Some(svc) = self.services.get(key) else {
            return DestinationView::default();
        };
        let Some(&target_port) = svc.ports.get(&port) else {
            return DestinationView::default();
        };
        DestinationView {
            exists: true,
            name: Some(Target::service_name(
                &key.0,
                &key.1,
                port,
                &self.cluster_domain,
            )),
            endpoints: svc
                .backends
                .iter()
                .map(|b| endpoint(b, target_port))
                .collect(),
        }
    }

    /// Number of services.
    pub fn services(&self) -> usize {
        self.services.len()
    }
}

fn endpoint(b: &Backend, port: u16) -> EndpointInfo {
    EndpointInfo {
        addr: SocketAddr::new(b.ip, port),
        weight: b.weight,
        identity: b.identity.clone(),
        meshed_inbound_port: b.meshed_inbound_port,
        labels: b.labels.clone(),
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Best effort: the line of the `nth` `name: <name>` key (the service).
fn line_of_service(text: &str, nth: usize, name: &str) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, line)| {
            let t = line.trim_start().trim_start_matches('-').trim_start();
            t.strip_prefix("name:")
                .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'') == name)
                .unwrap_or(false)
        })
        .nth(nth)
        .map(|(n, _)| n + 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            trust_domain: "td".into(),
            cluster_domain: "cluster.local".into(),
        }
    }

    fn err(text: &str) -> String {
        Snapshot::parse(text, &settings())
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn empty_file_is_no_services() {
        assert_eq!(Snapshot::parse("", &settings()).unwrap().services(), 0);
        assert_eq!(
            Snapshot::parse("services: []", &settings())
                .unwrap()
                .services(),
            0
        );
    }

    #[test]
    fn validation_errors_name_the_line_and_the_problem() {
        let head = "services:\n  - name: a\n    ports: [{port: 80}]\n";
        let cases = [
            (
                "services:\n  - name: Web\n    ports: [{port: 80}]\n",
                "line 2:",
                "DNS label",
            ),
            (
                "services:\n  - name: a\n    ports: []\n",
                "line 2:",
                "at least one port",
            ),
            (
                "services:\n  - name: a\n    ports: [{port: 80}, {port: 80}]\n",
                "line 2:",
                "listed twice",
            ),
            (
                &format!("{head}    endpoints: [{{ip: 10.0.0.1}}, {{ip: 10.0.0.1}}]\n"),
                "line 2:",
                "listed twice",
            ),
            (
                &format!(
                    "{head}    endpoints: [{{ip: 10.0.0.1, serviceAccount: a, identity: spiffe://td/x}}]\n"
                ),
                "line 2:",
                "not both",
            ),
            (
                &format!("{head}    endpoints: [{{ip: 10.0.0.1, identity: web}}]\n"),
                "line 2:",
                "spiffe://",
            ),
            (
                &format!("{head}    endpoints: [{{ip: 10.0.0.1, inboundPort: 4143}}]\n"),
                "line 2:",
                "meshed is false",
            ),
            (
                &format!("{head}    endpoints: [{{ip: 10.0.0.1, serviceAccount: A_B}}]\n"),
                "line 2:",
                "serviceAccount",
            ),
            (
                "services:\n  - name: a\n    clusterIP: 10.9.9.9\n    ports: [{port: 1}]\n  - name: b\n    clusterIP: 10.9.9.9\n    ports: [{port: 1}]\n",
                "line 5:",
                "also used by a.default",
            ),
            (
                "services:\n  - name: a\n    port: [{port: 80}]\n",
                "line 3",
                "unknown field `port`",
            ),
            (
                "services:\n  - name: a\n    ports: [{port: 70000}]\n",
                "line 3",
                "port",
            ),
            ("services: {}\n", "line 1", "sequence"),
        ];
        for (text, line, what) in cases {
            let e = err(text);
            assert!(
                e.contains(line) && e.contains(what),
                "{text:?}: expected {line} and {what:?} in {e:?}"
            );
        }
    }

    #[test]
    fn pods_in_two_services_must_agree() {
        let text = "services:\n  - name: a\n    ports: [{port: 1}]\n    endpoints: [{ip: 10.0.0.1, meshed: true}]\n  - name: b\n    ports: [{port: 2}]\n    endpoints: [{ip: 10.0.0.1}]\n";
        assert!(err(text).contains("different identity or mesh setting"));
        let ok = text.replace("{ip: 10.0.0.1}]", "{ip: 10.0.0.1, meshed: true}]");
        let snap = Arc::new(Snapshot::parse(&ok, &settings()).unwrap());
        let v = Snapshot::view(&snap, &Target::Addr("10.0.0.1:9".parse().unwrap()));
        assert_eq!(
            v.endpoints[0].meshed_inbound_port,
            Some(DEFAULT_INBOUND_PORT)
        );
    }

    #[test]
    fn headless_service_and_unknown_port() {
        let text = "services:\n  - name: h\n    namespace: db\n    ports: [{port: 5432}]\n    endpoints: [{ip: 10.0.0.5, weight: 3}]\n";
        let snap = Arc::new(Snapshot::parse(text, &settings()).unwrap());
        let t = Target::Service {
            name: "h".into(),
            namespace: "db".into(),
            port: 5432,
        };
        let v = Snapshot::view(&snap, &t);
        assert_eq!(v.name.as_deref(), Some("h.db.svc.cluster.local:5432"));
        assert_eq!(v.endpoints[0].addr, "10.0.0.5:5432".parse().unwrap());
        assert_eq!(v.endpoints[0].weight, 3);
        assert_eq!(v.endpoints[0].identity, None);
        let t = Target::Service {
            name: "h".into(),
            namespace: "db".into(),
            port: 1,
        };
        assert!(!Snapshot::view(&snap, &t).exists);
    }
}
