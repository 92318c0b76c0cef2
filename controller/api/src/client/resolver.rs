//! One shared watch per target.

use super::state::DestinationState;
use super::watch::{WatchOptions, spawn_watch};
use conduit_base::sync::Unpoisoned;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Shares one watch (one `Destination.Get` stream) per target between
/// callers, so a proxy resolving the same destination per connection opens
/// one stream.
///
/// The resolver keeps no receiver itself: a target's stream lives while some
/// caller holds a receiver and ends when the last one is dropped; the next
/// [`watch`](Self::watch) of that target starts a new one. At most `capacity`
/// targets are remembered (entries whose stream ended are forgotten first,
/// then the oldest; a forgotten entry's stream lives on while it is used).
#[derive(Debug)]
pub struct DestinationResolver {
    channel: Channel,
    options: WatchOptions,
    capacity: usize,
    watches: Mutex<Cache>,
}

type Shared = Arc<watch::Sender<DestinationState>>;

#[derive(Debug, Default)]
struct Cache {
    by_target: HashMap<String, (u64, Shared)>,
    next_seq: u64,
}

impl DestinationResolver {
    /// A resolver over `channel` (for example
    /// `tonic::transport::Endpoint::from_static("http://controller:8086").connect_lazy()`).
    pub fn new(channel: Channel) -> Self {
        Self::with_options(channel, WatchOptions::default(), 10_000)
    }

    pub fn with_options(channel: Channel, options: WatchOptions, capacity: usize) -> Self {
        DestinationResolver {
            channel,
            options,
            capacity: capacity.max(1),
            watches: Mutex::new(Cache::default()),
        }
    }

    /// The shared watch for `target`, started when nobody follows it yet.
    /// Must be called within a Tokio runtime.
    pub fn watch(&self, target: &str) -> watch::Receiver<DestinationState> {
        let mut cache = self.watches.locked();
        if let Some((_, tx)) = cache.by_target.get(target)
            && !tx.is_closed()
        {
            return tx.subscribe();
        }
        if cache.by_target.len() >= self.capacity {
            cache.by_target.retain(|_, (_, tx)| !tx.is_closed());
        }
        if cache.by_target.len() >= self.capacity {
            let oldest = cache
                .by_target
                .iter()
                .min_by_key(|(_, (seq, _))| *seq)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                cache.by_target.remove(&k);
            }
        }
        let (tx, rx) = spawn_watch(self.channel.clone(), target.to_owned(), self.options);
        let seq = cache.next_seq;
        cache.next_seq += 1;
        cache.by_target.insert(target.to_owned(), (seq, tx));
        rx
    }

    /// The shared watch for a service or pod address.
    pub fn watch_addr(&self, addr: SocketAddr) -> watch::Receiver<DestinationState> {
        self.watch(&super::addr_target(addr))
    }

    /// Like [`watch`](Self::watch), but waits (at most `timeout`) until the
    /// controller has answered once, so `exists` is known. On timeout the
    /// receiver is returned as it is (`exists == None`).
    pub async fn resolve(
        &self,
        target: &str,
        timeout: Duration,
    ) -> watch::Receiver<DestinationState> {
        let mut rx = self.watch(target);
        let _ = tokio::time::timeout(timeout, rx.wait_for(|s| s.exists.is_some())).await;
        rx
    }

    /// Number of targets with a live stream (someone holds a receiver).
    pub fn len(&self) -> usize {
        let cache = self.watches.locked();
        cache
            .by_target
            .values()
            .filter(|(_, tx)| !tx.is_closed())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
