//! Upstream HTTP connections: HTTP/1.1 connections pooled per upstream
//! (keep-alive, reused when idle) and [`H2_CONNECTIONS`] multiplexed HTTP/2
//! connections per upstream, taken in turn. Peer proxies are always reached
//! over HTTP/2, so all HTTP between two proxies shares those connections.

use super::Body;
use crate::transport::{self, Connector, MeshProto, NextHop};
use conduit_base::sync::Unpoisoned;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::debug;

/// An error, and the request when none of it was sent.
pub type Unsent = (ClientError, Option<http::Request<Body>>);

/// A request sent on a pooled HTTP/1 connection (the response to come),
/// or handed back when no pooled connection was ready.
#[expect(
    clippy::large_enum_variant,
    reason = "the request moves by value either way; boxing it would cost an allocation per request"
)]
enum OnIdle<F> {
    Sent(F),
    NoneReady(http::Request<Body>),
}

/// What hyper's `try_send_request` on an HTTP/1 connection resolves to.
type H1Sent =
    Result<http::Response<Incoming>, hyper::client::conn::TrySendError<http::Request<Body>>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: std::net::SocketAddr,
        source: hyper::Error,
    },
    #[error("request to {addr}: {source}")]
    Request {
        addr: std::net::SocketAddr,
        source: hyper::Error,
    },
}

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub idle_timeout: Duration,
    pub max_idle_per_upstream: usize,
    pub max_header_bytes: usize,
}

type H2Slot = Arc<tokio::sync::Mutex<Option<http2::SendRequest<Body>>>>;
/// The pools' maps are looked up on every request: foldhash, seeded at
/// random per process and map (the keys come from discovery, not from
/// clients), costs a fraction of the default SipHash over a `NextHop`.
type Pool<V> = std::collections::HashMap<NextHop, V, foldhash::fast::RandomState>;
/// Idle (or busy) HTTP/1 connections of one upstream, with when each was last handed back.
type H1Idle = Vec<(Instant, http1::SendRequest<Body>)>;

pub struct Client {
    connector: Arc<dyn Connector>,
    settings: ClientSettings,
    h1: Mutex<Pool<H1Idle>>,
    h2: Mutex<Pool<[H2Slot; H2_CONNECTIONS]>>,
    h2_next: AtomicUsize,
}

/// What a pooled HTTP/1 connection is to the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooled {
    /// A request is in flight on it.
    Busy,
    /// Closed, or idle for `timeout` or more (the server may be closing
    /// it): dropped from the pool.
    Gone,
    /// Idle and fresh: the request goes on it.
    Ready,
}

/// Under load most of an upstream's connections are busy, and a request
/// looks at them until it meets a ready one: the clock arithmetic
/// (`idle_for`) only for the ready ones.
fn pooled(
    closed: bool,
    ready: bool,
    idle_for: impl FnOnce() -> Duration,
    timeout: Duration,
) -> Pooled {
    match (closed, ready) {
        (true, _) => Pooled::Gone,
        (false, false) => Pooled::Busy,
        (false, true) if idle_for() < timeout => Pooled::Ready,
        (false, true) => Pooled::Gone,
    }
}

/// HTTP/2 connections per upstream (a peer proxy, an HTTP/2 application),
/// requests spread over them in turn. One connection's reads, writes,
/// framing and TLS are one task, so under load every request through the
/// mesh queued behind that one task on one core; two let both cores of a
/// small node work on one peer's traffic (mesh benchmark, HTTP/2 at the
/// maximum rate: 0.22x direct with one, 0.30x with two, 0.27x with four;
/// docs/benchmarks.md, with one runtime worker per core). On the default
/// one-thread runtime (`--workers 1`) two still beat one and four at the
/// HTTP/2 maximum rate (0.30x against 0.25x and 0.25-0.32x, interleaved
/// runs), though one costs 4% fewer instructions per request in user
/// space (docs/benchmarks.md, "How many HTTP/2 connections per peer").
/// Each costs an idle upstream connection's memory.
pub const H2_CONNECTIONS: usize = 2;

impl Client {
    pub fn new(connector: Arc<dyn Connector>, settings: ClientSettings) -> Self {
        Self {
            connector,
            settings,
            h1: Mutex::default(),
            h2: Mutex::default(),
            h2_next: Default::default(),
        }
    }

