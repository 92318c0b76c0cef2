//! `Destination.Get` over real gRPC on loopback: the initial state, changes
//! as Add/Remove/NoEndpoints, unknown targets, and a slow subscriber that
//! does not hold back the others.

use crate::common;

use common::*;
use conduit_controller_api::client::{WatchOptions, watch_destination_with};
use conduit_controller_api::destination::v1::{
    self as pb, GetRequest, destination_client::DestinationClient, update::Kind,
};
use std::net::SocketAddr;
use std::time::Duration;
use tonic::Streaming;

const WEB: &str = "web.default.svc.cluster.local:80";

async fn get(c: &TestController, target: &str) -> Streaming<pb::Update> {
    let mut client = DestinationClient::new(c.channel());
    client
        .get(GetRequest {
            target: target.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next(s: &mut Streaming<pb::Update>) -> pb::Update {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an update within 10 s")
        .unwrap()
        .expect("stream open")
}

fn addr(a: &pb::TcpAddress) -> String {
    SocketAddr::try_from(a).unwrap().to_string()
}

fn added(u: &pb::Update) -> Vec<String> {
    match &u.kind {
        Some(Kind::Add(a)) => a
            .endpoints
            .iter()
            .map(|e| addr(e.address.as_ref().unwrap()))
            .collect(),
        other => panic!("expected add, got {other:?}"),
    }
}

#[tokio::test]
async fn streams_initial_state_then_adds_and_removes() {
    let c = TestController::start(&web_service(&["10.0.0.1", "10.0.0.2"])).await;
    let mut s = get(&c, WEB).await;

    let first = next(&mut s).await;
    assert_eq!(first.destination_name, WEB);
    assert_eq!(added(&first), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    let Some(Kind::Add(add)) = &first.kind else {
        unreachable!()
    };
    let ep = &add.endpoints[0];
    assert_eq!(ep.identity, "spiffe://test.local/ns/default/sa/web");
    assert_eq!(ep.weight, 1);
    assert_eq!(
        ep.protocol_hint,
        Some(pb::ProtocolHint {
            meshed: true,
            inbound_port: 4143
        })
    );
    assert_eq!(ep.labels.get("pod").map(String::as_str), Some("10.0.0.1"));

    c.set_discovery(&web_service(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]))
        .await;
    assert_eq!(added(&next(&mut s).await), ["10.0.0.3:8080"]);

    c.set_discovery(&web_service(&["10.0.0.2", "10.0.0.3"]))
        .await;
    match next(&mut s).await.kind {
        Some(Kind::Remove(r)) => assert_eq!(
            r.addresses.iter().map(addr).collect::<Vec<_>>(),
            ["10.0.0.1:8080"]
        ),
        other => panic!("expected remove, got {other:?}"),
    }

    // Replace one endpoint by another: add first, then remove.
    c.set_discovery(&web_service(&["10.0.0.2", "10.0.0.4"]))
        .await;
    assert_eq!(added(&next(&mut s).await), ["10.0.0.4:8080"]);
    assert!(matches!(next(&mut s).await.kind, Some(Kind::Remove(_))));

    c.set_discovery(&web_service(&[])).await;
    assert!(matches!(
        next(&mut s).await.kind,
        Some(Kind::NoEndpoints(pb::NoEndpoints { exists: true }))
    ));

    // The service goes away entirely.
    c.set_discovery("services: []\n").await;
    assert!(matches!(
        next(&mut s).await.kind,
        Some(Kind::NoEndpoints(pb::NoEndpoints { exists: false }))
    ));
}

#[tokio::test]
async fn cluster_ip_pod_ip_and_unknown_targets() {
    let c = TestController::start(&web_service(&["10.0.0.1"])).await;
    let first = next(&mut get(&c, "10.96.0.10:80").await).await;
    assert_eq!(
        first.destination_name, WEB,
        "a service asked by cluster IP carries its name"
    );
    assert_eq!(added(&first), ["10.0.0.1:8080"]);

    let pod = next(&mut get(&c, "10.0.0.1:8080").await).await;
    assert_eq!(pod.destination_name, "");
    assert_eq!(added(&pod), ["10.0.0.1:8080"]);

    let mut unknown = get(&c, "db.default.svc.cluster.local:5432").await;
    assert!(matches!(
        next(&mut unknown).await.kind,
        Some(Kind::NoEndpoints(pb::NoEndpoints { exists: false }))
    ));
    // It appears later: the open stream learns it.
    let both = format!(
        "{}  - name: db\n    ports: [{{port: 5432}}]\n    endpoints: [{{ip: 10.0.1.1}}]\n",
        web_service(&["10.0.0.1"])
    );
    c.set_discovery(&both).await;
    let u = next(&mut unknown).await;
    assert_eq!(added(&u), ["10.0.1.1:5432"]);
    assert_eq!(u.destination_name, "db.default.svc.cluster.local:5432");

    let mut client = DestinationClient::new(c.channel());
    for bad in [
        "example.com:80",
        "web.default.svc",
        "web.default.svc.cluster.local:http",
    ] {
        let err = client
            .get(GetRequest { target: bad.into() })
            .await
            .expect_err("refused");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{bad}: {}",
            err.message()
        );
    }
}

/// A file whose `web` service has `n` endpoints all labelled with `generation`.
fn generation(n: usize, generation: usize) -> String {
    let mut s = String::from(
        "services:\n  - name: web\n    namespace: default\n    ports: [{port: 80, targetPort: 8080}]\n    endpoints:\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "      - {{ip: 10.1.{}.{}, serviceAccount: web, meshed: true, labels: {{generation: \"{generation}\", padding: \"{}\"}}}}\n",
            i / 250,
            i % 250 + 1,
            "x".repeat(100)
        ));
    }
    s
}

#[tokio::test]
async fn a_slow_subscriber_does_not_block_the_others() {
    const ENDPOINTS: usize = 200;
    const CHANGES: usize = 60;
    let c = TestController::start(&generation(ENDPOINTS, 0)).await;

    // The slow subscriber: its own connection; reads the first message, then nothing.
    let mut slow = get(&c, WEB).await;
    assert_eq!(added(&next(&mut slow).await).len(), ENDPOINTS);

    // Fast subscribers, each on its own connection, through the client library.
    let mut fast: Vec<_> = (0..5)
        .map(|_| watch_destination_with(c.channel(), WEB, WatchOptions::default()))
        .collect();
    let gen_of = |s: &conduit_controller_api::client::DestinationState| -> Option<usize> {
        let gens: std::collections::BTreeSet<_> = s
            .endpoints
            .iter()
            .map(|e| e.labels["generation"].parse::<usize>().unwrap())
            .collect();
        (gens.len() == 1 && s.endpoints.len() == ENDPOINTS).then(|| *gens.first().unwrap())
    };
    for rx in &mut fast {
        wait_for(rx, |s| gen_of(s) == Some(0)).await;
    }
    // Each change re-labels every endpoint (about 30 KB per update): far more
    // than the slow stream's HTTP/2 window over all changes.
    for g in 1..=CHANGES {
        c.set_discovery(&generation(ENDPOINTS, g)).await;
        for rx in &mut fast {
            wait_for(rx, |s| gen_of(s) == Some(g)).await;
        }
    }

    // The slow subscriber catches up to the latest state, having skipped
    // intermediate ones (its stream held no backlog of all changes).
    let mut state = std::collections::BTreeMap::new();
    let mut messages = 0;
    loop {
        let u = next(&mut slow).await;
        messages += 1;
        if let Some(Kind::Add(a)) = u.kind {
            for e in a.endpoints {
                state.insert(
                    addr(e.address.as_ref().unwrap()),
                    e.labels["generation"].clone(),
                );
            }
        }
        if state.len() == ENDPOINTS && state.values().all(|g| *g == CHANGES.to_string()) {
            break;
        }
    }
    assert!(
        messages < CHANGES,
        "slow subscriber got {messages} updates for {CHANGES} changes: not coalesced"
    );
}

#[tokio::test]
async fn streams_end_cleanly_on_shutdown() {
    let mut c = TestController::start(&web_service(&["10.0.0.1"])).await;
    let mut s = get(&c, WEB).await;
    next(&mut s).await;
    c.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("stream ended");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}
