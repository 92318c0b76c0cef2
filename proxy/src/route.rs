//! Where a connection or request goes next, decided once per connection.
//!
//! * [`decide`] is the outbound direct-or-balanced decision, a pure
//!   function of what the per-destination cache
//!   ([`Balancers::lookup`](crate::balance::Balancers::lookup)) found: a
//!   discovered destination is [`Target::Balanced`] (its shared
//!   [`Balancer`] picks endpoints); one discovery did not resolve goes out
//!   unchanged, [`Target::Direct`], only when
//!   [`intent::for_unresolved`] allows it, and is refused otherwise.
//! * Inbound, the target is always the local application
//!   ([`Route::inbound`]).
//! * [`for_endpoint`] is how one endpoint is reached: a meshed endpoint
//!   through its proxy's inbound port, naming the application port in the
//!   transport header.
//! * The HTTP and TCP paths never look inside the target: they ask it for
//!   a next hop with [`Target::call`] (one HTTP request, retried over
//!   endpoints when balanced), [`Target::connect`] (one TCP connection,
//!   failing over when balanced) or [`Target::pick`] (one connection that
//!   becomes a tunnel).

use crate::balance::{Attempt, Balancer, CallError, ConnectError, Lookup, Pick, RequestPolicy};
use crate::discovery::{ClusterNetworks, Endpoint};
use crate::transport::intent::{self, Refusal, Unresolved};
use crate::transport::{NextHop, NoTls};
use std::future::Future;
use std::net::SocketAddr;

pub struct Route {
    /// What the client dialled (inbound from a peer: the application address).
    pub orig_dst: SocketAddr,
    pub target: Target,
}

/// Where a connection's requests or bytes go.
pub enum Target {
    /// One next hop, no balancing, plaintext for the reason in its
    /// [`Peer`](crate::transport::Peer): an unresolved destination allowed
    /// out unchanged, or the local application.
    Direct(NextHop),
    /// A discovered destination.
    Balanced(Balancer),
}

/// The outbound direct-or-balanced decision for original destination
/// `orig_dst`, from what the per-destination cache found for it.
pub fn decide(
    lookup: Lookup,
    orig_dst: SocketAddr,
    networks: &ClusterNetworks,
) -> Result<Target, Refusal> {
    let unresolved = match lookup {
        Lookup::Balanced(b) => return Ok(Target::Balanced(b)),
        Lookup::Unknown => Unresolved::Unknown,
        Lookup::Unanswered => Unresolved::Unanswered,
    };
    let why = intent::for_unresolved(unresolved, orig_dst.ip(), networks)?;
    Ok(Target::Direct(NextHop::plain(orig_dst, why)))
}

/// How to reach one endpoint: straight to it (it runs no proxy), or
/// through its proxy (meshed: mTLS, see `transport::intent`).
pub fn for_endpoint(ep: &Endpoint) -> NextHop {
    match ep.meshed_inbound_port {
        Some(port) => NextHop::meshed(
            SocketAddr::new(ep.addr.ip(), port),
            ep.identity.clone(),
            ep.addr.port(),
        ),
        None => NextHop::plain(ep.addr, NoTls::EndpointNotMeshed),
    }
}

/// A connection [`Target::connect`] could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Direct(E),
    #[error(transparent)]
    Balanced(ConnectError<E>),
}

impl Target {
    /// Whether a failed request may be tried again elsewhere (a direct
    /// target has one next hop and no retries).
    pub fn retries(&self) -> bool {
        matches!(self, Target::Balanced(_))
    }

    /// One next hop for a connection of its own; a balanced target's
    /// [`Pick`] counts as load until its outcome is recorded or it drops.
    pub fn pick(&self) -> Result<(NextHop, Option<Pick>), CallError> {
        match self {
            Target::Direct(hop) => Ok((hop.clone(), None)),
            Target::Balanced(b) => {
                let pick = b.pick().ok_or_else(|| CallError::NoEndpoints(b.name()))?;
                Ok((for_endpoint(pick.endpoint()), Some(pick)))
            }
        }
    }