    pub fn connector(&self) -> &Arc<dyn Connector> {
        &self.connector
    }

    pub async fn send(
        &self,
        up: &NextHop,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, ClientError> {
        self.send_or_return(up, req).await.map_err(|(e, _)| e)
    }

    /// Like [`Client::send`]; when no connection could be set up (nothing
    /// of the request was sent) the request comes back with the error, so
    /// it can be tried on another endpoint whatever its method.
    pub async fn send_or_return(
        &self,
        up: &NextHop,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, Unsent> {
        match up.proto {
            MeshProto::H2 => match self.h2_sender(up).await {
                Ok(sender) => self.send_h2(up, sender, req).await,
                Err(e) => Err((e, Some(req))),
            },
            // An HTTP hop carries `H2` or `Http1` (`MeshProto::http`).
            MeshProto::Http1 | MeshProto::Tcp => self.send_h1(up, req).await,
        }
    }

    async fn send_h1(
        &self,
        up: &NextHop,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, Unsent> {
        let addr = up.addr;
        // A pooled connection may have been closed by the server just now;
        // hyper hands the request back if it was never written, and we try
        // a fresh connection.
        let req = match self.send_on_idle_h1(up, req) {
            OnIdle::Sent(fut) => match fut.await {
                Ok(rsp) => return Ok(rsp),
                Err(mut e) => match e.take_message() {
                    Some(r) => r,
                    None => {
                        return Err((
                            ClientError::Request {
                                addr,
                                source: e.into_error(),
                            },
                            None,
                        ));
                    }
                },
            },
            OnIdle::NoneReady(req) => req,
        };
        let mut sender = match self.connect_h1(up, false).await {
            Ok(s) => s,
            Err(e) => return Err((e, Some(req))),
        };
        let fut = sender.send_request(req);
        self.put_h1(up, sender);
        fut.await
            .map_err(|source| (ClientError::Request { addr, source }, None))
    }

    /// Sends `req` on a ready pooled connection of `up`, if there is one
    /// (the connection stays in the pool, marked used now), else `req`
    /// back. One map lookup and one clock read per request; the connections
    /// are looked at until a ready one (closed and stale ones met on the way
    /// are dropped).
    fn send_on_idle_h1(
        &self,
        up: &NextHop,
        req: http::Request<Body>,
    ) -> OnIdle<impl Future<Output = H1Sent> + use<>> {
        let mut pool = self.h1.locked();
        let Some(idle) = pool.get_mut(up) else {
            return OnIdle::NoneReady(req);
        };
        let now = Instant::now();
        let timeout = self.settings.idle_timeout;
        let mut i = 0;
        while let Some((used, sender)) = idle.get_mut(i) {
            match pooled(
                sender.is_closed(),
                sender.is_ready(),
                || now.duration_since(*used),
                timeout,
            ) {
                Pooled::Busy => i += 1,
                Pooled::Gone => drop(idle.swap_remove(i)),
                Pooled::Ready => {
                    *used = now;
                    return OnIdle::Sent(sender.try_send_request(req));
                }
            }
        }
        OnIdle::NoneReady(req)
    }

    fn put_h1(&self, up: &NextHop, sender: http1::SendRequest<Body>) {
        let mut pool = self.h1.locked();
        // Cloning the key only for a new upstream.
        let idle = match pool.get_mut(up) {
            Some(idle) => idle,
            None => pool.entry(up.clone()).or_default(),
        };
        if idle.len() >= self.settings.max_idle_per_upstream {
            // Closed ones are otherwise dropped only when met on the way
            // to a ready one, or by the periodic sweep.
            idle.retain(|(_, s)| !s.is_closed());
        }
        if idle.len() < self.settings.max_idle_per_upstream {
            idle.push((Instant::now(), sender));
        }
    }

    /// A new HTTP/1.1 connection. `upgrades` keeps the connection usable
    /// as a byte stream after a 101 or a CONNECT.
    pub async fn connect_h1(
        &self,
        up: &NextHop,
        upgrades: bool,
    ) -> Result<http1::SendRequest<Body>, ClientError> {
        let addr = up.addr;
        let io = transport::open(&*self.connector, up)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let (sender, conn) = http1::Builder::new()
            .max_buf_size(self.settings.max_header_bytes.max(8192))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| ClientError::Handshake { addr, source })?;
        tokio::spawn(async move {
            let res = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
            if let Err(e) = res {
                debug!(%addr, error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Ok(sender)
    }

    async fn send_h2(
        &self,
        up: &NextHop,
        mut sender: http2::SendRequest<Body>,
        req: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, Unsent> {
        let addr = up.addr;
        if let Err(source) = sender.ready().await {
            // The connection closed (e.g. the peer's GOAWAY): not sent.
            return Err((ClientError::Request { addr, source }, Some(req)));
        }
        // hyper hands the request back when the connection refused it
        // before sending (a stream above a GOAWAY's last id): not sent.
        sender.try_send_request(req).await.map_err(|mut e| {
            let req = e.take_message();
            (
                ClientError::Request {
                    addr,
                    source: e.into_error(),
                },
                req,
            )
        })
    }

    async fn h2_sender(&self, up: &NextHop) -> Result<http2::SendRequest<Body>, ClientError> {
        let slot = {
            let mut pool = self.h2.locked();
            // Cloning the key only for a new upstream.
            let i = self.h2_next.fetch_add(1, Ordering::Relaxed) % H2_CONNECTIONS;
            match pool.get(up) {
                Some(slots) => slots[i].clone(),
                None => pool.entry(up.clone()).or_default()[i].clone(),
            }
        };
        // Fast path: an open connection, no waiting behind a connect.
        if let Ok(g) = slot.try_lock()
            && let Some(s) = g.as_ref().filter(|s| !s.is_closed())
        {
            return Ok(s.clone());
        }
        // Boxed: the connect and the handshake are KBs of future, which
        // every request's future would otherwise carry (and copy).
        Box::pin(self.connect_h2(up, slot)).await
    }

    /// The HTTP/2 connection of `slot`: the open one, or a new one (one
    /// connect at a time per upstream; the others wait for it).
    async fn connect_h2(
        &self,
        up: &NextHop,
        slot: H2Slot,
    ) -> Result<http2::SendRequest<Body>, ClientError> {
        let mut guard = slot.lock().await;
        if let Some(s) = guard.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let addr = up.addr;
        let io = transport::open(&*self.connector, up)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let (sender, conn) = http2::Builder::new(super::BoxingExecutor)
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .adaptive_window(true)
            .max_header_list_size(self.settings.max_header_bytes as u32)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| ClientError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *guard = Some(sender.clone());
        Ok(sender)
    }

    /// Drops pooled connections that are closed or idle too long.
    pub fn sweep(&self) {
        let timeout = self.settings.idle_timeout;
        let mut h1 = self.h1.locked();
        h1.retain(|_, idle| {
            idle.retain(|(t, s)| {
                pooled(s.is_closed(), s.is_ready(), || t.elapsed(), timeout) != Pooled::Gone
            });
            !idle.is_empty()
        });
        drop(h1);
        let mut h2 = self.h2.locked();
        h2.retain(|_, slots| {
            slots.iter().any(|slot| match slot.try_lock() {
                Ok(g) => g.as_ref().is_some_and(|s| !s.is_closed()),
                Err(_) => true,
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_pooled_h1_connection_is_to_the_next_request() {
        let timeout = Duration::from_secs(30);
        // (closed, ready, idle for, what it is, clock read)
        let cases = [
            (false, false, 0, Pooled::Busy, false),
            (false, false, 60, Pooled::Busy, false),
            (false, true, 29, Pooled::Ready, true),
            (false, true, 30, Pooled::Gone, true),
            (false, true, 60, Pooled::Gone, true),
            (true, false, 0, Pooled::Gone, false),
            (true, true, 0, Pooled::Gone, false),
        ];
        for (closed, ready, idle_secs, want, want_clock) in cases {
            let mut clock = false;
            let got = pooled(
                closed,
                ready,
                || {
                    clock = true;
                    Duration::from_secs(idle_secs)
                },
                timeout,
            );
            assert_eq!(
                (got, clock),
                (want, want_clock),
                "closed {closed} ready {ready} idle {idle_secs}s"
            );
        }
    }
}
