//! The inbound path. A connection addressed to the inbound port itself
//! comes from a peer proxy: it passes the [`Acceptor`](crate::transport::Acceptor)
//! (where mTLS goes), then names the application port and protocol in the
//! transport header. Any other connection was steered here by sk_lookup and
//! its original destination is its local address; it is detected like an
//! outbound one. Either way the application is reached on loopback at the
//! original port.

use crate::ctx::{ConnCtx, Shared};
use crate::http::{self, Proto};
use crate::io::{Activity, CountingIo, PrefixedIo};
use crate::metrics::{DetectLabels, Direction};
use crate::route::Route;
use crate::transport::{MeshProto, TransportHeader};
use std::net::SocketAddr;
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
            warn!(client = %client_addr, "inbound connection without an original destination: {e}; closing");
            shared.metrics.error(Direction::Inbound, "no_orig_dst");
            return;
        }
    };
    let app_ip = shared.cfg.inbound_app_ip;
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
        let route = Route::inbound(orig_dst, shared.cfg.inbound_app_addr(orig_dst));
        let c = conn(route, false, None, Proto::Http1);
        return crate::dispatch::serve_transparent(
            shared.clone(),
            c,
            CountingIo::new(tcp, activity.clone()),
        )
        .await;
    }
    // Addressed to the proxy: a peer proxy.
    let accepted = match shared.acceptor.accept(tcp).await {
        Ok(a) => a,
        Err(e) => {
            info!(client = %client_addr, "inbound peer connection refused by the acceptor: {e}");
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
            info!(client = %client_addr, "closing inbound connection: {e}");
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
    let app = SocketAddr::new(app_ip, header.port);
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
