//! Retry budget (as in Finagle and Linkerd): retries may add at most
//! `ratio` of the original requests seen in the last `ttl`, plus a floor of
//! `min_per_sec` retries per second so a quiet service can still retry.
//! A budget bounds the extra load that retries put on a failing service,
//! where a fixed "retry 3 times" would multiply it.

use conduit_base::sync::Unpoisoned;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Retry budget settings.
#[derive(Debug, Clone, Copy)]
pub struct BudgetConfig {
    /// Retries allowed per original request (0.2 = 20 % extra load).
    pub ratio: f64,
    /// Retries allowed per second however few requests there are.
    pub min_per_sec: u32,
    /// How long a deposit counts.
    pub ttl: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_sec: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

const SLOTS: usize = 10;
/// Fixed-point unit: one retry costs `UNIT`, one request deposits `ratio * UNIT`.
const UNIT: i64 = 1000;

/// A retry budget shared by every request to one destination (or one
/// proxy). Thread safe.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    deposit: i64,
    reserve: i64,
    slot_len: Duration,
    window: Mutex<Window>,
}

/// Net balance (deposits minus withdrawals) per time slot; slots older than
/// `ttl` are forgotten.
#[derive(Debug)]
struct Window {
    slots: [i64; SLOTS],
    /// Index of the current slot and when it started.
    current: usize,
    current_start: Instant,
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        let ttl = config.ttl.max(Duration::from_millis(10));
        let ratio = if config.ratio.is_finite() {
            config.ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        RetryBudget {
            config,
            deposit: (ratio * UNIT as f64) as i64,
            reserve: i64::from(config.min_per_sec) * ttl.as_millis() as i64 * UNIT / 1000,
            slot_len: ttl / SLOTS as u32,
            window: Mutex::new(Window {
                slots: [0; SLOTS],
                current: 0,
                current_start: Instant::now(),
            }),
        }
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Records an original request (not a retry).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    pub(crate) fn deposit_at(&self, now: Instant) {
        let mut w = self.window(now);
        let i = w.current;
        w.slots[i] += self.deposit;
    }

    pub(crate) fn try_withdraw_at(&self, now: Instant) -> bool {
        let mut w = self.window(now);
        let balance: i64 = self.reserve + w.slots.iter().sum::<i64>();
        if balance < UNIT {
            return false;
        }
        let i = w.current;
        w.slots[i] -= UNIT;
        true
    }

    /// The window with slots older than `ttl` cleared.
    fn window(&self, now: Instant) -> std::sync::MutexGuard<'_, Window> {
        let mut w = self.window.locked();
        let elapsed = now.saturating_duration_since(w.current_start);
        let steps = (elapsed.as_nanos() / self.slot_len.as_nanos().max(1)) as usize;
        if steps > 0 {
            for k in 1..=steps.min(SLOTS) {
                let i = (w.current + k) % SLOTS;
                w.slots[i] = 0;
            }
            w.current = (w.current + steps) % SLOTS;
            w.current_start += self.slot_len * steps as u32;
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn withdraw_all(b: &RetryBudget, now: Instant) -> u32 {
        let mut n = 0;
        while b.try_withdraw_at(now) {
            n += 1;
            assert!(n < 1_000_000);
        }
        n
    }

    #[test]
    fn ratio_and_floor_bound_retries() {
        let b = RetryBudget::new(BudgetConfig {
            ratio: 0.2,
            min_per_sec: 10,
            ttl: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        // The floor alone: 10/s over 10 s.
        assert_eq!(withdraw_all(&b, t0), 100);
        for _ in 0..1000 {
            b.deposit_at(t0);
        }
        // 1000 requests at 20 % buy 200 retries.
        assert_eq!(withdraw_all(&b, t0), 200);
    }

    #[test]
    fn deposits_expire_after_ttl() {
        let b = RetryBudget::new(BudgetConfig {
            ratio: 0.5,
            min_per_sec: 0,
            ttl: Duration::from_secs(1),
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            b.deposit_at(t0);
        }
        assert_eq!(withdraw_all(&b, t0 + Duration::from_millis(500)), 50);
        for _ in 0..100 {
            b.deposit_at(t0 + Duration::from_millis(500));
        }
        // After a full ttl everything is forgotten.
        assert_eq!(withdraw_all(&b, t0 + Duration::from_millis(1700)), 0);
    }

    #[test]
    fn zero_budget_never_retries() {
        let b = RetryBudget::new(BudgetConfig {
            ratio: 0.0,
            min_per_sec: 0,
            ttl: Duration::from_secs(1),
        });
        b.deposit();
        assert!(!b.try_withdraw());
    }
}
