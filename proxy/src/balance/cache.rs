//! [`Balancers`]: one shared [`Balancer`] per destination, so that latency
//! and failure statistics are shared by every connection of the proxy.

use super::{BalanceConfig, Balancer};
use crate::discovery::{Discover, Resolution};
use crate::idle_map::IdleMap;
use conduit_base::sync::Unpoisoned;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default bound on cached balancers.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default time after which an unused balancer is forgotten.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What [`Balancers::lookup`] found for an original destination.
#[derive(Clone)]
pub enum Lookup {
    /// A discovered destination: its shared balancer.
    Balanced(Balancer),
    /// Discovery answered: not a mesh destination.
    Unknown,
    /// Discovery could not answer (see [`Resolution::Unanswered`]).
    Unanswered,
}

impl Lookup {
    pub fn balancer(self) -> Option<Balancer> {
        match self {
            Lookup::Balanced(b) => Some(b),
            Lookup::Unknown | Lookup::Unanswered => None,
        }
    }
}

/// Resolves original destinations through discovery and hands out the
/// destination's shared [`Balancer`].
pub struct Balancers {
    discover: Arc<dyn Discover>,
    config: BalanceConfig,
    capacity: usize,
    idle_timeout: Duration,
    cache: Mutex<IdleMap<(Balancer, Instant)>>,
}

impl std::fmt::Debug for Balancers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancers")
            .field("config", &self.config)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Balancers {
    pub fn new(discover: Arc<dyn Discover>, config: BalanceConfig) -> Self {
        Self::with_limits(discover, config, DEFAULT_CAPACITY, DEFAULT_IDLE_TIMEOUT)
    }

    /// At most `capacity` destinations are cached; a balancer nobody else
    /// holds (no connection, no request in flight) and not asked for during
    /// `idle_timeout` is forgotten (with its statistics, and its hold on the
    /// discovery watch); when full, such balancers go first.
    pub fn with_limits(
        discover: Arc<dyn Discover>,
        config: BalanceConfig,
        capacity: usize,
        idle_timeout: Duration,
    ) -> Self {
        Balancers {
            discover,
            config,
            capacity: capacity.max(1),
            idle_timeout,
            cache: Mutex::new(IdleMap::new()),
        }
    }

    pub fn config(&self) -> &BalanceConfig {
        &self.config
    }

    /// The balancer for an original destination, or `None` when discovery
    /// did not resolve it (see [`lookup`](Self::lookup) for why).
    pub fn get(&self, orig_dst: SocketAddr) -> Option<Balancer> {
        self.lookup(orig_dst).balancer()
    }

    /// The balancer for an original destination, or why there is none.
    pub fn lookup(&self, orig_dst: SocketAddr) -> Lookup {
        let resolution = self.discover.resolve(orig_dst);
        let now = Instant::now();
        let mut cache = self.cache.locked();
        cache.sweep(
            now,
            self.idle_timeout,
            |(_, used)| *used,
            |(b, _)| b.in_use(),
        );
        let rx = match resolution {
            Resolution::Unknown => {
                cache.entries.remove(&orig_dst);
                return Lookup::Unknown;
            }
            Resolution::Unanswered => {
                cache.entries.remove(&orig_dst);
                return Lookup::Unanswered;
            }
            Resolution::Known(rx) => rx,
        };
        if let Some((b, used)) = cache.entries.get_mut(&orig_dst)
            && b.follows(&rx)
        {
            *used = now;
            return Lookup::Balanced(b.clone());
        }
        let balancer = Balancer::new(rx, self.config.clone());
        if cache.entries.len() >= self.capacity && !cache.entries.contains_key(&orig_dst) {
            cache.entries.retain(|_, (b, _)| b.in_use());
        }
        if cache.entries.len() < self.capacity || cache.entries.contains_key(&orig_dst) {
            cache.entries.insert(orig_dst, (balancer.clone(), now));
        }
        Lookup::Balanced(balancer)
    }

    /// Per cached destination: its name, endpoints in rotation, and
    /// endpoints taken out by failure accrual.
    pub fn endpoint_counts(&self) -> Vec<(String, usize, usize)> {
        let balancers: Vec<Balancer> = {
            let cache = self.cache.locked();
            cache.entries.values().map(|(b, _)| b.clone()).collect()
        };
        balancers
            .iter()
            .map(|b| {
                let endpoints = b.snapshot();
                let available = endpoints.iter().filter(|e| e.health.is_alive()).count();
                (b.name().to_string(), available, endpoints.len() - available)
            })
            .collect()
    }

    /// Number of cached destinations.
    pub fn len(&self) -> usize {
        self.cache.locked().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::StaticDiscovery;

    fn discovery() -> Arc<StaticDiscovery> {
        Arc::new(
            StaticDiscovery::new(
                vec![
                    "a@1.1.1.1:80=127.0.0.1:1".parse().unwrap(),
                    "b@2.2.2.2:80=127.0.0.1:2".parse().unwrap(),
                ],
                None,
            )
            .unwrap(),
        )
    }

    #[test]
    fn shares_balancers_and_forgets_unknown() {
        let bs = Balancers::with_limits(
            discovery(),
            BalanceConfig::default(),
            1,
            DEFAULT_IDLE_TIMEOUT,
        );
        assert!(bs.get("9.9.9.9:80".parse().unwrap()).is_none());
        let a1 = bs.get("1.1.1.1:80".parse().unwrap()).unwrap();
        let _p = a1.pick().unwrap();
        let a2 = bs.get("1.1.1.1:80".parse().unwrap()).unwrap();
        assert_eq!(a2.snapshot()[0].in_flight, 1, "same statistics");
        // Full, and `a` is in use: `b` is handed out but not cached.
        let _b = bs.get("2.2.2.2:80".parse().unwrap()).unwrap();
        assert_eq!(bs.len(), 1);
        assert_eq!(&*bs.get("1.1.1.1:80".parse().unwrap()).unwrap().name(), "a");
    }

    #[test]
    fn idle_balancers_are_forgotten_unless_in_use() {
        let idle = Duration::from_millis(40);
        let bs = Balancers::with_limits(discovery(), BalanceConfig::default(), 100, idle);
        let held = bs.get("1.1.1.1:80".parse().unwrap()).unwrap();
        drop(bs.get("2.2.2.2:80".parse().unwrap()).unwrap());
        assert_eq!(bs.len(), 2);
        std::thread::sleep(idle * 2);
        // Any call sweeps: `b` is gone, `a` (held by a connection) stays.
        assert!(bs.get("9.9.9.9:80".parse().unwrap()).is_none());
        assert_eq!(bs.len(), 1);
        assert!(
            bs.get("1.1.1.1:80".parse().unwrap())
                .unwrap()
                .same_as(&held)
        );
    }
}
