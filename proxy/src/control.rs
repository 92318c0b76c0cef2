//! The operator listener: the endpoints that change the proxy's state
//! (`POST /shutdown`) and the operator's tools (`GET /tap`, the live request
//! stream, [`crate::tap::server`]). It is bound to
//! loopback only (`--control-addr`, default `127.0.0.1:4190`; any other
//! address is refused at start), so only processes in the pod's own network
//! namespace reach it:
//!
//! * another pod cannot: its connection to `pod-ip:4190` is not accepted by
//!   a loopback socket, the agent's sk_lookup leaves the port alone (it is
//!   told as a skipped port), and a peer's transport header naming the port
//!   is refused by the inbound path ([`crate::inbound_target`]);
//! * the proxy itself never forwards anything to loopback unless a port is
//!   opted in, and its own ports cannot be opted in.
//!
//! With `--control-token-file`, a request must also carry
//! `Authorization: Bearer <the file's content>` (re-read on each request,
//! compared in constant time), for pods whose containers should not all be
//! able to stop the proxy.

use crate::admin::{Admin, text};
use crate::http::Body;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The operator listener's address must be loopback.
pub fn check_addr(addr: SocketAddr) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "--control-addr {addr} is not a loopback address: the operator listener changes the proxy's state and must not be reachable from the network"
        ))
    }
}

/// What authorizes a state-changing request.
#[derive(Debug, Clone)]
pub enum Credential {
    /// Reaching the loopback listener is enough.
    LoopbackOnly,
    /// Also a bearer token equal to this file's content (trimmed).
    TokenFile(PathBuf),
}

/// Why a request was not authorized.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("missing or malformed Authorization: Bearer header")]
    NoToken,
    #[error("wrong token")]
    WrongToken,
    #[error("the token file cannot be read: {0}")]
    Unreadable(String),
}

/// Checks the `Authorization` header value against the expected secret.
pub fn check_token(header: Option<&[u8]>, expected: &[u8]) -> Result<(), Denied> {
    let got = header
        .and_then(|h| h.strip_prefix(b"Bearer "))
        .ok_or(Denied::NoToken)?;
    if expected.is_empty() {
        return Err(Denied::Unreadable("the token file is empty".into()));
    }
    if constant_time_eq(got, expected) {
        Ok(())
    } else {
        Err(Denied::WrongToken)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn read_token(path: &Path) -> Result<Vec<u8>, Denied> {
    std::fs::read(path)
        .map(|t| t.trim_ascii().to_vec())
        .map_err(|e| Denied::Unreadable(format!("{}: {e}", path.display())))
}

impl Credential {
    fn authorize(&self, req: &Request<Incoming>) -> Result<(), Denied> {
        match self {
            Credential::LoopbackOnly => Ok(()),
            Credential::TokenFile(path) => {
                let expected = read_token(path)?;
                let header = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                check_token(header, &expected)
            }
        }
    }
}

fn route(
    admin: &Admin,
    cred: &Credential,
    tap: &Arc<crate::tap::Hub>,
    (client, local): (SocketAddr, SocketAddr),
    req: &Request<Incoming>,
) -> Response<Body> {
    if req.uri().path() == crate::tap::server::PATH
        && let Err(e) = cred.authorize(req)
    {
        return text(StatusCode::UNAUTHORIZED, format!("unauthorized: {e}\n"));
    }
    if let Some(rsp) = crate::tap::server::route(tap, client, local, req) {
        return rsp;
    }
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/shutdown") => match cred.authorize(req) {
            Ok(()) => {
                info!(%client, "shutdown requested through the operator listener");
                admin.shutdown.cancel();
                text(StatusCode::ACCEPTED, "draining\n")
            }
            Err(e) => {
                warn!(%client, error = %e, "refused POST /shutdown on the operator listener");
                text(StatusCode::UNAUTHORIZED, format!("unauthorized: {e}\n"))
            }
        },
        (_, "/shutdown") => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: try POST /shutdown\n"),
    }
}

/// Serves the operator endpoints until `stop` is cancelled.
pub async fn serve(
    admin: Arc<Admin>,
    cred: Credential,
    tap: Arc<crate::tap::Hub>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    // Accepted connections inherit this: a stalled tap reader holds at most
    // this much in the kernel (not the megabytes loopback autotuning allows).
    if let Err(e) =
        socket2::SockRef::from(&listener).set_send_buffer_size(crate::tap::server::SNDBUF)
    {
        warn!(error = %e, "bounding the operator listener's send buffer");
    }
    crate::admin::serve_with(listener, stop, move |client, req| {
        route(&admin, &cred, &tap, (client, local), req)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses() {
        for (addr, ok) in [
            ("127.0.0.1:4190", true),
            ("[::1]:4190", true),
            ("127.0.0.2:1", true),
            ("0.0.0.0:4190", false),
            ("[::]:4190", false),
            ("10.0.0.7:4190", false),
        ] {
            assert_eq!(check_addr(addr.parse().unwrap()).is_ok(), ok, "{addr}");
        }
    }

    /// (Authorization header, the file's secret, expected outcome)
    type TokenCase<'a> = (Option<&'a [u8]>, &'a [u8], Result<(), Denied>);

    #[test]
    fn tokens() {
        let cases: &[TokenCase<'_>] = &[
            (Some(b"Bearer s3cret"), b"s3cret", Ok(())),
            (Some(b"Bearer s3cre"), b"s3cret", Err(Denied::WrongToken)),
            (Some(b"Bearer s3cretx"), b"s3cret", Err(Denied::WrongToken)),
            (Some(b"Basic s3cret"), b"s3cret", Err(Denied::NoToken)),
            (Some(b"s3cret"), b"s3cret", Err(Denied::NoToken)),
            (None, b"s3cret", Err(Denied::NoToken)),
            (
                Some(b"Bearer "),
                b"",
                Err(Denied::Unreadable("the token file is empty".into())),
            ),
        ];
        for (header, expected, want) in cases {
            assert_eq!(&check_token(*header, expected), want, "{header:?}");
        }
    }
}