    /// Opens a connection with `open`: directly, or through the balancer
    /// (failing over to another endpoint on errors, see
    /// [`Balancer::connect`]). Hold the returned [`Pick`] for the
    /// connection's life.
    pub async fn connect<C, E, F, Fut>(
        &self,
        policy: &RequestPolicy,
        mut open: F,
    ) -> Result<(C, Option<Pick>), OpenError<E>>
    where
        E: std::error::Error + 'static,
        F: FnMut(NextHop) -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        match self {
            Target::Direct(hop) => open(hop.clone())
                .await
                .map(|c| (c, None))
                .map_err(OpenError::Direct),
            Target::Balanced(b) => b
                .connect(policy, |ep| open(for_endpoint(&ep)))
                .await
                .map(|(c, pick)| (c, Some(pick)))
                .map_err(OpenError::Balanced),
        }
    }

    /// Runs one request with `attempt`: once towards a direct target
    /// (whatever the outcome, no timeouts of `policy`), or through the
    /// balancer with `policy`'s timeouts and retries (see
    /// [`Balancer::call`]). Returns the last attempt's value.
    pub async fn call<R, Fut: Future<Output = Attempt<R>>>(
        &self,
        policy: &RequestPolicy,
        retryable: bool,
        mut attempt: impl FnMut(NextHop) -> Fut,
    ) -> Result<R, CallError> {
        match self {
            Target::Direct(hop) => match attempt(hop.clone()).await {
                Attempt::Success(r) | Attempt::Failure(r) | Attempt::NotSent(r) => Ok(r),
            },
            Target::Balanced(b) => {
                b.call(policy, retryable, |ep| attempt(for_endpoint(&ep)))
                    .await
            }
        }
    }
}

impl Route {
    pub fn inbound(orig_dst: SocketAddr, app: SocketAddr) -> Self {
        Route {
            orig_dst,
            target: Target::Direct(NextHop::plain(app, NoTls::LocalApplication)),
        }
    }

    pub fn outbound(orig_dst: SocketAddr, target: Target) -> Self {
        Route { orig_dst, target }
    }

