//! A proxy's golden metrics as a newcomer reads them: per direction and
//! destination, the requests, success rate, latency and the mTLS
//! identities on the labels.

use crate::mesh::scrape::Metrics;
use conduit_base::response::failed;
use std::collections::BTreeSet;
use std::fmt::Write;

/// Request counter (Prometheus text name).
pub const REQUESTS: &str = "conduit_request_total";
/// Response counter.
pub const RESPONSES: &str = "conduit_response_total";
/// Response latency histogram (without `_bucket`).
pub const LATENCY: &str = "conduit_response_latency_seconds";

/// One line of the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Destination label.
    pub dst: String,
    /// Requests.
    pub requests: f64,
    /// Responses classified as successes (not 5xx nor errors; for gRPC,
    /// `grpc-status: 0`), over all responses.
    pub success_rate: Option<f64>,
    /// Median latency, seconds.
    pub p50: Option<f64>,
    /// 99th percentile, seconds.
    pub p99: Option<f64>,
    /// `label=value` of every identity / TLS label seen on these requests.
    pub identities: Vec<String>,
}

/// Rows for every (direction, destination) with requests.
pub fn rows(m: &Metrics) -> Vec<Row> {
    let mut keys = BTreeSet::new();
    for s in m.find(REQUESTS, &[]) {
        if let (Some(d), Some(dst)) = (s.label("direction"), s.label("dst")) {
            keys.insert((d.to_owned(), dst.to_owned()));
        }
    }
    keys.into_iter()
        .map(|(direction, dst)| {
            let want = [("direction", direction.as_str()), ("dst", dst.as_str())];
            let total = m.sum(RESPONSES, &want);
            let failed: f64 = m
                .find(RESPONSES, &want)
                .filter(|s| failed(s.label("classification"), s.label("status_class")))
                .map(|s| s.value)
                .sum();
            let mut identities = BTreeSet::new();
            for s in m.find(REQUESTS, &want).chain(m.find(RESPONSES, &want)) {
                for (k, v) in &s.labels {
                    if k.contains("identity") || k == "tls" {
                        identities.insert(format!("{k}={v}"));
                    }
                }
            }
            Row {
                requests: m.sum(REQUESTS, &want),
                success_rate: (total > 0.0).then(|| (total - failed) / total),
                p50: m.quantile(LATENCY, &want, 0.5),
                p99: m.quantile(LATENCY, &want, 0.99),
                identities: identities.into_iter().collect(),
                direction,
                dst,
            }
        })
        .collect()
}

/// Every value of an identity label (a label whose name contains
/// `identity`, e.g. `peer_identity`) on `direction` requests and responses.
pub fn identities(m: &Metrics, direction: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    let want = [("direction", direction)];
    for s in m.find(REQUESTS, &want).chain(m.find(RESPONSES, &want)) {
        for (k, v) in &s.labels {
            if k.contains("identity") {
                out.insert(v.clone());
            }
        }
    }
    out.into_iter().collect()
}

/// Requests counted for `direction` (any destination).
pub fn requests(m: &Metrics, direction: &str) -> f64 {
    m.sum(REQUESTS, &[("direction", direction)])
}

fn ms(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{:.2} ms", s * 1000.0))
}

/// The summary of `pod`'s proxy, several lines, indented for the demo.
pub fn proxy_summary(pod: &str, identity: &str, m: &Metrics) -> String {
    let mut out = format!("      proxy of pod {pod} (identity {identity})\n");
    for s in m.samples.iter().filter(|s| s.name.contains("expir")) {
        let secs = s.value - now_secs();
        let _ = writeln!(
            out,
            "        certificate: {} = {:.0} (expires in {:.1} h)",
            s.name,
            s.value,
            secs / 3600.0
        );
    }
    let rows = rows(m);
    if rows.is_empty() {
        out.push_str("        no requests\n");
    }
    for r in rows {
        let _ = writeln!(
            out,
            "        {:<8} {:<38} {:>4} requests  success {}  p50 {}  p99 {}",
            r.direction,
            r.dst,
            r.requests,
            r.success_rate
                .map_or_else(|| "-".into(), |s| format!("{:.1}%", s * 100.0)),
            ms(r.p50),
            ms(r.p99)
        );
        if !r.identities.is_empty() {
            let _ = writeln!(out, "                 mTLS: {}", r.identities.join(", "));
        }
    }
    out.trim_end().to_owned()
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_a_page() {
        let m = Metrics::parse(
            r#"conduit_request_total{direction="outbound",dst="web.default.svc.cluster.local:80",server_identity="spiffe://cluster.local/ns/default/sa/web"} 4
conduit_response_total{direction="outbound",dst="web.default.svc.cluster.local:80",status_class="2xx"} 3
conduit_response_total{direction="outbound",dst="web.default.svc.cluster.local:80",status_class="5xx"} 1
conduit_response_latency_seconds_bucket{direction="outbound",dst="web.default.svc.cluster.local:80",le="0.001"} 2
conduit_response_latency_seconds_bucket{direction="outbound",dst="web.default.svc.cluster.local:80",le="+Inf"} 4
"#,
        );
        let r = rows(&m);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].requests, 4.0);
        assert_eq!(r[0].success_rate, Some(0.75));
        assert_eq!(
            r[0].identities,
            ["server_identity=spiffe://cluster.local/ns/default/sa/web"]
        );
        let s = proxy_summary("client", "id", &m);
        assert!(s.contains("success 75.0%"), "{s}");
    }

    #[test]
    fn success_rate_counts_grpc_failures_in_a_200() {
        let m = Metrics::parse(
            r#"conduit_request_total{direction="outbound",dst="web:9090"} 4
conduit_response_total{direction="outbound",dst="web:9090",status_class="2xx",classification="success"} 1
conduit_response_total{direction="outbound",dst="web:9090",status_class="2xx",classification="failure"} 3
"#,
        );
        assert_eq!(rows(&m)[0].success_rate, Some(0.25));
    }
}
