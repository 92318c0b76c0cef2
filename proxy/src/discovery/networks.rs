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

/// One CIDR, `ip/prefix`: the policy crate's type, so the fail-closed rule
/// and `cluster-authenticated` policies read the same networks.
pub use conduit_policy::Cidr;

/// Why a network in `--cluster-networks` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad network {spec:?}: {message} (expected e.g. 10.0.0.0/8 or fd00::/8)")]
pub struct CidrError {
    spec: String,
    message: String,
}

/// One network of the list: unlike a policy rule, the flag wants the
/// prefix written out (a bare address is refused).
fn parse_network(spec: &str) -> Result<Cidr, CidrError> {
    let bad = |message: String| CidrError {
        spec: spec.into(),
        message,
    };
    if !spec.contains('/') {
        return Err(bad("no '/prefix'".into()));
    }
    spec.parse()
        .map_err(|e: conduit_policy::cidr::CidrError| bad(e.to_string()))
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
            .map(parse_network)
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
