//! Command-line helpers shared by the benchmark programs.

use std::time::Duration;

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
