//! The admin server, read-only: `GET /metrics` (Prometheus text),
//! `GET /ready` (200 once listening, and holding a certificate when an
//! identity is configured; 503 while draining), `GET /live`. It listens on
//! the network (default `0.0.0.0:4191`) so it can be scraped and probed, so
//! nothing here changes the proxy's state: the state-changing endpoints
//! (`POST /shutdown`) live on the loopback-only operator listener
//! ([`crate::control`]). The client's address authorizes nothing.

use crate::http::{Body, full};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub struct Admin {
    pub registry: Registry,
    /// Listening and not draining.
    pub ready: AtomicBool,
    pub shutdown: CancellationToken,
    /// With an identity, ready also needs a current certificate.
    pub credentials: Option<conduit_proxy_tls::Credentials>,
    pub cert_expiry: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    /// With an agent socket, ready also needs the registration (capture on).
    pub agent_registered: Option<Arc<AtomicBool>>,
}

impl Admin {
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self.credentials.as_ref().is_none_or(|c| c.is_ready())
            && self
                .agent_registered
                .as_ref()
                .is_none_or(|r| r.load(Ordering::Relaxed))
    }

    fn update_gauges(&self) {
        let expiry = self.credentials.as_ref().and_then(|c| c.expiry());
        let secs = expiry
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64());
        self.cert_expiry.set(secs);
    }
}

pub(crate) fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut rsp = Response::new(full(body));
    *rsp.status_mut() = status;
    rsp
}

fn route(admin: &Admin, req: &Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            admin.update_gauges();
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &admin.registry) {
                Ok(()) => {
                    let mut rsp = text(StatusCode::OK, out);
                    rsp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    rsp
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        (&Method::GET, "/ready") if admin.is_ready() => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (_, "/metrics" | "/ready" | "/live") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        (_, "/shutdown") => text(
            StatusCode::NOT_FOUND,
            "not found: the admin server is read-only; POST /shutdown is served on the operator listener (--control-addr, loopback only)\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /ready, /live\n",
        ),
    }
}

/// Serves the read-only admin endpoints until `stop` is cancelled.
pub async fn serve(admin: Arc<Admin>, listener: TcpListener, stop: CancellationToken) {
    serve_with(listener, stop, move |_client, req| route(&admin, req)).await
}

/// One small HTTP/1 server: `router` answers each request at once.
pub(crate) async fn serve_with<R>(listener: TcpListener, stop: CancellationToken, router: R)
where
    R: Fn(SocketAddr, &Request<Incoming>) -> Response<Body> + Send + Sync + 'static,
{
    let router = Arc::new(router);
    loop {
        let (tcp, client) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => { warn!(error = %e, "admin accept failed"); continue; }
            },
            _ = stop.cancelled() => return,
        };
        let router = router.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let rsp = router(client, &req);
                async move { Ok::<_, std::convert::Infallible>(rsp) }
            });
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}
