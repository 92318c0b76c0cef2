//! Listeners and the accept loop shared by both directions: binding the
//! proxy's listeners ([`Listeners`]; an
//! IPv6 address is bound IPv6-only so `[::]` and `0.0.0.0` can share a
//! port), a per-direction connection limit, connection metrics, and a
//! stop on drain.

use crate::config::Config;
use crate::ctx::Shared;
use crate::inbound_target::InboundPorts;
use crate::io::Activity;
use crate::metrics::{DirLabels, Direction, ReasonLabels};
use anyhow::Context as _;
use futures::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// The proxy's bound listeners and their addresses.
pub(crate) struct Listeners {
    pub(crate) outbound: Vec<TcpListener>,
    pub(crate) inbound: Vec<TcpListener>,
    pub(crate) admin: TcpListener,
    pub(crate) control: TcpListener,
    pub(crate) outbound_addrs: Vec<SocketAddr>,
    pub(crate) inbound_addrs: Vec<SocketAddr>,
    pub(crate) admin_addr: SocketAddr,
    pub(crate) control_addr: SocketAddr,
}

impl Listeners {
    /// Binds every listener; the operator port joins the skipped inbound
    /// ports: the agent's capture leaves it alone (as it does the ports it
    /// knows as the proxy's), so another pod dialling pod-ip:4190 is never
    /// steered to the proxy.
    pub(crate) fn bind(cfg: &mut Config) -> anyhow::Result<Self> {
        let outbound = bind_all(&cfg.outbound_addrs, "outbound")?;
        let inbound = bind_inbound(&cfg.inbound_addrs)?;
        let admin = bind(cfg.admin_addr)
            .with_context(|| format!("binding the admin listener on {}", cfg.admin_addr))?;
        let control = bind(cfg.control_addr)
            .with_context(|| format!("binding the operator listener on {}", cfg.control_addr))?;
        let control_addr = control.local_addr()?;
        if !cfg.skip_inbound_ports.contains(&control_addr.port()) {
            cfg.skip_inbound_ports.push(control_addr.port());
        }
        Ok(Listeners {
            outbound_addrs: addrs(&outbound),
            inbound_addrs: addrs(&inbound),
            admin_addr: admin.local_addr()?,
            control_addr,
            outbound,
            inbound,
            admin,
            control,
        })
    }

    /// The inbound decision's ports, given every address listened on.
    pub(crate) fn inbound_ports(&self, cfg: &Config) -> InboundPorts {
        let listening: Vec<SocketAddr> = self
            .outbound_addrs
            .iter()
            .chain(&self.inbound_addrs)
            .chain([&self.admin_addr, &self.control_addr])
            .copied()
            .collect();
        inbound_ports(cfg, &listening)
    }
}

fn bind_all(addrs: &[SocketAddr], what: &str) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for a in addrs {
        match bind(*a) {
            Ok(l) => out.push(l),
            // IPv6 may be missing in a pod; the IPv4 listener is enough.
            Err(e) if a.is_ipv6() && addrs.len() > 1 => {
                warn!("{what} listener {a} not bound (IPv6 unavailable?): {e}")
            }
            Err(e) => return Err(e).with_context(|| format!("binding the {what} listener on {a}")),
        }
    }
    Ok(out)
}

/// The inbound listeners. `0.0.0.0:P` and `[::]:P` together become one
/// dual-stack `[::]:P` socket, first in the list: the node agent's
/// sk_lookup steers a pod's inbound connections, IPv4 and IPv6, to the one
/// listener the proxy registers, and a socket takes only the families it
/// is bound for. Without IPv6 in the pod, the IPv4 socket alone.
fn bind_inbound(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let wildcard_pair = addrs.iter().find_map(|a| {
        let v4 = SocketAddr::from(([0, 0, 0, 0], a.port()));
        let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, a.port()));
        (addrs.contains(&v4) && addrs.contains(&v6)).then_some((v4, v6))
    });
    let Some((v4, v6)) = wildcard_pair else {
        return bind_all(addrs, "inbound");
    };
    match bind_dual_stack(v4.port()) {
        Ok(dual) => {
            let rest: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| *a != v4 && *a != v6)
                .collect();
            let mut out = vec![dual];
            out.extend(bind_all(&rest, "inbound")?);
            Ok(out)
        }
        Err(e) => {
            warn!("inbound listener {v6} (dual-stack) not bound (IPv6 unavailable?): {e}");
            let rest: Vec<SocketAddr> = addrs.iter().copied().filter(|a| *a != v6).collect();
            bind_all(&rest, "inbound")
        }
    }
}

fn addrs(ls: &[TcpListener]) -> Vec<SocketAddr> {
    ls.iter().filter_map(|l| l.local_addr().ok()).collect()
}

/// The inbound decision's ports: every port the proxy listens on, the
/// skipped ones, and the loopback opt-ins.
fn inbound_ports(cfg: &Config, listening: &[SocketAddr]) -> InboundPorts {
    InboundPorts {
        proxy: listening.iter().map(|a| a.port()).collect(),
        skipped: cfg.skip_inbound_ports.iter().copied().collect(),
        loopback: cfg.inbound_loopback_ports.iter().copied().collect(),
    }
}

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
        Err(e) => return warn!("listener has no local address: {e}"),
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
                warn!(%local, "accept failed: {e}");
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
