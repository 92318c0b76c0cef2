//! Golden metrics, exposed on the admin `/metrics` endpoint in Prometheus
//! text format. Every label set is bounded: directions, protocols, status
//! classes, classifications (`success`, `failure`) and reasons are fixed
//! vocabularies, and destination names pass through [`DstLabels`], which
//! admits a fixed number of distinct values and folds the rest into
//! `overflow`.
//!
//! A response is counted with its `classification`
//! ([`crate::http::classify`]): a failure is an HTTP 5xx, or a gRPC
//! response whose `grpc-status` is not 0 (from the headers of a
//! trailers-only response, else from the trailers, counted when the body
//! ends) or whose stream ended without a status. gRPC errors travel in
//! HTTP 200 responses: by status class alone they are successes.

use crate::http::grpc::Class;
use conduit_base::sync::Unpoisoned;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReqLabels {
    pub direction: &'static str,
    pub dst: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RspLabels {
    pub direction: &'static str,
    pub dst: String,
    /// The other proxy's mTLS identity on this hop (inbound: the client's,
    /// outbound: the server's, verified), or `none` (plaintext).
    pub peer_identity: String,
    /// `1xx` .. `5xx`.
    pub status_class: &'static str,
    /// `success` or `failure` (gRPC-aware, see the module's doc).
    pub classification: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: &'static str,
    pub dst: String,
    pub peer_identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DetectLabels {
    pub direction: &'static str,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

/// `reason` of `conduit_outbound_plaintext_total` and
/// `conduit_outbound_refused_total` (see `transport::intent`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhyLabels {
    pub reason: &'static str,
}

type HistFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~26 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 19,
    ))
}

/// All proxy metrics; cheap to clone (every metric is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<ReqLabels, Counter>,
    /// Attempts beyond the first (retries on another endpoint).
    pub retries: Family<ReqLabels, Counter>,
    pub responses: Family<RspLabels, Counter>,
    pub response_latency: HistFamily,
    pub tcp_open: Family<DirLabels, Counter>,
    pub tcp_close: Family<DirLabels, Counter>,
    pub tcp_open_connections: Family<DirLabels, Gauge>,
    pub tcp_read_bytes: Family<DirLabels, Counter>,
    pub tcp_write_bytes: Family<DirLabels, Counter>,
    pub detect: Family<DetectLabels, Counter>,
    pub refused: Family<ReasonLabels, Counter>,
    pub errors: Family<ReasonLabels, Counter>,
    /// Connections that left the pod without mTLS, by reason.
    pub outbound_plaintext: Family<WhyLabels, Counter>,
    /// Outbound connections refused rather than sent without mTLS.
    pub outbound_refused: Family<WhyLabels, Counter>,
    pub dst_labels: Arc<DstLabels>,
    pub identity_labels: Arc<DstLabels>,
    /// Unix time at which the current certificate expires (0 without one).
    pub cert_expiry: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(registry: &mut Registry, max_dst_labels: usize) -> Self {
        let m = Self {
            requests: Family::default(),
            retries: Family::default(),
            responses: Family::default(),
            response_latency: Family::new_with_constructor(latency_histogram),
            tcp_open: Family::default(),
            tcp_close: Family::default(),
            tcp_open_connections: Family::default(),
            tcp_read_bytes: Family::default(),
            tcp_write_bytes: Family::default(),
            detect: Family::default(),
            refused: Family::default(),
            errors: Family::default(),
            outbound_plaintext: Family::default(),
            outbound_refused: Family::default(),
            dst_labels: Arc::new(DstLabels::new(max_dst_labels)),
            identity_labels: Arc::new(DstLabels::new(max_dst_labels)),
            cert_expiry: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("conduit");
        r.register(
            "request",
            "HTTP requests received, by direction and destination",
            m.requests.clone(),
        );
        r.register(
            "retry",
            "HTTP requests sent again to another endpoint (idempotent, within the retry budget)",
            m.retries.clone(),
        );
        r.register(
            "response",
            "HTTP responses sent, by status class and classification (success, failure: 5xx, gRPC status not OK)",
            m.responses.clone(),
        );
        r.register(
            "response_latency_seconds",
            "Time from request received to response headers sent",
            m.response_latency.clone(),
        );
        r.register("tcp_open", "TCP connections accepted", m.tcp_open.clone());
        r.register("tcp_close", "TCP connections closed", m.tcp_close.clone());
        r.register(
            "tcp_open_connections",
            "TCP connections currently open",
            m.tcp_open_connections.clone(),
        );
        r.register(
            "tcp_read_bytes",
            "Bytes read from accepted connections",
            m.tcp_read_bytes.clone(),
        );
        r.register(
            "tcp_write_bytes",
            "Bytes written to accepted connections",
            m.tcp_write_bytes.clone(),
        );
        r.register(
            "protocol_detect",
            "Protocol detection outcomes",
            m.detect.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused, by reason",
            m.refused.clone(),
        );
        r.register("errors", "Errors by direction and reason", m.errors.clone());
        r.register(
            "outbound_plaintext",
            "Upstream connections made without mTLS, by reason",
            m.outbound_plaintext.clone(),
        );
        r.register(
            "outbound_refused",
            "Upstream connections refused rather than made without mTLS, by reason",
            m.outbound_refused.clone(),
        );
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "Unix time when the proxy's certificate expires (0: no certificate)",
            m.cert_expiry.clone(),
        );
        m
    }

    pub fn dst(&self, name: &str) -> String {
        self.dst_labels.admit(name)
    }

    /// Label value for a peer identity (bounded like `dst`).
    pub fn identity(&self, id: Option<&str>) -> String {
        id.map_or_else(|| "none".to_string(), |id| self.identity_labels.admit(id))
    }

    pub fn error(&self, dir: Direction, reason: &'static str) {
        self.errors
            .get_or_create(&ReasonLabels {
                direction: dir.as_str(),
                reason,
            })
            .inc();
    }
}

