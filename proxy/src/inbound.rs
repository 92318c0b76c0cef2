//! The inbound path. A connection addressed to the inbound port itself
//! comes from a peer proxy: it passes the [`Acceptor`](crate::transport::Acceptor)
//! (where mTLS goes), then names the application port and protocol in the
//! transport header. Any other connection was steered here by sk_lookup and
//! its original destination is its local address; it is detected like an
//! outbound one. Either way the application is reached at the pod's own
//! address (the local address dialled), never on loopback unless the port
//! is opted in; the proxy's own ports and skipped ports are refused (see
//! [`crate::inbound_target`]).

use crate::ctx::{ConnCtx, Shared};
use crate::http::{self, Proto};
use crate::io::{Activity, CountingIo, Io, PrefixedIo};
use crate::metrics::ReasonLabels;
use crate::metrics::{DetectLabels, Direction};
use crate::protocol::Serve;
use crate::route::Route;
use crate::transport::TransportHeader;
use bytes::Bytes;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Serves one accepted inbound connection: a steered one
/// ([`serve_steered`]) or a peer proxy's ([`serve_peer`]).
pub async fn handle(
    shared: Arc<Shared>,
    tcp: TcpStream,
    client_addr: SocketAddr,
    listener: SocketAddr,
    activity: Arc<Activity>,
) {
    let orig_dst = match shared.inbound_orig_dst.orig_dst(&tcp) {
        Ok(o) => o,
        Err(e) => {
            warn!(client = %client_addr, "inbound connection without an original destination: {e}; closing");
            shared.metrics.error(Direction::Inbound, "no_orig_dst");
            return;
        }
    };
    let conn = Inbound {
        shared,
        client_addr,
        activity,
    };
    if orig_dst.port() != listener.port() {
        conn.serve_steered(tcp, orig_dst).await
    } else {
        // Addressed to the proxy: a peer proxy. The application is reached
        // at the local address it dialled.
        conn.serve_peer(tcp, orig_dst.ip()).await
    }
}

/// Who an inbound connection comes from.
enum Source {
    /// A client steered here by sk_lookup (no transport header, no identity).
    Steered,
    /// A peer proxy, with the identity its certificate proved (`None`
    /// without mTLS).
    Peer(Option<conduit_proxy_tls::SpiffeId>),
}

/// One accepted inbound connection, before its route is known.
struct Inbound {
    shared: Arc<Shared>,
    client_addr: SocketAddr,
    activity: Arc<Activity>,
}

impl Inbound {
    /// A connection steered here by sk_lookup: its original destination is
    /// the application's address; detected like an outbound one.
    async fn serve_steered(self, tcp: TcpStream, orig_dst: SocketAddr) {
        let Some(app) = self.app_target(orig_dst.ip(), orig_dst.port(), false) else {
            return;
        };
        let c = self.context(Route::inbound(orig_dst, app), Source::Steered, Proto::Http1);
        let io = CountingIo::new(tcp, self.activity.clone());
        crate::dispatch::serve_transparent(self.shared.clone(), c, io).await
    }

    /// A peer proxy's connection: the acceptor (mTLS), then the transport
    /// header names the application port and the protocol.
    async fn serve_peer(self, tcp: TcpStream, local_ip: IpAddr) {
        let accepted = match self.shared.acceptor.accept(tcp).await {
            Ok(a) => a,
            Err(e) => {
                info!(client = %self.client_addr, "inbound peer connection refused by the acceptor: {e}");
                self.shared.metrics.error(Direction::Inbound, "accept");
                return;
            }
        };
        let mut io = CountingIo::new(accepted.io, self.activity.clone());
        let Some((header, rest)) = self.read_header(&mut io).await else {
            return;
        };
        self.shared
            .metrics
            .detect
            .get_or_create(&DetectLabels {
                direction: "inbound",
                protocol: header.proto.detect_label(),
            })
            .inc();
        let Some(app) = self.app_target(local_ip, header.port, true) else {
            return;
        };
        let route = Route::inbound(app, app);
        let io = PrefixedIo::new(rest, io);
        let peer = Source::Peer(accepted.peer_identity);
        match header.proto.serve() {
            Serve::Opaque => {
                let c = self.context(route, peer, Proto::Http1);
                crate::tcp::forward(&self.shared, &c, io).await
            }
            Serve::Http(version) => {
                let c = self.context(route, peer, version);
                http::server::serve(self.shared.clone(), Arc::new(c), io).await
            }
        }
    }

    /// The peer's transport header (and any bytes read past it), or `None`
    /// after logging and counting why there is none.
    async fn read_header(&self, io: &mut impl Io) -> Option<(TransportHeader, Bytes)> {
        let wait = self.shared.cfg.detect_timeout;
        let why = match tokio::time::timeout(wait, TransportHeader::read(io)).await {
            Ok(Ok(h)) => return Some(h),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no transport header within {wait:?}"),
        };
        info!(client = %self.client_addr, "closing inbound connection: {why}");
        self.shared
            .metrics
            .error(Direction::Inbound, "transport_header");
        None
    }

    /// The connection's context once routed.
    fn context(&self, route: Route, source: Source, source_proto: Proto) -> ConnCtx {
        let dst_label = self
            .shared
            .metrics
            .dst(&format!("app:{}", route.orig_dst.port()));
        let (from_peer, peer_identity) = match source {
            Source::Steered => (false, None),
            Source::Peer(identity) => (true, identity),
        };
        ConnCtx {
            direction: Direction::Inbound,
            client_addr: self.client_addr,
            route,
            dst_label,
            source_proto,
            from_peer,
            peer_identity,
            activity: self.activity.clone(),
            tunnels: TaskTracker::new(),
        }
    }

    fn app_target(&self, local: IpAddr, port: u16, from_peer: bool) -> Option<SocketAddr> {
        app_target(&self.shared, self.client_addr, local, port, from_peer)
    }
}

/// The application address, or `None` after logging and counting a refusal.
fn app_target(
    shared: &Shared,
    client: SocketAddr,
    local: IpAddr,
    port: u16,
    from_peer: bool,
) -> Option<SocketAddr> {
    match shared.inbound_ports.app_target(local, port) {
        Ok(app) => Some(app),
        Err(refused) => {
            let how = if from_peer {
                "a peer's transport header names"
            } else {
                "a steered connection is for"
            };
            warn!(%client, port, reason = refused.reason(), "refused inbound connection: {how} port {port}: {refused}");
            shared
                .metrics
                .refused
                .get_or_create(&ReasonLabels {
                    direction: Direction::Inbound.as_str(),
                    reason: refused.reason(),
                })
                .inc();
            None
        }
    }
}
