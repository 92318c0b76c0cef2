//! Static discovery end to end: a YAML file read by `StaticDiscovery`,
//! balancers from `Balancers`, real HTTP servers; editing the file moves
//! live traffic without a restart.

use crate::balance_util;

use balance_util::{TestServer, client, get, wait_until};
use conduit_proxy::balance::{Attempt, BalanceConfig, Balancers, RequestPolicy};
use conduit_proxy::discovery::{Resolution, StaticDiscovery};
use std::sync::Arc;
use std::time::Duration;

fn file(service: &str, endpoints: &[&TestServer]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|s| format!("\"{}\"", s.addr))
        .collect();
    format!(
        "services:\n  - name: {service}\n    addresses: [\"198.18.0.1:80\"]\n    endpoints: [{}]\n",
        eps.join(", ")
    )
}

#[tokio::test]
async fn file_changes_move_live_traffic() {
    let old = TestServer::start(Duration::ZERO, 200).await;
    let new = TestServer::start(Duration::ZERO, 200).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("discovery.yaml");
    std::fs::write(&path, file("web", &[&old])).unwrap();

    let discovery = StaticDiscovery::new(vec![], Some(path.clone())).unwrap();
    let _reload = discovery.spawn_reload(Duration::from_millis(20));
    let balancers = Balancers::new(Arc::new(discovery.clone()), BalanceConfig::default());
    assert!(
        balancers.get("198.18.0.2:80".parse().unwrap()).is_none(),
        "unknown: forward as is"
    );
    let b = balancers.get("198.18.0.1:80".parse().unwrap()).unwrap();
    assert_eq!(&*b.name(), "web");

    let c = client();
    let send = || {
        let (b, c) = (b.clone(), c.clone());
        async move {
            b.call(&RequestPolicy::default(), true, |ep| {
                let c = c.clone();
                async move { Attempt::Success(get(&c, ep.addr).await) }
            })
            .await
            .unwrap()
            .unwrap()
        }
    };
    for _ in 0..10 {
        assert_eq!(send().await, 200);
    }
    assert_eq!(old.hits(), 10);

    // A broken edit is refused and the old table stays in force.
    std::fs::write(&path, "services: [{name: web, addresses: [nonsense]}]\n").unwrap();
    assert!(discovery.reload().is_err());
    assert_eq!(send().await, 200);
    assert_eq!(old.hits(), 11);

    // Replace the endpoint: the same balancer follows (no new connection
    // needed), and its statistics for kept endpoints would survive.
    std::fs::write(&path, file("web", &[&new])).unwrap();
    wait_until(
        "the reloaded endpoint is in use",
        Duration::from_secs(10),
        || b.snapshot().iter().map(|e| e.addr).eq([new.addr]),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(send().await, 200);
    }
    assert_eq!((old.hits(), new.hits()), (11, 10));

    // Removing the service: new connections forward unchanged.
    std::fs::write(&path, "services: []\n").unwrap();
    wait_until("the service is gone", Duration::from_secs(10), || {
        matches!(
            discovery.resolve("198.18.0.1:80".parse().unwrap()),
            Resolution::Unknown
        )
    })
    .await;
    assert!(balancers.get("198.18.0.1:80".parse().unwrap()).is_none());
}

#[test]
fn bad_file_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.yaml");
    std::fs::write(
        &path,
        "services:\n  - name: web\n    addresses: [\"10.0.0.1:80\"]\n    endpoint: []\n",
    )
    .unwrap();
    let err = StaticDiscovery::new(vec![], Some(path))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("d.yaml") && err.contains("unknown field `endpoint`"),
        "{err}"
    );
}
