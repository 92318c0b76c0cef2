//! Command-line helpers shared by the benchmark programs.

use crate::loadgen::{Load, Protocol};

/// `--protocols http1,http2` into protocols.
pub fn protocols(names: &[String]) -> Result<Vec<Protocol>, String> {
    names.iter().map(|p| Protocol::parse(p)).collect()
}

/// `--rates` (open loop; zeros are left out) and `--concurrency` (closed
/// loop; 0 leaves it out) into the loads to measure, in that order.
pub fn loads(rates: &[u32], concurrency: usize) -> Vec<Load> {
    let mut loads: Vec<Load> = rates
        .iter()
        .filter(|r| **r > 0)
        .map(|r| Load::Rate(*r))
        .collect();
    if concurrency > 0 {
        loads.push(Load::Max(concurrency));
    }
    loads
}

/// The one duration grammar of the conduit binaries (`500ms`, `1.5s`, `1m`;
/// a bare number is seconds): `conduit_base::duration`.
pub use conduit_base::duration::parse as parse_duration;

/// The program's arguments as one line (for "the command that made them").
pub fn command_line(program: &str) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("{program} {}", args.join(" ")).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn protocols_and_loads() {
        let names = ["h1".to_string(), "http2".to_string()];
        assert_eq!(
            protocols(&names),
            Ok(vec![Protocol::Http1, Protocol::Http2])
        );
        assert!(protocols(&["http3".to_string()]).is_err());
        assert_eq!(
            loads(&[1000, 0, 5], 8),
            vec![Load::Rate(1000), Load::Rate(5), Load::Max(8)]
        );
        assert_eq!(loads(&[], 0), vec![]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        // The shared grammar (conduit_base::duration) has hours.
        assert_eq!(parse_duration("5h"), Ok(Duration::from_secs(5 * 3600)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e999s").is_err());
    }
}
