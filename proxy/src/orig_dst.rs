//! Where an accepted connection was originally going. Kernel-dependent, so
//! it sits behind [`OrigDst`]: production uses `SO_ORIGINAL_DST` (outbound,
//! answered by iptables REDIRECT's conntrack or by the agent's
//! `cgroup/getsockopt` program) and the local address (inbound, steered by
//! `sk_lookup` without NAT); tests on loopback inject a fixed address.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use tokio::net::TcpStream;

/// Finds the original destination of an accepted connection.
pub trait OrigDst: Send + Sync + 'static {
    fn orig_dst(&self, conn: &TcpStream) -> io::Result<SocketAddr>;
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (or `SOL_IPV6, IP6T_SO_ORIGINAL_DST`
/// for IPv6 sockets).
#[derive(Debug, Default, Clone, Copy)]
pub struct SoOriginalDst;

impl OrigDst for SoOriginalDst {
    fn orig_dst(&self, conn: &TcpStream) -> io::Result<SocketAddr> {
        use nix::sys::socket::{getsockopt, sockopt};
        let local = conn.local_addr()?;
        // An IPv4 client on a dual-stack socket still has an IPv4 conntrack
        // entry, so try the family of the peer address first.
        let v4 = || -> io::Result<SocketAddr> {
            let sin = getsockopt(conn, sockopt::OriginalDst).map_err(io::Error::from)?;
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        };
        let v6 = || -> io::Result<SocketAddr> {
            let sin6 = getsockopt(conn, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Ok(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                0,
                0,
            )))
        };
        match local {
            SocketAddr::V4(_) => v4(),
            SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some() => v4(),
            SocketAddr::V6(_) => v6(),
        }
    }
}

/// The accepted socket's local address: what the client dialled when the
/// connection was steered without NAT (sk_lookup).
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalAddr;

impl OrigDst for LocalAddr {
    fn orig_dst(&self, conn: &TcpStream) -> io::Result<SocketAddr> {
        conn.local_addr()
    }
}

/// Always the same address: an explicit proxy for one destination, and the
/// way tests on loopback stand in for the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub SocketAddr);

impl OrigDst for Fixed {
    fn orig_dst(&self, _conn: &TcpStream) -> io::Result<SocketAddr> {
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn so_original_dst_without_redirect_is_an_error_not_a_panic() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        // No conntrack entry and no getsockopt program: the kernel says so.
        assert!(SoOriginalDst.orig_dst(&s).is_err());
        assert_eq!(LocalAddr.orig_dst(&s).unwrap(), addr);
    }
}
