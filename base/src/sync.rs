//! The one mutex policy of conduit.
//!
//! * Locks are `std::sync::Mutex` / `RwLock` (no parking_lot), held for a
//!   few statements that do no I/O and never `.await` while locked; state
//!   shared across `.await` points uses `tokio::sync` instead.
//! * They are taken through [`Unpoisoned`] (`.locked()`, `.read_locked()`,
//!   `.write_locked()`), never with `.lock().unwrap()` or a hand-written
//!   `unwrap_or_else(|p| p.into_inner())`.
//! * Poisoning is ignored: a thread that panicked while holding a lock has
//!   already been reported (the panic message, and the task's `JoinError`);
//!   the critical sections are written to leave the data consistent at
//!   every point a panic could occur (no multi-step invariants half-done),
//!   so carrying on serves every later request, where propagating the
//!   poison would turn one bug into a process that fails every request.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Lock acquisition under the policy above.
pub trait Unpoisoned<T: ?Sized> {
    /// Takes the lock, ignoring poisoning.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Unpoisoned<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Read and write acquisition of an `RwLock` under the policy above.
pub trait UnpoisonedRw<T: ?Sized> {
    /// Shared access, ignoring poisoning.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// Exclusive access, ignoring poisoning.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> UnpoisonedRw<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn poison<L: Send + Sync + 'static>(lock: Arc<L>, hold: fn(&L)) {
        let l = lock.clone();
        let r = std::thread::spawn(move || {
            hold(&l);
        })
        .join();
        assert!(r.is_err(), "the holder panicked");
    }

    #[test]
    fn a_poisoned_mutex_still_locks_with_its_data() {
        let m = Arc::new(Mutex::new(1));
        poison(m.clone(), |m| {
            let mut g = m.lock().unwrap();
            *g = 2;
            panic!("holder fails");
        });
        assert!(m.is_poisoned());
        assert_eq!(*m.locked(), 2);
        *m.locked() = 3;
        assert_eq!(*m.locked(), 3);
    }

    #[test]
    fn a_poisoned_rwlock_still_reads_and_writes() {
        let l = Arc::new(RwLock::new(vec![1]));
        poison(l.clone(), |l| {
            let mut g = l.write().unwrap();
            g.push(2);
            panic!("holder fails");
        });
        assert!(l.is_poisoned());
        assert_eq!(*l.read_locked(), vec![1, 2]);
        l.write_locked().push(3);
        assert_eq!(l.read_locked().len(), 3);
    }
}
