//! The two enforcement points. Both evaluate the policy in force at the
//! moment, so a change applies to the next request of an open connection.

use crate::ctx::{ConnCtx, Shared};
use crate::http::{Body, ERROR_HEADER, empty, error_response};
use conduit_policy::spec::ServerProtocol;
use conduit_policy::{Client, Decision, Request, Verdict};
use http::{HeaderValue, StatusCode};
use tracing::{debug, info};

fn client(conn: &ConnCtx) -> Client<'_> {
    Client {
        identity: conn.peer_id.as_ref(),
        ip: conn.client_addr.ip(),
    }
}

/// An inbound connection about to be forwarded as opaque TCP: `false`
/// means close it now, before the application is dialled.
pub fn admit_connection(shared: &Shared, conn: &ConnCtx) -> bool {
    let installed = shared.inbound_policy.current();
    let port = conn.route.orig_dst.port();
    let server = installed.policy.server(port);
    let c = client(conn);
    let mut d = server.check_connection(&c);
    // A server declared HTTP takes no opaque streams.
    if d.verdict.allowed()
        && matches!(
            server.protocol(),
            ServerProtocol::Http | ServerProtocol::Grpc
        )
    {
        let verdict = match server.default_policy() {
            conduit_policy::DefaultPolicy::Audit => Verdict::Audit,
            _ => Verdict::Deny,
        };
        d = Decision {
            verdict,
            slot: d.slot,
        };
    }
    installed.count(d);
    let slot = &installed.policy.slots()[d.slot];
    match d.verdict {
        Verdict::Allow => true,
        Verdict::Audit => {
            info!(client = %conn.client_addr, identity = ?conn.peer_identity, port, server = %slot.server, rule = %slot.rule, "audit: connection would be refused by the inbound policy; letting it through");
            true
        }
        Verdict::Deny => {
            info!(client = %conn.client_addr, identity = ?conn.peer_identity, port, server = %slot.server, rule = %slot.rule, "inbound policy refused the connection; closing it");
            false
        }
    }
}

/// One inbound HTTP request: `Some(response)` means answer it so (403, or
/// gRPC PERMISSION_DENIED) and never forward it.
pub fn check_request<B>(
    shared: &Shared,
    conn: &ConnCtx,
    req: &http::Request<B>,
) -> Option<http::Response<Body>> {
    let installed = shared.inbound_policy.current();
    let port = conn.route.orig_dst.port();
    let server = installed.policy.server(port);
    let d = server.check_request(
        &client(conn),
        &Request {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
        },
    );
    installed.count(d);
    if d.verdict == Verdict::Allow {
        return None;
    }
    let slot = &installed.policy.slots()[d.slot];
    if d.verdict == Verdict::Audit {
        info!(client = %conn.client_addr, identity = ?conn.peer_identity, port, method = %req.method(), path = req.uri().path(), server = %slot.server, rule = %slot.rule, "audit: request would be refused by the inbound policy; letting it through");
        return None;
    }
    debug!(client = %conn.client_addr, identity = ?conn.peer_identity, port, method = %req.method(), path = req.uri().path(), server = %slot.server, rule = %slot.rule, "inbound policy refused the request");
    Some(forbidden(is_grpc(req)))
}

fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

const REASON: &str = "forbidden by inbound policy";

/// 403, or for gRPC a trailers-only response with status 7 (PERMISSION_DENIED).
pub fn forbidden(grpc: bool) -> http::Response<Body> {
    if !grpc {
        return error_response(StatusCode::FORBIDDEN, REASON);
    }
    let mut rsp = http::Response::new(empty());
    let h = rsp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static("7"));
    h.insert("grpc-message", HeaderValue::from_static(REASON));
    h.insert(ERROR_HEADER, HeaderValue::from_static(REASON));
    rsp
}
