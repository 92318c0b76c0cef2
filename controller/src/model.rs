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
    Service { name: String, namespace: String, port: u16 },
    /// A service IP or a pod IP, and a port.
    Addr(SocketAddr),
}

/// One endpoint as backends describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub addr: SocketAddr,
    pub weight: u32,
    /// SPIFFE ID of the workload, when known.
    pub identity: Option<String>,
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
}
