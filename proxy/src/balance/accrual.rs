//! Failure accrual: an endpoint that fails `threshold` times in a row is
//! taken out of rotation for a backoff; when the backoff ends one request
//! (the probe) is let through: success brings the endpoint back, failure
//! takes it out again for a longer (doubled, jittered, capped) backoff.

use std::time::{Duration, Instant};

/// Failure accrual settings.
#[derive(Debug, Clone, Copy)]
pub struct AccrualConfig {
    /// Consecutive failures that take an endpoint out of rotation; 0 turns
    /// failure accrual off.
    pub threshold: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for AccrualConfig {
    fn default() -> Self {
        AccrualConfig {
            threshold: 5,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Health of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// In rotation.
    Alive { consecutive_failures: u32 },
    /// Out of rotation until `until`; then one probe goes through.
    Dead { until: Instant, backoff: Duration },
    /// The probe is in flight; no other request goes here.
    Probing { backoff: Duration },
}

impl Health {
    pub(crate) const ALIVE: Health = Health::Alive {
        consecutive_failures: 0,
    };

    pub fn is_alive(&self) -> bool {
        matches!(self, Health::Alive { .. })
    }

    /// Whether the backoff has ended and a probe may be sent.
    pub(crate) fn probe_due(&self, now: Instant) -> bool {
        matches!(self, Health::Dead { until, .. } if now >= *until)
    }

    /// The probe was sent.
    pub(crate) fn start_probe(&mut self) {
        if let Health::Dead { backoff, .. } = *self {
            *self = Health::Probing { backoff };
        }
    }

    /// Outcome of a request picked while alive (`probe == false`) or of the
    /// probe. Requests sent before the endpoint died do not change it.
    pub(crate) fn record(&mut self, success: bool, probe: bool, cfg: &AccrualConfig, now: Instant) {
        match *self {
            Health::Alive {
                consecutive_failures,
            } if !probe => {
                if success || cfg.threshold == 0 {
                    *self = Health::ALIVE;
                } else if consecutive_failures + 1 >= cfg.threshold {
                    let backoff = jitter(cfg.min_backoff);
                    *self = Health::Dead {
                        until: now + backoff,
                        backoff,
                    };
                } else {
                    *self = Health::Alive {
                        consecutive_failures: consecutive_failures + 1,
                    };
                }
            }
            Health::Probing { backoff } if probe => {
                if success {
                    *self = Health::ALIVE;
                } else {
                    let next = jitter((backoff * 2).min(cfg.max_backoff).max(cfg.min_backoff));
                    *self = Health::Dead {
                        until: now + next,
                        backoff: next,
                    };
                }
            }
            _ => {}
        }
    }

    /// The probe ended without an outcome (cancelled): probe again now.
    pub(crate) fn probe_cancelled(&mut self, now: Instant) {
        if let Health::Probing { backoff } = *self {
            *self = Health::Dead {
                until: now,
                backoff,
            };
        }
    }
}

/// +-20 % so that proxies that saw the same outage do not probe in step.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..1.2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AccrualConfig {
        AccrualConfig {
            threshold: 3,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
        }
    }

    #[test]
    fn consecutive_failures_kill_and_success_resets() {
        let now = Instant::now();
        let mut h = Health::ALIVE;
        h.record(false, false, &cfg(), now);
        h.record(false, false, &cfg(), now);
        h.record(true, false, &cfg(), now);
        assert_eq!(h, Health::ALIVE);
        for _ in 0..3 {
            h.record(false, false, &cfg(), now);
        }
        assert!(!h.is_alive());
        assert!(!h.probe_due(now));
        assert!(h.probe_due(now + Duration::from_millis(1200)));
        // Late outcomes of requests sent before it died change nothing.
        let before = h;
        h.record(true, false, &cfg(), now);
        assert_eq!(h, before);
    }

    #[test]
    fn probe_success_revives_probe_failure_backs_off_more() {
        let now = Instant::now();
        let mut h = Health::Dead {
            until: now,
            backoff: Duration::from_secs(1),
        };
        h.start_probe();
        assert_eq!(
            h,
            Health::Probing {
                backoff: Duration::from_secs(1)
            }
        );
        h.record(false, true, &cfg(), now);
        let Health::Dead { backoff, until } = h else {
            panic!("{h:?}")
        };
        assert!(
            backoff >= Duration::from_millis(1600) && backoff <= Duration::from_millis(2400),
            "{backoff:?}"
        );
        assert_eq!(until, now + backoff);
        // Capped at max_backoff (plus jitter).
        for _ in 0..10 {
            h.start_probe();
            h.record(false, true, &cfg(), now);
        }
        let Health::Dead { backoff, .. } = h else {
            panic!()
        };
        assert!(backoff <= Duration::from_millis(4800), "{backoff:?}");
        h.start_probe();
        h.probe_cancelled(now);
        assert!(h.probe_due(now));
        h.start_probe();
        h.record(true, true, &cfg(), now);
        assert_eq!(h, Health::ALIVE);
    }

    #[test]
    fn threshold_zero_disables_accrual() {
        let c = AccrualConfig {
            threshold: 0,
            ..cfg()
        };
        let mut h = Health::ALIVE;
        for _ in 0..100 {
            h.record(false, false, &c, Instant::now());
        }
        assert!(h.is_alive());
    }
}
