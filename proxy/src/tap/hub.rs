//! The tap hub: the listeners currently tapping this proxy, each with a
//! filter and a bounded queue. Publishing never waits: an event for a full
//! queue is dropped and counted (per listener and in
//! `conduit_tap_dropped_total`). At most [`MAX_LISTENERS`] listen at once.

use conduit_base::sync::Unpoisoned;
use conduit_register::tap::{TapEvent, TapFilter};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Listeners tapping one proxy at once; more are refused (503).
pub const MAX_LISTENERS: usize = 8;
/// Events queued per listener by default, and at most.
pub const DEFAULT_BUFFER: usize = 256;
pub const MAX_BUFFER: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{MAX_LISTENERS} listeners are already tapping this proxy")]
pub struct TooManyListeners;

struct Listener {
    id: u64,
    filter: TapFilter,
    tx: mpsc::Sender<Arc<TapEvent>>,
    dropped: Arc<AtomicU64>,
}

/// Metrics of the hub (registered by [`super::Observe::new`]).
#[derive(Clone, Default)]
pub struct TapMetrics {
    pub listeners: Gauge,
    pub events: Counter,
    pub dropped: Counter,
}

#[derive(Default)]
pub struct Hub {
    /// Number of listeners: the request path reads only this.
    active: AtomicUsize,
    next_id: AtomicU64,
    listeners: Mutex<Vec<Listener>>,
    pub metrics: TapMetrics,
}

/// One listener's end: events arrive on `rx`; dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    pub rx: mpsc::Receiver<Arc<TapEvent>>,
    pub dropped: Arc<AtomicU64>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

impl Hub {
    /// Whether anyone listens (one atomic load; the request path's only cost
    /// while nobody taps).
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    pub fn subscribe(
        self: &Arc<Self>,
        filter: TapFilter,
        buffer: usize,
    ) -> Result<Subscription, TooManyListeners> {
        let mut ls = self.listeners.locked();
        if ls.len() >= MAX_LISTENERS {
            return Err(TooManyListeners);
        }
        let (tx, rx) = mpsc::channel(buffer.clamp(1, MAX_BUFFER));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dropped = Arc::new(AtomicU64::new(0));
        ls.push(Listener {
            id,
            filter,
            tx,
            dropped: dropped.clone(),
        });
        self.active.store(ls.len(), Ordering::Relaxed);
        self.metrics.listeners.set(ls.len() as i64);
        Ok(Subscription {
            hub: self.clone(),
            id,
            rx,
            dropped,
        })
    }

    fn remove(&self, id: u64) {
        let mut ls = self.listeners.locked();
        ls.retain(|l| l.id != id);
        self.active.store(ls.len(), Ordering::Relaxed);
        self.metrics.listeners.set(ls.len() as i64);
    }

    /// Offers `event` to every listener whose filter matches; never waits.
    pub fn publish(&self, event: TapEvent) {
        let event = Arc::new(event);
        let ls = self.listeners.locked();
        for l in ls.iter().filter(|l| l.filter.matches(&event)) {
            match l.tx.try_send(event.clone()) {
                Ok(()) => {
                    self.metrics.events.inc();
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    l.dropped.fetch_add(1, Ordering::Relaxed);
                    self.metrics.dropped.inc();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An event of an inbound `GET path` (shared with other modules' tests).
    pub(crate) fn event(path: &str) -> TapEvent {
        TapEvent {
            ts_us: 0,
            direction: "inbound".into(),
            client: "127.0.0.1:1".into(),
            peer_identity: None,
            dst: "app:8080".into(),
            method: "GET".into(),
            authority: "a".into(),
            path: path.into(),
            version: "HTTP/1.1".into(),
            status: 200,
            grpc_status: None,
            latency_us: 1,
            duration_us: 1,
            req_bytes: None,
            rsp_bytes: 1,
            success: None,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let hub = Arc::new(Hub::default());
        assert!(!hub.active());
        let mut s = hub.subscribe(TapFilter::default(), 2).unwrap();
        assert!(hub.active());
        for i in 0..5 {
            hub.publish(event(&format!("/{i}")));
        }
        assert_eq!(s.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(hub.metrics.dropped.get(), 3);
        assert_eq!(s.rx.try_recv().unwrap().path, "/0");
        assert_eq!(s.rx.try_recv().unwrap().path, "/1");
        assert!(s.rx.try_recv().is_err());
        drop(s);
        assert!(!hub.active());
        assert_eq!(hub.metrics.listeners.get(), 0);
    }

    #[test]
    fn only_matching_events_are_queued() {
        let hub = Arc::new(Hub::default());
        let mut f = TapFilter::default();
        f.set("path", "/api").unwrap();
        let mut s = hub.subscribe(f, 8).unwrap();
        hub.publish(event("/health"));
        hub.publish(event("/api/x"));
        assert_eq!(s.rx.try_recv().unwrap().path, "/api/x");
        assert!(s.rx.try_recv().is_err());
    }

    #[test]
    fn listeners_are_bounded() {
        let hub = Arc::new(Hub::default());
        let subs: Vec<_> = (0..MAX_LISTENERS)
            .map(|_| hub.subscribe(TapFilter::default(), 1).unwrap())
            .collect();
        assert_eq!(
            hub.subscribe(TapFilter::default(), 1).err(),
            Some(TooManyListeners)
        );
        drop(subs);
        assert!(hub.subscribe(TapFilter::default(), 1).is_ok());
    }
}
