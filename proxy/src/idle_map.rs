//! [`IdleMap`]: a per-destination map swept of idle entries at most every
//! quarter of the idle timeout, on the caller's own lookups (no timer task).
//! The map of the per-destination cache ([`crate::balance::Balancers`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct IdleMap<V> {
    pub(crate) entries: HashMap<SocketAddr, V>,
    last_sweep: Instant,
}

impl<V> IdleMap<V> {
    pub(crate) fn new() -> Self {
        IdleMap {
            entries: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    /// When a quarter of `idle` has passed since the last sweep, drops the
    /// entries last used (as `last_used` reads it) `idle` or more ago, unless
    /// `keep_busy` says the entry is still in use.
    pub(crate) fn sweep(
        &mut self,
        now: Instant,
        idle: Duration,
        last_used: impl Fn(&V) -> Instant,
        keep_busy: impl Fn(&V) -> bool,
    ) {
        if now.saturating_duration_since(self.last_sweep) < idle / 4 {
            return;
        }
        self.entries
            .retain(|_, v| keep_busy(v) || now.saturating_duration_since(last_used(v)) < idle);
        self.last_sweep = now;
    }
}
