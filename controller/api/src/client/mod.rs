//! Client side of `Destination.Get` for proxies.
//!
//! [`watch_destination`] follows one target and publishes its state in a
//! `tokio::sync::watch` channel: the receiver always holds the latest state
//! (no queue, so a slow reader never builds a backlog). When the stream
//! breaks or the controller is down, the last known endpoints stay in place
//! (with `connected == false`) and the client reconnects with jittered
//! exponential backoff; on reconnect the controller sends a complete state
//! which replaces the old one. [`DestinationResolver`] shares one watch per
//! target between callers.

mod resolver;
mod state;
mod watch;

pub use resolver::DestinationResolver;
pub use state::{DestinationState, Endpoint, EndpointError};
pub use watch::{WatchOptions, watch_destination, watch_destination_with};

/// The `Destination.Get` target for an address (a service or pod IP and a
/// port): `10.96.0.10:80`, `[fd00::1]:80`.
pub fn addr_target(addr: std::net::SocketAddr) -> String {
    addr.to_string()
}
