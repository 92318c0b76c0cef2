//! Percentiles and differences over latency samples.

use std::time::Duration;

/// The `q` quantile (0..=1) of `sorted` (ascending) by the nearest-rank
/// method: the smallest value with at least `q` of the values at or below
/// it. `None` for an empty slice.
pub fn quantile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (sorted.len() as f64 * q.clamp(0.0, 1.0)).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `a - b` as a signed number of nanoseconds (latency added by a path).
pub fn added(a: Option<Duration>, b: Option<Duration>) -> Option<i128> {
    Some(a?.as_nanos() as i128 - b?.as_nanos() as i128)
}

/// `a / b`, `None` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), Some(500));
        assert_eq!(quantile(&v, 0.99), Some(990));
        assert_eq!(quantile(&v, 0.999), Some(999));
        assert_eq!(quantile(&v, 1.0), Some(1000));
        assert_eq!(quantile(&v, 0.0), Some(1));
        assert_eq!(quantile(&[7], 0.999), Some(7));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn differences() {
        let ms = Duration::from_millis;
        assert_eq!(added(Some(ms(3)), Some(ms(1))), Some(2_000_000));
        assert_eq!(added(Some(ms(1)), Some(ms(3))), Some(-2_000_000));
        assert_eq!(added(None, Some(ms(3))), None);
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
    }
}
