//! One request, from the accepted connection to the next hop and back.
//! The same code serves inbound and outbound; only the connection's
//! [`Route`](crate::route::Route) differs. Requests to a discovered
//! destination go through its balancer (endpoint choice, timeouts,
//! budgeted retries of idempotent requests without a body).

use super::body_timeout::{BodyTimeout, ReadTimeout, Tripped};
use super::client::ClientError;
use super::client_body::{BodyFailed, ClientBody};
use super::{
    Answer, Body, ORIG_PROTO, Proto, ProxyError, boxed, error_response, headers, replay, tunnel,
};
use crate::balance::{Attempt, CallError, is_idempotent};
use crate::ctx::{ConnCtx, Shared};
use crate::metrics::{ConnHttpMetrics, Direction};
use crate::transport::{MeshProto, NextHop};
use conduit_base::sync::Unpoisoned;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    BodyTimeout(BodyTimeout),
    #[error("the client's request body is malformed or was cut off")]
    ClientBody,
    #[error(transparent)]
    Upstream(#[from] ClientError),
}

impl ForwardError {
    /// What the client is told.
    fn kind(&self) -> ProxyError {
        use ForwardError::*;
        match self {
            Call(CallError::NoEndpoints(_)) => ProxyError::NoEndpoints,
            Call(CallError::Timeout { .. }) => ProxyError::RequestTimeout,
            BadRequest(_) => ProxyError::BadRequest,
            BodyTimeout(_) => ProxyError::BodyTimeout,
            ClientBody => ProxyError::MalformedBody,
            Upstream(ClientError::Connect { source, .. })
                if source.kind() == std::io::ErrorKind::TimedOut =>
            {
                ProxyError::ConnectTimeout
            }
            Upstream(ClientError::Connect { .. }) => ProxyError::ConnectFailed,
            Upstream(_) => ProxyError::UpstreamFailed,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ForwardError::Call(CallError::NoEndpoints(_)) => "no_endpoints",
            ForwardError::Call(CallError::Timeout { .. }) => "request_timeout",
            ForwardError::BadRequest(_) => "bad_request",
            ForwardError::BodyTimeout(_) => "body_read_timeout",
            ForwardError::ClientBody => "malformed_body",
            ForwardError::Upstream(ClientError::Connect { source, .. })
                if crate::transport::error::is_peer_identity(source) =>
            {
                "tls_peer_identity"
            }
            ForwardError::Upstream(ClientError::Connect { .. }) => "connect",
            ForwardError::Upstream(_) => "upstream",
        }
    }
}

/// The hyper service for every proxied HTTP connection. `metrics` holds
/// the connection's series, resolved once per connection.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnCtx>,
    metrics: Arc<ConnHttpMetrics>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let m = &shared.metrics;
    let direction = conn.direction.as_str();
    metrics.request();
    let probe = shared.observe.probe(&conn, &req);
    // Method and URI are kept for the log line of a failed request only.
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let answer = Answer::for_request(req.headers());
    // A body already at its end can neither fail nor stall: no flags to
    // allocate for it.
    let (tripped, body_failed) = if req.body().is_end_stream() {
        (Tripped::unwatched(), BodyFailed::unwatched())
    } else {
        (Tripped::default(), BodyFailed::default())
    };
    let req = req.map(|b| ClientBody::new(b, body_failed.clone()));
    // Boxed: the forwarding future is several KB (balancer, retries, the
    // upstream call), and an unboxed one is copied by every move on the
    // way into hyper's task; this way `handle` itself stays small.
    let Reply { rsp, verified } = match Box::pin(forward(
        &shared, &conn, &metrics, req, answer, &tripped,
    ))
    .await
    {
        Ok(reply) => reply,
        Err(e) => {
            // A stalled or malformed client body surfaces as whatever error
            // the upstream side saw (a reset, a failed read): name the real
            // cause, and answer 4xx for the client's fault.
            let e = if tripped.is_set() {
                ForwardError::BodyTimeout(BodyTimeout(shared.cfg.body_read_timeout))
            } else if body_failed.is_set() {
                ForwardError::ClientBody
            } else {
                e
            };
            warn!(direction, client = %conn.client_addr, dst = %conn.dst_label, %method, %uri, "{}", chain(&e));
            m.error(conn.direction, e.reason());
            Reply::unverified(error_response(e.kind(), answer))
        }
    };
    let peer = match conn.direction {
        Direction::Inbound => conn.peer_identity.as_deref(),
        Direction::Outbound => verified.as_deref(),
    };
    debug!(direction, %method, %uri, status = rsp.status().as_u16(), "request done");
    let uncounted = metrics.response(peer, rsp.status().as_u16(), start.elapsed());
    let tap = probe.map(|p| p.respond(&rsp, peer));
    Ok(super::classify::count(
        &metrics, answer, uncounted, rsp, tap,
    ))
}

