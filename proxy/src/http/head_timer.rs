//! The HTTP/1 server's clock for request heads (`--header-read-timeout`,
//! `--http-idle-timeout`). hyper starts its header-read timer whenever a
//! connection waits for a request head, an idle keep-alive connection
//! included, so on its own it closes every keep-alive connection idle for
//! the header timeout (10 s): the client's pool then reconnects, and a
//! request it sends as the proxy closes fails. This timer, given to
//! hyper's HTTP/1 server per connection, tells the two waits apart from the
//! bytes the connection has read ([`Activity`]): a head under way gets the
//! header timeout from its first byte; a connection with nothing sent
//! since its last request is idle and gets the idle timeout.

use crate::io::Activity;
use hyper::rt::{Sleep, Timer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What a connection waiting for a request head is waiting through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A request head is under way (since the given time): the header
    /// timeout runs from then.
    Head(Instant),
    /// Nothing sent since the last request (waiting since the given time):
    /// an idle keep-alive connection.
    Idle(Instant),
}

/// When the wait ends the connection, if ever: the header timeout after a
/// head started, the idle timeout (`None`: none) after an idle wait began.
pub fn wait_ends(wait: Wait, header: Duration, idle: Option<Duration>) -> Option<Instant> {
    match wait {
        Wait::Head(since) => Some(since + header),
        Wait::Idle(since) => idle.map(|d| since + d),
    }
}

/// hyper's [`Timer`] for one HTTP/1 server connection.
pub struct HeadTimer {
    activity: Arc<Activity>,
    header: Duration,
    idle: Option<Duration>,
    /// Set once the first wait began: the first head's bytes were already
    /// read by protocol detection, so that wait is a head under way.
    started: AtomicBool,
    idle_closed: Arc<AtomicBool>,
}

impl HeadTimer {
    /// `idle` of zero keeps idle connections open (no idle timeout).
    pub fn new(activity: Arc<Activity>, header: Duration, idle: Duration) -> Self {
        Self {
            activity,
            header,
            idle: (!idle.is_zero()).then_some(idle),
            started: AtomicBool::new(false),
            idle_closed: Arc::default(),
        }
    }

    /// Set when the connection ended because it was idle for the idle
    /// timeout (hyper reports it as a header timeout).
    pub fn idle_closed(&self) -> Arc<AtomicBool> {
        self.idle_closed.clone()
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    /// hyper asks for `now + header timeout` each time it starts waiting
    /// for a head. Nothing is registered with tokio's timer until the wait
    /// is polled: a head that arrives in one read (nearly all) costs none.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let first = !self.started.swap(true, Ordering::Relaxed);
        let since = deadline.checked_sub(self.header).unwrap_or(deadline);
        Box::pin(HeadSleep {
            activity: self.activity.clone(),
            read_at_start: self.activity.read.load(Ordering::Relaxed),
            wait: if first {
                Wait::Head(since)
            } else {
                Wait::Idle(since)
            },
            header: self.header,
            idle: self.idle,
            idle_closed: self.idle_closed.clone(),
            sleep: None,
        })
    }

    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One wait for a request head.
struct HeadSleep {
    activity: Arc<Activity>,
    read_at_start: u64,
    wait: Wait,
    header: Duration,
    idle: Option<Duration>,
    idle_closed: Arc<AtomicBool>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Sleep for HeadSleep {}

impl Future for HeadSleep {
    type Output = ();

    /// hyper polls this each time its read of a head stops short (after
    /// every read that brought bytes), so bytes arriving during an idle
    /// wait are seen at once: the head's time starts then.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Wait::Idle(_) = this.wait
            && this.activity.read.load(Ordering::Relaxed) != this.read_at_start
        {
            this.wait = Wait::Head(tokio::time::Instant::now().into_std());
        }
        let Some(ends) = wait_ends(this.wait, this.header, this.idle) else {
            // No idle timeout: only bytes end this wait, and hyper polls
            // again when they come.
            return Poll::Pending;
        };
        let ends = tokio::time::Instant::from_std(ends);
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(ends)));
        if sleep.deadline() != ends {
            sleep.as_mut().reset(ends);
        }
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if let Wait::Idle(_) = this.wait {
            this.idle_closed.store(true, Ordering::Relaxed);
        }
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_a_wait_for_a_head_ends() {
        let t = Instant::now();
        let s = Duration::from_secs;
        // (wait, idle timeout, ends after t by)
        let cases = [
            (Wait::Head(t), Some(s(3600)), Some(s(10))),
            (Wait::Head(t + s(5)), Some(s(3600)), Some(s(15))),
            (Wait::Head(t), None, Some(s(10))),
            (Wait::Idle(t), Some(s(3600)), Some(s(3600))),
            (Wait::Idle(t + s(1)), Some(s(60)), Some(s(61))),
            (Wait::Idle(t), None, None),
        ];
        for (wait, idle, want) in cases {
            assert_eq!(
                wait_ends(wait, s(10), idle),
                want.map(|d| t + d),
                "{wait:?} idle {idle:?}"
            );
        }
    }

    /// The first wait of a connection is a head under way (detection read
    /// its first bytes); later ones are idle until bytes come, and then
    /// the header timeout runs from those bytes.
    #[tokio::test(start_paused = true)]
    async fn idle_waits_become_heads_when_bytes_come() {
        let activity = Activity::new();
        let timer = HeadTimer::new(
            activity.clone(),
            Duration::from_secs(10),
            Duration::from_secs(60),
        );
        let idle_closed = timer.idle_closed();
        let now = || timer.now();

        let first = timer.sleep_until(now() + Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        first.await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert!(!idle_closed.load(Ordering::Relaxed));

        // Idle: ends after the idle timeout, and says so.
        let start = tokio::time::Instant::now();
        timer.sleep_until(now() + Duration::from_secs(10)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));
        assert!(idle_closed.load(Ordering::Relaxed));
        idle_closed.store(false, Ordering::Relaxed);

        // Idle for 30 s, then a byte: the header timeout from the byte.
        let mut wait = timer.sleep_until(now() + Duration::from_secs(10));
        let start = tokio::time::Instant::now();
        assert!(futures::poll!(wait.as_mut()).is_pending());
        tokio::time::sleep(Duration::from_secs(30)).await;
        activity.add_read(1);
        assert!(futures::poll!(wait.as_mut()).is_pending());
        wait.await;
        assert_eq!(start.elapsed(), Duration::from_secs(40));
        assert!(!idle_closed.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_only_bytes_end_an_idle_wait() {
        let activity = Activity::new();
        let timer = HeadTimer::new(activity.clone(), Duration::from_secs(10), Duration::ZERO);
        timer.sleep_until(timer.now()).await; // the first head
        let mut wait = timer.sleep_until(timer.now() + Duration::from_secs(10));
        assert!(futures::poll!(wait.as_mut()).is_pending());
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        assert!(futures::poll!(wait.as_mut()).is_pending());
        activity.add_read(3);
        let start = tokio::time::Instant::now();
        wait.await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
