//! The outbound path: connections the pod's applications made, captured to
//! the outbound listener. The original destination is looked up through
//! [`OrigDst`](crate::orig_dst::OrigDst), resolved by the per-destination
//! cache and decided by [`route::decide`]: balanced, or, for a destination
//! discovery did not resolve, out unchanged only when
//! [`for_unresolved`](crate::transport::intent::for_unresolved) allows it; otherwise the client's connection is
//! reset (logged, counted in `conduit_outbound_refused_total`): with the
//! controller away, a new destination inside the cluster's networks is
//! refused, never downgraded to plaintext.

use crate::ctx::{ConnCtx, Shared};
use crate::http::Proto;
use crate::io::{Activity, CountingIo};
use crate::metrics::Direction;
use crate::metrics::WhyLabels;
use crate::route::{self, Route, Target};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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
    let lookup = shared.balancers.lookup(orig_dst);
    let target = match route::decide(lookup, orig_dst, &shared.cfg.cluster_networks) {
        Ok(target) => target,
        Err(refusal) => {
            warn!(client = %client_addr, dst = %orig_dst, reason = refusal.as_str(), "outbound connection refused: {refusal}");
            shared
                .metrics
                .outbound_refused
                .get_or_create(&WhyLabels {
                    reason: refusal.as_str(),
                })
                .inc();
            // A reset, so the client fails at once rather than seeing an
            // orderly close (a zero linger never blocks).
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            return;
        }
    };
    let route = Route::outbound(orig_dst, target);
    // The first connection to a destination sets off its lookup: wait for
    // the answer (the first pick would wait for it anyway) so that metrics
    // name the service, not its address.
    if let Target::Balanced(b) = &route.target {
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
        activity: activity.clone(),
        tunnels: TaskTracker::new(),
    };
    crate::dispatch::serve_transparent(shared, conn, CountingIo::new(tcp, activity)).await
}
