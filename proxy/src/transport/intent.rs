//! Whether a connection the proxy makes is mutual TLS, and when it is not,
//! why not: the one decision behind "mTLS never silently falls back to
//! plaintext" (see docs/security.md).
//!
//! * [`Peer`] is what discovery said about the next hop; [`Tls`] is the
//!   decision (conditional TLS: mTLS towards an identity, or plaintext with
//!   a [`NoTls`] reason); [`Refusal`] is a connection that must not be made.
//! * **Meshed** means that discovery gave the endpoint a proxy inbound port
//!   (the controller's `ProtocolHint.meshed`, a static endpoint's
//!   `meshedInboundPort`). A meshed endpoint is only ever reached with mTLS
//!   requiring the identity discovery named. A meshed endpoint without an
//!   identity, or a proxy without an identity of its own facing a meshed
//!   endpoint that has one, is refused; two proxies without identities
//!   (plaintext-only mode) talk plaintext, counted as
//!   `no_identity_configured`.
//! * A destination discovery did not resolve goes out unchanged only when
//!   discovery answered that it is not a mesh destination, or when it is
//!   outside the cluster's networks; a destination inside them that
//!   discovery could not answer about (the controller away or blocked) is
//!   refused.
//!
//! The decisions are the pure functions [`for_peer`] and [`for_unresolved`].

use super::MeshProto;
use crate::discovery::ClusterNetworks;
use conduit_proxy_tls::{Alpn, SpiffeId};
use std::net::IpAddr;

/// What discovery says about the next hop of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The endpoint runs a conduit proxy; `identity` is the SPIFFE ID
    /// discovery named for it (`None`: it named none).
    Meshed { identity: Option<SpiffeId> },
    /// Not a proxy: an application (local or remote) reached directly, for
    /// the reason given.
    Plain(NoTls),
}

/// Why a connection is not mutual TLS. A fixed vocabulary: it is the
/// `reason` label of `conduit_outbound_plaintext_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoTls {
    /// Inbound: the pod's own application, inside the pod (not counted:
    /// nothing leaves the pod).
    LocalApplication,
    /// Discovery answered: the address is not a mesh destination (the
    /// controller said it does not exist, or it is not in the static table).
    UnknownToDiscovery,
    /// Discovery could not answer, and the address is outside the cluster's
    /// networks (`--cluster-networks`).
    NotInClusterNetworks,
    /// Discovery knows the destination; this endpoint runs no proxy.
    EndpointNotMeshed,
    /// Both this proxy and the meshed endpoint run without an identity
    /// (plaintext-only mode).
    NoIdentityConfigured,
}

impl NoTls {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            NoTls::LocalApplication => "local_application",
            NoTls::UnknownToDiscovery => "unknown_to_discovery",
            NoTls::NotInClusterNetworks => "not_in_cluster_networks",
            NoTls::EndpointNotMeshed => "endpoint_not_meshed",
            NoTls::NoIdentityConfigured => "no_identity_configured",
        }
    }

    /// Whether the connection leaves the pod (and so is counted).
    pub fn leaves_the_pod(self) -> bool {
        self != NoTls::LocalApplication
    }
}

/// The transport of one connection: conditional TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Mutual TLS; the server must prove this SPIFFE identity, and ALPN
    /// names what the connection carries.
    Mutual { server: SpiffeId, alpn: Alpn },
    /// Plaintext, for this reason.
    Plain(NoTls),
}

/// A connection that must not be made: the proxy fails closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "discovery has not answered about {ip} (controller unreachable?) and it is inside the \
         cluster networks: refusing rather than sending plaintext to what may be a meshed pod"
    )]
    DiscoveryUnavailable { ip: IpAddr },
    #[error(
        "the endpoint is meshed (identity {identity}) and needs mTLS, but this proxy has no \
         identity: refusing rather than sending plaintext"
    )]
    NoLocalIdentity { identity: SpiffeId },
    #[error(
        "discovery says the endpoint is meshed but names no identity to verify: refusing \
         rather than sending plaintext or trusting any certificate"
    )]
    MeshedWithoutIdentity,
}

impl Refusal {
    /// The `reason` label of `conduit_outbound_refused_total`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::DiscoveryUnavailable { .. } => "discovery_unavailable",
            Refusal::NoLocalIdentity { .. } => "no_local_identity",
            Refusal::MeshedWithoutIdentity => "meshed_without_identity",
        }
    }
}

/// The transport towards a next hop that will carry `proto`, given whether
/// this proxy has an identity (mTLS credentials). Every connector decides
/// with this one function (the guard to count and refuse, the TLS and TCP
/// connectors to do it).
pub fn for_peer(peer: &Peer, proto: MeshProto, local_identity: bool) -> Result<Tls, Refusal> {
    match (peer, local_identity) {
        (Peer::Plain(why), _) => Ok(Tls::Plain(*why)),
        (Peer::Meshed { identity: Some(id) }, true) => Ok(Tls::Mutual {
            server: id.clone(),
            alpn: proto.alpn(),
        }),
        (Peer::Meshed { identity: Some(id) }, false) => Err(Refusal::NoLocalIdentity {
            identity: id.clone(),
        }),
        (Peer::Meshed { identity: None }, true) => Err(Refusal::MeshedWithoutIdentity),
        (Peer::Meshed { identity: None }, false) => Ok(Tls::Plain(NoTls::NoIdentityConfigured)),
    }
}

