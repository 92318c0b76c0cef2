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
use crate::io::{Activity, CountingIo, PrefixedIo};
use crate::metrics::ReasonLabels;
use crate::metrics::{DetectLabels, Direction};
use crate::route::Route;
use crate::transport::{MeshProto, TransportHeader};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

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
            warn!(client = %client_addr, error = %e, "inbound connection without an original destination; closing");
            shared.metrics.error(Direction::Inbound, "no_orig_dst");
            return;
        }
    };
    let conn = |route: Route, from_peer, peer_identity: Option<String>, source_proto| {
        let dst_label = shared
            .metrics
            .dst(&format!("app:{}", route.orig_dst.port()));
        ConnCtx {
            direction: Direction::Inbound,
            client_addr,
            route,
            dst_label,
            source_proto,
            from_peer,
            // Parsed once here for the inbound policy (crate::policy).
            peer_id: crate::policy::parse_peer_identity(peer_identity.as_deref()),
            peer_identity,
            activity: activity.clone(),
            tunnels: TaskTracker::new(),
        }
    };
    if orig_dst.port() != listener.port() {
        let app = match app_target(&shared, client_addr, orig_dst.ip(), orig_dst.port(), false) {
            Some(app) => app,
            None => return,
        };
        let route = Route::inbound(orig_dst, app);
        let c = conn(route, false, None, Proto::Http1);
        return crate::dispatch::serve_transparent(
            shared.clone(),
            c,
            CountingIo::new(tcp, activity.clone()),
        )
        .await;
    }
    // Addressed to the proxy: a peer proxy. The application is reached at
    // the local address it dialled.
    let local_ip = orig_dst.ip();
    let accepted = match shared.acceptor.accept(tcp).await {
        Ok(a) => a,
        Err(e) => {
            info!(client = %client_addr, error = %e, "inbound peer connection refused by the acceptor");
            shared.metrics.error(Direction::Inbound, "accept");
            return;
        }
    };
    let mut io = CountingIo::new(accepted.io, activity.clone());
    let (header, rest) = match tokio::time::timeout(
        shared.cfg.detect_timeout,
        TransportHeader::read(&mut io),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            info!(client = %client_addr, error = %e, "closing inbound connection");
            shared.metrics.error(Direction::Inbound, "transport_header");
            return;
        }
        Err(_) => {
            info!(client = %client_addr, "closing inbound connection: no transport header within {:?}", shared.cfg.detect_timeout);
            shared.metrics.error(Direction::Inbound, "transport_header");
            return;
        }
    };
    let protocol = match header.proto {
        MeshProto::H2 => "peer_h2",
        MeshProto::Http1 => "peer_http1",
        MeshProto::Tcp => "peer_tcp",
    };
    shared
        .metrics
        .detect
        .get_or_create(&DetectLabels {
            direction: "inbound",
            protocol,
        })
        .inc();
    let Some(app) = app_target(&shared, client_addr, local_ip, header.port, true) else {
        return;
    };
    let route = Route::inbound(app, app);
    let io = PrefixedIo::new(rest, io);
    match header.proto {
        MeshProto::Tcp => {
            let c = conn(route, true, accepted.peer_identity, Proto::Http1);
            crate::tcp::forward(&shared, &c, io).await
        }
        MeshProto::H2 | MeshProto::Http1 => {
            let proto = if header.proto == MeshProto::H2 {
                Proto::Http2
            } else {
                Proto::Http1
            };
            let c = conn(route, true, accepted.peer_identity, proto);
            http::server::serve(shared.clone(), Arc::new(c), io).await
        }
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
