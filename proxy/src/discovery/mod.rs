//! Discovery: from an original destination address to the set of endpoints
//! behind it. The proxy only sees the [`Discover`] and [`Watch`] traits;
//! backends are a static file (here) and the controller's
//! `Destination.Get` stream.

pub mod config;
mod controller;
pub mod networks;
mod static_backend;

pub use config::{ConfigError, ServiceConfig, ServiceFlag};
pub use controller::ControllerDiscovery;
pub use networks::{ClusterNetworks, DEFAULT_CLUSTER_NETWORKS};
pub use static_backend::{MAX_FILE_BYTES, StaticDiscovery, StaticError};

use std::net::SocketAddr;
use tokio::sync::watch;

/// One endpoint of a destination, as discovery describes it: the API
/// client's type, whose identity was parsed once where the controller's
/// answer came in (a static file's endpoints are parsed when it is loaded).
pub use conduit_controller_api::client::Endpoint;

/// The current state of a destination: the API client's state, followed
/// as the controller's stream updates it (no copy into another type). A
/// static table's destinations are [`Destination::known`]; `pending()` is
/// true until discovery first answered; `display_name()` is the name used
/// in metrics, e.g. `web.default.svc.cluster.local:80`.
pub use conduit_controller_api::client::DestinationState as Destination;

/// What discovery knows about an original destination.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// Discovery answered that this is not a mesh destination: forward
    /// unchanged to the original address.
    Unknown,
    /// A known destination; the receiver always holds its latest state.
    Known(watch::Receiver<Destination>),
    /// Discovery could not answer (the controller has not answered about
    /// it in time and its stream is down). It may be a meshed pod: inside
    /// the cluster's networks the connection is refused, outside them it
    /// goes out unchanged (see `transport::intent`).
    Unanswered,
}

/// A backend of discovery: it starts watches on original destinations.
/// The proxy's one per-destination cache,
/// [`Balancers`](crate::balance::Balancers), calls [`watch`](Self::watch)
/// once per destination and owns the watch (with the destination's
/// balancer) while the destination is used; dropping it ends the watch
/// (for the controller, its `Get` stream). Backends keep no cache of
/// their own.
pub trait Discover: Send + Sync + 'static {
    /// Starts following `orig_dst`.
    fn watch(&self, orig_dst: SocketAddr) -> Box<dyn Watch>;

    /// At most this many watches at once (the cache holds no more).
    fn max_watches(&self) -> usize {
        usize::MAX
    }
}

/// Discovery's watch on one original destination.
pub trait Watch: Send + Sync {
    /// What discovery knows about the destination now.
    fn resolution(&self) -> Resolution;

    /// Whether the watch still follows its source (`false`: start another).
    fn is_live(&self) -> bool {
        true
    }

    /// Whether to keep the watch while the destination is not resolved to
    /// endpoints: the controller's answer may still change and its next
    /// watch would cost a new stream; a static table is looked up again for
    /// free.
    fn follows_unresolved(&self) -> bool {
        false
    }
}
