//! The state a client builds from a stream of updates.

use crate::destination::v1::{Update, update::Kind};
use conduit_identity::{SpiffeId, SpiffeIdError};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// One endpoint of a destination: what the controller says about it, and
/// the type the proxy balances over (its `discovery::Endpoint`; a static
/// discovery file describes endpoints with it too). The identity is parsed
/// here, once, at the boundary: an endpoint whose identity does not parse
/// never gets this far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// SPIFFE ID the endpoint's proxy must present, when meshed and known.
    pub identity: Option<SpiffeId>,
    /// Set when the endpoint runs a conduit proxy: its inbound (mTLS) port.
    pub meshed_inbound_port: Option<u16>,
    pub labels: BTreeMap<String, String>,
}

impl Endpoint {
    /// An endpoint with weight 1, no identity, not meshed, no labels.
    pub fn plain(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            weight: 1,
            identity: None,
            meshed_inbound_port: None,
            labels: BTreeMap::new(),
        }
    }
}

/// Why an endpoint from the controller was skipped.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Address(#[from] crate::AddressError),
    #[error("endpoint {addr}: bad identity: {source}")]
    Identity {
        addr: SocketAddr,
        source: SpiffeIdError,
    },
}

/// What the client knows about one target; the proxy balances over it as
/// it is (its `discovery::Destination`), so nothing copies it into another
/// type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationState {
    /// The target as asked for (`web.default.svc.cluster.local:80`, `10.96.0.10:80`).
    pub target: String,
    /// Canonical service name from the controller (for metrics); `None` until
    /// known, or when the target is not a service.
    pub name: Option<String>,
    /// `None` until the controller first answered; `Some(false)` when the
    /// controller does not know the target (send traffic to the original
    /// address unchanged).
    pub exists: Option<bool>,
    /// Current endpoints, sorted by address. When the target is an address
    /// the controller does not know (`exists == Some(false)`), the address
    /// itself, not meshed: traffic goes there unchanged.
    pub endpoints: Vec<Endpoint>,
    /// Whether the stream to the controller is up. While it is down the
    /// other fields keep the last known state.
    pub connected: bool,
}

impl DestinationState {
    pub(crate) fn new(target: String) -> Self {
        DestinationState {
            target,
            name: None,
            exists: None,
            endpoints: Vec::new(),
            connected: false,
        }
    }

    /// A destination known to exist with these endpoints (a static table's,
    /// a test's): `name` is its target and its name.
    pub fn known(name: impl Into<String>, endpoints: Vec<Endpoint>) -> Self {
        let name = name.into();
        DestinationState {
            target: name.clone(),
            name: Some(name),
            exists: Some(true),
            endpoints,
            connected: true,
        }
    }

    /// The controller has not answered about the target yet.
    pub fn pending(&self) -> bool {
        self.exists.is_none()
    }

    /// The name to use in metrics: the canonical name, else the target.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.target)
    }
}

/// The endpoints of a target the controller does not know: an address
/// target is reached as it is (not meshed); any other target has none.
pub(crate) fn unknown_endpoints(target: &str) -> Vec<Endpoint> {
    target
        .parse::<SocketAddr>()
        .map(|addr| vec![Endpoint::plain(addr)])
        .unwrap_or_default()
}

/// Endpoints keyed by address while a stream is being applied.
#[derive(Debug, Default)]
pub(crate) struct EndpointSet {
    pub(crate) name: Option<String>,
    pub(crate) exists: Option<bool>,
    pub(crate) endpoints: BTreeMap<SocketAddr, Endpoint>,
}

