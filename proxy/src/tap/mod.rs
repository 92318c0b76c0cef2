//! Watching requests: the tap stream (`conduit-ebpf tap`, served on the
//! operator listener by [`server`]) and the access log
//! ([`crate::access_log`]). The request path asks [`Observe::probe`] once per
//! request; while nobody taps and the access log is off that is one atomic
//! load and a branch, and nothing else happens. Otherwise the request's
//! description is kept, its response's bytes are counted as its body passes
//! ([`TapBody`]), and when it ends one [`TapEvent`] goes to the access log
//! and to the listeners whose filters match.

pub mod body;
pub mod hub;
pub mod peer;
pub mod server;

use crate::access_log::AccessLog;
use crate::ctx::ConnCtx;
use conduit_register::tap::{TapEvent, bounded};
use http::{Request, Response};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

pub use body::TapBody;
pub use hub::Hub;

pub struct Observe {
    pub hub: Arc<Hub>,
    pub access_log: Option<AccessLog>,
}

impl Observe {
    /// Also registers `conduit_proxy_identity_info{identity}` (the proxy's
    /// own SPIFFE ID, when it has one): how `conduit-ebpf stat` and the
    /// dashboard tell which pod serves the identities its callers saw.
    pub fn new(
        registry: &mut Registry,
        access_log: Option<AccessLog>,
        identity: Option<String>,
    ) -> Arc<Self> {
        if let Some(id) = identity {
            registry.sub_registry_with_prefix("conduit").register(
                "proxy_identity",
                "The proxy's own SPIFFE identity",
                prometheus_client::metrics::info::Info::new(vec![("identity", id)]),
            );
        }
        let hub = Arc::new(Hub::default());
        let r = registry.sub_registry_with_prefix("conduit_tap");
        r.register(
            "listeners",
            "Listeners tapping this proxy",
            hub.metrics.listeners.clone(),
        );
        r.register(
            "events",
            "Request events queued for tap listeners",
            hub.metrics.events.clone(),
        );
        r.register(
            "dropped",
            "Request events dropped because a tap listener's queue was full",
            hub.metrics.dropped.clone(),
        );
        Arc::new(Self { hub, access_log })
    }

    /// Starts observing one request, or `None` (the usual case) when
    /// nobody taps and there is no access log.
    #[inline]
    pub fn probe<B>(self: &Arc<Self>, conn: &ConnCtx, req: &Request<B>) -> Option<Probe> {
        if self.access_log.is_none() && !self.hub.active() {
            return None;
        }
        Some(Probe::new(self.clone(), conn, req))
    }

    fn emit(&self, event: TapEvent) {
        if let Some(log) = &self.access_log {
            log.write(&event);
        }
        if self.hub.active() {
            self.hub.publish(event);
        }
    }
}

/// One request being observed.
pub struct Probe {
    obs: Arc<Observe>,
    event: TapEvent,
    start: Instant,
}

impl Probe {
    fn new<B>(obs: Arc<Observe>, conn: &ConnCtx, req: &Request<B>) -> Self {
        let ts_us = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
            .unwrap_or_default();
        let req_bytes = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let version = match req.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let event = TapEvent {
            ts_us,
            direction: conn.direction.as_str().into(),
            client: conn.client_addr.to_string(),
            peer_identity: None,
            dst: conn.dst_label.clone(),
            method: bounded(req.method().as_str()),
            authority: bounded(authority),
            path: bounded(req.uri().path()),
            version: version.into(),
            status: 0,
            grpc_status: None,
            latency_us: 0,
            duration_us: 0,
            req_bytes,
            rsp_bytes: 0,
            success: None,
        };
        Self {
            obs,
            event,
            start: Instant::now(),
        }
    }

    /// The response headers are ready: note status, peer and latency; the
    /// event goes on with the body ([`TapBody`], fed by the response's one
    /// body wrapper, [`crate::http::classify`]).
    pub fn respond<B>(mut self, rsp: &Response<B>, peer_identity: Option<&str>) -> TapBody {
        self.event.status = rsp.status().as_u16();
        self.event.grpc_status = crate::http::grpc::status(rsp.headers());
        self.event.peer_identity = peer_identity.map(bounded);
        self.event.latency_us = body::micros(self.start);
        TapBody::new(self.obs, self.event, self.start)
    }
}
