//! Choosing an endpoint: per-endpoint statistics and power of two choices
//! over their cost.

use super::BalanceConfig;
use super::accrual::Health;
use super::ewma::PeakEwma;
use crate::discovery::Endpoint;
use conduit_base::sync::Unpoisoned;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// One endpoint and its statistics.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) stats: Mutex<Stats>,
}

#[derive(Debug, Clone)]
pub(super) struct Stats {
    pub(super) ewma: PeakEwma,
    pub(super) in_flight: u32,
    pub(super) health: Health,
}

impl EndpointState {
    pub(super) fn new(endpoint: Endpoint, config: &BalanceConfig, now: Instant) -> Self {
        let ewma = PeakEwma::new(config.default_rtt, config.decay, now);
        EndpointState {
            endpoint: Arc::new(endpoint),
            stats: Mutex::new(Stats {
                ewma,
                in_flight: 0,
                health: Health::ALIVE,
            }),
        }
    }

    pub(super) fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.locked()
    }
}

/// Two distinct random indexes below `n` (n >= 2).
pub(super) fn two_distinct(n: usize) -> (usize, usize) {
    let i = rand::random_range(0..n);
    let mut j = rand::random_range(0..n - 1);
    if j >= i {
        j += 1;
    }
    (i, j)
}

/// The cost of an endpoint that may take this request, else `None`.
pub(super) fn eligible_cost(e: &EndpointState, avoid: &[SocketAddr], now: Instant) -> Option<f64> {
    if e.endpoint.weight == 0 || avoid.contains(&e.endpoint.addr) {
        return None;
    }
    let s = e.stats();
    s.health
        .is_alive()
        .then(|| cost_of(&s, e.endpoint.weight, now))
}

/// Power of two choices among every eligible endpoint; when none is (all
/// out of rotation, or avoided), among all endpoints with weight, then all:
/// better than failing every request.
pub(super) fn slow_pick<'a>(
    eps: &'a [Arc<EndpointState>],
    avoid: &[SocketAddr],
    now: Instant,
) -> Option<&'a Arc<EndpointState>> {
    let alive: Vec<&Arc<EndpointState>> = eps
        .iter()
        .filter(|e| eligible_cost(e, avoid, now).is_some())
        .collect();
    let candidates = if !alive.is_empty() {
        alive
    } else {
        let weighted: Vec<_> = eps.iter().filter(|e| e.endpoint.weight > 0).collect();
        if weighted.is_empty() {
            eps.iter().collect()
        } else {
            weighted
        }
    };
    p2c(&candidates, now)
}

/// Power of two choices: two distinct random candidates, the lower cost wins.
pub(super) fn p2c<'a>(
    c: &[&'a Arc<EndpointState>],
    now: Instant,
) -> Option<&'a Arc<EndpointState>> {
    match c.len() {
        0 => None,
        1 => Some(c[0]),
        n => {
            let (i, j) = two_distinct(n);
            Some(if cost(c[i], now) <= cost(c[j], now) {
                c[i]
            } else {
                c[j]
            })
        }
    }
}

/// Latency estimate times (in-flight + 1), divided by the weight.
fn cost(e: &EndpointState, now: Instant) -> f64 {
    cost_of(&e.stats(), e.endpoint.weight, now)
}

fn cost_of(s: &Stats, weight: u32, now: Instant) -> f64 {
    s.ewma.estimate_ns(now) * f64::from(s.in_flight + 1) / f64::from(weight.max(1))
}
