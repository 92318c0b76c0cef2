//! Peak-EWMA latency estimate (as in Finagle and Linkerd): a new sample
//! above the estimate replaces it at once (the peak), a lower one is mixed
//! in with a weight that grows with the time since the last sample, and an
//! estimate that is not refreshed decays towards zero when read, so an
//! endpoint that was slow once is tried again after a while.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct PeakEwma {
    estimate_ns: f64,
    updated: Instant,
    decay_ns: f64,
}

impl PeakEwma {
    pub(crate) fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        PeakEwma {
            estimate_ns: nanos(initial),
            updated: now,
            decay_ns: nanos(decay).max(1.0),
        }
    }

    /// Records one latency sample taken at `now`.
    pub(crate) fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = nanos(rtt);
        if rtt > self.estimate_ns {
            self.estimate_ns = rtt;
        } else {
            let w = self.weight(now);
            self.estimate_ns = self.estimate_ns * w + rtt * (1.0 - w);
        }
        self.updated = self.updated.max(now);
    }

    /// The estimate as of `now`, decayed towards zero since the last sample.
    pub(crate) fn estimate_ns(&self, now: Instant) -> f64 {
        self.estimate_ns * self.weight(now)
    }

    /// Weight of the old estimate after the time since the last update.
    fn weight(&self, now: Instant) -> f64 {
        let elapsed = nanos(now.saturating_duration_since(self.updated));
        (-elapsed / self.decay_ns).exp()
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn peak_is_taken_at_once_and_lower_samples_mix_in_by_time() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(MS, Duration::from_secs(10), t0);
        e.observe(100 * MS, t0);
        assert_eq!(e.estimate_ns(t0), 100e6);
        // A fast sample right after the peak barely moves it.
        e.observe(MS, t0 + MS);
        assert!(e.estimate_ns(t0 + MS) > 99e6);
        // A fast sample 10 s later (one decay constant) has weight 1 - 1/e.
        let t1 = t0 + Duration::from_secs(10);
        e.observe(MS, t1);
        let got = e.estimate_ns(t1);
        assert!(
            (got - (100e6 / std::f64::consts::E + 1e6 * (1.0 - 1.0 / std::f64::consts::E))).abs()
                < 1e5,
            "{got}"
        );
    }

    #[test]
    fn idle_estimate_decays_towards_zero() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(MS, Duration::from_secs(1), t0);
        e.observe(50 * MS, t0);
        assert!(e.estimate_ns(t0 + Duration::from_secs(5)) < 50e6 * 0.01);
        // Reading does not change the stored estimate.
        assert_eq!(e.estimate_ns(t0), 50e6);
    }
}