impl EndpointSet {
    /// Applies one update; malformed entries are skipped with a warning
    /// rather than failing the whole stream.
    pub(crate) fn apply(&mut self, update: Update) {
        self.name = Some(update.destination_name).filter(|n| !n.is_empty());
        match update.kind {
            Some(Kind::Add(add)) => {
                self.exists = Some(true);
                for ep in add.endpoints {
                    match convert_endpoint(ep) {
                        Ok(ep) => {
                            self.endpoints.insert(ep.addr, ep);
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring malformed endpoint"),
                    }
                }
            }
            Some(Kind::Remove(rm)) => {
                for a in &rm.addresses {
                    match SocketAddr::try_from(a) {
                        Ok(addr) => {
                            self.endpoints.remove(&addr);
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring malformed removal"),
                    }
                }
            }
            Some(Kind::NoEndpoints(ne)) => {
                self.exists = Some(ne.exists);
                self.endpoints.clear();
            }
            None => tracing::warn!("ignoring update without content"),
        }
    }

    /// Writes this set into `state`; returns whether anything changed.
    pub(crate) fn publish(&self, state: &mut DestinationState) -> bool {
        let endpoints: Vec<Endpoint> = match self.exists {
            Some(false) => unknown_endpoints(&state.target),
            _ => self.endpoints.values().cloned().collect(),
        };
        let changed = state.name != self.name
            || state.exists != self.exists
            || state.endpoints != endpoints
            || !state.connected;
        state.name.clone_from(&self.name);
        state.exists = self.exists;
        state.endpoints = endpoints;
        state.connected = true;
        changed
    }
}

/// The wire endpoint as an [`Endpoint`]: the address, the port and the
/// identity are checked here (an unparsable identity skips the endpoint:
/// it could never be verified, so it must not be reached).
fn convert_endpoint(ep: crate::destination::v1::Endpoint) -> Result<Endpoint, EndpointError> {
    let addr = SocketAddr::try_from(ep.address.as_ref().ok_or(crate::AddressError::Missing)?)?;
    let meshed_inbound_port = match ep.protocol_hint {
        Some(h) if h.meshed => Some(
            u16::try_from(h.inbound_port).map_err(|_| crate::AddressError::Port(h.inbound_port))?,
        ),
        _ => None,
    };
    Ok(Endpoint {
        addr,
        weight: ep.weight,
        identity: match ep.identity.as_str() {
            "" => None,
            id => Some(
                SpiffeId::parse(id).map_err(|source| EndpointError::Identity { addr, source })?,
            ),
        },
        meshed_inbound_port,
        labels: ep.labels.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::v1 as pb;

    fn add(addrs: &[&str]) -> Update {
        Update {
            kind: Some(Kind::Add(pb::AddEndpoints {
                endpoints: addrs
                    .iter()
                    .map(|a| pb::Endpoint {
                        address: Some(a.parse::<SocketAddr>().unwrap().into()),
                        weight: 1,
                        identity: "spiffe://td/ns/a/sa/b".into(),
                        protocol_hint: Some(pb::ProtocolHint {
                            meshed: true,
                            inbound_port: 4143,
                        }),
                        labels: Default::default(),
                    })
                    .collect(),
            })),
            destination_name: "web.default.svc.cluster.local:80".into(),
        }
    }

    #[test]
    fn add_remove_and_no_endpoints() {
        let mut set = EndpointSet::default();
        set.apply(add(&["10.0.0.1:80", "10.0.0.2:80"]));
        assert_eq!(set.endpoints.len(), 2);
        assert_eq!(set.exists, Some(true));
        let ep = &set.endpoints[&"10.0.0.1:80".parse().unwrap()];
        assert_eq!(ep.meshed_inbound_port, Some(4143));
        set.apply(Update {
            kind: Some(Kind::Remove(pb::RemoveEndpoints {
                addresses: vec!["10.0.0.1:80".parse::<SocketAddr>().unwrap().into()],
            })),
            destination_name: String::new(),
        });
        assert_eq!(set.endpoints.len(), 1);
        assert_eq!(set.name, None);
        set.apply(Update {
            kind: Some(Kind::NoEndpoints(pb::NoEndpoints { exists: false })),
            destination_name: String::new(),
        });
        assert!(set.endpoints.is_empty());
        assert_eq!(set.exists, Some(false));
    }

    #[test]
    fn an_unknown_address_is_its_own_plain_endpoint() {
        let gone = Update {
            kind: Some(Kind::NoEndpoints(pb::NoEndpoints { exists: false })),
            destination_name: String::new(),
        };
        let mut set = EndpointSet::default();
        set.apply(add(&["10.0.0.1:80"]));
        set.apply(gone.clone());
        let mut state = DestinationState::new("10.96.0.10:80".into());
        assert!(set.publish(&mut state));
        assert_eq!(state.exists, Some(false));
        assert!(!state.pending());
        assert_eq!(
            state.endpoints,
            [Endpoint::plain("10.96.0.10:80".parse().unwrap())]
        );
        // A name the controller does not know has nowhere to go.
        let mut named = DestinationState::new("web.default.svc.cluster.local:80".into());
        set.publish(&mut named);
        assert!(named.endpoints.is_empty());
    }

    #[test]
    fn malformed_endpoint_is_skipped() {
        let mut set = EndpointSet::default();
        let mut u = add(&["10.0.0.1:80"]);
        if let Some(Kind::Add(a)) = &mut u.kind {
            a.endpoints[0].address = Some(pb::TcpAddress {
                ip: vec![1],
                port: 1,
            });
        }
        set.apply(u);
        assert!(set.endpoints.is_empty());
        assert_eq!(set.exists, Some(true));
    }

    /// The identity is parsed here, once: what the proxy receives is a
    /// `SpiffeId`, and an endpoint whose identity does not parse (a
    /// controller bug or a forged answer) is skipped, never reached
    /// without a verifiable identity.
    #[test]
    fn identities_are_parsed_at_the_boundary() {
        let mut set = EndpointSet::default();
        let mut u = add(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        if let Some(Kind::Add(a)) = &mut u.kind {
            a.endpoints[1].identity = "spiffe://td/ns/a.b/sa/web".into();
            a.endpoints[2].identity = String::new();
        }
        set.apply(u);
        let addrs: Vec<_> = set.endpoints.keys().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.3:80"]);
        let ep = &set.endpoints[&"10.0.0.1:80".parse().unwrap()];
        assert_eq!(ep.identity.as_deref(), Some("spiffe://td/ns/a/sa/b"));
        assert_eq!(ep.identity.as_ref().unwrap().namespace(), "a");
        assert_eq!(
            set.endpoints[&"10.0.0.3:80".parse().unwrap()].identity,
            None
        );
    }
}
