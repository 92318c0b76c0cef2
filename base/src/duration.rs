//! The duration grammar of every flag, environment variable and setting
//! that takes a duration:
//!
//! ```text
//! duration = number [unit]
//! number   = digits ["." digits]
//! unit     = "ms" | "s" | "m" | "h" | "d"      (none: seconds)
//! ```
//!
//! so `250ms`, `1.5s`, `30s`, `5m`, `1h`, `7d` and `10` (ten seconds).
//! Surrounding whitespace is ignored; signs, exponents, spaces inside and
//! values too large for a [`Duration`] are refused. A flag with a natural
//! ceiling checks it with [`parse_at_most`].

use std::time::Duration;

/// Why a duration was refused; its text names the input and the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "bad duration {0:?}: expected a number and a unit (ms, s, m, h, d), e.g. 500ms, 30s, 5m"
    )]
    Number(String),
    #[error("bad duration unit in {0:?}: use ms, s, m, h or d")]
    Unit(String),
    #[error("duration {0:?} is out of range")]
    Range(String),
    #[error("duration {input:?} is longer than the {max} allowed here")]
    TooLong { input: String, max: String },
}

/// Parses one duration (grammar above).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let well_formed = !num.is_empty()
        && !num.starts_with('.')
        && !num.ends_with('.')
        && num.matches('.').count() <= 1;
    if !well_formed {
        return Err(DurationError::Number(s.to_string()));
    }
    let millis: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(DurationError::Unit(s.to_string())),
    };
    // Whole numbers exactly, so that `250ms` is 250 ms and not a float's
    // neighbour of it.
    if let Ok(n) = num.parse::<u64>() {
        return n
            .checked_mul(millis)
            .map(Duration::from_millis)
            .ok_or_else(|| DurationError::Range(s.to_string()));
    }
    let n: f64 = num
        .parse()
        .map_err(|_| DurationError::Number(s.to_string()))?;
    Duration::try_from_secs_f64(n * millis as f64 / 1000.0)
        .map_err(|_| DurationError::Range(s.to_string()))
}

/// [`parse`], refusing more than `max`.
pub fn parse_at_most(s: &str, max: Duration) -> Result<Duration, DurationError> {
    let d = parse(s)?;
    if d > max {
        return Err(DurationError::TooLong {
            input: s.trim().to_string(),
            max: format!("{max:?}"),
        });
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar() {
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        // (input, the duration, or None for an error)
        let cases: &[(&str, Option<Duration>)] = &[
            ("250ms", Some(ms(250))),
            ("500ms", Some(ms(500))),
            ("0", Some(secs(0))),
            ("5", Some(secs(5))),
            ("10", Some(secs(10))),
            ("30s", Some(secs(30))),
            ("1.5s", Some(ms(1500))),
            ("0.5", Some(ms(500))),
            ("2m", Some(secs(120))),
            ("1h", Some(secs(3600))),
            ("24h", Some(secs(86_400))),
            ("7d", Some(secs(7 * 86_400))),
            (" 10s ", Some(secs(10))),
            ("", None),
            ("h", None),
            ("s", None),
            ("x", None),
            ("fast", None),
            ("3w", None),
            ("5sec", None),
            ("-1s", None),
            ("+1s", None),
            ("1e3s", None),
            ("1 s", None),
            (".5s", None),
            ("5.s", None),
            ("1.2.3s", None),
            ("10S", None),
            ("18446744073709551615d", None),
            ("1e400", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).ok(), *want, "{input:?}");
        }
    }

    #[test]
    fn errors_name_the_input_and_the_grammar() {
        let e = parse("fast").unwrap_err().to_string();
        assert!(e.contains("\"fast\"") && e.contains("500ms"), "{e}");
        let e = parse("3w").unwrap_err().to_string();
        assert!(
            e.contains("\"3w\"") && e.contains("ms, s, m, h or d"),
            "{e}"
        );
    }

    #[test]
    fn ceilings() {
        let day = Duration::from_secs(86_400);
        assert_eq!(parse_at_most("24h", day), Ok(day));
        assert_eq!(parse_at_most("86400", day), Ok(day));
        assert!(matches!(
            parse_at_most("25h", day),
            Err(DurationError::TooLong { .. })
        ));
        assert!(matches!(
            parse_at_most("x", day),
            Err(DurationError::Number(_))
        ));
    }
}
