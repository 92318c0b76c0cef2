//! Wall-clock time, injectable so that certificate validity, refresh
//! schedules and TLS verification can be tested without waiting.

use rustls::pki_types::UnixTime;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
pub trait Clock: fmt::Debug + Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The system's real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that follows tokio's clock: `start` plus the time tokio says
/// has passed since it was made. Under `tokio::time::pause()` it advances
/// only when tokio's (virtual) time does, so a day of certificate refreshes
/// runs in milliseconds.
#[derive(Debug, Clone)]
pub struct TokioClock {
    start: SystemTime,
    base: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(start: SystemTime) -> Self {
        TokioClock {
            start,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        self.start + self.base.elapsed()
    }
}

/// Lets rustls check certificate validity against a [`Clock`].
#[derive(Debug)]
pub(crate) struct RustlsTime(pub(crate) Arc<dyn Clock>);

impl rustls::time_provider::TimeProvider for RustlsTime {
    fn current_time(&self) -> Option<UnixTime> {
        let since = self
            .0
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Some(UnixTime::since_unix_epoch(since))
    }
}
