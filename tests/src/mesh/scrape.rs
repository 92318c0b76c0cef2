//! Reading admin endpoints from the host: a minimal HTTP/1.1 GET over a
//! plain socket (pods are reachable from the host through the bridge), and
//! the Prometheus text format of `/metrics`.

use anyhow::{Context, Result, anyhow, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest admin answer read.
const MAX_BODY: u64 = 8 << 20;

/// `GET path` on `addr`: (status code, body).
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(MAX_BODY)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {addr}{path}"))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP answer from {addr}{path}: {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line from {addr}{path}: {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s
            .split_once("\r\n")
            .ok_or_else(|| anyhow!("bad chunked body"))?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if n == 0 {
            return Ok(out);
        }
        if rest.len() < n {
            bail!("truncated chunk");
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
}

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

    /// Scrapes `http://addr/metrics`.
    pub fn scrape(addr: SocketAddr) -> Result<Self> {
        let (code, body) = get(addr, "/metrics")?;
        if code != 200 {
            bail!("{addr}/metrics answered {code}: {body}");
        }
        Ok(Self::parse(&body))
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
    fn escaped_labels_and_chunks() {
        let s = parse_line(r#"x{a="q\"u,o",b="2"} 5"#).unwrap();
        assert_eq!(s.label("a"), Some("q\"u,o"));
        assert_eq!(s.label("b"), Some("2"));
        assert_eq!(
            dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
    }
}
