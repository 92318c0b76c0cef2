//! State shared by every connection ([`Shared`]) and the per-connection
//! context the HTTP and TCP paths work from ([`ConnCtx`]).

use crate::balance::{Balancers, RequestPolicy};
use crate::config::Config;
use crate::http::{Proto, client::Client};
use crate::io::Activity;
use crate::metrics::{Direction, Metrics};
use crate::orig_dst::OrigDst;
use crate::route::Route;
use crate::transport::Acceptor;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Shared {
    pub cfg: Config,
    pub metrics: Metrics,
    pub client: Client,
    pub balancers: Arc<Balancers>,
    /// Per-request timeouts and the retry budget for discovered destinations.
    pub policy: RequestPolicy,
    pub outbound_orig_dst: Arc<dyn OrigDst>,
    pub inbound_orig_dst: Arc<dyn OrigDst>,
    /// Which inbound ports reach the application, and where.
    pub inbound_ports: crate::inbound_target::InboundPorts,
    pub acceptor: Arc<dyn Acceptor>,
    /// Connections to meshed peers with a known identity use mTLS.
    pub mtls: bool,
    /// Tap listeners and the access log (see [`crate::tap`]).
    pub observe: Arc<crate::tap::Observe>,
    /// The inbound authorization policy in force.
    pub inbound_policy: Arc<crate::policy::PolicyStore>,
    /// Cancelled when the draining proxy stops accepting (after it
    /// deregistered from the agent): accept loops stop, HTTP connections
    /// close once their requests are answered.
    pub shutdown: CancellationToken,
    /// Every connection and tunnel task, so draining can wait for them.
    pub tracker: TaskTracker,
}

/// One accepted connection, after routing.
pub struct ConnCtx {
    pub direction: Direction,
    pub client_addr: SocketAddr,
    pub route: Route,
    /// Metric label for the destination (bounded).
    pub dst_label: String,
    /// HTTP version the client speaks on this connection.
    pub source_proto: Proto,
    /// The connection comes from a peer proxy (transport header seen).
    pub from_peer: bool,
    /// The peer's verified identity (from its certificate, parsed once by
    /// the mTLS acceptor), once there is mTLS.
    pub peer_identity: Option<conduit_proxy_tls::SpiffeId>,
    /// Bytes and last activity on the accepted connection.
    pub activity: Arc<Activity>,
    /// Tunnels (Upgrade, CONNECT) made from this connection: the connection
    /// counts as open, and draining waits, until they end.
    pub tunnels: TaskTracker,
}
