//! The static discovery table: parsed from a YAML file and from
//! `--service` flags, validated, and indexed by original destination.
//!
//! ```yaml
//! services:
//!   - name: web.default.svc.cluster.local:80   # used in metrics
//!     addresses: ["10.96.0.10:80"]             # original destinations that mean this service
//!     endpoints:
//!       - 10.0.0.2:8080                        # short form: weight 1, not meshed
//!       - addr: 10.0.0.3:8080
//!         weight: 2                            # default 1; 0 = no new traffic
//!         identity: spiffe://cluster.local/ns/default/sa/web
//!         meshedInboundPort: 4143              # runs a conduit proxy
//!         labels: {pod: web-1}
//! ```
//!
//! A connection to one endpoint's own address (a pod IP and port) resolves
//! to a destination holding only that endpoint, so its identity and meshed
//! port still apply.

use super::{Destination, Endpoint};
use conduit_proxy_tls::SpiffeId;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    #[serde(default)]
    services: Vec<ServiceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    name: String,
    addresses: Vec<SocketAddr>,
    #[serde(default)]
    endpoints: Vec<EndpointSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EndpointSpec {
    Short(SocketAddr),
    Long(LongEndpoint),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LongEndpoint {
    addr: SocketAddr,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    meshed_inbound_port: Option<u16>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

/// Why a discovery file or a `--service` flag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Yaml(String),
    #[error("service {service:?}: {message}")]
    Invalid { service: String, message: String },
    #[error(
        "bad --service {spec:?}: {message} \
         (expected NAME@ADDR[,ADDR...]=ENDPOINT[,ENDPOINT...] or ADDR=ENDPOINT[,...], \
         addresses as ip:port or [ipv6]:port)"
    )]
    Flag { spec: String, message: String },
}

/// One service of the static table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub name: String,
    /// The original destinations that resolve to this service.
    pub addresses: Vec<SocketAddr>,
    pub endpoints: Vec<Endpoint>,
}

/// A `--service` flag: `NAME@ADDR[,ADDR...]=ENDPOINT[,ENDPOINT...]`, or
/// `ADDR=ENDPOINT[,...]` (named after its address). Endpoints have weight 1
/// and are not meshed; use the file for more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFlag(pub ServiceConfig);

impl FromStr for ServiceFlag {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, ConfigError> {
        let bad = |message: &str| ConfigError::Flag {
            spec: spec.into(),
            message: message.into(),
        };
        let (left, right) = spec.split_once('=').ok_or_else(|| bad("no '='"))?;
        let (name, addrs) = match left.split_once('@') {
            Some((name, addrs)) => (name.trim().to_string(), addrs),
            None => (left.trim().to_string(), left),
        };
        let parse_list = |list: &str, what: &str| -> Result<Vec<SocketAddr>, ConfigError> {
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse()
                        .map_err(|_| bad(&format!("{what} {s:?} is not ip:port")))
                })
                .collect()
        };
        let addresses = parse_list(addrs, "address")?;
        let endpoints = parse_list(right, "endpoint")?
            .into_iter()
            .map(Endpoint::plain)
            .collect();
        let svc = ServiceConfig {
            name,
            addresses,
            endpoints,
        };
        validate(&svc).map_err(|message| bad(&message))?;
        Ok(ServiceFlag(svc))
    }
}

/// Checks one service on its own.
fn validate(svc: &ServiceConfig) -> Result<(), String> {
    if svc.name.trim().is_empty() {
        return Err("the name is empty".into());
    }
    if svc.addresses.is_empty() {
        return Err("no addresses: list the ip:port that clients connect to".into());
    }
    let mut seen = HashSet::new();
    for ep in &svc.endpoints {
        if !seen.insert(ep.addr) {
            return Err(format!("endpoint {} is listed twice", ep.addr));
        }
        if ep.meshed_inbound_port == Some(0) {
            return Err(format!("endpoint {}: meshedInboundPort 0", ep.addr));
        }
        if ep.addr.port() == 0 {
            return Err(format!("endpoint {}: port 0", ep.addr));
        }
    }
    Ok(())
}

/// An endpoint's identity, parsed once, here (the mesh's one grammar).
fn parse_identity(id: Option<&str>, addr: SocketAddr) -> Result<Option<SpiffeId>, String> {
    match id {
        None => Ok(None),
        Some(id) if id.trim().is_empty() => Err(format!("endpoint {addr}: empty identity")),
        Some(id) => SpiffeId::parse(id)
            .map(Some)
            .map_err(|e| format!("endpoint {addr}: bad identity: {e}")),
    }
}

/// Parses a discovery file's text into services.
pub fn parse_file(text: &str) -> Result<Vec<ServiceConfig>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let spec: FileSpec =
        conduit_policy::yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
    let mut services = Vec::with_capacity(spec.services.len());
    for s in spec.services {
        let mut endpoints = Vec::with_capacity(s.endpoints.len());
        for e in s.endpoints {
            endpoints.push(match e {
                EndpointSpec::Short(addr) => Endpoint::plain(addr),
                EndpointSpec::Long(l) => Endpoint {
                    addr: l.addr,
                    weight: l.weight,
                    identity: parse_identity(l.identity.as_deref(), l.addr).map_err(|message| {
                        ConfigError::Invalid {
                            service: s.name.clone(),
                            message,
                        }
                    })?,
                    meshed_inbound_port: l.meshed_inbound_port,
                    labels: l.labels,
                },
            });
        }
        services.push(ServiceConfig {
            name: s.name,
            addresses: s.addresses,
            endpoints,
        });
    }
    for svc in &services {
        validate(svc).map_err(|message| ConfigError::Invalid {
            service: svc.name.clone(),
            message,
        })?;
    }
    Ok(services)
}

