//! [`ControllerDiscovery`]: a [`Discover`] backend over the controller's
//! `Destination.Get` stream (client in `conduit_controller_api::client`).
//!
//! * One watch (one `Get` stream) per original destination, shared by every
//!   connection to it.
//! * A target the controller does not know resolves to
//!   [`Resolution::Unknown`] (forward unchanged).
//! * Before the first answer the destination has no endpoints, so the
//!   balancer waits (bounded by `BalanceConfig::endpoint_wait`). If the
//!   controller has not answered about a target within `answer_wait`
//!   and the stream is down, the target resolves to
//!   [`Resolution::Unanswered`]: the outbound path refuses it when it is
//!   inside the cluster's networks (it may be a meshed pod, and plaintext
//!   would be a downgrade) and sends it unchanged otherwise. Targets it did
//!   answer about keep their last endpoints, so known traffic survives the
//!   controller going away. Once one target has waited in vain and no
//!   stream is up, new targets are unanswered at once.
//! * Streams are bounded: at most `capacity` destinations are followed
//!   (below the controller's 4096 streams per connection), and one not
//!   resolved for `idle_timeout` is forgotten, which ends its stream once
//!   no balancer uses it any more.

use super::{Destination, Discover, Endpoint, Resolution};
use crate::idle_map::IdleMap;
use conduit_base::sync::Unpoisoned;
use conduit_controller_api::client::{self, DestinationState, WatchOptions};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::transport::Channel;

/// Default bound on followed destinations (the controller allows 4096
/// streams per connection).
pub const DEFAULT_CAPACITY: usize = 4000;
/// Default time after which an unused destination is forgotten.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct ControllerDiscovery {
    channel: Channel,
    options: WatchOptions,
    answer_wait: Duration,
    capacity: usize,
    idle_timeout: Duration,
    cache: Mutex<IdleMap<Cached>>,
}

struct Cached {
    created: Instant,
    last_used: Instant,
    state: watch::Receiver<DestinationState>,
    mapped: watch::Receiver<Destination>,
}

impl std::fmt::Debug for ControllerDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerDiscovery")
            .field("answer_wait", &self.answer_wait)
            .field("capacity", &self.capacity)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl ControllerDiscovery {
    /// Discovery over a channel to the controller (plaintext, or TLS from
    /// `identity::controller_channel`; it connects lazily, so the proxy
    /// starts even when the controller is away).
    /// This keeps its own cache of watches (rather than sharing a
    /// `DestinationResolver`), so forgetting a destination ends its stream.
    pub fn new(channel: Channel, answer_wait: Duration) -> Self {
        ControllerDiscovery {
            channel,
            options: WatchOptions::default(),
            answer_wait,
            capacity: DEFAULT_CAPACITY,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            cache: Mutex::new(IdleMap::new()),
        }
    }

    /// Changes the reconnect backoff of the streams.
    pub fn with_watch_options(mut self, options: WatchOptions) -> Self {
        self.options = options;
        self
    }

    /// Changes the bounds on followed destinations.
    pub fn with_limits(mut self, capacity: usize, idle_timeout: Duration) -> Self {
        self.capacity = capacity.max(1);
        self.idle_timeout = idle_timeout;
        self
    }

    /// Number of destinations followed.
    pub fn len(&self) -> usize {
        self.cache.locked().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn watch(
        &self,
        orig_dst: SocketAddr,
    ) -> (
        Instant,
        watch::Receiver<DestinationState>,
        watch::Receiver<Destination>,
    ) {
        let now = Instant::now();
        let mut cache = self.cache.locked();
        cache.sweep(now, self.idle_timeout, |c| c.last_used, |_| false);
        // A mapped watch whose task ended (source gone) is rebuilt.
        if let Some(c) = cache.entries.get_mut(&orig_dst)
            && c.mapped.has_changed().is_ok()
        {
            c.last_used = now;
            return (c.created, c.state.clone(), c.mapped.clone());
        }
        if cache.entries.len() >= self.capacity {
            let lru = cache
                .entries
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| *k);
            if let Some(k) = lru {
                cache.entries.remove(&k);
            }
        }
        let target = client::addr_target(orig_dst);
        let state = client::watch_destination_with(self.channel.clone(), &target, self.options);
        let mapped = client::map_watch(state.clone(), move |s| to_destination(s, orig_dst));
        let entry = Cached {
            created: now,
            last_used: now,
            state: state.clone(),
            mapped: mapped.clone(),
        };
        cache.entries.insert(orig_dst, entry);
        (now, state, mapped)
    }

    /// Whether the controller is known to be away: no followed destination
    /// is connected, and one has waited `answer_wait` in vain. Then a new
    /// destination need not wait its own `answer_wait` to count as
    /// unanswered (outside the cluster networks it goes out at once).
    fn controller_away(&self) -> bool {
        let cache = self.cache.locked();
        let mut waited = false;
        for c in cache.entries.values() {
            if c.state.borrow().connected {
                return false;
            }
            waited |= c.created.elapsed() >= self.answer_wait;
        }
        waited
    }
}

impl Discover for ControllerDiscovery {
    fn resolve(&self, orig_dst: SocketAddr) -> Resolution {
        let (created, state, mapped) = self.watch(orig_dst);
        // Copied out: `controller_away` borrows every state, this one too.
        let (exists, connected) = {
            let s = state.borrow();
            (s.exists, s.connected)
        };
        match exists {
            Some(false) => Resolution::Unknown,
            None if !connected
                && (created.elapsed() >= self.answer_wait || self.controller_away()) =>
            {
                tracing::debug!(%orig_dst, "controller has not answered about this destination");
                Resolution::Unanswered
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
        pending: s.exists.is_none(),
    }
}
