//! A flag a request's body raises for its handler: the body is handed to
//! the upstream side, so the handler learns what happened to it (it stalled,
//! it failed) only through a flag they share. A body already at its end
//! cannot raise one, so its flag is unwatched and allocates nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Raised once by a body; read by the request's handler.
#[derive(Debug, Clone)]
pub struct Flag(Option<Arc<AtomicBool>>);

impl Default for Flag {
    /// A flag that can be raised.
    fn default() -> Self {
        Self(Some(Arc::default()))
    }
}

impl Flag {
    /// For a request whose body is already at its end (most requests):
    /// never raised, and nothing is allocated.
    pub fn unwatched() -> Self {
        Self(None)
    }

    pub fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }

    pub fn raise(&self) {
        if let Some(f) = &self.0 {
            f.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_a_watched_flag_and_an_unwatched_one_stays_down() {
        let f = Flag::default();
        let seen = f.clone();
        assert!(!seen.is_set());
        f.raise();
        assert!(seen.is_set());
        let u = Flag::unwatched();
        u.clone().raise();
        assert!(!u.is_set());
    }
}
