//! Rapid reset (CVE-2023-44487) accounting of our own, per HTTP/2
//! connection, on top of h2's `max_pending_accept_reset_streams`.
//!
//! h2's limit counts only the reset streams *sitting in its accept queue at
//! one moment*: accepting a stream takes it off the count. When the proxy
//! accepts each stream before the client's RST_STREAM for it is read (a
//! fast proxy, a paced attacker, or just the way the reads fall), the limit
//! never trips, and hyper runs the proxy's service for every stream until
//! its first await, which starts the request upstream. Whether an attack is
//! cut off after 0 or after thousands of forwarded requests then depends on
//! timing. Here every stream the client cancels after it was accepted and
//! before its response head ("premature") is counted, and so is every stream
//! answered: the connection is closed once the premature resets pass
//! [`MAX_PREMATURE_RESETS`] and outnumber the answered streams, whatever the
//! machine's speed. Streams still running do not count either way, so a
//! burst of requests cancelled together is judged as soon as the resets
//! arrive.
//!
//! A count alone is not a bound on work: hyper takes streams (and the proxy
//! forwards them) while its connection task reads, and a stream the client
//! reset leaves h2's concurrency count before its task has ended. So a
//! stream is forwarded only holding one of the connection's
//! `max_running` slots ([`StreamGuard::admit`], which waits for one, as Go's
//! fix for this CVE does), and not at all once the connection went over the
//! limit. Requests forwarded on a connection are then at most its answered
//! requests + `max_running` + [`MAX_PREMATURE_RESETS`] + 1.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Streams a client may cancel before their response (within
/// [`PREMATURE_WINDOW`] of being accepted) on one connection while they
/// outnumber its answered streams; one more closes the connection.
pub const MAX_PREMATURE_RESETS: u64 = 100;

/// A stream cancelled later than this after it was accepted is an ordinary
/// cancellation (a watch or a long poll given up), not a premature reset.
pub const PREMATURE_WINDOW: Duration = Duration::from_secs(1);

/// Whether a connection with `answered` streams answered and `premature`
/// streams cancelled by its client before their response must be closed.
pub fn over_limit(answered: u64, premature: u64) -> bool {
    premature > MAX_PREMATURE_RESETS && premature > answered
}

/// The counts of one HTTP/2 connection.
#[derive(Debug)]
pub struct Resets {
    slots: Arc<Semaphore>,
    accepted: AtomicU64,
    answered: AtomicU64,
    premature: AtomicU64,
    tripped: AtomicBool,
    notify: Notify,
}

impl Resets {
    /// The counts of a new connection on which at most `max_running`
    /// requests may be forwarded and not yet answered at once.
    pub fn new(max_running: usize) -> Arc<Resets> {
        Arc::new(Resets {
            slots: Arc::new(Semaphore::new(max_running)),
            accepted: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            premature: AtomicU64::new(0),
            tripped: AtomicBool::new(false),
            notify: Notify::new(),
        })
    }

    /// Counts an accepted stream; its guard counts it as a premature reset
    /// if dropped before [`StreamGuard::answered`].
    pub fn accept(self: &Arc<Self>) -> StreamGuard {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        StreamGuard {
            resets: self.clone(),
            accepted: Instant::now(),
            answered: false,
            slot: None,
        }
    }

    /// Resolves once the connection went over the limit.
    pub async fn tripped(&self) {
        self.notify.notified().await
    }

    /// Streams accepted, answered and prematurely reset so far.
    pub fn counts(&self) -> Counts {
        Counts {
            accepted: self.accepted.load(Ordering::Relaxed),
            answered: self.answered.load(Ordering::Relaxed),
            premature: self.premature.load(Ordering::Relaxed),
        }
    }

    fn premature(&self) {
        let premature = self.premature.fetch_add(1, Ordering::Relaxed) + 1;
        let answered = self.answered.load(Ordering::Relaxed);
        if over_limit(answered, premature) && !self.tripped.swap(true, Ordering::Relaxed) {
            // A permit: the connection sees it even if not waiting yet.
            self.notify.notify_one();
        }
    }
}

/// What [`Resets::counts`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub accepted: u64,
    pub answered: u64,
    pub premature: u64,
}

/// One accepted stream, until its response head is ready.
#[derive(Debug)]
pub struct StreamGuard {
    resets: Arc<Resets>,
    accepted: Instant,
    answered: bool,
    slot: Option<OwnedSemaphorePermit>,
}

