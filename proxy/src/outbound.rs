//! The outbound path: connections the pod's applications made, captured to
//! the outbound listener. The original destination is looked up through
//! [`OrigDst`](crate::orig_dst::OrigDst) and resolved through discovery.

use crate::ctx::{ConnCtx, Shared};
use crate::http::Proto;
use crate::io::{Activity, CountingIo};
use crate::metrics::Direction;
use crate::route::{Route, RouteTarget};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;
use tracing::warn;

pub async fn handle(
    shared: Arc<Shared>,
    tcp: TcpStream,
    client_addr: SocketAddr,
    _listener: SocketAddr,
    activity: Arc<Activity>,
) {
    let orig_dst = match shared.outbound_orig_dst.orig_dst(&tcp) {
        Ok(a) => a,
        Err(e) => {
            warn!(client = %client_addr, "outbound connection without an original destination (not redirected?): {e}; closing");
            shared.metrics.error(Direction::Outbound, "no_orig_dst");
            return;
        }
    };
    if tcp.local_addr().is_ok_and(|l| l == orig_dst) {
        warn!(client = %client_addr, "outbound connection addressed to the proxy itself; closing to avoid a loop");
        shared.metrics.error(Direction::Outbound, "loop");
        return;
    }
    let route = Route::outbound(orig_dst, shared.balancers.get(orig_dst));
    // The first connection to a destination sets off its lookup: wait for
    // the answer (the first pick would wait for it anyway) so that metrics
    // name the service, not its address.
    if let RouteTarget::Balanced(b) = &route.target {
        b.answered(shared.balancers.config().endpoint_wait).await;
    }
    let dst_label = shared.metrics.dst(&route.dst_name());
    let conn = ConnCtx {
        direction: Direction::Outbound,
        client_addr,
        route,
        dst_label,
        source_proto: Proto::Http1,
        from_peer: false,
        peer_identity: None,
        peer_id: None,
        activity: activity.clone(),
        tunnels: TaskTracker::new(),
    };
    crate::dispatch::serve_transparent(shared, conn, CountingIo::new(tcp, activity)).await
}
