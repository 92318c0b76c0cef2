//! [`Balancers`]: the proxy's one per-destination cache. Each entry owns
//! discovery's [`Watch`] on the destination and the destination's shared
//! [`Balancer`], so that latency and failure statistics are shared by every
//! connection of the proxy, and a destination's watch (for the controller,
//! its stream) lives exactly as long as the destination is cached.

use super::{BalanceConfig, Balancer};
use crate::discovery::{Discover, Resolution, Watch};
use crate::idle_map::IdleMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Default bound on cached destinations.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default time after which an unused destination is forgotten.
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

/// One cached destination.
struct Entry {
    watch: Box<dyn Watch>,
    /// Set while discovery resolves the destination to endpoints.
    balancer: Option<Balancer>,
    used: Instant,
}

impl Entry {
    fn in_use(&self) -> bool {
        self.balancer.as_ref().is_some_and(Balancer::in_use)
    }

    /// What discovery knows now, with the balancer that follows it (kept
    /// while discovery hands out the same watch channel).
    fn lookup(&mut self, config: &BalanceConfig) -> Lookup {
        let rx = match self.watch.resolution() {
            Resolution::Known(rx) => rx,
            Resolution::Unknown => {
                self.balancer = None;
                return Lookup::Unknown;
            }
            Resolution::Unanswered => {
                self.balancer = None;
                return Lookup::Unanswered;
            }
        };
        match &self.balancer {
            Some(b) if b.follows(&rx) => Lookup::Balanced(b.clone()),
            _ => {
                let b = Balancer::new(rx, config.clone());
                self.balancer = Some(b.clone());
                Lookup::Balanced(b)
            }
        }
    }
}

/// Follows original destinations through discovery and hands out the
/// destination's shared [`Balancer`].
pub struct Balancers {
    discover: Arc<dyn Discover>,
    config: BalanceConfig,
    capacity: usize,
    idle_timeout: Duration,
    cache: Mutex<IdleMap<Entry>>,
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

    /// At most `capacity` destinations are cached (fewer when discovery
    /// allows fewer watches, [`Discover::max_watches`]); a destination
    /// whose balancer nobody else holds (no connection, no request in
    /// flight) and not asked for during `idle_timeout` is forgotten (with
    /// its statistics and its watch); when full, such destinations go
    /// first, and when all are in use a new one is served uncached.
    pub fn with_limits(
        discover: Arc<dyn Discover>,
        config: BalanceConfig,
        capacity: usize,
        idle_timeout: Duration,
    ) -> Self {
        Balancers {
            capacity: capacity.min(discover.max_watches()).max(1),
            discover,
            config,
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
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.sweep(now, self.idle_timeout, |e| e.used, Entry::in_use);
        // A watch that stopped following its source is started again.
        let cached = cache
            .entries
            .get(&orig_dst)
            .is_some_and(|e| e.watch.is_live());
        if !cached {
            cache.entries.remove(&orig_dst);
            if cache.entries.len() >= self.capacity {
                cache.entries.retain(|_, e| e.in_use());
            }
            if cache.entries.len() >= self.capacity {
                // Full of destinations in use: served, not cached.
                return self.follow(orig_dst, now).lookup(&self.config);
            }
        }
        let entry = cache
            .entries
            .entry(orig_dst)
            .or_insert_with(|| self.follow(orig_dst, now));
        entry.used = now;
        let lookup = entry.lookup(&self.config);
        if entry.balancer.is_none() && !entry.watch.follows_unresolved() {
            cache.entries.remove(&orig_dst);
        }
        lookup
    }

    fn follow(&self, orig_dst: SocketAddr, now: Instant) -> Entry {
        Entry {
            watch: self.discover.watch(orig_dst),
            balancer: None,
            used: now,
        }
    }

    /// Per cached destination: its name, endpoints in rotation, and
    /// endpoints taken out by failure accrual.
    pub fn endpoint_counts(&self) -> Vec<(String, usize, usize)> {
        let balancers: Vec<Balancer> = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .entries
                .values()
                .filter_map(|e| e.balancer.clone())
                .collect()
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
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
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

    /// A discovery whose watches say what the test sets, and that counts
    /// the watches started and alive.
    #[derive(Default)]
    struct Fake {
        state: Arc<Mutex<FakeState>>,
    }

    #[derive(Default)]
    struct FakeState {
        known: std::collections::HashMap<SocketAddr, tokio::sync::watch::Sender<Destination>>,
        started: usize,
        live: bool,
    }

    struct FakeWatch {
        state: Arc<Mutex<FakeState>>,
        orig_dst: SocketAddr,
        follows_unresolved: bool,
    }

    impl Watch for FakeWatch {
        fn resolution(&self) -> Resolution {
            match self.state.lock().unwrap().known.get(&self.orig_dst) {
                Some(tx) => Resolution::Known(tx.subscribe()),
                None => Resolution::Unknown,
            }
        }
        fn is_live(&self) -> bool {
            self.state.lock().unwrap().live
        }
        fn follows_unresolved(&self) -> bool {
            self.follows_unresolved
        }
    }

    impl Discover for Fake {
        fn watch(&self, orig_dst: SocketAddr) -> Box<dyn Watch> {
            let mut s = self.state.lock().unwrap();
            s.started += 1;
            Box::new(FakeWatch {
                state: self.state.clone(),
                orig_dst,
                follows_unresolved: true,
            })
        }
        fn max_watches(&self) -> usize {
            2
        }
    }

    use crate::discovery::{Destination, Endpoint};

    #[test]
    fn the_cache_owns_one_watch_per_destination() {
        let fake = Arc::new(Fake::default());
        let a: SocketAddr = "1.1.1.1:80".parse().unwrap();
        let unknown: SocketAddr = "9.9.9.9:80".parse().unwrap();
        {
            let mut s = fake.state.lock().unwrap();
            s.live = true;
            let (tx, _) = tokio::sync::watch::channel(Destination::known(
                "a",
                vec![Endpoint::plain("127.0.0.1:1".parse().unwrap())],
            ));
            s.known.insert(a, tx);
        }
        // Capacity 100, but discovery allows two watches.
        let bs = Balancers::with_limits(
            fake.clone(),
            BalanceConfig::default(),
            100,
            DEFAULT_IDLE_TIMEOUT,
        );
        let started = || fake.state.lock().unwrap().started;
        let b1 = bs.get(a).unwrap();
        let b2 = bs.get(a).unwrap();
        assert!(b1.same_as(&b2));
        assert_eq!(started(), 1, "one watch for every lookup of a destination");
        // A destination discovery does not know stays followed when its
        // watch asks for it (the controller's answer may change).
        assert!(matches!(bs.lookup(unknown), Lookup::Unknown));
        assert!(matches!(bs.lookup(unknown), Lookup::Unknown));
        assert_eq!((started(), bs.len()), (2, 2));
        // Full (two watches): the unused unknown one goes for a new one.
        let c: SocketAddr = "3.3.3.3:80".parse().unwrap();
        assert!(matches!(bs.lookup(c), Lookup::Unknown));
        assert_eq!((started(), bs.len()), (3, 2));
        // A watch that stopped following its source is started again, with
        // a balancer of its own.
        fake.state.lock().unwrap().live = false;
        let b3 = bs.get(a).unwrap();
        assert_eq!((started(), bs.len()), (4, 2));
        assert!(!b3.same_as(&b1));
    }
}
