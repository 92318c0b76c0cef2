//! Waiting for conditions: poll with a timeout, never sleep a fixed time.
//!
//! [`wait_until`] blocks the thread (harness code, processes, the kernel);
//! [`wait_until_async`] is the same rule for async tests (it sleeps on the
//! tokio timer, so the runtime keeps serving the proxy or controller under
//! test). Both report the last state they saw when the time is up.

use anyhow::{Result, anyhow};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(20);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes every running and future wait fail at once (the demo's Ctrl-C).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// True once [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error that ends a wait at once instead of meaning "not yet" (for
/// example: the process we wait on has exited).
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// An error that stops [`wait_until`] at once.
pub fn fatal(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Fatal(msg.into()))
}

/// Calls `check` until it returns `Ok`, at most for `timeout`. An `Err` from
/// `check` means "not yet"; the last one is part of the timeout error, so a
/// failing test says what it saw, not only what it wanted.
pub fn wait_until<T>(what: &str, timeout: Duration, check: impl FnMut() -> Result<T>) -> Result<T> {
    poll(what, timeout, true, check)
}

/// Like [`wait_until`], but not cut short by [`interrupt`]: for clean-up,
/// which must finish after a Ctrl-C.
pub fn wait_cleanup<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<T>,
) -> Result<T> {
    poll(what, timeout, false, check)
}

fn poll<T>(
    what: &str,
    timeout: Duration,
    interruptible: bool,
    mut check: impl FnMut() -> Result<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        let last = match check() {
            Ok(v) => return Ok(v),
            Err(e) if e.downcast_ref::<Fatal>().is_some() => {
                return Err(e.context(format!("while waiting for {what}")));
            }
            Err(e) => e,
        };
        if interruptible && interrupted() {
            return Err(anyhow!("interrupted while waiting for {what}"));
        }
        if start.elapsed() >= timeout {
            return Err(last.context(format!(
                "timed out after {timeout:?} waiting for {what}; last state"
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] for async tests: awaits `check()` until it returns `Ok`,
/// at most for `timeout`, polling every [`POLL`] on the tokio timer. An `Err`
/// means "not yet" (a [`fatal`] one ends the wait at once); the last one is
/// part of the timeout error.
pub async fn wait_until_async<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(e) if e.downcast_ref::<Fatal>().is_some() => {
                return Err(e.context(format!("while waiting for {what}")));
            }
            Err(e) => e,
        };
        if interrupted() {
            return Err(anyhow!("interrupted while waiting for {what}"));
        }
        if start.elapsed() >= timeout {
            return Err(last.context(format!(
                "timed out after {timeout:?} waiting for {what}; last state"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_success() {
        let mut n = 0;
        let v = wait_until("three calls", Duration::from_secs(5), || {
            n += 1;
            if n == 3 {
                Ok(n)
            } else {
                Err(anyhow!("only {n}"))
            }
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn fatal_errors_end_the_wait_at_once() {
        let start = Instant::now();
        let e = wait_until::<()>("x", Duration::from_secs(30), || Err(fatal("gone"))).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(format!("{e:#}").contains("gone"));
    }

    #[test]
    fn timeout_reports_the_last_state() {
        let e = wait_until::<()>("never", Duration::from_millis(50), || {
            Err(anyhow!("still red"))
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("never") && msg.contains("still red"), "{msg}");
    }

    #[tokio::test]
    async fn async_waits_poll_until_success_and_report_the_last_state() {
        let mut n = 0;
        let v = wait_until_async("three calls", Duration::from_secs(5), || {
            n += 1;
            let now = n;
            async move {
                anyhow::ensure!(now == 3, "only {now}");
                Ok(now)
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
        let e = wait_until_async::<(), _, _>("never", Duration::from_millis(50), || async {
            Err(anyhow!("still red"))
        })
        .await
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("never") && msg.contains("still red"), "{msg}");
        let start = Instant::now();
        let e = wait_until_async::<(), _, _>("x", Duration::from_secs(30), || async {
            Err(fatal("gone"))
        })
        .await
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(format!("{e:#}").contains("gone"));
    }
}