async fn forward(
    shared: &Arc<Shared>,
    conn: &Arc<ConnCtx>,
    metrics: &ConnHttpMetrics,
    mut req: Request<ClientBody<Incoming>>,
    answer: Answer,
    tripped: &Tripped,
) -> Result<Reply, ForwardError> {
    if conn.direction == Direction::Inbound
        && let Some(refused) = crate::policy::enforce::check_request(shared, conn, &mut req).await
    {
        return Ok(Reply::unverified(refused));
    }
    let upgrade = conn.source_proto == Proto::Http1 && headers::is_upgrade(&req);
    // Only a peer proxy may ask for HTTP/1 towards the application.
    let orig_h1 = req.headers_mut().remove(ORIG_PROTO).is_some() && conn.from_peer;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    let body_limit = shared.cfg.body_read_timeout;
    // A body already at its end (most requests) has nothing to wait for:
    // no timer for it.
    let req = if conn.source_proto == Proto::Http1
        && !body_limit.is_zero()
        && !req.body().is_end_stream()
    {
        req.map(|b| boxed(ReadTimeout::new(b, body_limit, tripped.clone())))
    } else {
        req.map(boxed)
    };
    if let Some(client_upgrade) = client_upgrade {
        return forward_upgrade(shared, conn, req, client_upgrade).await;
    }
    let target = &conn.route.target;
    let (req, replay) = if !(target.retries() && is_idempotent(req.method())) {
        (req, None)
    } else if req.body().is_end_stream() {
        let (req, replay) = replay::without_body(req);
        (req, Some(replay))
    } else {
        replay::prepare(req, shared.cfg.max_buffered_body)
            .await
            .map_err(|e| ForwardError::BadRequest(format!("reading the request body: {e}")))?
    };
    let retryable = replay.is_some();
    // The request not yet sent: a failed connection hands it back here, and
    // the next attempt (another endpoint) sends it, whatever its method.
    let unsent = std::sync::Mutex::new(Some(req));
    let unsent = &unsent;
    let mut attempts = 0u64;
    let attempt = |hop: NextHop| {
        attempts += 1;
        let req = unsent
            .locked()
            .take()
            .or_else(|| replay.as_ref().map(replay::Replay::request));
        let (shared, conn) = (shared.clone(), conn.clone());
        // Boxed: the attempt (the upstream call, with hyper's futures) is
        // KBs, and the balancer's call, its timeout and the route's call
        // each move it into their own state; a box moves as a pointer.
        Box::pin(async move {
            let Some(req) = req else {
                return Attempt::Failure(Err(ForwardError::BadRequest(
                    "request body cannot be replayed".into(),
                )));
            };
            match send_or_return(&shared, &conn, hop, req, orig_h1).await {
                Ok(r) if failed_attempt(answer, &r.rsp) => Attempt::Failure(Ok(r)),
                Ok(r) => Attempt::Success(Ok(r)),
                Err((e, Some(req))) => {
                    *unsent.locked() = Some(req);
                    Attempt::NotSent(Err(e))
                }
                Err((e, None)) => Attempt::Failure(Err(e)),
            }
        })
    };
    let result = target.call(&shared.policy, retryable, attempt).await;
    if attempts > 1 {
        metrics.retries(attempts - 1);
    }
    result?
}

/// An answer that counts against its endpoint (failure accrual) and is
/// tried again elsewhere when the request may be: a 5xx, or, for a gRPC
/// request, a peer proxy's own UNAVAILABLE or DEADLINE_EXCEEDED (its
/// answer for what is a 502, 503 or 504 to a plain request: a gRPC
/// request is answered in gRPC, in an HTTP 200). An application's gRPC
/// error is its answer, as a 4xx is.
fn failed_attempt<B>(answer: Answer, rsp: &Response<B>) -> bool {
    rsp.status().is_server_error()
        || (answer.is_grpc()
            && rsp.headers().contains_key(super::ERROR_HEADER)
            && matches!(
                super::grpc::status(rsp.headers()),
                Some(c) if c == super::grpc::Code::Unavailable as i32
                    || c == super::grpc::Code::DeadlineExceeded as i32
            ))
}

