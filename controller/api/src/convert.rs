//! Conversions between wire addresses and `std::net` types.

use crate::destination::v1::TcpAddress;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A `TcpAddress` that does not hold a usable socket address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address missing")]
    Missing,
    #[error("IP address has {0} bytes; expected 4 or 16")]
    IpLength(usize),
    #[error("port {0} out of range")]
    Port(u32),
}

impl From<SocketAddr> for TcpAddress {
    fn from(addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        TcpAddress {
            ip,
            port: u32::from(addr.port()),
        }
    }
}

impl TryFrom<&TcpAddress> for SocketAddr {
    type Error = AddressError;

    fn try_from(a: &TcpAddress) -> Result<Self, Self::Error> {
        let ip = if let Ok(b) = <[u8; 4]>::try_from(a.ip.as_slice()) {
            IpAddr::V4(Ipv4Addr::from(b))
        } else if let Ok(b) = <[u8; 16]>::try_from(a.ip.as_slice()) {
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            return Err(AddressError::IpLength(a.ip.len()));
        };
        let port = u16::try_from(a.port).map_err(|_| AddressError::Port(a.port))?;
        Ok(SocketAddr::new(ip, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        for s in ["10.1.2.3:80", "[fd00::1]:4143"] {
            let addr: SocketAddr = s.parse().unwrap();
            let wire = TcpAddress::from(addr);
            assert_eq!(SocketAddr::try_from(&wire).unwrap(), addr);
        }
    }

    #[test]
    fn rejects_bad_lengths_and_ports() {
        let bad = TcpAddress {
            ip: vec![1, 2, 3],
            port: 80,
        };
        assert_eq!(SocketAddr::try_from(&bad), Err(AddressError::IpLength(3)));
        let bad = TcpAddress {
            ip: vec![1, 2, 3, 4],
            port: 70000,
        };
        assert_eq!(SocketAddr::try_from(&bad), Err(AddressError::Port(70000)));
    }
}
