//! The outbound path: connections the pod's applications made, captured to
//! the outbound listener. The original destination is looked up through
//! [`OrigDst`](crate::orig_dst::OrigDst) and resolved through discovery.
//! A destination discovery did not resolve goes out unchanged only when
//! [`intent::for_unresolved`] allows it; otherwise the client's connection is
//! reset (logged, counted in `conduit_outbound_refused_total`): with the
//! controller away, a new destination inside the cluster's networks is
//! refused, never downgraded to plaintext.

use crate::balance::Lookup;
use crate::ctx::{ConnCtx, Shared};
use crate::http::Proto;
use crate::io::{Activity, CountingIo};
use crate::metrics::Direction;
use crate::metrics::WhyLabels;
use crate::route::{Route, RouteTarget};
use crate::transport::intent::{self, Unresolved};
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
            warn!(client = %client_addr, error = %e, "outbound connection without an original destination (not redirected?); closing");
            shared.metrics.error(Direction::Outbound, "no_orig_dst");
            return;
        }
    };
    if tcp.local_addr().is_ok_and(|l| l == orig_dst) {
        warn!(client = %client_addr, "outbound connection addressed to the proxy itself; closing to avoid a loop");
        shared.metrics.error(Direction::Outbound, "loop");
        return;
    }
    let target = match shared.balancers.lookup(orig_dst) {
        Lookup::Balanced(b) => Some(RouteTarget::Balanced(b)),
        Lookup::Unknown => direct(&shared, Unresolved::Unknown, orig_dst, client_addr),
        Lookup::Unanswered => direct(&shared, Unresolved::Unanswered, orig_dst, client_addr),
    };
    let Some(target) = target else {
        // A reset, so the client fails at once rather than seeing an
        // orderly close (a zero linger never blocks).
        let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
        return;
    };
    let route = Route::outbound(orig_dst, target);
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

/// The direct route for a destination discovery did not resolve, or `None`
/// (logged and counted) when it must be refused.
fn direct(
    shared: &Shared,
    what: Unresolved,
    orig_dst: SocketAddr,
    client_addr: SocketAddr,
) -> Option<RouteTarget> {
    match intent::for_unresolved(what, orig_dst.ip(), &shared.cfg.cluster_networks) {
        Ok(why) => Some(RouteTarget::Direct(orig_dst, why)),
        Err(refusal) => {
            warn!(client = %client_addr, dst = %orig_dst, reason = refusal.as_str(), "outbound connection refused: {refusal}");
            shared
                .metrics
                .outbound_refused
                .get_or_create(&WhyLabels {
                    reason: refusal.as_str(),
                })
                .inc();
            None
        }
    }
}
