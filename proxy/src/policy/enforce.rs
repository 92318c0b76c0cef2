//! The two enforcement points. Both evaluate the policy in force at the
//! moment, so a change applies to the next request of an open connection.

use crate::ctx::{ConnCtx, Shared};
use crate::http::{Answer, Body, ERROR_HEADER, ProxyError, error_response};
use conduit_policy::spec::ServerProtocol;
use conduit_policy::{Client, Decision, Request, Verdict};
use http::{HeaderValue, StatusCode};
use tracing::{debug, info};

fn client(conn: &ConnCtx) -> Client<'_> {
    Client {
        identity: conn.peer_identity.as_ref(),
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
            plugin: None,
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
/// gRPC PERMISSION_DENIED, or a plugin's answer) and never forward it. A
/// plugin that allows may have changed the request's headers.
pub async fn check_request<B>(
    shared: &Shared,
    conn: &ConnCtx,
    req: &mut http::Request<B>,
) -> Option<http::Response<Body>> {
    let installed = shared.inbound_policy.current();
    let port = conn.route.orig_dst.port();
    let server = installed.policy.server(port);
    let mut d = server.check_request(
        &client(conn),
        &Request {
            method: req.method(),
            path: req.uri().path(),
            headers: req.headers(),
        },
    );
    let slot = &installed.policy.slots()[d.slot];
    if let Some(i) = d.plugin {
        let plugin = &installed.policy.plugins()[i];
        match ask_plugin(shared, conn, plugin, slot, req).await {
            Ok(None) => {}
            Ok(Some(denied)) => {
                d.verdict = Verdict::Deny;
                installed.count(d);
                debug!(client = %conn.client_addr, port, plugin = %plugin.name, rule = %slot.rule, "authorization plugin refused the request");
                return Some(denied);
            }
            Err(e) => {
                let open = plugin.failure == conduit_policy::spec::FailureMode::Open;
                info!(client = %conn.client_addr, port, plugin = %plugin.name, reason = e.reason(), fail_open = open, error = %e, "authorization plugin failed");
                shared.metrics.error(
                    crate::metrics::Direction::Inbound,
                    match open {
                        true => "authz_plugin_failed_open",
                        false => "authz_plugin_failed_closed",
                    },
                );
                if !open {
                    d.verdict = Verdict::Deny;
                    installed.count(d);
                    return Some(forbidden(Answer::for_request(req.headers())));
                }
            }
        }
    }
    installed.count(d);
    if d.verdict == Verdict::Allow {
        return None;
    }
    if d.verdict == Verdict::Audit {
        info!(client = %conn.client_addr, identity = ?conn.peer_identity, port, method = %req.method(), path = req.uri().path(), server = %slot.server, rule = %slot.rule, "audit: request would be refused by the inbound policy; letting it through");
        return None;
    }
    debug!(client = %conn.client_addr, identity = ?conn.peer_identity, port, method = %req.method(), path = req.uri().path(), server = %slot.server, rule = %slot.rule, "inbound policy refused the request");
    Some(forbidden(Answer::for_request(req.headers())))
}

/// Largest plugin answer body used.
const MAX_PLUGIN_BODY: usize = 4096;

/// `Ok(None)`: allowed (headers applied); `Ok(Some(rsp))`: the plugin's refusal.
async fn ask_plugin<B>(
    shared: &Shared,
    conn: &ConnCtx,
    plugin: &conduit_policy::compile::Plugin,
    slot: &conduit_policy::Slot,
    req: &mut http::Request<B>,
) -> Result<Option<http::Response<Body>>, super::plugin::PluginError> {
    use conduit_controller_api::authz::v1 as pb;
    let mut headers = std::collections::HashMap::new();
    for name in &plugin.headers {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !values.is_empty() {
            headers.insert(name.as_str().to_owned(), values.join(", "));
        }
    }
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let check = pb::CheckRequest {
        peer_identity: conn
            .peer_identity
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default(),
        tls: conn.peer_identity.is_some(),
        peer_address: conn.client_addr.to_string(),
        method: req.method().to_string(),
        authority,
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        headers,
        server: slot.server.to_string(),
        rule: slot.rule.to_string(),
        port: conn.route.orig_dst.port().into(),
    };
    match shared.inbound_policy.plugins.check(plugin, check).await? {
        pb::check_response::Decision::Allow(a) => {
            let h = req.headers_mut();
            for name in &a.remove_headers {
                if let Ok(n) = http::HeaderName::from_bytes(name.as_bytes()) {
                    h.remove(n);
                }
            }
            for add in a.add_headers {
                match (
                    http::HeaderName::from_bytes(add.name.as_bytes()),
                    HeaderValue::from_str(&add.value),
                ) {
                    (Ok(n), Ok(v)) => {
                        h.insert(n, v);
                    }
                    _ => {
                        info!(plugin = %plugin.name, header = %add.name, "authorization plugin asked for an invalid header; ignored")
                    }
                }
            }
            Ok(None)
        }
        pb::check_response::Decision::Deny(deny) => {
            if let answer @ Answer::Grpc(_) = Answer::for_request(req.headers()) {
                return Ok(Some(forbidden(answer)));
            }
            let status = match deny.status {
                0 => StatusCode::FORBIDDEN,
                s => u16::try_from(s)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .unwrap_or(StatusCode::FORBIDDEN),
            };
            let mut body = deny.body;
            if body.len() > MAX_PLUGIN_BODY {
                let mut end = MAX_PLUGIN_BODY;
                while !body.is_char_boundary(end) {
                    end -= 1;
                }
                body.truncate(end);
            }
            let mut rsp = http::Response::new(crate::http::full(body));
            *rsp.status_mut() = status;
            for h in deny.headers {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(h.name.as_bytes()),
                    HeaderValue::from_str(&h.value),
                ) {
                    rsp.headers_mut().append(n, v);
                }
            }
            rsp.headers_mut().insert(
                ERROR_HEADER,
                HeaderValue::from_static("denied by authorization plugin"),
            );
            Ok(Some(rsp))
        }
    }
}

/// 403, or for gRPC a trailers-only response with status 7
/// (PERMISSION_DENIED): the proxy's error answer ([`error_response`]).
pub fn forbidden(answer: Answer) -> http::Response<Body> {
    error_response(ProxyError::Forbidden, answer)
}
