//! Listeners and the accept loop shared by both directions: binding (an
//! IPv6 address is bound IPv6-only so `[::]` and `0.0.0.0` can share a
//! port), a per-direction connection limit, connection metrics, and a
//! stop on drain.

use crate::ctx::Shared;
use crate::io::Activity;
use crate::metrics::{DirLabels, Direction, ReasonLabels};
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind_with(addr, true)
}

/// `[::]:port` accepting IPv4 too (IPV6_V6ONLY off): one socket the agent's
/// sk_lookup can hand connections of both families to.
pub fn bind_dual_stack(port: u16) -> std::io::Result<TcpListener> {
    bind_with(
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
        false,
    )
}

fn bind_with(addr: SocketAddr, only_v6: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(only_v6)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// What a direction does with an accepted connection.
pub type Handler =
    fn(Arc<Shared>, TcpStream, SocketAddr, SocketAddr, Arc<Activity>) -> BoxFuture<'static, ()>;

/// Accepts until draining starts. `limit` is shared by the direction's listeners.
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    direction: Direction,
    limit: Arc<Semaphore>,
    handler: Handler,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return warn!(error = %e, "listener has no local address"),
    };
    let dir = DirLabels {
        direction: direction.as_str(),
    };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.shutdown.cancelled() => break,
        };
        let (tcp, client) = match accepted {
            Ok((tcp, client)) => (tcp, crate::orig_dst::unmapped(client)),
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                warn!(%local, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(direction = direction.as_str(), %client, max = shared.cfg.max_connections,
                "connection limit reached; closing new connection");
            let reason = ReasonLabels {
                direction: direction.as_str(),
                reason: "connection_limit",
            };
            shared.metrics.refused.get_or_create(&reason).inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let m = &shared.metrics;
        m.tcp_open.get_or_create(&dir).inc();
        m.tcp_open_connections.get_or_create(&dir).inc();
        let activity = Activity::metered(
            m.tcp_read_bytes.get_or_create(&dir).clone(),
            m.tcp_write_bytes.get_or_create(&dir).clone(),
        );
        let fut = handler(shared.clone(), tcp, client, local, activity);
        let (shared2, dir2) = (shared.clone(), dir.clone());
        shared.tracker.spawn(async move {
            fut.await;
            shared2.metrics.tcp_close.get_or_create(&dir2).inc();
            shared2
                .metrics
                .tcp_open_connections
                .get_or_create(&dir2)
                .dec();
            drop(permit);
        });
    }
    debug!(%local, "listener stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ipv4_and_ipv6_wildcards_share_a_port() {
        let v4 = bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = v4.local_addr().unwrap().port();
        match bind(SocketAddr::from(([0u16; 8], port))) {
            Ok(v6) => assert_eq!(v6.local_addr().unwrap().port(), port),
            // A kernel without IPv6 cannot test this; say so.
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => eprintln!("no IPv6: {e}"),
            Err(e) => panic!("[::]:{port} beside 0.0.0.0:{port}: {e}"),
        }
    }
}