/// What each original destination resolves to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    pub by_addr: HashMap<SocketAddr, Destination>,
}

impl Table {
    /// Indexes services. Service addresses must be unique; an endpoint
    /// address that is not a service address resolves to that endpoint
    /// alone (the first service listing it wins).
    pub fn build(services: &[ServiceConfig]) -> Result<Table, ConfigError> {
        let mut by_addr = HashMap::new();
        let mut owner: HashMap<SocketAddr, &str> = HashMap::new();
        for svc in services {
            for addr in &svc.addresses {
                if let Some(other) = owner.insert(*addr, &svc.name) {
                    return Err(ConfigError::Invalid {
                        service: svc.name.clone(),
                        message: format!("address {addr} is already used by service {other:?}"),
                    });
                }
                by_addr.insert(
                    *addr,
                    Destination::known(svc.name.clone(), svc.endpoints.clone()),
                );
            }
        }
        for svc in services {
            for ep in &svc.endpoints {
                by_addr
                    .entry(ep.addr)
                    .or_insert_with(|| Destination::known(svc.name.clone(), vec![ep.clone()]));
            }
        }
        Ok(Table { by_addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_documented_example() {
        let text = r#"
services:
  - name: web.default.svc.cluster.local:80
    addresses: ["10.96.0.10:80"]
    endpoints:
      - 10.0.0.2:8080
      - addr: 10.0.0.3:8080
        weight: 2
        identity: spiffe://cluster.local/ns/default/sa/web
        meshedInboundPort: 4143
        labels: {pod: web-1}
"#;
        let svcs = parse_file(text).unwrap();
        assert_eq!(svcs.len(), 1);
        let eps = &svcs[0].endpoints;
        assert_eq!(eps[0].addr, addr("10.0.0.2:8080"));
        assert_eq!(eps[0].weight, 1);
        assert_eq!(eps[1].weight, 2);
        assert_eq!(eps[1].meshed_inbound_port, Some(4143));
        assert_eq!(eps[1].labels["pod"], "web-1");
        let table = Table::build(&svcs).unwrap();
        assert_eq!(table.by_addr[&addr("10.96.0.10:80")].endpoints.len(), 2);
        // A pod address resolves to that endpoint alone.
        let pod = &table.by_addr[&addr("10.0.0.3:8080")];
        assert_eq!(pod.endpoints.len(), 1);
        assert_eq!(pod.display_name(), "web.default.svc.cluster.local:80");
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let e = parse_file("services:\n  - name: a\n    adresses: []\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `adresses`"), "{e}");
        let e = parse_file("services:\n  - name: a\n    addresses: [nope]\n").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse_file("services:\n  - name: a\n    addresses: []\n").unwrap_err();
        assert!(e.to_string().contains("no addresses"), "{e}");
        let e = parse_file(
            "services:\n  - name: a\n    addresses: [1.1.1.1:1]\n    endpoints: [2.2.2.2:2, 2.2.2.2:2]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let two = "services:\n  - {name: a, addresses: [1.1.1.1:1]}\n  - {name: b, addresses: [1.1.1.1:1]}\n";
        let e = Table::build(&parse_file(two).unwrap()).unwrap_err();
        assert!(
            e.to_string().contains("already used by service \"a\""),
            "{e}"
        );
        assert_eq!(parse_file("").unwrap(), vec![]);
    }

    #[test]
    fn parses_flags() {
        let f: ServiceFlag = "web@10.96.0.10:80,[fd00::1]:80=127.0.0.1:8081, 127.0.0.1:8082"
            .parse()
            .unwrap();
        assert_eq!(f.0.name, "web");
        assert_eq!(
            f.0.addresses,
            vec![addr("10.96.0.10:80"), addr("[fd00::1]:80")]
        );
        assert_eq!(f.0.endpoints.len(), 2);
        let f: ServiceFlag = "10.96.0.10:80=127.0.0.1:8081".parse().unwrap();
        assert_eq!(f.0.name, "10.96.0.10:80");
        assert_eq!(f.0.addresses, vec![addr("10.96.0.10:80")]);
        let f: ServiceFlag = "10.96.0.10:80=".parse().unwrap();
        assert!(f.0.endpoints.is_empty());
        for bad in [
            "web",
            "web@=1.1.1.1:1",
            "web@1.1.1.1=2.2.2.2:2",
            "x@1.1.1.1:1=nope",
            "@1.1.1.1:1=2.2.2.2:2",
        ] {
            let e = bad.parse::<ServiceFlag>().unwrap_err();
            assert!(e.to_string().starts_with("bad --service"), "{bad}: {e}");
        }
    }
}
