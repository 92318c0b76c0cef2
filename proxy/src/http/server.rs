//! Serves one accepted connection whose protocol is known, with the limits
//! from the configuration: request head size and field count, the time a
//! client may take to send a request head, HTTP/2 stream concurrency.
//! Malformed HTTP/1 gets hyper's 400 (431 for oversized heads) and the
//! connection closed. Draining asks the connection to finish gracefully:
//! HTTP/2 with GOAWAY; HTTP/1 answers its next request with
//! `Connection: close` and only a connection idle for [`DRAIN_LINGER`] is
//! closed unasked (closing an idle keep-alive connection at once races the
//! request its client may be sending on it, which would fail unanswered).

use super::{Proto, forward};
use crate::ctx::{ConnCtx, Shared};
use crate::io::Io;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use tracing::{debug, info};

/// How long a draining proxy leaves an idle HTTP/1 connection open for a
/// last request (answered with `Connection: close`).
pub const DRAIN_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn serve(shared: Arc<Shared>, conn: Arc<ConnCtx>, io: impl Io) {
    let cfg = &shared.cfg;
    let (s, c) = (shared.clone(), conn.clone());
    let h1 = conn.source_proto == Proto::Http1;
    let svc = service_fn(move |req| {
        let (s, c) = (s.clone(), c.clone());
        async move {
            let mut rsp = forward::handle(s.clone(), c, req).await?;
            if h1 && s.shutdown.is_cancelled() {
                rsp.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(rsp)
        }
    });
    let io = TokioIo::new(io);
    let shutdown = shared.shutdown.clone();
    let res = match conn.source_proto {
        Proto::Http1 => {
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(cfg.header_read_timeout)
                .max_headers(cfg.max_headers)
                .max_buf_size(cfg.max_header_bytes.max(8192));
            let c = b.serve_connection(io, svc).with_upgrades();
            tokio::pin!(c);
            tokio::select! {
                res = c.as_mut() => res,
                _ = shutdown.cancelled() => match tokio::time::timeout(DRAIN_LINGER, c.as_mut()).await {
                    Ok(res) => res,
                    Err(_) => { c.as_mut().graceful_shutdown(); c.await }
                }
            }
        }
        Proto::Http2 => {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_header_list_size(cfg.max_header_bytes as u32)
                .max_concurrent_streams(1000)
                .keep_alive_interval(std::time::Duration::from_secs(10))
                .adaptive_window(true);
            let c = b.serve_connection(io, svc);
            tokio::pin!(c);
            tokio::select! {
                res = c.as_mut() => res,
                _ = shutdown.cancelled() => { c.as_mut().graceful_shutdown(); c.await }
            }
        }
    };
    // An upgraded connection lives on as its tunnel.
    conn.tunnels.close();
    conn.tunnels.wait().await;
    if let Err(e) = res {
        let reason = if e.is_parse_too_large() {
            "header_too_large"
        } else if e.is_parse() {
            "malformed_http"
        } else if e.is_timeout() {
            "header_read_timeout"
        } else {
            debug!(client = %conn.client_addr, "HTTP connection ended: {e}");
            return;
        };
        info!(direction = conn.direction.as_str(), client = %conn.client_addr, reason, "closing HTTP connection: {e}");
        shared.metrics.error(conn.direction, reason);
    }
}
