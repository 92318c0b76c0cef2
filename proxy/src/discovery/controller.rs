//! [`ControllerDiscovery`]: a [`Discover`] backend over the controller's
//! `Destination.Get` stream (client in `conduit_controller_api::client`).
//!
//! * One watch per original destination, shared by every connection.
//! * A target the controller does not know resolves to
//!   [`Resolution::Unknown`] (forward unchanged).
//! * Before the first answer the destination has no endpoints, so the
//!   balancer waits (bounded by `BalanceConfig::endpoint_wait`). If the
//!   controller has not answered about a target within `fallback_after`
//!   and the stream is down, connections go to the original address
//!   unchanged rather than fail: the proxy keeps working without its
//!   controller. Targets it did answer about keep their last endpoints.

use super::{Destination, Discover, Endpoint, Resolution};
use conduit_controller_api::client::{self, DestinationResolver, DestinationState};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Default bound on cached destinations.
pub const DEFAULT_CAPACITY: usize = 10_000;

pub struct ControllerDiscovery {
    resolver: DestinationResolver,
    fallback_after: Duration,
    capacity: usize,
    cache: Mutex<HashMap<SocketAddr, Cached>>,
}

struct Cached {
    created: Instant,
    state: watch::Receiver<DestinationState>,
    mapped: watch::Receiver<Destination>,
}

impl std::fmt::Debug for ControllerDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerDiscovery")
            .field("fallback_after", &self.fallback_after)
            .finish()
    }
}

impl ControllerDiscovery {
    /// Discovery over `resolver` (e.g. `DestinationResolver::new(tonic::transport::Endpoint::from_shared(
    /// "http://controller:8086")?.connect_lazy())`).
    pub fn new(resolver: DestinationResolver, fallback_after: Duration) -> Self {
        ControllerDiscovery {
            resolver,
            fallback_after,
            capacity: DEFAULT_CAPACITY,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn watch(
        &self,
        orig_dst: SocketAddr,
    ) -> (
        Instant,
        watch::Receiver<DestinationState>,
        watch::Receiver<Destination>,
    ) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // A mapped watch whose task ended (source gone) is rebuilt.
        if let Some(c) = cache.get(&orig_dst)
            && c.mapped.has_changed().is_ok()
        {
            return (c.created, c.state.clone(), c.mapped.clone());
        }
        if cache.len() >= self.capacity {
            let oldest = cache.iter().min_by_key(|(_, c)| c.created).map(|(k, _)| *k);
            if let Some(k) = oldest {
                cache.remove(&k);
            }
        }
        let state = self.resolver.watch_addr(orig_dst);
        let mapped = client::map_watch(state.clone(), move |s| to_destination(s, orig_dst));
        let created = Instant::now();
        cache.insert(
            orig_dst,
            Cached {
                created,
                state: state.clone(),
                mapped: mapped.clone(),
            },
        );
        (created, state, mapped)
    }
}

impl Discover for ControllerDiscovery {
    fn resolve(&self, orig_dst: SocketAddr) -> Resolution {
        let (created, state, mapped) = self.watch(orig_dst);
        let s = state.borrow();
        match s.exists {
            Some(false) => Resolution::Unknown,
            None if !s.connected && created.elapsed() >= self.fallback_after => {
                tracing::debug!(%orig_dst, "controller has not answered; forwarding unchanged");
                Resolution::Unknown
            }
            _ => Resolution::Known(mapped),
        }
    }
}

/// The proxy's view of a controller state. A target that turned out not to
/// exist while connections already follow it maps to its own address.
fn to_destination(s: &DestinationState, orig_dst: SocketAddr) -> Destination {
    let endpoints = match s.exists {
        Some(false) => vec![Endpoint::plain(orig_dst)],
        _ => s
            .endpoints
            .iter()
            .map(|e| Endpoint {
                addr: e.addr,
                weight: e.weight,
                identity: e.identity.clone(),
                meshed_inbound_port: e.meshed_inbound_port,
                labels: e.labels.clone(),
            })
            .collect(),
    };
    Destination {
        name: s.display_name().to_owned(),
        endpoints,
    }
}