    /// Name for metrics and logs: the service name when discovered, else
    /// the address.
    pub fn dst_name(&self) -> String {
        match &self.target {
            Target::Balanced(b) => b.name().to_string(),
            Target::Direct(hop) => hop.addr.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::BalanceConfig;
    use crate::discovery::Destination;
    use crate::transport::Peer;
    use tokio::sync::watch;

    const ID: &str = "spiffe://td/ns/a/sa/b";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn balancer(name: &str, endpoints: Vec<Endpoint>) -> Balancer {
        let (_tx, rx) = watch::channel(Destination::known(name, endpoints));
        Balancer::new(rx, BalanceConfig::default())
    }

    /// What a decision came to, comparable in a table.
    #[derive(Debug, PartialEq, Eq)]
    enum Decided {
        Balanced(String),
        Direct(NextHop),
        Refused(&'static str),
    }

    fn decided(r: Result<Target, Refusal>) -> Decided {
        match r {
            Ok(Target::Balanced(b)) => Decided::Balanced(b.name().to_string()),
            Ok(Target::Direct(hop)) => Decided::Direct(hop),
            Err(refusal) => Decided::Refused(refusal.as_str()),
        }
    }

    #[test]
    fn direct_or_balanced() {
        let nets = ClusterNetworks::default();
        let web = balancer(
            "web.default:80",
            vec![Endpoint::plain(addr("10.77.1.1:8080"))],
        );
        let plain = |a: &str, why| Decided::Direct(NextHop::plain(addr(a), why));
        let table = [
            // Discovered: balanced, inside or outside the cluster networks.
            (
                Lookup::Balanced(web.clone()),
                "10.77.0.9:80",
                Decided::Balanced("web.default:80".into()),
            ),
            (
                Lookup::Balanced(web),
                "93.184.216.34:80",
                Decided::Balanced("web.default:80".into()),
            ),
            // Discovery answered "not a mesh destination": out unchanged.
            (
                Lookup::Unknown,
                "10.77.0.9:80",
                plain("10.77.0.9:80", NoTls::UnknownToDiscovery),
            ),
            (
                Lookup::Unknown,
                "93.184.216.34:443",
                plain("93.184.216.34:443", NoTls::UnknownToDiscovery),
            ),
            // Discovery could not answer: refused inside the networks...
            (
                Lookup::Unanswered,
                "10.77.0.9:80",
                Decided::Refused("discovery_unavailable"),
            ),
            (
                Lookup::Unanswered,
                "[fd77::9]:80",
                Decided::Refused("discovery_unavailable"),
            ),
            // ... and out unchanged outside them.
            (
                Lookup::Unanswered,
                "93.184.216.34:443",
                plain("93.184.216.34:443", NoTls::NotInClusterNetworks),
            ),
        ];
        for (lookup, dst, want) in table {
            assert_eq!(decided(decide(lookup, addr(dst), &nets)), want, "{dst}");
        }
    }

    #[test]
    fn meshed_endpoints_go_through_the_peer_proxy() {
        let mut ep = Endpoint::plain(addr("10.0.0.2:8080"));
        let hop = for_endpoint(&ep);
        assert_eq!(hop.addr, ep.addr);
        assert_eq!(hop.mesh_port, None);
        assert_eq!(hop.peer, Peer::Plain(NoTls::EndpointNotMeshed));
        assert!(!hop.is_meshed());
        assert_eq!(hop.header(), None);
        ep.meshed_inbound_port = Some(4143);
        ep.identity = Some(ID.parse().unwrap());
        let hop = for_endpoint(&ep);
        assert_eq!(hop.addr, addr("10.0.0.2:4143"));
        assert_eq!(hop.mesh_port, Some(8080));
        assert!(hop.is_meshed());
        assert_eq!(
            hop.peer_identity().map(|id| id.to_string()).as_deref(),
            Some(ID)
        );
        let header = hop
            .clone()
            .carrying(crate::transport::MeshProto::H2)
            .header();
        assert_eq!(
            header.map(|h| h.to_string()).as_deref(),
            Some("CONDUIT/1 h2 8080\n")
        );
    }

    #[test]
    fn a_direct_target_is_its_one_hop() {
        let hop = NextHop::plain(addr("10.0.0.3:80"), NoTls::LocalApplication);
        let target = Target::Direct(hop.clone());
        let (picked, pick) = target.pick().unwrap();
        assert_eq!(picked, hop);
        assert!(pick.is_none());
        assert!(!target.retries());
        let route = Route::inbound(addr("10.0.0.3:80"), addr("10.0.0.3:80"));
        assert_eq!(route.dst_name(), "10.0.0.3:80");
    }

    #[test]
    fn a_balanced_target_picks_its_endpoints() {
        let mut ep = Endpoint::plain(addr("10.0.0.2:8080"));
        ep.meshed_inbound_port = Some(4143);
        ep.identity = Some(ID.parse().unwrap());
        let target = Target::Balanced(balancer("svc", vec![ep.clone()]));
        assert!(target.retries());
        let (hop, pick) = target.pick().unwrap();
        assert_eq!(hop, for_endpoint(&ep));
        assert!(pick.is_some());
        let empty = Target::Balanced(balancer("none", vec![]));
        assert!(matches!(empty.pick(), Err(CallError::NoEndpoints(n)) if &*n == "none"));
    }

    #[tokio::test]
    async fn a_direct_call_is_one_attempt_whatever_its_outcome() {
        let hop = NextHop::plain(addr("10.0.0.3:80"), NoTls::UnknownToDiscovery);
        let target = Target::Direct(hop.clone());
        let policy = RequestPolicy {
            timeout: None,
            try_timeout: None,
            max_attempts: 3,
            budget: None,
        };
        for outcome in [Attempt::Success, Attempt::Failure, Attempt::NotSent] {
            let mut calls = 0;
            let got = target
                .call(&policy, true, |h| {
                    calls += 1;
                    let r = outcome(h);
                    async move { r }
                })
                .await
                .unwrap();
            assert_eq!((got, calls), (hop.clone(), 1));
        }
    }
}
