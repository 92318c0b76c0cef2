//! How long a change takes to reach the controller's watchers: the two
//! controller benchmarks (`conduit-controller-bench`,
//! `conduit-controller-scale-bench`) tag each change with a generation,
//! every watcher reports the generation it saw and when, and [`collect`]
//! gathers one generation's arrivals.

use anyhow::{Result, bail};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Waits until `n` watchers reported generation `g` on `seen`; returns
/// their latencies from `t0` (zero without one). Fails when the watchers
/// are gone or not all of them saw it within `timeout`.
pub async fn collect(
    seen: &mut mpsc::Receiver<(usize, Instant)>,
    g: usize,
    n: usize,
    timeout: Duration,
    t0: Option<Instant>,
) -> Result<Vec<Duration>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some((got, at))) if got == g => out.push(
                t0.map(|t| at.saturating_duration_since(t))
                    .unwrap_or_default(),
            ),
            Ok(Some(_)) => {}
            Ok(None) => bail!("all watchers ended"),
            Err(_) => bail!(
                "only {}/{n} watchers saw change {g} within {timeout:?}",
                out.len()
            ),
        }
    }
    Ok(out)
}

/// The `p` percentile (0..=1, nearest rank) of sorted durations; zero for
/// none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A duration in milliseconds, two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let d = |ms| Duration::from_millis(ms);
        let sorted: Vec<Duration> = (1..=10).map(d).collect();
        for (p, want) in [(0.0, 1), (0.5, 6), (0.99, 10), (1.0, 10)] {
            assert_eq!(percentile(&sorted, p), d(want), "p{p}");
        }
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        assert_eq!(ms(d(1500)), "1500.00 ms");
    }

    #[tokio::test]
    async fn collect_waits_for_the_generation_and_times_out() {
        let (tx, mut rx) = mpsc::channel(8);
        let now = Instant::now();
        tx.send((1, now)).await.unwrap();
        tx.send((2, now)).await.unwrap();
        tx.send((2, now)).await.unwrap();
        let got = collect(&mut rx, 2, 2, Duration::from_secs(1), None)
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        let err = collect(&mut rx, 3, 1, Duration::from_millis(50), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("0/1 watchers"), "{err}");
    }
}