/// One attempt towards one next hop, handing the request back when its
/// connection failed (nothing of it was sent).
async fn send_or_return(
    shared: &Arc<Shared>,
    conn: &Arc<ConnCtx>,
    hop: NextHop,
    mut req: Request<Body>,
    orig_h1: bool,
) -> Result<Reply, (ForwardError, Option<Request<Body>>)> {
    let meshed = hop.mesh_port.is_some();
    let proto = match (meshed, orig_h1) {
        (true, _) => Proto::Http2,
        (false, true) => Proto::Http1,
        (false, false) => conn.source_proto,
    };
    headers::for_version(&mut req, proto, &conn.route.orig_dst)
        .map_err(|e| (ForwardError::BadRequest(e.to_string()), None))?;
    if meshed && conn.source_proto == Proto::Http1 {
        req.headers_mut()
            .insert(ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
    }
    let up = hop.carrying(MeshProto::http(proto));
    let verified = verified_identity(shared, &up);
    let mut rsp = shared
        .client
        .send_or_return(&up, req)
        .await
        .map_err(|(e, req)| (ForwardError::Upstream(e), req))?;
    headers::strip_hop_by_hop(rsp.headers_mut(), false);
    Ok(Reply {
        rsp: rsp.map(boxed),
        verified,
    })
}

/// An upstream's response and the server identity its hop was verified
/// against, if any (for metrics and tap). Carried beside the response, not
/// in its extensions: those are a map allocated per response.
struct Reply {
    rsp: Response<Body>,
    verified: Option<conduit_proxy_tls::SpiffeId>,
}

impl Reply {
    /// The proxy's own answer (an error, a refusal): no peer was verified.
    fn unverified(rsp: Response<Body>) -> Self {
        Self {
            rsp,
            verified: None,
        }
    }
}

fn verified_identity(shared: &Shared, target: &NextHop) -> Option<conduit_proxy_tls::SpiffeId> {
    target.peer_identity().filter(|_| shared.mtls).cloned()
}

/// `Upgrade` and `CONNECT`: a connection of its own (it turns into a byte
/// stream), HTTP/1.1 end to end, then a tunnel.
async fn forward_upgrade(
    shared: &Arc<Shared>,
    conn: &Arc<ConnCtx>,
    mut req: Request<Body>,
    client_upgrade: hyper::upgrade::OnUpgrade,
) -> Result<Reply, ForwardError> {
    let (hop, pick) = conn.route.target.pick()?;
    let is_connect = req.method() == Method::CONNECT;
    headers::for_version(&mut req, Proto::Http1, &conn.route.orig_dst)
        .map_err(|e| ForwardError::BadRequest(e.to_string()))?;
    let up = hop.carrying(MeshProto::Http1);
    let addr = up.addr;
    let verified = verified_identity(shared, &up);
    let sent = async {
        let mut sender = shared.client.connect_h1(&up, true).await?;
        sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Request { addr, source })
    };
    let mut rsp = match sent.await {
        Ok(r) => {
            if let Some(p) = pick {
                p.success();
            }
            r
        }
        Err(e) => {
            if let Some(p) = pick {
                p.failure();
            }
            return Err(e.into());
        }
    };
    let switched = rsp.status() == StatusCode::SWITCHING_PROTOCOLS
        || (is_connect && rsp.status().is_success());
    if switched {
        let upstream_upgrade = hyper::upgrade::on(&mut rsp);
        tunnel::spawn(shared, conn, client_upgrade, upstream_upgrade);
    }
    headers::strip_hop_by_hop(rsp.headers_mut(), switched && !is_connect);
    Ok(Reply {
        rsp: rsp.map(boxed),
        verified,
    })
}

/// An error and its causes, `a: b: c` (a cause already in the text is not
/// repeated): "http2 error" alone does not say what the peer did.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_attempts() {
        // (request shape, HTTP status, conduit-proxy-error, grpc-status, failed)
        const GRPC: Answer = Answer::Grpc(crate::http::grpc::Wire::Grpc);
        let cases: &[(Answer, u16, bool, Option<&str>, bool)] = &[
            (Answer::Http, 200, false, None, false),
            (Answer::Http, 404, false, None, false),
            (Answer::Http, 502, true, None, true),
            (Answer::Http, 500, false, None, true),
            // A plain request's headers are not looked at.
            (Answer::Http, 200, true, Some("14"), false),
            (GRPC, 200, false, Some("0"), false),
            // The peer proxy could not reach its application.
            (GRPC, 200, true, Some("14"), true),
            (GRPC, 200, true, Some("4"), true),
            // Refused by its policy, or a bad request: an answer.
            (GRPC, 200, true, Some("7"), false),
            (GRPC, 200, true, Some("13"), false),
            // The application's own UNAVAILABLE: its answer.
            (GRPC, 200, false, Some("14"), false),
            (GRPC, 503, false, None, true),
        ];
        for (answer, status, proxy_error, grpc_status, want) in cases {
            let mut b = Response::builder().status(*status);
            if *proxy_error {
                b = b.header(super::super::ERROR_HEADER, "x");
            }
            if let Some(g) = grpc_status {
                b = b.header("grpc-status", *g);
            }
            let rsp = b.body(()).unwrap();
            assert_eq!(
                failed_attempt(*answer, &rsp),
                *want,
                "{answer:?} {status} proxy error {proxy_error} grpc-status {grpc_status:?}"
            );
        }
    }

    fn future_size<A, B, C, D, F: std::future::Future>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper moves the service future per request (into the HTTP/1
    /// dispatcher, into a spawned task per HTTP/2 stream): it must stay
    /// small, the forwarding state lives behind a box (debug build: 1 KB,
    /// 8.3 KB with `forward` unboxed).
    #[test]
    fn the_service_future_is_small() {
        let size = future_size(handle);
        assert!(size <= 2048, "forward::handle's future is {size} bytes");
    }
}
