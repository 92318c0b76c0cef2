//! [`Balancer`]: power of two choices over peak-EWMA cost, following a
//! destination's `watch` channel. See the module documentation for the API.

use super::BalanceConfig;
use super::accrual::Health;
use super::budget::RetryBudget;
use super::choose::{EndpointState, eligible_cost, slow_pick, two_distinct};
use super::pick::Pick;
use crate::discovery::Destination;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Costs within this fraction of each other count as a tie in power of two
/// choices (peak-EWMA estimates of equally fast endpoints differ by noise).
const TIE: f64 = 0.05;

/// Balances over one destination's endpoints. Cheap to clone; clones share
/// their statistics.
#[derive(Clone, Debug)]
pub struct Balancer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: BalanceConfig,
    state: Mutex<State>,
    /// This destination's retry budget.
    budget: RetryBudget,
    /// Origin of `probe_at`.
    base: Instant,
    /// Nanoseconds after `base` when some endpoint's probe is due (0 = look
    /// now, `u64::MAX` = none), so picks scan for probes only then.
    probe_at: AtomicU64,
}

impl Shared {
    fn nanos(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base)
            .as_nanos()
            .min(u128::from(u64::MAX - 1)) as u64
    }

    /// An endpoint's probe will be due at `t`.
    pub(super) fn probe_due_at(&self, t: Instant) {
        self.probe_at.fetch_min(self.nanos(t), Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct State {
    rx: watch::Receiver<Destination>,
    name: Arc<str>,
    endpoints: Vec<Arc<EndpointState>>,
}

/// What a [`Balancer`] knows about one endpoint right now.
#[derive(Debug, Clone)]
pub struct EndpointSnapshot {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Decayed peak-EWMA latency estimate.
    pub latency: Duration,
    pub in_flight: u32,
    pub health: Health,
}

impl Balancer {
    /// A balancer following `rx`: endpoint changes apply to the next pick,
    /// and endpoints that stay keep their statistics.
    pub fn new(mut rx: watch::Receiver<Destination>, config: BalanceConfig) -> Self {
        let dest = rx.borrow_and_update().clone();
        let name: Arc<str> = dest.display_name().into();
        let now = Instant::now();
        let endpoints = dest
            .endpoints
            .into_iter()
            .map(|e| Arc::new(EndpointState::new(e, &config, now)))
            .collect();
        let state = State {
            rx,
            name,
            endpoints,
        };
        let budget = RetryBudget::new(config.retry_budget);
        Balancer {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(state),
                budget,
                base: now,
                probe_at: AtomicU64::new(u64::MAX),
            }),
        }
    }

    pub fn config(&self) -> &BalanceConfig {
        &self.shared.config
    }

    /// This destination's retry budget (used when the request policy names
    /// no budget of its own).
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.shared.budget
    }

    /// The destination's name (for metrics), as discovery has it now.
    pub fn name(&self) -> Arc<str> {
        let mut state = self.state();
        state.refresh(&self.shared.config, Instant::now());
        state.name.clone()
    }

    /// Whether anyone besides this handle (clones, picks) holds it.
    pub fn in_use(&self) -> bool {
        Arc::strong_count(&self.shared) > 1
    }

    /// Whether both handles share one balancer (same statistics).
    pub fn same_as(&self, other: &Balancer) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether both follow the same discovery watch.
    pub fn follows(&self, rx: &watch::Receiver<Destination>) -> bool {
        self.state().rx.same_channel(rx)
    }

    /// Picks an endpoint, or `None` when the destination has none.
    pub fn pick(&self) -> Option<Pick> {
        self.pick_avoiding(&[])
    }

    /// Like [`pick`](Self::pick), but avoids the given addresses when another
    /// endpoint can be picked (used to retry elsewhere).
    pub fn pick_avoiding(&self, avoid: &[SocketAddr]) -> Option<Pick> {
        let now = Instant::now();
        let cfg = &self.shared.config;
        let mut state = self.state();
        if state.refresh(cfg, now) {
            // New endpoint set: look for due probes on the next pick.
            self.shared.probe_at.store(0, Ordering::Relaxed);
        }
        let eps = &state.endpoints;
        if eps.is_empty() {
            return None;
        }
        // A probe that is due goes first, so dead endpoints come back promptly.
        if self.shared.nanos(now) >= self.shared.probe_at.load(Ordering::Relaxed)
            && let Some(ep) = self.start_due_probe(eps, avoid, now)
        {
            return Some(Pick::new(ep, self.shared.clone(), true, now));
        }
        // Fast path: two random endpoints, both in rotation.
        let chosen = match eps.len() {
            1 => eligible_cost(&eps[0], avoid, now).map(|_| &eps[0]),
            n => {
                let (i, j) = two_distinct(n);
                match (
                    eligible_cost(&eps[i], avoid, now),
                    eligible_cost(&eps[j], avoid, now),
                ) {
                    // `i` is random: near-equal costs split evenly instead of
                    // starving the endpoint whose estimate is higher by a hair.
                    (Some(a), Some(b)) => Some(if a <= b * (1.0 + TIE) {
                        &eps[i]
                    } else {
                        &eps[j]
                    }),
                    _ => None,
                }
            }
        };
        let chosen = match chosen {
            Some(ep) => ep.clone(),
            None => slow_pick(eps, avoid, now)?.clone(),
        };
        chosen.stats().in_flight += 1;
        Some(Pick::new(chosen, self.shared.clone(), false, now))
    }

    /// Starts the first due probe among usable endpoints, and records when
    /// the next one will be due.
    fn start_due_probe(
        &self,
        eps: &[Arc<EndpointState>],
        avoid: &[SocketAddr],
        now: Instant,
    ) -> Option<Arc<EndpointState>> {
        let seen = self.shared.probe_at.load(Ordering::Relaxed);
        let mut next = u64::MAX;
        let mut probe = None;
        for ep in eps.iter().filter(|e| e.endpoint.weight > 0) {
            let mut s = ep.stats();
            if let Health::Probing { .. } = s.health {
                // Its probe may fail after this scan: look again by then.
                next = next.min(
                    self.shared
                        .nanos(now + self.shared.config.accrual.min_backoff),
                );
            }
            if let Health::Dead { until, .. } = s.health {
                if probe.is_none() && s.health.probe_due(now) && !avoid.contains(&ep.endpoint.addr)
                {
                    s.health.start_probe();
                    s.in_flight += 1;
                    probe = Some(ep.clone());
                } else {
                    next = next.min(self.shared.nanos(until));
                }
            }
        }
        // Completions lower `probe_at` concurrently; only raise it if none did.
        let _ =
            self.shared
                .probe_at
                .compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed);
        probe
    }

    /// Waits until the destination has at least one endpoint, at most
    /// `timeout`. Returns whether it has one.
    /// Waits, at most `timeout`, for discovery's first answer about this
    /// destination (whatever it says); true once there is one.
    pub async fn answered(&self, timeout: Duration) -> bool {
        let mut rx = self.state().rx.clone();
        let found = tokio::time::timeout(timeout, rx.wait_for(|d| !d.pending())).await;
        matches!(found, Ok(Ok(_)))
    }

    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut rx = self.state().rx.clone();
        let found = tokio::time::timeout(timeout, rx.wait_for(|d| !d.endpoints.is_empty())).await;
        matches!(found, Ok(Ok(_)))
    }

    /// The endpoints and their statistics, for tests and debugging.
    pub fn snapshot(&self) -> Vec<EndpointSnapshot> {
        let now = Instant::now();
        let mut state = self.state();
        state.refresh(&self.shared.config, now);
        state
            .endpoints
            .iter()
            .map(|e| {
                let s = e.stats();
                EndpointSnapshot {
                    addr: e.endpoint.addr,
                    weight: e.endpoint.weight,
                    latency: Duration::from_nanos(s.ewma.estimate_ns(now) as u64),
                    in_flight: s.in_flight,
                    health: s.health,
                }
            })
            .collect()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// Applies a new destination state, keeping the statistics of endpoints
    /// that stay.
    fn refresh(&mut self, cfg: &BalanceConfig, now: Instant) -> bool {
        // `Ref::has_changed` also sees the last value sent before the
        // sender went away (`Receiver::has_changed` would be an error then).
        if !self.rx.borrow().has_changed() {
            return false;
        }
        let dest = self.rx.borrow_and_update().clone();
        self.name = dest.display_name().into();
        let mut old: HashMap<SocketAddr, Arc<EndpointState>> = self
            .endpoints
            .drain(..)
            .map(|e| (e.endpoint.addr, e))
            .collect();
        self.endpoints = dest
            .endpoints
            .into_iter()
            .map(|e| match old.remove(&e.addr) {
                Some(prev) if *prev.endpoint == e => prev,
                Some(prev) => {
                    let stats = prev.stats().clone();
                    Arc::new(EndpointState {
                        endpoint: Arc::new(e),
                        stats: Mutex::new(stats),
                    })
                }
                None => Arc::new(EndpointState::new(e, cfg, now)),
            })
            .collect();
        tracing::debug!(destination = %self.name, endpoints = self.endpoints.len(), "endpoints updated");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::AccrualConfig;
    use crate::discovery::Endpoint;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn balancer(ports: &[u16], config: BalanceConfig) -> (watch::Sender<Destination>, Balancer) {
        let eps = ports.iter().map(|p| Endpoint::plain(addr(*p))).collect();
        let (tx, rx) = watch::channel(Destination::known("svc", eps));
        (tx, Balancer::new(rx, config))
    }

    fn count(b: &Balancer, n: usize, port: u16) -> usize {
        (0..n)
            .filter(|_| b.pick().unwrap().addr().port() == port)
            .count()
    }

    #[test]
    fn lower_latency_and_lower_load_win() {
        let (_tx, b) = balancer(&[1, 2], BalanceConfig::default());
        // Make 2 slow: a sample far above the default.
        let mut p = b.pick_avoiding(&[addr(1)]).unwrap();
        p.start -= Duration::from_secs(1);
        p.success();
        assert_eq!(
            count(&b, 100, 1),
            100,
            "with two endpoints p2c always compares both"
        );
        // Enough load on 1 (30 ms x 41 > 1 s x 1) shifts picks to 2.
        let held: Vec<Pick> = (0..40)
            .map(|_| b.pick_avoiding(&[addr(2)]).unwrap())
            .collect();
        assert_eq!(b.snapshot()[0].in_flight, 40);
        assert_eq!(b.pick().unwrap().addr(), addr(2));
        drop(held);
        assert_eq!(b.snapshot()[0].in_flight, 0);
    }

    #[test]
    fn in_flight_load_spreads_equal_endpoints() {
        let (_tx, b) = balancer(&[1, 2, 3], BalanceConfig::default());
        let held: Vec<Pick> = (0..300).map(|_| b.pick().unwrap()).collect();
        for e in b.snapshot() {
            assert!((80..=120).contains(&e.in_flight), "{e:?}");
        }
        drop(held);
    }

    #[test]
    fn follows_destination_updates_and_keeps_stats() {
        let (tx, b) = balancer(&[1, 2], BalanceConfig::default());
        let held = b.pick_avoiding(&[addr(2)]).unwrap();
        tx.send_modify(|d| {
            d.endpoints.remove(1);
            d.endpoints.push(Endpoint::plain(addr(3)));
            d.endpoints[0].weight = 5;
            d.name = Some("renamed".into());
        });
        let snap = b.snapshot();
        assert_eq!(
            snap.iter().map(|e| e.addr.port()).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(
            (snap[0].weight, snap[0].in_flight),
            (5, 1),
            "stats kept across a weight change"
        );
        assert_eq!(&*b.name(), "renamed");
        drop(held);
        // Weight 0: no new traffic while another endpoint is usable.
        tx.send_modify(|d| d.endpoints[0].weight = 0);
        assert_eq!(count(&b, 50, 3), 50);
        tx.send_modify(|d| d.endpoints.clear());
        assert!(b.pick().is_none());
    }

    #[test]
    fn failing_endpoint_leaves_rotation_and_is_probed_back() {
        let cfg = BalanceConfig {
            accrual: AccrualConfig {
                threshold: 2,
                min_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
            },
            ..Default::default()
        };
        let (_tx, b) = balancer(&[1, 2], cfg);
        for _ in 0..2 {
            b.pick_avoiding(&[addr(2)]).unwrap().failure();
        }
        assert!(!b.snapshot()[0].health.is_alive());
        assert_eq!(count(&b, 50, 2), 50, "dead endpoint gets nothing");
        std::thread::sleep(Duration::from_millis(70));
        let probe = b.pick().unwrap();
        assert!(probe.is_probe() && probe.addr() == addr(1));
        assert_eq!(count(&b, 20, 2), 20, "one probe at a time");
        drop(probe);
        let probe = b.pick().unwrap();
        assert!(probe.is_probe(), "a cancelled probe is sent again");
        probe.success();
        assert!(b.snapshot()[0].health.is_alive());
    }

    #[test]
    fn all_dead_still_balances() {
        let cfg = BalanceConfig {
            accrual: AccrualConfig {
                threshold: 1,
                min_backoff: Duration::from_secs(60),
                max_backoff: Duration::from_secs(60),
            },
            ..Default::default()
        };
        let (_tx, b) = balancer(&[1, 2], cfg);
        b.pick_avoiding(&[addr(2)]).unwrap().failure();
        b.pick_avoiding(&[addr(1)]).unwrap().failure();
        assert!(b.snapshot().iter().all(|e| !e.health.is_alive()));
        assert!(b.pick().is_some());
    }
}
