//! Turning consecutive views into `Update` messages.

use crate::model::{DestinationView, EndpointInfo};
use conduit_controller_api::destination::v1 as pb;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The updates that take a client from `prev` (None: nothing) to `next`.
pub fn diff(prev: Option<&DestinationView>, next: &DestinationView) -> Vec<pb::Update> {
    let name = next.name.clone().unwrap_or_default();
    let update = |kind| pb::Update {
        kind: Some(kind),
        destination_name: name.clone(),
    };
    let next_eps: BTreeMap<SocketAddr, &EndpointInfo> =
        next.endpoints.iter().map(|e| (e.addr, e)).collect();
    let no_endpoints = || {
        update(pb::update::Kind::NoEndpoints(pb::NoEndpoints {
            exists: next.exists,
        }))
    };
    let Some(prev) = prev else {
        return vec![if next_eps.is_empty() {
            no_endpoints()
        } else {
            update(add(next_eps.values().copied()))
        }];
    };
    let prev_eps: BTreeMap<SocketAddr, &EndpointInfo> =
        prev.endpoints.iter().map(|e| (e.addr, e)).collect();
    if next_eps.is_empty() {
        let changed = !prev_eps.is_empty() || prev.exists != next.exists || prev.name != next.name;
        return if changed {
            vec![no_endpoints()]
        } else {
            Vec::new()
        };
    }
    let added: Vec<&EndpointInfo> = next_eps
        .iter()
        .filter(|(addr, ep)| prev_eps.get(addr) != Some(ep))
        .map(|(_, ep)| *ep)
        .collect();
    let removed: Vec<pb::TcpAddress> = prev_eps
        .keys()
        .filter(|addr| !next_eps.contains_key(addr))
        .map(|addr| pb::TcpAddress::from(*addr))
        .collect();
    let mut out = Vec::new();
    // Add before remove: a client in between holds a superset, never nothing.
    if !added.is_empty() || (prev_eps.is_empty() && !next_eps.is_empty()) {
        out.push(update(add(added)));
    } else if prev.name != next.name {
        // Only the name changed: re-announce the endpoints under it.
        out.push(update(add(next_eps.values().copied())));
    }
    if !removed.is_empty() {
        out.push(update(pb::update::Kind::Remove(pb::RemoveEndpoints {
            addresses: removed,
        })));
    }
    out
}

fn add<'a>(eps: impl IntoIterator<Item = &'a EndpointInfo>) -> pb::update::Kind {
    pb::update::Kind::Add(pb::AddEndpoints {
        endpoints: eps.into_iter().map(to_proto).collect(),
    })
}

fn to_proto(ep: &EndpointInfo) -> pb::Endpoint {
    pb::Endpoint {
        address: Some(ep.addr.into()),
        weight: ep.weight,
        identity: ep
            .identity
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default(),
        protocol_hint: Some(pb::ProtocolHint {
            meshed: ep.meshed_inbound_port.is_some(),
            inbound_port: ep.meshed_inbound_port.map(u32::from).unwrap_or(0),
        }),
        labels: ep.labels.clone().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::update::Kind;

    fn ep(addr: &str, weight: u32) -> EndpointInfo {
        EndpointInfo {
            addr: addr.parse().unwrap(),
            weight,
            identity: None,
            meshed_inbound_port: Some(4143),
            labels: Default::default(),
        }
    }

    fn view(eps: Vec<EndpointInfo>) -> DestinationView {
        DestinationView {
            exists: true,
            name: Some("web".into()),
            endpoints: eps,
        }
    }

    fn kinds(u: &[pb::Update]) -> Vec<&'static str> {
        u.iter()
            .map(|u| match u.kind {
                Some(Kind::Add(_)) => "add",
                Some(Kind::Remove(_)) => "remove",
                Some(Kind::NoEndpoints(_)) => "none",
                None => "?",
            })
            .collect()
    }

    #[test]
    fn initial_state_is_one_message() {
        assert_eq!(
            kinds(&diff(
                None,
                &view(vec![ep("10.0.0.1:80", 1), ep("10.0.0.2:80", 1)])
            )),
            ["add"]
        );
        let u = diff(None, &DestinationView::default());
        assert!(matches!(
            u[0].kind,
            Some(Kind::NoEndpoints(pb::NoEndpoints { exists: false }))
        ));
        let u = diff(None, &view(vec![]));
        assert!(matches!(
            u[0].kind,
            Some(Kind::NoEndpoints(pb::NoEndpoints { exists: true }))
        ));
    }

    #[test]
    fn changes_become_add_then_remove() {
        let a = view(vec![ep("10.0.0.1:80", 1), ep("10.0.0.2:80", 1)]);
        let b = view(vec![ep("10.0.0.2:80", 5), ep("10.0.0.3:80", 1)]);
        let u = diff(Some(&a), &b);
        assert_eq!(kinds(&u), ["add", "remove"]);
        let Some(Kind::Add(add)) = &u[0].kind else {
            panic!()
        };
        assert_eq!(
            add.endpoints.len(),
            2,
            "changed weight is re-added, new one added"
        );
        let Some(Kind::Remove(rm)) = &u[1].kind else {
            panic!()
        };
        assert_eq!(
            rm.addresses,
            vec![pb::TcpAddress::from(
                "10.0.0.1:80".parse::<SocketAddr>().unwrap()
            )]
        );
        assert!(diff(Some(&b), &b).is_empty());
        assert_eq!(kinds(&diff(Some(&b), &view(vec![]))), ["none"]);
        assert_eq!(kinds(&diff(Some(&view(vec![])), &b)), ["add"]);
    }
}
