//! The numbers of `stat`: from two scrapes of one proxy's metrics, what
//! happened between them. Counters are differenced (a counter that went
//! down means the proxy restarted: the newer value is taken whole), rates
//! divide by the time between the scrapes, and latency percentiles come
//! from the difference of the `conduit_response_latency_seconds`
//! histograms, interpolated within a bucket as Prometheus's
//! `histogram_quantile` does.

use super::prom::Sample;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Where traffic of one proxy went: (direction, destination).
pub type Key = (String, String);

/// Cumulative figures of one proxy, from one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub routes: BTreeMap<Key, RouteTotals>,
    /// Per direction.
    pub tcp: BTreeMap<String, TcpTotals>,
    /// The proxy's own identity (`conduit_proxy_identity_info`).
    pub identity: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTotals {
    pub responses: f64,
    pub failures: f64,
    /// Responses per peer identity (`none`: plaintext).
    pub by_peer: BTreeMap<String, f64>,
    /// Cumulative bucket counts by upper bound (seconds; `INFINITY` last).
    pub buckets: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TcpTotals {
    pub open: f64,
    pub opened: f64,
    pub read_bytes: f64,
    pub write_bytes: f64,
}

/// Whether a `conduit_response_total` sample counts failures
/// ([`conduit_base::response::failed`]; an empty label is one the series
/// does not carry).
pub fn failed(s: &Sample) -> bool {
    let label = |k| Some(s.label(k)).filter(|v| !v.is_empty());
    conduit_base::response::failed(label("classification"), label("status_class"))
}

/// Sums the samples of one scrape.
pub fn totals(samples: &[Sample]) -> Totals {
    let mut t = Totals::default();
    for s in samples {
        let key = || (s.label("direction").to_owned(), s.label("dst").to_owned());
        match s.name.as_str() {
            "conduit_response_total" => {
                let r = t.routes.entry(key()).or_default();
                r.responses += s.value;
                if failed(s) {
                    r.failures += s.value;
                }
                *r.by_peer
                    .entry(s.label("peer_identity").to_owned())
                    .or_default() += s.value;
            }
            "conduit_response_latency_seconds_bucket" => {
                let le = match s.label("le") {
                    "+Inf" => f64::INFINITY,
                    v => match v.parse() {
                        Ok(v) => v,
                        Err(_) => continue,
                    },
                };
                let r = t.routes.entry(key()).or_default();
                match r.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += s.value,
                    None => r.buckets.push((le, s.value)),
                }
            }
            name @ ("conduit_tcp_open_connections"
            | "conduit_tcp_open_total"
            | "conduit_tcp_read_bytes_total"
            | "conduit_tcp_write_bytes_total") => {
                let tcp = t.tcp.entry(s.label("direction").to_owned()).or_default();
                let field = match name {
                    "conduit_tcp_open_connections" => &mut tcp.open,
                    "conduit_tcp_open_total" => &mut tcp.opened,
                    "conduit_tcp_read_bytes_total" => &mut tcp.read_bytes,
                    _ => &mut tcp.write_bytes,
                };
                *field += s.value;
            }
            "conduit_proxy_identity_info" => {
                t.identity = Some(s.label("identity").to_owned()).filter(|i| !i.is_empty());
            }
            _ => {}
        }
    }
    for r in t.routes.values_mut() {
        r.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    t
}

/// One (direction, destination) of one pod over the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteStat {
    pub pod: String,
    pub direction: String,
    pub dst: String,
    pub requests: u64,
    pub rps: f64,
    /// Share of responses classified as successes: not 5xx, and for gRPC
    /// `grpc-status: 0` (None without responses).
    pub success: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Share of responses whose hop had a verified peer identity.
    pub mtls: Option<f64>,
    pub peers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TcpStat {
    pub pod: String,
    pub direction: String,
    pub open: u64,
    pub opened_per_s: f64,
    pub read_bytes_per_s: f64,
    pub write_bytes_per_s: f64,
}

fn delta(new: f64, old: f64) -> f64 {
    if new >= old { new - old } else { new }
}

/// What happened between `old` and `new`, `secs` apart.
pub fn diff(pod: &str, old: &Totals, new: &Totals, secs: f64) -> (Vec<RouteStat>, Vec<TcpStat>) {
    let secs = secs.max(1e-3);
    let empty = RouteTotals::default();
    let mut routes = Vec::new();
    for ((direction, dst), n) in &new.routes {
        let o = old
            .routes
            .get(&(direction.clone(), dst.clone()))
            .unwrap_or(&empty);
        let responses = delta(n.responses, o.responses);
        if responses <= 0.0 {
            continue;
        }
        let failures = delta(n.failures, o.failures);
        let mut peers = BTreeSet::new();
        let mut verified = 0.0;
        for (peer, c) in &n.by_peer {
            let d = delta(*c, o.by_peer.get(peer).copied().unwrap_or(0.0));
            if d > 0.0 {
                if peer != "none" {
                    verified += d;
                }
                peers.insert(peer.clone());
            }
        }
        let buckets: Vec<(f64, f64)> = n
            .buckets
            .iter()
            .map(|(le, c)| {
                let before = o.buckets.iter().find(|(b, _)| b == le).map_or(0.0, |x| x.1);
                (*le, delta(*c, before))
            })
            .collect();
        let q = |p| quantile(&buckets, p).map(|s| s * 1000.0);
        routes.push(RouteStat {
            pod: pod.to_owned(),
            direction: direction.clone(),
            dst: dst.clone(),
            requests: responses.round() as u64,
            rps: responses / secs,
            success: Some((responses - failures) / responses),
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            mtls: Some(verified / responses),
            peers: peers.into_iter().collect(),
        });
    }
    let tcp = new
        .tcp
        .iter()
        .map(|(direction, n)| {
            let o = old.tcp.get(direction).cloned().unwrap_or_default();
            TcpStat {
                pod: pod.to_owned(),
                direction: direction.clone(),
                open: n.open.max(0.0).round() as u64,
                opened_per_s: delta(n.opened, o.opened) / secs,
                read_bytes_per_s: delta(n.read_bytes, o.read_bytes) / secs,
                write_bytes_per_s: delta(n.write_bytes, o.write_bytes) / secs,
            }
        })
        .collect();
    (routes, tcp)
}

/// The `q` quantile (0..1) of cumulative `buckets` sorted by bound, in the
/// buckets' unit; `None` when empty. Within a bucket the observations are
/// taken as evenly spread; in the `+Inf` bucket, the largest finite bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, cum) in buckets {
        if cum >= rank && cum > below {
            if le.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (le - lower) * (rank - below) / (cum - below));
        }
        lower = if le.is_finite() { le } else { lower };
        below = cum;
    }
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::super::prom::parse;
    use super::*;

    fn page(ok: u64, failed: u64, fast: u64, slow: u64) -> String {
        let total = fast + slow;
        format!(
            "conduit_response_total{{direction=\"outbound\",dst=\"web:80\",peer_identity=\"spiffe://td/ns/default/sa/web\",status_class=\"2xx\"}} {ok}\n\
             conduit_response_total{{direction=\"outbound\",dst=\"web:80\",peer_identity=\"none\",status_class=\"5xx\"}} {failed}\n\
             conduit_response_latency_seconds_bucket{{direction=\"outbound\",dst=\"web:80\",peer_identity=\"none\",le=\"0.001\"}} {fast}\n\
             conduit_response_latency_seconds_bucket{{direction=\"outbound\",dst=\"web:80\",peer_identity=\"none\",le=\"0.01\"}} {total}\n\
             conduit_response_latency_seconds_bucket{{direction=\"outbound\",dst=\"web:80\",peer_identity=\"none\",le=\"+Inf\"}} {total}\n\
             conduit_tcp_open_connections{{direction=\"outbound\"}} 2\n\
             conduit_tcp_open_total{{direction=\"outbound\"}} {total}\n\
             conduit_tcp_read_bytes_total{{direction=\"outbound\"}} {}\n",
            total * 100
        )
    }

    #[test]
    fn window_of_two_scrapes() {
        let old = totals(&parse(&page(10, 0, 10, 0)));
        // 40 more: 30 fine, 10 failed; 20 under 1 ms, 20 between 1 and 10 ms.
        let new = totals(&parse(&page(40, 10, 30, 20)));
        let (routes, tcp) = diff("default/client", &old, &new, 10.0);
        assert_eq!(routes.len(), 1);
        let r = &routes[0];
        assert_eq!(r.requests, 40);
        assert!((r.rps - 4.0).abs() < 1e-9);
        assert_eq!(r.success, Some(0.75));
        assert_eq!(r.mtls, Some(0.75));
        assert_eq!(r.peers, vec!["none", "spiffe://td/ns/default/sa/web"]);
        // p50: rank 20 of 40 is the last of the fast bucket: 1 ms.
        assert!((r.p50_ms.unwrap() - 1.0).abs() < 1e-9, "{r:?}");
        // p99: rank 39.6, 19.6/20 into 1..10 ms.
        assert!((r.p99_ms.unwrap() - (1.0 + 9.0 * 19.6 / 20.0)).abs() < 1e-9);
        assert_eq!(tcp[0].open, 2);
        assert!((tcp[0].opened_per_s - 4.0).abs() < 1e-9);
        assert!((tcp[0].read_bytes_per_s - 400.0).abs() < 1e-9);
        assert_eq!(new.identity, None);
        let with_id = totals(&parse(
            "conduit_proxy_identity_info{identity=\"spiffe://td/ns/default/sa/web\"} 1\n",
        ));
        assert_eq!(
            with_id.identity.as_deref(),
            Some("spiffe://td/ns/default/sa/web")
        );
    }

    #[test]
    fn failures_by_classification_else_by_status_class() {
        let cases = [
            (r#"status_class="2xx",classification="success""#, false),
            // A gRPC error: HTTP 200, grpc-status not 0.
            (r#"status_class="2xx",classification="failure""#, true),
            (r#"status_class="5xx",classification="failure""#, true),
            (r#"status_class="4xx",classification="success""#, false),
            // A proxy from before the classification label.
            (r#"status_class="5xx""#, true),
            (r#"status_class="2xx""#, false),
            (r#"status_class="4xx""#, false),
        ];
        for (labels, want) in cases {
            let page = format!(
                "conduit_response_total{{direction=\"outbound\",dst=\"web:80\",{labels}}} 1\n"
            );
            let s = &parse(&page)[0];
            assert_eq!(failed(s), want, "{labels}");
        }
        // A window with gRPC failures in HTTP 200s: 3 of 4 failed.
        let page = |ok: u64, grpc_failed: u64| {
            format!(
                "conduit_response_total{{direction=\"outbound\",dst=\"web:9090\",peer_identity=\"none\",status_class=\"2xx\",classification=\"success\"}} {ok}\n\
                 conduit_response_total{{direction=\"outbound\",dst=\"web:9090\",peer_identity=\"none\",status_class=\"2xx\",classification=\"failure\"}} {grpc_failed}\n"
            )
        };
        let (routes, _) = diff(
            "p",
            &totals(&parse(&page(1, 0))),
            &totals(&parse(&page(2, 3))),
            1.0,
        );
        assert_eq!(routes[0].requests, 4);
        assert_eq!(routes[0].success, Some(0.25));
    }

    #[test]
    fn a_restarted_proxy_counts_from_zero_and_idle_routes_are_left_out() {
        let old = totals(&parse(&page(100, 0, 100, 0)));
        let new = totals(&parse(&page(5, 0, 5, 0)));
        let (routes, _) = diff("p", &old, &new, 1.0);
        assert_eq!(routes[0].requests, 5);
        let (idle, _) = diff("p", &new, &new, 1.0);
        assert!(idle.is_empty());
    }

    #[test]
    fn quantiles() {
        let b = [(0.001, 0.0), (0.002, 10.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&b, 0.5), Some(0.0015));
        assert_eq!(quantile(&b, 1.0), Some(0.002));
        let inf = [(0.001, 0.0), (f64::INFINITY, 4.0)];
        assert_eq!(quantile(&inf, 0.5), Some(0.001));
        assert_eq!(quantile(&[(0.001, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
    }
}