/// What discovery said about a destination it did not resolve to endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolved {
    /// It answered: not a mesh destination.
    Unknown,
    /// It could not answer (the controller has not answered in time).
    Unanswered,
}

/// Whether a destination discovery did not resolve may be reached directly
/// (in plaintext, for the reason returned).
pub fn for_unresolved(
    what: Unresolved,
    ip: IpAddr,
    networks: &ClusterNetworks,
) -> Result<NoTls, Refusal> {
    match what {
        Unresolved::Unknown => Ok(NoTls::UnknownToDiscovery),
        Unresolved::Unanswered if networks.contains(ip) => {
            Err(Refusal::DiscoveryUnavailable { ip })
        }
        Unresolved::Unanswered => Ok(NoTls::NotInClusterNetworks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "spiffe://td/ns/a/sa/b";

    fn meshed(id: Option<&str>) -> Peer {
        Peer::Meshed {
            identity: id.map(|id| id.parse().unwrap()),
        }
    }

    #[test]
    fn peers() {
        use NoTls::*;
        let mutual = Ok(Tls::Mutual {
            server: ID.parse().unwrap(),
            alpn: Alpn::H2,
        });
        let table: Vec<(Peer, bool, Result<Tls, Refusal>)> = vec![
            (meshed(Some(ID)), true, mutual),
            (
                meshed(Some(ID)),
                false,
                Err(Refusal::NoLocalIdentity {
                    identity: ID.parse().unwrap(),
                }),
            ),
            (meshed(None), true, Err(Refusal::MeshedWithoutIdentity)),
            (meshed(None), false, Ok(Tls::Plain(NoIdentityConfigured))),
            (
                Peer::Plain(EndpointNotMeshed),
                true,
                Ok(Tls::Plain(EndpointNotMeshed)),
            ),
            (
                Peer::Plain(EndpointNotMeshed),
                false,
                Ok(Tls::Plain(EndpointNotMeshed)),
            ),
            (
                Peer::Plain(LocalApplication),
                true,
                Ok(Tls::Plain(LocalApplication)),
            ),
            (
                Peer::Plain(UnknownToDiscovery),
                true,
                Ok(Tls::Plain(UnknownToDiscovery)),
            ),
        ];
        for (peer, local, want) in table {
            assert_eq!(
                for_peer(&peer, MeshProto::H2, local),
                want,
                "{peer:?}, local identity {local}"
            );
        }
        // ALPN follows what the connection carries.
        for (proto, alpn) in [
            (MeshProto::H2, Alpn::H2),
            (MeshProto::Http1, Alpn::Http1),
            (MeshProto::Tcp, Alpn::Opaque),
        ] {
            assert_eq!(
                for_peer(&meshed(Some(ID)), proto, true),
                Ok(Tls::Mutual {
                    server: ID.parse().unwrap(),
                    alpn
                })
            );
        }
    }

    #[test]
    fn unresolved_destinations() {
        let nets = ClusterNetworks::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let table = [
            (
                Unresolved::Unknown,
                "10.77.0.5",
                Ok(NoTls::UnknownToDiscovery),
            ),
            (
                Unresolved::Unknown,
                "93.184.216.34",
                Ok(NoTls::UnknownToDiscovery),
            ),
            (
                Unresolved::Unanswered,
                "10.77.0.5",
                Err(Refusal::DiscoveryUnavailable {
                    ip: ip("10.77.0.5"),
                }),
            ),
            (
                Unresolved::Unanswered,
                "fd77::5",
                Err(Refusal::DiscoveryUnavailable { ip: ip("fd77::5") }),
            ),
            (
                Unresolved::Unanswered,
                "::ffff:192.168.1.1",
                Err(Refusal::DiscoveryUnavailable {
                    ip: ip("::ffff:192.168.1.1"),
                }),
            ),
            (
                Unresolved::Unanswered,
                "93.184.216.34",
                Ok(NoTls::NotInClusterNetworks),
            ),
            (
                Unresolved::Unanswered,
                "2001:db8::1",
                Ok(NoTls::NotInClusterNetworks),
            ),
            (
                Unresolved::Unanswered,
                "127.0.0.1",
                Ok(NoTls::NotInClusterNetworks),
            ),
        ];
        for (what, addr, want) in table {
            assert_eq!(
                for_unresolved(what, ip(addr), &nets),
                want,
                "{what:?} {addr}"
            );
        }
    }

    #[test]
    fn labels_are_distinct() {
        use NoTls::*;
        let all = [
            LocalApplication,
            UnknownToDiscovery,
            NotInClusterNetworks,
            EndpointNotMeshed,
            NoIdentityConfigured,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), all.len());
        assert!(!LocalApplication.leaves_the_pod());
        assert!(all[1..].iter().all(|r| r.leaves_the_pod()));
    }
}
