//! A per-target registry of watch channels over a replaceable snapshot.
//!
//! Backends keep their current state as a snapshot `S` and a function
//! computing a target's view from it. Each watched target has one
//! `watch::Sender`: every subscriber of that target shares it, and a watch
//! channel holds only the latest value, so memory is one view per target
//! however many subscribe, and a slow subscriber only skips intermediate
//! views. Targets nobody watches any more are dropped on the next update.

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

    /// Runs `f` on the current snapshot.
    pub fn with_snapshot<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.lock().snapshot)
    }

    /// Number of targets currently tracked.
    pub fn targets(&self) -> usize {
        self.lock().senders.len()
    }
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
}
