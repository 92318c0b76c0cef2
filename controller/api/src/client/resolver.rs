//! One shared watch per target.

use super::state::DestinationState;
use super::watch::{WatchOptions, watch_destination_with};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Shares one [`watch_destination_with`] per target between callers, so a
/// proxy resolving the same destination per connection opens one stream.
///
/// At most `capacity` targets are cached; beyond that the oldest cache entry
/// is forgotten (its watch lives on while someone still holds a receiver,
/// and ends when the last one is dropped).
#[derive(Debug)]
pub struct DestinationResolver {
    channel: Channel,
    options: WatchOptions,
    capacity: usize,
    watches: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    by_target: HashMap<String, (u64, watch::Receiver<DestinationState>)>,
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

    /// The shared watch for `target`, started on first use. Must be called
    /// within a Tokio runtime.
    pub fn watch(&self, target: &str) -> watch::Receiver<DestinationState> {
        let mut cache = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, rx)) = cache.by_target.get(target) {
            return rx.clone();
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
        let rx = watch_destination_with(self.channel.clone(), target, self.options);
        let seq = cache.next_seq;
        cache.next_seq += 1;
        cache.by_target.insert(target.to_owned(), (seq, rx.clone()));
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

    /// Number of cached targets.
    pub fn len(&self) -> usize {
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_target
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
