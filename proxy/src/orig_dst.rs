//! Where an accepted connection was originally going. Kernel-dependent, so
//! it sits behind [`OrigDst`]: production uses `SO_ORIGINAL_DST` (outbound,
//! answered by iptables REDIRECT's conntrack or by the agent's
//! `cgroup/getsockopt` program) and the local address (inbound, steered by
//! `sk_lookup` without NAT); tests on loopback inject a fixed address.

use std::io;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Finds the original destination of an accepted connection.
pub trait OrigDst: Send + Sync + 'static {
    fn orig_dst(&self, conn: &TcpStream) -> io::Result<SocketAddr>;
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)` on IPv4 sockets,
/// `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` on IPv6 ones, with a
/// `sockaddr_storage` buffer decoded by family: under the agent's capture an
/// IPv6 destination redirected to the IPv4 listener comes back as a
/// `sockaddr_in6` on an IPv4 socket (socket2 does the one unsafe call).
#[derive(Debug, Default, Clone, Copy)]
pub struct SoOriginalDst;

impl OrigDst for SoOriginalDst {
    fn orig_dst(&self, conn: &TcpStream) -> io::Result<SocketAddr> {
        let sock = socket2::SockRef::from(conn);
        let v4_socket = match conn.local_addr()? {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
        };
        let raw = if v4_socket {
            sock.original_dst_v4()
        } else {
            sock.original_dst_v6()
        }?;
        let addr = raw.as_socket().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "original destination is not an IP address",
            )
        })?;
        // Unmap ::ffff:a.b.c.d so IPv4 services are looked up as IPv4.
        Ok(unmapped(addr))
    }
}

/// The accepted socket's local address: what the client dialled when the
/// connection was steered without NAT (sk_lookup).
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalAddr;

impl OrigDst for LocalAddr {
    fn orig_dst(&self, conn: &TcpStream) -> io::Result<SocketAddr> {
        // A dual-stack listener reports IPv4 destinations as ::ffff:a.b.c.d.
        Ok(unmapped(conn.local_addr()?))
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`; other addresses unchanged.
pub fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => addr,
        },
        v4 => v4,
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
