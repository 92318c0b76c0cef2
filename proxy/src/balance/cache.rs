//! [`Balancers`]: one shared [`Balancer`] per destination, so that latency
//! and failure statistics are shared by every connection of the proxy.

use super::{BalanceConfig, Balancer};
use crate::discovery::{Discover, Resolution};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Default bound on cached balancers.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Resolves original destinations through discovery and hands out the
/// destination's shared [`Balancer`].
pub struct Balancers {
    discover: Arc<dyn Discover>,
    config: BalanceConfig,
    capacity: usize,
    cache: Mutex<HashMap<SocketAddr, Balancer>>,
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
        Self::with_capacity(discover, config, DEFAULT_CAPACITY)
    }

    /// At most `capacity` destinations are cached; when full, balancers
    /// that nobody else holds are forgotten first.
    pub fn with_capacity(
        discover: Arc<dyn Discover>,
        config: BalanceConfig,
        capacity: usize,
    ) -> Self {
        Balancers {
            discover,
            config,
            capacity: capacity.max(1),
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &BalanceConfig {
        &self.config
    }

    /// The balancer for an original destination, or `None` when discovery
    /// does not know it (forward the connection unchanged to `orig_dst`).
    pub fn get(&self, orig_dst: SocketAddr) -> Option<Balancer> {
        let resolution = self.discover.resolve(orig_dst);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let rx = match resolution {
            Resolution::Unknown => {
                cache.remove(&orig_dst);
                return None;
            }
            Resolution::Known(rx) => rx,
        };
        if let Some(b) = cache.get(&orig_dst)
            && b.follows(&rx)
        {
            return Some(b.clone());
        }
        let balancer = Balancer::new(rx, self.config.clone());
        if cache.len() >= self.capacity && !cache.contains_key(&orig_dst) {
            cache.retain(|_, b| b.in_use());
        }
        if cache.len() < self.capacity || cache.contains_key(&orig_dst) {
            cache.insert(orig_dst, balancer.clone());
        }
        Some(balancer)
    }

    /// Number of cached destinations.
    pub fn len(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::StaticDiscovery;

    #[test]
    fn shares_balancers_and_forgets_unknown() {
        let d = StaticDiscovery::new(
            vec![
                "a@1.1.1.1:80=127.0.0.1:1".parse().unwrap(),
                "b@2.2.2.2:80=127.0.0.1:2".parse().unwrap(),
            ],
            None,
        )
        .unwrap();
        let bs = Balancers::with_capacity(Arc::new(d), BalanceConfig::default(), 1);
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
}
