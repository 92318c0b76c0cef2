//! The backend-neutral discovery model that the gRPC server streams from.
//! Backends (file, Kubernetes) implement [`DiscoveryBackend`]; identity token
//! checks implement [`TokenVerifier`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio::sync::watch;

/// What a proxy asks about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `name.namespace.svc.<cluster-domain>:port`
    Service {
        name: String,
        namespace: String,
        port: u16,
    },
    /// A service IP or a pod IP, and a port.
    Addr(SocketAddr),
}

/// One endpoint as backends describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub addr: SocketAddr,
    pub weight: u32,
    /// SPIFFE ID of the workload, when known.
    pub identity: Option<conduit_identity::SpiffeId>,
    /// Set when the pod runs a conduit proxy: its inbound port.
    pub meshed_inbound_port: Option<u16>,
    pub labels: BTreeMap<String, String>,
}

/// A destination's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DestinationView {
    /// False when the target is not known at all ("does not exist").
    pub exists: bool,
    /// Canonical name for metrics when the target is a known service, e.g.
    /// `web.default.svc.cluster.local:80` (also when it was asked for by
    /// cluster IP). `None` for pod IPs and unknown targets.
    pub name: Option<String>,
    pub endpoints: Vec<EndpointInfo>,
}

/// A source of discovery data. Watches are shared per target: a watch channel
/// holds only the latest view, so a slow subscriber never blocks others and
/// memory stays bounded however many subscribe.
pub trait DiscoveryBackend: Send + Sync + 'static {
    fn watch(&self, target: &Target) -> watch::Receiver<DestinationView>;

    /// Whether the backend has its initial state (e.g. reflectors synced);
    /// the admin server's `/ready` answers 200 only when this is true.
    fn is_ready(&self) -> bool {
        true
    }
}

/// Why a token was not accepted for an identity.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token rejected: {0}")]
    Rejected(String),
    #[error("token belongs to {actual}, not {requested}")]
    WrongIdentity { requested: String, actual: String },
    #[error("token check unavailable: {0}")]
    Unavailable(String),
}

/// Checks that a token proves an identity (Kubernetes TokenReview, or a local
/// token file).
pub trait TokenVerifier: Send + Sync + 'static {
    /// `namespace` and `service_account` come from the requested SPIFFE ID.
    fn verify(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
    ) -> impl std::future::Future<Output = Result<(), TokenError>> + Send;

    /// Which pod the bearer of `token` is, for `InboundPolicies.Watch`
    /// ([`crate::policy::caller`]): the pod `claim` names if the token
    /// proves it is the caller's, with the authority's labels. A verifier
    /// that cannot tell refuses (fail closed).
    fn prove_workload(
        &self,
        token: &str,
        claim: crate::policy::caller::Claim<'_>,
    ) -> impl std::future::Future<
        Output = Result<
            crate::policy::caller::ProvenWorkload,
            crate::policy::caller::WorkloadError,
        >,
    > + Send {
        let _ = (token, claim);
        std::future::ready(Err(crate::policy::caller::WorkloadError::Unavailable(
            "this token verifier cannot prove which pod a caller is".into(),
        )))
    }
}

/// Why a target string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "target {0:?} has no port (expected name.namespace.svc.<cluster-domain>:port or ip:port)"
    )]
    NoPort(String),
    #[error("target {0:?} has an invalid port")]
    BadPort(String),
    #[error(
        "target {0:?} is neither an IP address nor a service name \
         (name.namespace.svc.{1}:port)"
    )]
    BadName(String, String),
}

impl Target {
    /// Parses `name.namespace.svc.<cluster_domain>:port`,
    /// `name.namespace.svc:port`, `ip:port` or `[ipv6]:port`.
    pub fn parse(s: &str, cluster_domain: &str) -> Result<Target, TargetError> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| TargetError::NoPort(s.into()))?;
        let port: u16 = port.parse().map_err(|_| TargetError::BadPort(s.into()))?;
        let bad = || TargetError::BadName(s.into(), cluster_domain.into());
        let host = host.strip_suffix('.').unwrap_or(host);
        let rest = host
            .strip_suffix(cluster_domain)
            .and_then(|r| r.strip_suffix('.'))
            .unwrap_or(host);
        let mut parts = rest.split('.');
        let (Some(name), Some(namespace), Some("svc"), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if !is_dns_label(name) || !is_dns_label(namespace) {
            return Err(bad());
        }
        Ok(Target::Service {
            name: name.into(),
            namespace: namespace.into(),
            port,
        })
    }

    /// The canonical service name used in metrics, for service targets.
    pub fn service_name(name: &str, namespace: &str, port: u16, cluster_domain: &str) -> String {
        format!("{name}.{namespace}.svc.{cluster_domain}:{port}")
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Service {
                name,
                namespace,
                port,
            } => write!(f, "{name}.{namespace}.svc:{port}"),
            Target::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// An RFC 1123 label, as Kubernetes names of services and namespaces are.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ns: &str, port: u16) -> Target {
        Target::Service {
            name: name.into(),
            namespace: ns.into(),
            port,
        }
    }

    #[test]
    fn parses_service_names() {
        let d = "cluster.local";
        assert_eq!(
            Target::parse("web.default.svc.cluster.local:80", d),
            Ok(svc("web", "default", 80))
        );
        assert_eq!(
            Target::parse("web.default.svc.cluster.local.:80", d),
            Ok(svc("web", "default", 80))
        );
        assert_eq!(
            Target::parse("web.default.svc:8080", d),
            Ok(svc("web", "default", 8080))
        );
        assert_eq!(
            Target::parse("a.b.svc.example.org:1", "example.org"),
            Ok(svc("a", "b", 1))
        );
    }

    #[test]
    fn parses_addresses() {
        let d = "cluster.local";
        assert_eq!(
            Target::parse("10.0.0.1:80", d),
            Ok(Target::Addr("10.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            Target::parse("[fd00::1]:80", d),
            Ok(Target::Addr("[fd00::1]:80".parse().unwrap()))
        );
    }

    #[test]
    fn rejects_garbage() {
        let d = "cluster.local";
        assert!(matches!(
            Target::parse("web", d),
            Err(TargetError::NoPort(_))
        ));
        assert!(matches!(
            Target::parse("web.default.svc:http", d),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(
            Target::parse("web.default:80", d),
            Err(TargetError::BadName(..))
        ));
        assert!(matches!(
            Target::parse("Web.default.svc:80", d),
            Err(TargetError::BadName(..))
        ));
        assert!(matches!(
            Target::parse("a.b.c.svc.cluster.local:80", d),
            Err(TargetError::BadName(..))
        ));
        assert!(matches!(
            Target::parse("example.com:443", d),
            Err(TargetError::BadName(..))
        ));
    }
}
