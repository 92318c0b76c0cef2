//! The proxies' client (`conduit_controller_api::client`) against a running
//! controller: following endpoint changes, keeping the last known endpoints
//! while the controller is down, and reconnecting.

use crate::common;
use conduit_test_support::metrics::assert_sample;

use common::*;
use conduit_controller_api::client::{
    DestinationResolver, DestinationState, WatchOptions, watch_destination_with,
};
use std::time::Duration;

const WEB: &str = "web.default.svc.cluster.local:80";

fn fast_retry() -> WatchOptions {
    WatchOptions {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
    }
}

fn addrs(s: &DestinationState) -> Vec<String> {
    s.endpoints.iter().map(|e| e.addr.to_string()).collect()
}

#[tokio::test]
async fn follows_an_endpoint_change() {
    let c = TestController::start(&web_service(&["10.0.0.1"])).await;
    let mut rx = watch_destination_with(c.channel(), WEB, fast_retry());
    let s = wait_for(&mut rx, |s| s.exists == Some(true)).await;
    assert!(s.connected);
    assert_eq!(s.name.as_deref(), Some(WEB));
    assert_eq!(addrs(&s), ["10.0.0.1:8080"]);
    let ep = &s.endpoints[0];
    assert_eq!(
        ep.identity.as_deref(),
        Some("spiffe://test.local/ns/default/sa/web")
    );
    assert_eq!(ep.meshed_inbound_port, Some(4143));

    write_atomic(&c.discovery, &web_service(&["10.0.0.2", "10.0.0.3"]));
    let s = wait_for(&mut rx, |s| s.endpoints.len() == 2).await;
    assert_eq!(addrs(&s), ["10.0.0.2:8080", "10.0.0.3:8080"]);
}

#[tokio::test]
async fn keeps_endpoints_while_the_controller_is_down_then_reconnects() {
    let mut c = TestController::start(&web_service(&["10.0.0.1", "10.0.0.2"])).await;
    let mut rx = watch_destination_with(c.channel(), WEB, fast_retry());
    wait_for(&mut rx, |s| s.connected && s.endpoints.len() == 2).await;

    c.stop().await;
    let s = wait_for(&mut rx, |s| !s.connected).await;
    assert_eq!(
        addrs(&s),
        ["10.0.0.1:8080", "10.0.0.2:8080"],
        "last known endpoints kept"
    );
    assert_eq!(s.exists, Some(true));

    // While it is down the world changes; the client cannot know yet. A
    // listener that accepts and drops connections on the controller's port
    // counts the client's reconnect attempts: after several failed ones it
    // still holds its endpoints.
    c.set_discovery(&web_service(&["10.0.0.3"])).await;
    let dead = tokio::net::TcpListener::bind(c.grpc_addr).await.unwrap();
    for _ in 0..3 {
        let (conn, _) = tokio::time::timeout(Duration::from_secs(10), dead.accept())
            .await
            .expect("client retries")
            .unwrap();
        drop(conn);
    }
    drop(dead);
    assert_eq!(addrs(&rx.borrow()), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert!(!rx.borrow().connected);

    c.restart().await;
    let s = wait_for(&mut rx, |s| s.connected && s.endpoints.len() == 1).await;
    assert_eq!(
        addrs(&s),
        ["10.0.0.3:8080"],
        "new complete state replaces the old"
    );
}

#[tokio::test]
async fn resolver_shares_streams_and_reports_unknown_targets() {
    let c = TestController::start(&web_service(&["10.0.0.1"])).await;
    let resolver = DestinationResolver::with_options(c.channel(), fast_retry(), 100);
    let a = resolver.resolve(WEB, Duration::from_secs(10)).await;
    let b = resolver.watch_addr("10.96.0.10:80".parse().unwrap());
    let _c = resolver.watch(WEB);
    assert_eq!(resolver.len(), 2, "one watch per target");
    assert_eq!(a.borrow().exists, Some(true));
    let mut b = b;
    let s = wait_for(&mut b, |s| s.exists == Some(true)).await;
    assert_eq!(
        s.name.as_deref(),
        Some(WEB),
        "cluster IP resolves to the service name"
    );

    let unknown = resolver
        .resolve("192.0.2.1:80", Duration::from_secs(10))
        .await;
    assert_eq!(unknown.borrow().exists, Some(false));
    // A target the controller refuses (not a service name) is unknown too.
    let refused = resolver
        .resolve("example.com:80", Duration::from_secs(10))
        .await;
    assert_eq!(refused.borrow().exists, Some(false));

    // One open stream per target: the service by name, by cluster IP, and the
    // unknown address (the refused name has none).
    let metrics = metrics_text(&c).await;
    assert_sample(&metrics, "conduit_controller_destination_streams", &[], 3.0);
}

/// The proxy balances over the client's state as it is (no mapping task
/// into a proxy type): an address target names its service and follows its
/// endpoints.
#[tokio::test]
async fn an_address_target_is_what_the_proxy_balances_over() {
    let c = TestController::start(&web_service(&["10.0.0.1"])).await;
    let mut rx = watch_destination_with(c.channel(), "10.96.0.10:80", fast_retry());
    assert_eq!(
        wait_for_eq(&mut rx, |s| !s.endpoints.is_empty())
            .await
            .display_name(),
        WEB
    );
    write_atomic(&c.discovery, &web_service(&["10.0.0.7"]));
    let want: Vec<std::net::SocketAddr> = vec!["10.0.0.7:8080".parse().unwrap()];
    let s = wait_for_eq(&mut rx, |s| {
        s.endpoints.iter().map(|e| e.addr).collect::<Vec<_>>() == want
    })
    .await;
    assert_eq!(s.display_name(), WEB);
    assert!(!s.pending());
}

async fn wait_for_eq<T>(
    rx: &mut tokio::sync::watch::Receiver<T>,
    pred: impl FnMut(&T) -> bool,
) -> tokio::sync::watch::Ref<'_, T> {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(pred))
        .await
        .expect("in time")
        .unwrap()
}

async fn metrics_text(c: &TestController) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(c.admin_addr())
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Polls the controller's open-stream gauge until it equals `n`.
async fn wait_streams(c: &TestController, n: usize) {
    conduit_test_support::wait_until_async(
        &format!("{n} open streams"),
        Duration::from_secs(10),
        || async {
            let page = metrics_text(c).await;
            conduit_test_support::metrics::check_sum(
                &page,
                "conduit_controller_destination_streams",
                &[],
                n as f64,
            )
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn dropping_every_receiver_ends_the_stream_and_a_new_watch_restarts_it() {
    let c = TestController::start(&web_service(&["10.0.0.1"])).await;
    let resolver = DestinationResolver::with_options(c.channel(), fast_retry(), 100);
    let a = resolver.resolve(WEB, Duration::from_secs(10)).await;
    let b = resolver.watch(WEB);
    assert_eq!(a.borrow().exists, Some(true));
    wait_streams(&c, 1).await;
    drop(a);
    assert_eq!(resolver.len(), 1, "still followed through b");
    drop(b);
    wait_streams(&c, 0).await;
    assert_eq!(resolver.len(), 0);
    // Resolving again opens a new stream with the current state.
    write_atomic(&c.discovery, &web_service(&["10.0.0.9"]));
    let mut again = resolver.watch(WEB);
    let s = wait_for(&mut again, |s| addrs(s) == ["10.0.0.9:8080"]).await;
    assert!(s.connected);
    wait_streams(&c, 1).await;
}
