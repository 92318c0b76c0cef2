//! The Prometheus / OpenMetrics text of an admin `/metrics` page, parsed
//! into samples with their labels, and the assertions tests make on it: a
//! counter (summed over the series whose labels include the wanted ones)
//! equals a value, with the whole page in the failure message.
//!
//! Series are selected by exact metric name and by labels, given either as
//! pairs (`&[("direction", "outbound")]`) or as text parts
//! (`&["direction=\"outbound\"", "2xx"]`): a part `key="value"` wants that
//! label, a bare part wants some label with exactly that value.

use anyhow::{Result, ensure};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_total`, `_bucket`, ... suffixes).
    pub name: String,
    /// Labels in order of appearance.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// The value of label `k`.
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    fn matches(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(v))
    }
}

/// A scraped `/metrics` page.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Every sample.
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the Prometheus / OpenMetrics text format (comments skipped).
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(parse_line)
            .collect();
        Self { samples }
    }

    /// Samples of `name` whose labels include `want`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        want: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.matches(want))
    }

    /// Sum of `name` over samples whose labels include `want`.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.find(name, want).map(|s| s.value).sum()
    }

    /// Distinct values of label `label` among samples of `name` matching `want`.
    pub fn label_values(&self, name: &str, want: &[(&str, &str)], label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .find(name, want)
            .filter_map(|s| s.label(label).map(str::to_owned))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The `q` quantile (0..1) of histogram `name` (without `_bucket`) over
    /// the series matching `want`, by linear interpolation inside the
    /// bucket, as Prometheus' `histogram_quantile` does. `None` without
    /// observations.
    pub fn quantile(&self, name: &str, want: &[(&str, &str)], q: f64) -> Option<f64> {
        let bucket = format!("{name}_bucket");
        let mut by_le: Vec<(f64, f64)> = Vec::new();
        for s in self.find(&bucket, want) {
            let le = match s.label("le")? {
                "+Inf" => f64::INFINITY,
                v => v.parse().ok()?,
            };
            match by_le.iter_mut().find(|(l, _)| *l == le) {
                Some((_, c)) => *c += s.value,
                None => by_le.push((le, s.value)),
            }
        }
        by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = by_le.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut prev_le, mut prev_c) = (0.0, 0.0);
        for (le, c) in by_le {
            if c >= rank {
                if le.is_infinite() {
                    return Some(prev_le);
                }
                let frac = if c > prev_c {
                    (rank - prev_c) / (c - prev_c)
                } else {
                    1.0
                };
                return Some(prev_le + (le - prev_le) * frac);
            }
            (prev_le, prev_c) = (le, c);
        }
        Some(prev_le)
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name_labels, rest) = match line.find('{') {
        Some(_) => {
            let end = line.rfind('}')?;
            (&line[..end + 1], &line[end + 1..])
        }
        None => line.split_at(line.find(' ')?),
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match name_labels.find('{') {
        Some(i) => (
            &name_labels[..i],
            parse_labels(&name_labels[i + 1..name_labels.len() - 1])?,
        ),
        None => (name_labels, Vec::new()),
    };
    Some(Sample {
        name: name.trim().to_owned(),
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.is_empty() {
            return Some(out);
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        let mut chars = s[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut val = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => {
                    val.push('\n');
                    escaped = false;
                }
                (true, c) => {
                    val.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => val.push(c),
            }
        }
        out.push((key, val));
        s = &s[end?..];
    }
}

/// Asserts that `name`, summed over the series whose labels include `want`,
/// equals `expected`; a failure shows the whole page.
#[track_caller]
pub fn assert_sum(page: &str, name: &str, want: &[(&str, &str)], expected: f64) {
    let got = Metrics::parse(page).sum(name, want);
    assert_eq!(got, expected, "{name} {want:?}:\n{page}");
}

/// `Ok` when `name` summed over the series matching `want` equals
/// `expected`, else an error naming what it saw (for
/// [`wait_until`](crate::wait::wait_until) and
/// [`wait_until_async`](crate::wait::wait_until_async)).
pub fn check_sum(page: &str, name: &str, want: &[(&str, &str)], expected: f64) -> Result<()> {
    let got = Metrics::parse(page).sum(name, want);
    ensure!(got == expected, "{name} {want:?} is {got}, want {expected}");
    Ok(())
}

/// One wanted label, from a text part: `key="value"` wants label `key`
/// equal to `value`; a bare `value` wants some label equal to it.
fn part_matches(sample: &Sample, part: &str) -> bool {
    match part.split_once('=') {
        Some((key, quoted))
            if quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"') =>
        {
            sample.label(key) == Some(&quoted[1..quoted.len() - 1])
        }
        _ => sample.labels.iter().any(|(_, v)| v == part),
    }
}

/// Sum of `name` over the series matching every text part (see the module
/// documentation) in the page `page`.
pub fn sample(page: &str, name: &str, parts: &[&str]) -> f64 {
    Metrics::parse(page)
        .samples
        .iter()
        .filter(|s| s.name == name && parts.iter().all(|p| part_matches(s, p)))
        .map(|s| s.value)
        .sum()
}

/// Asserts that [`sample`] is `expected`; a failure shows the whole page.
#[track_caller]
pub fn assert_sample(page: &str, name: &str, parts: &[&str], expected: f64) {
    let got = sample(page, name, parts);
    assert_eq!(got, expected, "{name} {parts:?}:\n{page}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP conduit_request HTTP requests
# TYPE conduit_request counter
conduit_request_total{direction="inbound",dst="web",peer_identity="spiffe://cluster.local/ns/default/sa/client"} 3
conduit_request_total{direction="outbound",dst="web"} 4
conduit_response_latency_seconds_bucket{direction="outbound",dst="web",le="0.001"} 1
conduit_response_latency_seconds_bucket{direction="outbound",dst="web",le="0.002"} 3
conduit_response_latency_seconds_bucket{direction="outbound",dst="web",le="+Inf"} 4
plain 1.5
# EOF
"#;

    #[test]
    fn parses_and_sums() {
        let m = Metrics::parse(PAGE);
        assert_eq!(m.sum("conduit_request_total", &[]), 7.0);
        assert_eq!(
            m.sum("conduit_request_total", &[("direction", "inbound")]),
            3.0
        );
        assert_eq!(
            m.label_values("conduit_request_total", &[], "peer_identity"),
            ["spiffe://cluster.local/ns/default/sa/client"]
        );
        assert_eq!(m.sum("plain", &[]), 1.5);
        let p50 = m
            .quantile("conduit_response_latency_seconds", &[], 0.5)
            .unwrap();
        assert!((p50 - 0.0015).abs() < 1e-9, "{p50}");
        assert_eq!(
            m.quantile("conduit_response_latency_seconds", &[], 0.99),
            Some(0.002)
        );
        assert_eq!(m.quantile("nothing", &[], 0.5), None);
    }

    #[test]
    fn escaped_labels() {
        let s = parse_line(r#"x{a="q\"u,o",b="2"} 5"#).unwrap();
        assert_eq!(s.label("a"), Some("q\"u,o"));
        assert_eq!(s.label("b"), Some("2"));
    }

    #[test]
    fn sums_assert_and_check() {
        assert_sum(PAGE, "conduit_request_total", &[("dst", "web")], 7.0);
        assert!(
            check_sum(
                PAGE,
                "conduit_request_total",
                &[("direction", "outbound")],
                4.0
            )
            .is_ok()
        );
        let e = check_sum(PAGE, "conduit_request_total", &[], 1.0).unwrap_err();
        assert!(format!("{e}").contains("is 7"), "{e}");
        // A label that no series has matches nothing.
        assert_eq!(
            Metrics::parse(PAGE).sum("conduit_request_total", &[("dst", "db")]),
            0.0
        );
        // Garbage lines are skipped, not fatal.
        assert_eq!(
            Metrics::parse("x{a=\"1\" 2\ny 3\nz{a=b} 1\n").sum("y", &[]),
            3.0
        );
    }

    #[test]
    fn text_parts_select_labels_exactly() {
        let page = "a_total{direction=\"outbound\",status_class=\"2xx\"} 2\n\
                    a_total{direction=\"inbound\",status_class=\"2xx\"} 3\n\
                    a_total_extra{direction=\"outbound\"} 100\n\
                    a_total{direction=\"outbound-ish\"} 50\n";
        let table: &[(&[&str], f64)] = &[
            (&[], 55.0),
            (&["outbound"], 2.0),
            (&["direction=\"outbound\""], 2.0),
            (&["2xx"], 5.0),
            (&["inbound", "2xx"], 3.0),
            (&["status_class=\"5xx\""], 0.0),
            (&["outb"], 0.0),
            (&["direction=outbound"], 0.0),
        ];
        for (parts, want) in table {
            assert_eq!(sample(page, "a_total", parts), *want, "{parts:?}");
        }
        assert_sample(page, "a_total_extra", &["outbound"], 100.0);
    }
}
