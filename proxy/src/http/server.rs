//! Serves one accepted connection whose protocol is known, with the limits
//! from the configuration: request head size and field count, the time a
//! client may take to send a request head, HTTP/2 stream concurrency.
//! Malformed HTTP/1 gets hyper's 400 (431 for oversized heads) and the
//! connection closed, and so does a request with both `Content-Length` and
//! `Transfer-Encoding` ([`super::smuggling`]). HTTP/2 connections carry the
//! abuse limits (rapid reset, with our own count of streams cancelled before
//! their response in [`super::resets`], header list size, keep-alive). Draining asks
//! the connection to finish gracefully: HTTP/2 with GOAWAY; HTTP/1 answers
//! its next request with `Connection: close` and only a connection idle for
//! [`DRAIN_LINGER`] is closed unasked (closing an idle keep-alive connection
//! at once races the request its client may be sending on it, which would
//! fail unanswered).

use super::head_timer::HeadTimer;
use super::resets::Resets;
use super::smuggling::{HeadScanner, Heads};
use super::{Answer, Body, Proto, ProxyError, error_response, forward};
use crate::ctx::{ConnCtx, Shared};
use crate::io::Io;
use crate::metrics::ConnHttpMetrics;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::{debug, info, warn};

/// How long a draining proxy leaves an idle HTTP/1 connection open for a
/// last request (answered with `Connection: close`).
pub const DRAIN_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// Requests one HTTP/2 client connection may have running at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 1000;
/// Streams reset by the client while still in h2's accept queue (not yet
/// given to the proxy) that close the connection: one more than this.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;

pub async fn serve(shared: Arc<Shared>, conn: Arc<ConnCtx>, io: impl Io) {
    let cfg = &shared.cfg;
    let shutdown = shared.shutdown.clone();
    let metrics = Arc::new(ConnHttpMetrics::new(
        &shared.metrics,
        conn.direction,
        &conn.dst_label,
    ));
    let mut idle_closed = None;
    let res = match conn.source_proto {
        Proto::Http1 => {
            let heads = Heads::default();
            let io = TokioIo::new(HeadScanner::new(io, heads.clone()));
            let (s, c) = (shared.clone(), conn.clone());
            let svc = service_fn(move |req: Request<Incoming>| {
                let conflict = req.headers().contains_key(http::header::TRANSFER_ENCODING)
                    && heads.conflicting(req.method().as_str(), &req.uri().to_string());
                let (s, c, m) = (s.clone(), c.clone(), metrics.clone());
                async move {
                    if conflict {
                        return Ok::<_, std::convert::Infallible>(refuse_ambiguous_framing(
                            &s, &c, &req,
                        ));
                    }
                    let mut rsp = forward::handle(s.clone(), c, m, req).await?;
                    if s.shutdown.is_cancelled() {
                        rsp.headers_mut().insert(
                            http::header::CONNECTION,
                            http::HeaderValue::from_static("close"),
                        );
                    }
                    Ok(rsp)
                }
            });
            // The header timeout from a head's first byte; an idle
            // keep-alive connection waits `--http-idle-timeout` instead.
            let timer = HeadTimer::new(
                conn.activity.clone(),
                cfg.header_read_timeout,
                cfg.http_idle_timeout,
            );
            idle_closed = Some(timer.idle_closed());
            let mut b = http1::Builder::new();
            b.timer(timer)
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
            let (s, c) = (shared.clone(), conn.clone());
            let resets = Resets::new(MAX_CONCURRENT_STREAMS as usize);
            let counted = resets.clone();
            // Each stream's future is boxed: hyper spawns one task per
            // stream, and a task moves its future into place (memmove of the
            // whole future, several KB unboxed) when it is spawned.
            let svc = service_fn(move |req| {
                let mut guard = counted.accept();
                let (s, c, m) = (s.clone(), c.clone(), metrics.clone());
                Box::pin(async move {
                    // hyper looks for the client's RST_STREAM only when the
                    // stream's service returns `Pending`: give it that look
                    // before anything is sent upstream, so a stream reset
                    // before it was accepted costs the upstream nothing.
                    super::resets::pending_once().await;
                    if !guard.admit().await {
                        // Closing for rapid reset: nothing more goes upstream.
                        return Ok(error_response(
                            ProxyError::TooManyResets,
                            Answer::for_request(req.headers()),
                        ));
                    }
                    let rsp = forward::handle(s, c, m, req).await;
                    guard.answered();
                    rsp
                })
            });
            let io = TokioIo::new(io);
            let mut b = http2::Builder::new(super::BoxingExecutor);
            b.timer(TokioTimer::new())
                .max_header_list_size(cfg.max_header_bytes as u32)
                .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
                // Rapid reset (CVE-2023-44487): more than this many streams
                // reset by the client while waiting in h2's accept queue
                // closes the connection (GOAWAY ENHANCE_YOUR_CALM). Accepted
                // streams leave that count; `resets` counts those.
                .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
                // Likewise for streams the proxy had to reset (malformed).
                .max_local_error_reset_streams(Some(1024))
                // A connection whose client stops answering PINGs is closed.
                .keep_alive_interval(std::time::Duration::from_secs(10))
                .keep_alive_timeout(std::time::Duration::from_secs(20))
                .adaptive_window(true);
            let c = b.serve_connection(io, svc);
            tokio::pin!(c);
            let res = tokio::select! {
                // First: a tripped connection accepts no more streams.
                biased;
                _ = resets.tripped() => {
                    // Dropping the connection closes the socket and ends
                    // every stream still running on it.
                    let n = resets.counts();
                    warn!(direction = conn.direction.as_str(), client = %conn.client_addr,
                        accepted = n.accepted, answered = n.answered, premature = n.premature,
                        "closing HTTP/2 connection: too many streams reset by the client before their response (rapid reset)");
                    shared.metrics.error(conn.direction, "rapid_reset");
                    Ok(())
                }
                res = c.as_mut() => res,
                _ = shutdown.cancelled() => { c.as_mut().graceful_shutdown(); c.await }
            };
            let n = resets.counts();
            debug!(client = %conn.client_addr, accepted = n.accepted, answered = n.answered, premature = n.premature,
                "HTTP/2 connection ended");
            res
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
        } else if e.is_timeout() && idle_closed.is_some_and(|c| c.load(Ordering::Relaxed)) {
            debug!(client = %conn.client_addr, "closing HTTP/1 connection idle for {:?}", shared.cfg.http_idle_timeout);
            return;
        } else if e.is_timeout() {
            "header_read_timeout"
        } else {
            debug!(client = %conn.client_addr, error = %e, "HTTP connection ended");
            return;
        };
        info!(direction = conn.direction.as_str(), client = %conn.client_addr, reason, error = %e, "closing HTTP connection");
        shared.metrics.error(conn.direction, reason);
    }
}

/// 400 for a request carrying both `Content-Length` and
/// `Transfer-Encoding`; the connection closes after it (its framing cannot
/// be trusted).
fn refuse_ambiguous_framing(
    shared: &Shared,
    conn: &ConnCtx,
    req: &Request<Incoming>,
) -> Response<Body> {
    info!(direction = conn.direction.as_str(), client = %conn.client_addr, method = %req.method(), uri = %req.uri(),
        "refusing a request with both Content-Length and Transfer-Encoding");
    shared.metrics.error(conn.direction, "ambiguous_framing");
    let mut rsp = error_response(
        ProxyError::AmbiguousFraming,
        Answer::for_request(req.headers()),
    );
    rsp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    rsp
}
