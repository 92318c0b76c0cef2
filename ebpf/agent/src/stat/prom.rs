//! A small reader for the Prometheus/OpenMetrics text the proxies serve:
//! `name{label="value",...} number` lines; comments and malformed lines are
//! skipped (a proxy's page is trusted to be well formed, but a bad line must
//! not stop the whole table).

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }
}

pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let (labels, rest) = if let Some(r) = rest.strip_prefix('{') {
        parse_labels(r)?
    } else {
        (BTreeMap::new(), rest)
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the rest after `}`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(r) = rest.strip_prefix('}') {
            return Some((labels, r));
        }
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        let mut chars = rest[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => value.push('\n'),
                (true, c) => value.push(c),
                (false, '\\') => {
                    escaped = true;
                    continue;
                }
                (false, '"') => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                (false, c) => value.push(c),
            }
            escaped = false;
        }
        rest = &rest[end?..];
        labels.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_samples() {
        let page = "# HELP x y\n\
            conduit_request_total{direction=\"outbound\",dst=\"web:80\"} 12\n\
            conduit_response_latency_seconds_bucket{direction=\"inbound\",dst=\"a\\\"b\",peer_identity=\"none\",le=\"+Inf\"} 3\n\
            conduit_agent_registered 1\n\
            garbage{oops 1\n\
            # EOF\n";
        let s = parse(page);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].name, "conduit_request_total");
        assert_eq!(s[0].label("dst"), "web:80");
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].label("dst"), "a\"b");
        assert_eq!(s[1].label("le"), "+Inf");
        assert_eq!(s[2].value, 1.0);
        assert!(s[2].labels.is_empty());
    }
}
