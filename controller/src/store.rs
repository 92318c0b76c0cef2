//! A per-target registry of watch channels over a replaceable snapshot.
//!
//! Backends keep their current state as a snapshot `S` and a function
//! computing a target's view from it. Each watched target has one
//! `watch::Sender`: every subscriber of that target shares it, and a watch
//! channel holds only the latest value, so memory is one view per target
//! however many subscribe, and a slow subscriber only skips intermediate
//! views. Targets nobody watches any more are dropped on the next update.
//!
//! Two ways to change the state: [`ViewStore::replace`] swaps the whole
//! snapshot and recomputes every watched target's view;
//! [`ViewStore::update`] changes the snapshot in place and recomputes only
//! the targets the change touched (a hash lookup per watched target decides;
//! no other view is computed), so a change costs what it touches.

use crate::model::{DestinationView, Target};
use conduit_base::sync::Unpoisoned;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// Computes the view of a target from a snapshot.
pub type ViewFn<S> = fn(&S, &Target) -> DestinationView;

pub struct ViewStore<S> {
    inner: Mutex<Inner<S>>,
    view: ViewFn<S>,
}

struct Inner<S> {
    snapshot: S,
    senders: HashMap<Target, watch::Sender<DestinationView>>,
    inserts_since_gc: usize,
}

impl<S> ViewStore<S> {
    pub fn new(snapshot: S, view: ViewFn<S>) -> Self {
        ViewStore {
            inner: Mutex::new(Inner {
                snapshot,
                senders: HashMap::new(),
                inserts_since_gc: 0,
            }),
            view,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<S>> {
        self.inner.locked()
    }

    /// Subscribes to `target`, computing its view on first use.
    pub fn watch(&self, target: &Target) -> watch::Receiver<DestinationView> {
        let mut inner = self.lock();
        if let Some(tx) = inner.senders.get(target) {
            return tx.subscribe();
        }
        inner.inserts_since_gc += 1;
        if inner.inserts_since_gc >= 1024 {
            inner.inserts_since_gc = 0;
            inner.senders.retain(|_, tx| tx.receiver_count() > 0);
        }
        let view = (self.view)(&inner.snapshot, target);
        let (tx, rx) = watch::channel(view);
        inner.senders.insert(target.clone(), tx);
        rx
    }

    /// Replaces the snapshot and notifies the targets whose view changed.
    /// Returns how many targets changed.
    pub fn replace(&self, snapshot: S) -> usize {
        let mut inner = self.lock();
        inner.snapshot = snapshot;
        inner.senders.retain(|_, tx| tx.receiver_count() > 0);
        inner.inserts_since_gc = 0;
        let Inner {
            snapshot, senders, ..
        } = &mut *inner;
        let mut changed = 0;
        for (target, tx) in senders.iter() {
            let view = (self.view)(snapshot, target);
            tx.send_if_modified(|current| {
                if *current == view {
                    false
                } else {
                    *current = view;
                    changed += 1;
                    true
                }
            });
        }
        changed
    }

    /// Changes the snapshot in place with `change`, then recomputes (and
    /// notifies, when different) only the watched targets for which
    /// `affects(snapshot, &what_changed, target)` holds.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut S) -> T,
        affects: impl Fn(&S, &T, &Target) -> bool,
    ) -> Updated {
        let mut inner = self.lock();
        let touched = change(&mut inner.snapshot);
        inner.senders.retain(|_, tx| tx.receiver_count() > 0);
        inner.inserts_since_gc = 0;
        let Inner {
            snapshot, senders, ..
        } = &mut *inner;
        let mut out = Updated::default();
        for (target, tx) in senders.iter() {
            if !affects(snapshot, &touched, target) {
                continue;
            }
            out.recomputed += 1;
            let view = (self.view)(snapshot, target);
            tx.send_if_modified(|current| {
                if *current == view {
                    false
                } else {
                    *current = view;
                    out.changed += 1;
                    true
                }
            });
        }
        out
    }

    /// Runs `f` on the current snapshot.
    pub fn with_snapshot<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.lock().snapshot)
    }

    /// Number of targets currently tracked.
    pub fn targets(&self) -> usize {
        self.lock().senders.len()
    }
}

/// What [`ViewStore::update`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Updated {
    /// Watched targets whose view was computed again.
    pub recomputed: usize,
    /// Of those, targets whose view changed (their watchers were notified).
    pub changed: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: &u32, _t: &Target) -> DestinationView {
        DestinationView {
            exists: *n > 0,
            ..Default::default()
        }
    }

    #[test]
    fn shares_one_channel_per_target_and_drops_unwatched() {
        let store = ViewStore::new(0u32, view);
        let t = Target::Addr("10.0.0.1:80".parse().unwrap());
        let mut a = store.watch(&t);
        let b = store.watch(&t);
        assert_eq!(store.targets(), 1);
        assert!(!a.borrow().exists);
        assert_eq!(store.replace(1), 1);
        assert!(a.has_changed().unwrap());
        assert!(a.borrow_and_update().exists);
        assert_eq!(store.replace(2), 0, "same view: no notification");
        assert!(!a.has_changed().unwrap());
        drop((a, b));
        store.replace(3);
        assert_eq!(store.targets(), 0);
    }

    #[test]
    fn update_recomputes_only_the_targets_it_touches() {
        let store = ViewStore::new(0u32, view);
        let a = Target::Addr("10.0.0.1:80".parse().unwrap());
        let b = Target::Addr("10.0.0.2:80".parse().unwrap());
        let (mut ra, mut rb) = (store.watch(&a), store.watch(&b));
        let only_a = |_: &u32, touched: &Target, t: &Target| t == touched;
        let u = store.update(
            |n| {
                *n = 1;
                a.clone()
            },
            only_a,
        );
        assert_eq!(
            u,
            Updated {
                recomputed: 1,
                changed: 1
            }
        );
        assert!(ra.has_changed().unwrap() && ra.borrow_and_update().exists);
        assert!(
            !rb.has_changed().unwrap(),
            "b was not touched: not notified"
        );
        assert!(!rb.borrow_and_update().exists, "b still shows the old view");
        let u = store.update(
            |n| {
                *n = 2;
                a.clone()
            },
            only_a,
        );
        assert_eq!(
            u,
            Updated {
                recomputed: 1,
                changed: 0
            },
            "same view: no notification"
        );
        drop(rb);
        let u = store.update(|_| b.clone(), only_a);
        assert_eq!(u, Updated::default());
        assert_eq!(store.targets(), 1, "b's watcher left: dropped");
    }
}
