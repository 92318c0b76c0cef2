//! Who is asking to tap. Only the node operator may: the tap endpoint sits
//! on the loopback-only operator listener (reached from the node by
//! entering the pod's network namespace), and a connection the proxy itself
//! made is refused, so nothing forwarded by the proxy (a request from
//! another pod through the mesh, or to the pod's IP, steered by sk_lookup
//! to the inbound listener and forwarded to loopback) can tap, whatever
//! the inbound forwarding rules. The owner of the client socket is read
//! from the kernel's socket table (`/proc/self/net/tcp{,6}`, the proxy's
//! own network namespace); an unknown owner is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("tap is served to loopback clients only, not {0}")]
    NotLoopback(SocketAddr),
    #[error(
        "tap refused: the connection from {0} was made by the proxy itself (forwarded traffic)"
    )]
    FromProxy(SocketAddr),
    #[error("tap refused: the owner of the connection from {0} is unknown")]
    UnknownOwner(SocketAddr),
}

/// Decides whether the connection `peer` -> `local` may tap.
pub fn authorize(peer: SocketAddr, local: SocketAddr) -> Result<(), Refused> {
    if !peer.ip().is_loopback() && !is_mapped_loopback(peer.ip()) {
        return Err(Refused::NotLoopback(peer));
    }
    let tables = ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>();
    let uid = tables.iter().find_map(|t| socket_uid(t, peer, local));
    decide(peer, uid, nix::unistd::geteuid().as_raw())
}

fn decide(peer: SocketAddr, owner: Option<u32>, own_uid: u32) -> Result<(), Refused> {
    match owner {
        None => Err(Refused::UnknownOwner(peer)),
        Some(uid) if uid == own_uid => Err(Refused::FromProxy(peer)),
        Some(_) => Ok(()),
    }
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
}

/// The uid owning the socket whose local address is `peer` and remote
/// address `local`, from a `/proc/net/tcp` or `tcp6` table.
pub fn socket_uid(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (l, r, uid) = (f.get(1)?, f.get(2)?, f.get(7)?);
        let same = |s: &str, want: SocketAddr| parse_addr(s).is_some_and(|a| same_addr(a, want));
        (same(l, peer) && same(r, local)).then(|| uid.parse().ok())?
    })
}

fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canon(a.ip()) == canon(b.ip())
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6); each 32-bit word
/// is printed in host byte order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(ip.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex4(ip: Ipv4Addr) -> String {
        format!("{:08X}", u32::from_ne_bytes(ip.octets()))
    }

    fn table(rows: &[(SocketAddr, SocketAddr, u32)]) -> String {
        let mut t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n".to_owned();
        for (i, (l, r, uid)) in rows.iter().enumerate() {
            let a = |s: &SocketAddr| match s.ip() {
                IpAddr::V4(v4) => format!("{}:{:04X}", hex4(v4), s.port()),
                IpAddr::V6(_) => unreachable!(),
            };
            t.push_str(&format!(
                "{i:4}: {} {} 01 00000000:00000000 00:00000000 00000000 {uid:5} 0 1234 1 0 20 4 30 10 -1\n",
                a(l),
                a(r)
            ));
        }
        t
    }

    #[test]
    fn finds_the_owner_of_the_client_socket() {
        let tap: SocketAddr = "127.0.0.1:4190".parse().unwrap();
        let op: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let fwd: SocketAddr = "127.0.0.1:50001".parse().unwrap();
        let t = table(&[(tap, op, 1337), (op, tap, 0), (fwd, tap, 1337)]);
        assert_eq!(socket_uid(&t, op, tap), Some(0));
        assert_eq!(socket_uid(&t, fwd, tap), Some(1337));
        assert_eq!(socket_uid(&t, "127.0.0.1:1".parse().unwrap(), tap), None);
    }

    #[test]
    fn parses_ipv6_rows() {
        // ::1 port 4190 as the kernel prints it on little-endian machines.
        let a = parse_addr("00000000000000000000000001000000:105E").unwrap();
        if cfg!(target_endian = "little") {
            assert_eq!(a, "[::1]:4190".parse().unwrap());
        }
        assert_eq!(parse_addr("zz:1"), None);
        assert_eq!(parse_addr("0100007F"), None);
    }

    #[test]
    fn decisions() {
        let p: SocketAddr = "127.0.0.1:5".parse().unwrap();
        assert_eq!(decide(p, Some(0), 1337), Ok(()));
        assert_eq!(decide(p, Some(1337), 1337), Err(Refused::FromProxy(p)));
        assert_eq!(decide(p, None, 1337), Err(Refused::UnknownOwner(p)));
        let far: SocketAddr = "10.0.0.3:5".parse().unwrap();
        assert_eq!(
            authorize(far, "127.0.0.1:4190".parse().unwrap()),
            Err(Refused::NotLoopback(far))
        );
    }
}
