//! [`ControllerDiscovery`]: a [`Discover`] backend over the controller's
//! `Destination.Get` stream (client in `conduit_controller_api::client`).
//!
//! * One watch (one `Get` stream) per original destination, shared by every
//!   connection to it through the per-destination cache.
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
//! * It keeps no cache: the proxy's per-destination cache
//!   ([`Balancers`](crate::balance::Balancers)) owns each watch, keeps it
//!   while the destination is asked for (known or not), and forgets it
//!   after its idle timeout, which ends the stream once no balancer uses it
//!   any more. Streams are bounded: the cache follows at most `capacity`
//!   destinations ([`Discover::max_watches`], below the controller's 4096
//!   streams per connection).

use super::{Discover, Resolution, Watch};
use conduit_controller_api::client::{self, DestinationState, WatchOptions};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tonic::transport::Channel;

/// Default bound on followed destinations (the controller allows 4096
/// streams per connection).
pub const DEFAULT_CAPACITY: usize = 4000;

pub struct ControllerDiscovery {
    channel: Channel,
    options: WatchOptions,
    answer_wait: Duration,
    capacity: usize,
    /// The streams of the live watches (owned by the per-destination
    /// cache), for [`controller_away`](Self::controller_away).
    streams: Arc<Mutex<Vec<Weak<Stream>>>>,
}

/// One `Get` stream: when it started, and the controller's latest state.
struct Stream {
    created: Instant,
    state: watch::Receiver<DestinationState>,
}

impl std::fmt::Debug for ControllerDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerDiscovery")
            .field("answer_wait", &self.answer_wait)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ControllerDiscovery {
    /// Discovery over a channel to the controller (plaintext, or TLS from
    /// `identity::controller_channel`; it connects lazily, so the proxy
    /// starts even when the controller is away). Each watch is a stream of
    /// its own, so dropping a destination's watch ends its stream.
    pub fn new(channel: Channel, answer_wait: Duration) -> Self {
        ControllerDiscovery {
            channel,
            options: WatchOptions::default(),
            answer_wait,
            capacity: DEFAULT_CAPACITY,
            streams: Arc::default(),
        }
    }

    /// Changes the reconnect backoff of the streams.
    pub fn with_watch_options(mut self, options: WatchOptions) -> Self {
        self.options = options;
        self
    }

    /// Changes the bound on followed destinations (streams).
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// Number of live streams.
    pub fn len(&self) -> usize {
        self.live().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn live(&self) -> Vec<Arc<Stream>> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.retain(|w| w.strong_count() > 0);
        streams.iter().filter_map(Weak::upgrade).collect()
    }
}

/// Whether the controller is known to be away: no live stream is
/// connected, and one has waited `answer_wait` in vain. Then a new
/// destination need not wait its own `answer_wait` to count as unanswered
/// (outside the cluster networks it goes out at once).
fn controller_away(streams: &Mutex<Vec<Weak<Stream>>>, answer_wait: Duration) -> bool {
    let streams = streams.lock().unwrap_or_else(|p| p.into_inner());
    let mut waited = false;
    for s in streams.iter().filter_map(Weak::upgrade) {
        if s.state.borrow().connected {
            return false;
        }
        waited |= s.created.elapsed() >= answer_wait;
    }
    waited
}

/// The watch on one destination: its stream, whose state (the API
/// client's watch) is handed to balancers as it is.
struct ControllerWatch {
    orig_dst: SocketAddr,
    stream: Arc<Stream>,
    answer_wait: Duration,
    streams: Arc<Mutex<Vec<Weak<Stream>>>>,
}

impl Discover for ControllerDiscovery {
    fn watch(&self, orig_dst: SocketAddr) -> Box<dyn Watch> {
        let target = client::addr_target(orig_dst);
        let state = client::watch_destination_with(self.channel.clone(), &target, self.options);
        let stream = Arc::new(Stream {
            created: Instant::now(),
            state,
        });
        {
            let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
            streams.retain(|w| w.strong_count() > 0);
            streams.push(Arc::downgrade(&stream));
        }
        Box::new(ControllerWatch {
            orig_dst,
            stream,
            answer_wait: self.answer_wait,
            streams: self.streams.clone(),
        })
    }

    fn max_watches(&self) -> usize {
        self.capacity
    }
}

impl Watch for ControllerWatch {
    fn resolution(&self) -> Resolution {
        // Copied out: `controller_away` borrows every state, this one too.
        let (exists, connected) = {
            let s = self.stream.state.borrow();
            (s.exists, s.connected)
        };
        match exists {
            Some(false) => Resolution::Unknown,
            None if !connected
                && (self.stream.created.elapsed() >= self.answer_wait
                    || controller_away(&self.streams, self.answer_wait)) =>
            {
                tracing::debug!(orig_dst = %self.orig_dst, "controller has not answered about this destination");
                Resolution::Unanswered
            }
            _ => Resolution::Known(self.stream.state.clone()),
        }
    }

    /// A watch whose task ended is rebuilt.
    fn is_live(&self) -> bool {
        self.stream.state.has_changed().is_ok()
    }

    fn follows_unresolved(&self) -> bool {
        true
    }
}
