//! One shared state per watched target, so that work per change is done
//! once, not once per subscriber.
//!
//! A [`Fanout`] holds the latest view as an `Arc` with a version number, and
//! the updates that lead from the previous version to it. A stream that is
//! one version behind (the usual case) takes those shared updates; one that
//! fell further behind (a slow client) diffs its own last view against the
//! latest. Streams keep only an `Arc` of the last view they sent, so memory
//! per subscriber does not grow with the number of endpoints.

use super::diff::diff;
use crate::model::{DestinationView, DiscoveryBackend, Target};
use conduit_base::sync::Unpoisoned;
use conduit_controller_api::destination::v1 as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::watch;

pub struct Fanout {
    state: Mutex<State>,
}

struct State {
    /// The fanout's own receiver: `has_changed` says a newer view exists.
    views: watch::Receiver<DestinationView>,
    version: u64,
    view: Arc<DestinationView>,
    /// Updates from `version - 1` to `version`.
    step: Arc<[pb::Update]>,
    /// The complete state at `version`, built on first use.
    snapshot: Option<Arc<[pb::Update]>>,
}

/// The latest state, as a stream sees it.
pub struct Latest {
    pub version: u64,
    pub view: Arc<DestinationView>,
    /// Updates from `version - 1`.
    pub step: Arc<[pb::Update]>,
}

impl Fanout {
    fn new(mut views: watch::Receiver<DestinationView>) -> Fanout {
        let view = Arc::new(views.borrow_and_update().clone());
        Fanout {
            state: Mutex::new(State {
                views,
                version: 0,
                view,
                step: Arc::from([]),
                snapshot: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Brings the shared state up to the backend's latest view and returns it.
    pub fn latest(&self) -> Latest {
        let mut st = self.lock();
        if st.views.has_changed().unwrap_or(false) {
            let next = st.views.borrow_and_update().clone();
            if next != *st.view {
                let step: Arc<[pb::Update]> = diff(Some(&st.view), &next).into();
                st.view = Arc::new(next);
                st.version += 1;
                st.step = step;
                st.snapshot = None;
            }
        }
        Latest {
            version: st.version,
            view: st.view.clone(),
            step: st.step.clone(),
        }
    }

    /// The complete state at `version` (if still current), shared.
    pub fn snapshot(&self, version: u64) -> Option<Arc<[pb::Update]>> {
        let mut st = self.lock();
        if st.version != version {
            return None;
        }
        let view = st.view.clone();
        Some(
            st.snapshot
                .get_or_insert_with(|| diff(None, &view).into())
                .clone(),
        )
    }
}

/// Fanouts by target, kept while some stream uses them.
#[derive(Default)]
pub struct Fanouts {
    by_target: Mutex<HashMap<Target, Weak<Fanout>>>,
}

impl Fanouts {
    /// The shared fanout of `target`, and a receiver of the backend's watch
    /// for this stream's wake-ups.
    pub fn get(
        &self,
        backend: &dyn DiscoveryBackend,
        target: &Target,
    ) -> (Arc<Fanout>, watch::Receiver<DestinationView>) {
        let mut map = self.by_target.locked();
        let wake = backend.watch(target);
        if let Some(f) = map.get(target).and_then(Weak::upgrade) {
            return (f, wake);
        }
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let fanout = Arc::new(Fanout::new(wake.clone()));
        map.insert(target.clone(), Arc::downgrade(&fanout));
        (fanout, wake)
    }

    /// Targets with a live fanout.
    pub fn len(&self) -> usize {
        let map = self.by_target.locked();
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EndpointInfo;

    fn view(n: u8) -> DestinationView {
        DestinationView {
            exists: true,
            name: None,
            endpoints: (1..=n)
                .map(|i| EndpointInfo {
                    addr: format!("10.0.0.{i}:80").parse().unwrap(),
                    weight: 1,
                    identity: None,
                    meshed_inbound_port: None,
                    labels: Default::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn versions_advance_once_per_change_and_steps_are_shared() {
        let (tx, rx) = watch::channel(view(1));
        let f = Fanout::new(rx);
        let a = f.latest();
        assert_eq!(a.version, 0);
        tx.send(view(2)).unwrap();
        let b = f.latest();
        let c = f.latest();
        assert_eq!((b.version, c.version), (1, 1));
        assert!(Arc::ptr_eq(&b.step, &c.step), "one diff for all streams");
        assert!(Arc::ptr_eq(&b.view, &c.view));
        assert_eq!(b.step.len(), 1);
        // Same content again: no new version.
        tx.send(view(2)).unwrap();
        assert_eq!(f.latest().version, 1);
        let s1 = f.snapshot(1).unwrap();
        assert!(Arc::ptr_eq(&s1, &f.snapshot(1).unwrap()));
        assert!(f.snapshot(0).is_none());
    }
}
