//! [`Pick`]: one use of an endpoint, carrying its outcome back to the
//! balancer's statistics.

use super::accrual::Health;
use super::balancer::Shared;
use super::choose::EndpointState;
use crate::discovery::Endpoint;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One use of an endpoint: a request (HTTP) or a connection (TCP). It
/// counts as load until it completes. Call [`success`](Pick::success) or
/// [`failure`](Pick::failure); dropping it without either means cancelled
/// (load released, no outcome recorded).
#[derive(Debug)]
pub struct Pick {
    ep: Arc<EndpointState>,
    shared: Arc<Shared>,
    probe: bool,
    pub(super) start: Instant,
    latency_recorded: bool,
    done: bool,
}

impl Pick {
    pub(super) fn new(
        ep: Arc<EndpointState>,
        shared: Arc<Shared>,
        probe: bool,
        start: Instant,
    ) -> Self {
        Pick {
            ep,
            shared,
            probe,
            start,
            latency_recorded: false,
            done: false,
        }
    }

    /// The picked endpoint.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.ep.endpoint
    }

    pub fn addr(&self) -> SocketAddr {
        self.ep.endpoint.addr
    }

    /// Whether this is the probe of an endpoint that was out of rotation.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// Time since the pick.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records the time since the pick as a latency sample now (e.g. when
    /// the response headers arrive, or when a TCP connection is
    /// established). Only the first call counts; `success` records one
    /// itself if this was not called.
    pub fn record_latency(&mut self) {
        self.observe(false);
    }

    fn observe(&mut self, only_raise: bool) {
        if !self.latency_recorded {
            self.latency_recorded = true;
            let now = Instant::now();
            let mut s = self.ep.stats();
            let rtt = now - self.start;
            if !only_raise || rtt.as_secs_f64() * 1e9 > s.ewma.estimate_ns(now) {
                s.ewma.observe(rtt, now);
            }
        }
    }

    /// The endpoint served well.
    pub fn success(mut self) {
        self.complete(true);
    }

    /// The endpoint failed (connect error, reset, timeout, 5xx): counts
    /// towards failure accrual. A failure's latency counts only when it
    /// raises the estimate (a timeout makes the endpoint look slow, a fast
    /// refusal never makes it look fast).
    pub fn failure(mut self) {
        self.complete(false);
    }

    fn complete(&mut self, success: bool) {
        self.observe(!success);
        self.done = true;
        let now = Instant::now();
        let mut s = self.ep.stats();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.health
            .record(success, self.probe, &self.shared.config.accrual, now);
        if let Health::Dead { until, .. } = s.health {
            self.shared.probe_due_at(until);
        }
        if !s.health.is_alive() && !success {
            tracing::debug!(endpoint = %self.ep.endpoint.addr, health = ?s.health, "endpoint failing");
        }
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut s = self.ep.stats();
        s.in_flight = s.in_flight.saturating_sub(1);
        if self.probe {
            let now = Instant::now();
            s.health.probe_cancelled(now);
            self.shared.probe_due_at(now);
        }
    }
}
