//! The cluster's networks (`--cluster-networks`): address ranges where pods
//! and services live. A destination inside them that discovery could not
//! answer about may be a meshed pod, so the proxy refuses it rather than
//! sending plaintext (see `transport::intent`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// The default: the private IPv4 ranges and IPv6 unique local addresses,
/// which hold the usual pod and service ranges.
pub const DEFAULT_CLUSTER_NETWORKS: &str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fd00::/8";

/// One CIDR, `ip/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad network {spec:?}: {message} (expected e.g. 10.0.0.0/8 or fd00::/8)")]
pub struct CidrError {
    spec: String,
    message: String,
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = |message: &str| CidrError {
            spec: s.into(),
            message: message.into(),
        };
        let (ip, prefix) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| bad("no '/prefix'"))?;
        let addr: IpAddr = ip.parse().map_err(|_| bad("not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("prefix is not a number"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad(&format!("prefix longer than {max}")));
        }
        let cidr = Cidr { addr, prefix };
        if cidr.masked(addr) != bits(addr) {
            return Err(bad("host bits are set below the prefix"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Cidr {
    fn masked(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let host = u32::from(width - self.prefix);
        let mask = if host >= 128 { 0 } else { u128::MAX << host };
        bits(ip) & mask
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as IPv4) is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == bits(self.addr)
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A list of CIDRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNetworks(pub Vec<Cidr>);

impl ClusterNetworks {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

impl Default for ClusterNetworks {
    fn default() -> Self {
        DEFAULT_CLUSTER_NETWORKS
            .parse()
            .expect("the default cluster networks parse")
    }
}

impl FromStr for ClusterNetworks {
    type Err = CidrError;

    /// Comma-separated CIDRs; an empty list means "no cluster networks"
    /// (every unanswered destination may go out directly).
    fn from_str(s: &str) -> Result<Self, CidrError> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(ClusterNetworks)
    }
}

impl fmt::Display for ClusterNetworks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(Cidr::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership() {
        let nets = ClusterNetworks::default();
        let table = [
            ("10.77.0.2", true),
            ("10.255.255.255", true),
            ("11.0.0.1", false),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("172.32.0.1", false),
            ("192.168.3.4", true),
            ("192.169.0.1", false),
            ("fd77::2", true),
            ("fdff::1", true),
            ("fc00::1", false),
            ("2001:db8::1", false),
            ("::ffff:10.1.2.3", true),
            ("::ffff:8.8.8.8", false),
            ("127.0.0.1", false),
            ("::1", false),
        ];
        for (ip, inside) in table {
            assert_eq!(nets.contains(ip.parse().unwrap()), inside, "{ip}");
        }
    }

    #[test]
    fn parsing() {
        let n: ClusterNetworks = "10.77.0.0/16, fd77::/16".parse().unwrap();
        assert_eq!(n.to_string(), "10.77.0.0/16,fd77::/16");
        assert!(n.contains("10.77.1.1".parse().unwrap()));
        assert!(!n.contains("10.78.1.1".parse().unwrap()));
        let all: ClusterNetworks = "0.0.0.0/0,::/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        let none: ClusterNetworks = "".parse().unwrap();
        assert!(!none.contains("10.0.0.1".parse().unwrap()));
        let host: ClusterNetworks = "10.0.0.7/32".parse().unwrap();
        assert!(host.contains("10.0.0.7".parse().unwrap()));
        assert!(!host.contains("10.0.0.8".parse().unwrap()));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.1/8",
            "x/8",
            "10.0.0.0/x",
        ] {
            let e = bad.parse::<ClusterNetworks>().unwrap_err();
            assert!(e.to_string().starts_with("bad network"), "{bad}: {e}");
        }
    }
}
