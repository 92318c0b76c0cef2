//! Prometheus metrics served on the admin port's `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    destination_streams: Gauge,
    destination_updates: Counter,
    certify: Family<Labels, Counter>,
    file_reloads: Family<Labels, Counter>,
    issuer_expiry: Gauge,
    policy_watches: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("conduit_controller");
        let destination_streams = Gauge::default();
        registry.register(
            "destination_streams",
            "Open Destination.Get streams",
            destination_streams.clone(),
        );
        let destination_updates = Counter::default();
        registry.register(
            "destination_updates",
            "Updates sent on Destination.Get streams",
            destination_updates.clone(),
        );
        let certify = Family::<Labels, Counter>::default();
        registry.register(
            "identity_certify",
            "Identity.Certify calls by result (ok or the gRPC status code)",
            certify.clone(),
        );
        let file_reloads = Family::<Labels, Counter>::default();
        registry.register(
            "discovery_file_reloads",
            "Discovery file loads by result (ok, error)",
            file_reloads.clone(),
        );
        let issuer_expiry = Gauge::default();
        registry.register(
            "identity_issuer_expiry_timestamp_seconds",
            "notAfter of the issuer certificate (unix seconds)",
            issuer_expiry.clone(),
        );
        let policy_watches = Family::<Labels, Counter>::default();
        registry.register(
            "policy_watches",
            "InboundPolicies.Watch calls by result (ok, or why the caller was refused)",
            policy_watches.clone(),
        );
        Metrics {
            registry,
            destination_streams,
            destination_updates,
            certify,
            file_reloads,
            issuer_expiry,
            policy_watches,
        }
    }

    /// Counts an open stream until the returned guard is dropped.
    pub fn stream_opened(&self) -> StreamGuard {
        self.destination_streams.inc();
        StreamGuard(self.destination_streams.clone())
    }

    pub fn update_sent(&self) {
        self.destination_updates.inc();
    }

    pub fn certify_result(&self, result: &'static str) {
        self.certify.get_or_create(&vec![("result", result)]).inc();
    }

    pub fn policy_watch(&self, result: &'static str) {
        self.policy_watches
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    pub fn file_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.file_reloads
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    pub fn set_issuer_expiry(&self, unix_seconds: i64) {
        self.issuer_expiry.set(unix_seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Decrements the open-stream gauge when dropped.
pub struct StreamGuard(Gauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