/// One connection's HTTP metric series, resolved once instead of per
/// request: looking a series up in a [`Family`] hashes its owned label
/// strings (SipHash over `dst` and `peer_identity`) and clones them, which
/// was a measurable share of the proxy's per-request cost (docs/benchmarks.md).
/// A connection's direction and `dst` never change; its peer identity is
/// fixed inbound and one per endpoint outbound, so the series per peer are
/// kept in a short list. Series are created when first used, as before (a
/// label set appears in `/metrics` only once something was counted).
pub struct ConnHttpMetrics {
    metrics: Metrics,
    direction: &'static str,
    dst: String,
    requests: Counter,
    retries: std::sync::OnceLock<Counter>,
    peers: Mutex<Vec<Arc<PeerSeries>>>,
}

/// The response series of one (connection, peer identity).
struct PeerSeries {
    /// The raw identity (not the bounded label) this entry is for.
    peer: Option<String>,
    label: String,
    latency: std::sync::OnceLock<Histogram>,
    /// Responses by status class (`1xx` .. `5xx`) and classification
    /// ([`response_index`]).
    responses: [std::sync::OnceLock<Counter>; 2 * STATUS_CLASSES.len()],
}

/// A response whose latency is recorded and whose count waits for its
/// classification ([`ConnHttpMetrics::count`]).
pub struct Uncounted {
    series: Arc<PeerSeries>,
    status: u16,
}

/// Peers remembered per connection; beyond this the list is not grown
/// (lookups then go to the families, as they did for every request).
const MAX_PEERS_PER_CONN: usize = 16;

impl ConnHttpMetrics {
    pub fn new(metrics: &Metrics, direction: Direction, dst: &str) -> Self {
        let direction = direction.as_str();
        let requests = metrics
            .requests
            .get_or_create(&ReqLabels {
                direction,
                dst: dst.to_owned(),
            })
            .clone();
        Self {
            metrics: metrics.clone(),
            direction,
            dst: dst.to_owned(),
            requests,
            retries: std::sync::OnceLock::new(),
            peers: Mutex::new(Vec::new()),
        }
    }

    pub fn request(&self) {
        self.requests.inc();
    }

    pub fn retries(&self, n: u64) {
        self.retries
            .get_or_init(|| {
                self.metrics
                    .retries
                    .get_or_create(&ReqLabels {
                        direction: self.direction,
                        dst: self.dst.clone(),
                    })
                    .clone()
            })
            .inc_by(n);
    }

    /// Records one response's latency (its headers are ready), for the
    /// peer identity the hop had (`None`: plaintext); [`Self::count`]
    /// counts it once classified.
    pub fn response(
        &self,
        peer: Option<&str>,
        status: u16,
        latency: std::time::Duration,
    ) -> Uncounted {
        let series = self.peer(peer);
        series
            .latency
            .get_or_init(|| {
                self.metrics
                    .response_latency
                    .get_or_create(&LatencyLabels {
                        direction: self.direction,
                        dst: self.dst.clone(),
                        peer_identity: series.label.clone(),
                    })
                    .clone()
            })
            .observe(latency.as_secs_f64());
        Uncounted { series, status }
    }

    /// Counts a response by status class and classification.
    pub fn count(&self, r: Uncounted, class: Class) {
        let Uncounted { series, status } = r;
        series.responses[response_index(status, class)]
            .get_or_init(|| {
                self.metrics
                    .responses
                    .get_or_create(&RspLabels {
                        direction: self.direction,
                        dst: self.dst.clone(),
                        peer_identity: series.label.clone(),
                        status_class: status_class(status),
                        classification: class.as_str(),
                    })
                    .clone()
            })
            .inc();
    }

    fn peer(&self, peer: Option<&str>) -> Arc<PeerSeries> {
        let mut peers = self.peers.locked();
        if let Some(s) = peers.iter().find(|s| s.peer.as_deref() == peer) {
            return s.clone();
        }
        let s = Arc::new(PeerSeries {
            peer: peer.map(str::to_owned),
            label: self.metrics.identity(peer),
            latency: std::sync::OnceLock::new(),
            responses: Default::default(),
        });
        if peers.len() < MAX_PEERS_PER_CONN {
            peers.push(s.clone());
        }
        s
    }
}

