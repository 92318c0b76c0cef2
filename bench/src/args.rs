//! Command-line helpers shared by the benchmark programs.

use crate::loadgen::{Load, Protocol};
use std::time::Duration;

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

/// Parses `500ms`, `5s`, `1.5s`, `1m` (a bare number is seconds); for
/// clap's `value_parser`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 500ms, 5s, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("duration {s:?} out of range"))
}

/// The program's arguments as one line (for "the command that made them").
pub fn command_line(program: &str) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("{program} {}", args.join(" ")).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e999s").is_err());
    }
}