impl StreamGuard {
    /// Waits for a slot to forward the stream's request in, and answers
    /// whether it may be forwarded: not once the connection went over the
    /// limit (it is being closed).
    pub async fn admit(&mut self) -> bool {
        let slot = self.resets.slots.clone().acquire_owned().await;
        self.slot = slot.ok();
        !self.resets.tripped.load(Ordering::Relaxed)
    }

    /// The service produced the response head: a later reset is not
    /// premature.
    pub fn answered(mut self) {
        self.answered = true;
        self.resets.answered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.answered && self.accepted.elapsed() < PREMATURE_WINDOW {
            self.resets.premature();
        }
    }
}

/// Returns `Pending` once, having woken its task: hyper checks a stream
/// for the client's RST_STREAM each time the stream's service returns
/// `Pending`, so a stream reset in the frames hyper has read is dropped
/// here, before anything goes upstream. Not `tokio::task::yield_now`: that
/// defers the wake-up until the runtime next polls its I/O driver, so every
/// HTTP/2 request waited for a driver poll (a system call) as well; woken
/// at once, the task goes to the back of the run queue. The mesh's HTTP/2
/// maximum rate was higher in all 7 interleaved runs (docs/benchmarks.md).
pub async fn pending_once() {
    let mut polled = false;
    std::future::poll_fn(|cx| {
        if polled {
            return std::task::Poll::Ready(());
        }
        polled = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pending_once_is_pending_exactly_once_and_wakes_itself() {
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let waker = std::task::Waker::from(Arc::new(Count(woken.clone())));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut f = std::pin::pin!(pending_once());
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(woken.load(Ordering::SeqCst), 1, "woke itself");
        assert!(f.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn over_limit_needs_the_count_and_more_resets_than_answers() {
        let m = MAX_PREMATURE_RESETS;
        for (answered, premature, close) in [
            (0, 0, false),
            (0, m, false),
            (0, m + 1, true),
            (m + 1, m + 1, false),
            (m, m + 1, true),
            (1_000_000, 999_999, false),
            (1_000_000, 1_000_001, true),
            (u64::MAX, u64::MAX, false),
        ] {
            assert_eq!(
                over_limit(answered, premature),
                close,
                "{answered} {premature}"
            );
        }
    }

    #[tokio::test]
    async fn trips_once_after_the_limit_of_dropped_unanswered_streams() {
        let r = Resets::new(1000);
        for _ in 0..10 {
            r.accept().answered();
        }
        // Running streams count neither way.
        let running: Vec<_> = (0..500).map(|_| r.accept()).collect();
        for _ in 0..=MAX_PREMATURE_RESETS {
            drop(r.accept());
        }
        let c = r.counts();
        assert_eq!((c.answered, c.premature), (10, MAX_PREMATURE_RESETS + 1));
        assert_eq!(c.accepted, 10 + 500 + MAX_PREMATURE_RESETS + 1);
        tokio::time::timeout(Duration::from_secs(1), r.tripped())
            .await
            .expect("tripped");
        drop(running);
    }

    #[tokio::test]
    async fn a_client_answered_more_often_than_it_cancels_never_trips() {
        let r = Resets::new(1000);
        for _ in 0..10 * MAX_PREMATURE_RESETS {
            r.accept().answered();
            drop(r.accept());
        }
        assert_eq!(r.counts().premature, 10 * MAX_PREMATURE_RESETS);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), r.tripped())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn admit_waits_for_a_slot_and_refuses_once_tripped() {
        let r = Resets::new(2);
        let (mut a, mut b, mut c) = (r.accept(), r.accept(), r.accept());
        assert!(a.admit().await && b.admit().await);
        let third = tokio::time::timeout(Duration::from_millis(50), c.admit()).await;
        assert!(third.is_err(), "a third request ran beside two");
        a.answered();
        assert!(c.admit().await, "a slot was freed by an answer");
        drop(b);
        for _ in 0..=MAX_PREMATURE_RESETS {
            drop(r.accept());
        }
        let mut d = r.accept();
        assert!(!d.admit().await, "forwarded after the limit");
    }

    #[tokio::test]
    async fn a_stream_cancelled_after_the_window_is_not_premature() {
        tokio::time::pause();
        let r = Resets::new(1000);
        let g = r.accept();
        tokio::time::advance(PREMATURE_WINDOW).await;
        drop(g);
        assert_eq!(r.counts().premature, 0);
    }
}