/// Bounds the `dst` label: the first `max` distinct names are kept, later
/// ones become `overflow`.
#[derive(Debug)]
pub struct DstLabels {
    max: usize,
    seen: Mutex<HashSet<String>>,
}

impl DstLabels {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    pub fn admit(&self, name: &str) -> String {
        let mut seen = self.seen.locked();
        if seen.contains(name) {
            return name.to_string();
        }
        if seen.len() < self.max {
            seen.insert(name.to_string());
            return name.to_string();
        }
        "overflow".to_string()
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

/// Index of a response's series in [`PeerSeries::responses`].
fn response_index(status: u16, class: Class) -> usize {
    2 * status_class_index(status) + usize::from(class == Class::Failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dst_labels_are_bounded() {
        let l = DstLabels::new(2);
        assert_eq!(l.admit("a"), "a");
        assert_eq!(l.admit("b"), "b");
        assert_eq!(l.admit("c"), "overflow");
        assert_eq!(l.admit("a"), "a");
    }

    #[test]
    fn encodes_text() {
        let mut reg = Registry::default();
        let m = Metrics::new(&mut reg, 10);
        m.requests
            .get_or_create(&ReqLabels {
                direction: "outbound",
                dst: m.dst("web:80"),
            })
            .inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("conduit_request_total{direction=\"outbound\",dst=\"web:80\"} 1"),
            "{out}"
        );
    }

    /// The per-connection handles count into the same series a lookup per
    /// request did, a label set appears only once counted, and peers beyond
    /// the per-connection list are still counted.
    #[test]
    fn connection_handles_count_into_the_families() {
        let mut reg = Registry::default();
        let m = Metrics::new(&mut reg, 100);
        let c = ConnHttpMetrics::new(&m, Direction::Outbound, "web:80");
        c.request();
        c.request();
        let ms = std::time::Duration::from_millis(1);
        let respond =
            |peer: Option<&str>, status, class| c.count(c.response(peer, status, ms), class);
        respond(Some("spiffe://td/ns/a/sa/web"), 200, Class::Success);
        respond(Some("spiffe://td/ns/a/sa/web"), 503, Class::Failure);
        // A gRPC error in an HTTP 200.
        respond(Some("spiffe://td/ns/a/sa/web"), 200, Class::Failure);
        respond(None, 200, Class::Success);
        c.retries(2);
        for i in 0..MAX_PEERS_PER_CONN + 3 {
            respond(
                Some(&format!("spiffe://td/ns/a/sa/p{i}")),
                404,
                Class::Success,
            );
        }
        let last = format!("spiffe://td/ns/a/sa/p{}", MAX_PEERS_PER_CONN + 2);
        respond(Some(&last), 404, Class::Success);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        let has = |line: &str| assert!(out.contains(line), "missing {line}\n{out}");
        has(r#"conduit_request_total{direction="outbound",dst="web:80"} 2"#);
        has(r#"conduit_retry_total{direction="outbound",dst="web:80"} 2"#);
        has(
            r#"conduit_response_total{direction="outbound",dst="web:80",peer_identity="spiffe://td/ns/a/sa/web",status_class="2xx",classification="success"} 1"#,
        );
        has(
            r#"conduit_response_total{direction="outbound",dst="web:80",peer_identity="spiffe://td/ns/a/sa/web",status_class="2xx",classification="failure"} 1"#,
        );
        has(
            r#"conduit_response_total{direction="outbound",dst="web:80",peer_identity="spiffe://td/ns/a/sa/web",status_class="5xx",classification="failure"} 1"#,
        );
        has(
            r#"conduit_response_total{direction="outbound",dst="web:80",peer_identity="none",status_class="2xx",classification="success"} 1"#,
        );
        has(&format!(
            r#"conduit_response_total{{direction="outbound",dst="web:80",peer_identity="{last}",status_class="4xx",classification="success"}} 2"#
        ));
        has(
            r#"conduit_response_latency_seconds_count{direction="outbound",dst="web:80",peer_identity="none"} 1"#,
        );
        has(
            r#"conduit_response_latency_seconds_count{direction="outbound",dst="web:80",peer_identity="spiffe://td/ns/a/sa/web"} 3"#,
        );
        assert!(
            !out.contains(r#"peer_identity="none",status_class="5xx""#),
            "{out}"
        );
    }

    /// Each (status class, classification) has its own slot.
    #[test]
    fn response_slots_are_distinct() {
        let mut seen = HashSet::new();
        for status in [100, 200, 301, 404, 503] {
            for class in [Class::Success, Class::Failure] {
                let i = response_index(status, class);
                assert!(i < 2 * STATUS_CLASSES.len());
                assert!(seen.insert(i), "{status} {class:?} shares slot {i}");
            }
        }
        assert_eq!(seen.len(), 2 * STATUS_CLASSES.len());
        // Anything out of range counts as 5xx.
        assert_eq!(
            response_index(999, Class::Failure),
            response_index(503, Class::Failure)
        );
    }
}
