//! The Kubernetes discovery backend driven through the fake API server with
//! a real kube::Client: services, endpoint slices and pods added, changed and
//! removed; 410 Gone and relist; resumed watches and bookmarks; pagination.

use crate::kubernetes_common;

use conduit_controller::kubernetes::fake::FakeApiServer;
use conduit_controller::kubernetes::{KubernetesBackend, Options};
use conduit_controller::model::{DestinationView, DiscoveryBackend, Target};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kubernetes_common::*;
use tokio::sync::watch;

fn name(svc: &str, ns: &str, port: u16) -> Target {
    Target::Service {
        name: svc.into(),
        namespace: ns.into(),
        port,
    }
}

fn addr(s: &str) -> Target {
    Target::Addr(s.parse().unwrap())
}

async fn start(fake: &FakeApiServer, page_size: u32) -> KubernetesBackend {
    let backend = KubernetesBackend::start_with(
        fake.client(),
        Options {
            trust_domain: TD.into(),
            cluster_domain: "cluster.local".into(),
            page_size,
        },
    )
    .unwrap();
    let mut r = backend.rebuilds();
    tokio::time::timeout(WAIT, r.wait_for(|g| *g > 0))
        .await
        .expect("backend never synced")
        .unwrap();
    assert!(backend.is_ready());
    backend
}

/// The fake serving the web objects and a backend watching `web/shop:80`,
/// once its initial view has arrived and all three watches are open.
async fn watching_web() -> (
    FakeApiServer,
    KubernetesBackend,
    watch::Receiver<DestinationView>,
) {
    let fake = FakeApiServer::start().await.unwrap();
    web_objects(&fake);
    let backend = start(&fake, 500).await;
    let mut rx = backend.watch(&name("web", "shop", 80));
    wait_view(&mut rx, "initial", |v| v.endpoints.len() == 2).await;
    wait_until("three watches open", || fake.open_watches() == 3).await;
    (fake, backend, rx)
}

/// The slice `shop/web-abc` of service `web` (port http 8080).
fn web_slice(eps: &[Ep<'_>]) -> EndpointSlice {
    slice("shop", "web-abc", "web", &[("http", Some(8080))], eps)
}

/// Applies the web slice with `ep` as its only endpoint and waits until the
/// view shows just that endpoint (on port 8080).
async fn web_moves_to(
    fake: &FakeApiServer,
    rx: &mut watch::Receiver<DestinationView>,
    what: &str,
    ep: Ep<'static>,
) {
    fake.apply(&web_slice(&[ep]));
    let want = [format!("{}:8080", ep.0)];
    wait_view(rx, what, |v| addrs(v) == want).await;
}

/// The slice `prod/api-1` of service `api` (port https 8443).
fn api_slice(eps: &[Ep<'_>]) -> EndpointSlice {
    slice("prod", "api-1", "api", &[("https", Some(8443))], eps)
}

fn web_objects(fake: &FakeApiServer) {
    fake.apply(&service(
        "shop",
        "web",
        "10.96.0.10",
        &[("http", 80, IntOrString::String("web".into()))],
    ));
    fake.apply(&web_slice(&[
        ready("10.1.0.1", "web-0"),
        ready("10.1.0.2", "web-1"),
        ("10.1.0.3", "web-2", false, false, false),
    ]));
    fake.apply(&pod(
        "shop",
        "web-0",
        "10.1.0.1",
        "web-sa",
        "node-a",
        true,
        &[("web", 8080)],
    ));
    fake.apply(&pod(
        "shop",
        "web-1",
        "10.1.0.2",
        "web-sa",
        "node-b",
        false,
        &[("web", 8080)],
    ));
}

#[tokio::test]
async fn service_by_name_and_cluster_ip_gives_ready_endpoints_with_identity() {
    let fake = FakeApiServer::start().await.unwrap();
    web_objects(&fake);
    let backend = start(&fake, 500).await;

    for target in [name("web", "shop", 80), addr("10.96.0.10:80")] {
        let mut rx = backend.watch(&target);
        let v = wait_view(&mut rx, "web endpoints", |v| v.endpoints.len() == 2).await;
        assert!(v.exists);
        assert_eq!(v.name.as_deref(), Some("web.shop.svc.cluster.local:80"));
        assert_eq!(
            addrs(&v),
            ["10.1.0.1:8080", "10.1.0.2:8080"],
            "not-ready web-2 excluded"
        );
        let meshed = &v.endpoints[0];
        assert_eq!(
            meshed.identity.as_deref(),
            Some("spiffe://td.test/ns/shop/sa/web-sa")
        );
        assert_eq!(meshed.meshed_inbound_port, Some(4143));
        assert_eq!(meshed.labels["pod"], "web-0");
        assert_eq!(meshed.labels["service"], "web");
        let plain = &v.endpoints[1];
        assert_eq!(
            plain.identity, None,
            "a pod without the proxy has no mTLS identity"
        );
        assert_eq!(plain.meshed_inbound_port, None);
    }
    // A port the service does not declare, unknown names and IPs.
    for target in [
        name("web", "shop", 81),
        name("nope", "shop", 80),
        name("web", "other", 80),
        addr("10.96.0.10:81"),
        addr("10.9.9.9:80"),
    ] {
        let v = backend.watch(&target).borrow().clone();
        assert!(!v.exists && v.endpoints.is_empty(), "{target}: {v:?}");
    }
}

#[tokio::test]
async fn follows_added_modified_and_deleted_objects() {
    let fake = FakeApiServer::start().await.unwrap();
    let backend = start(&fake, 500).await;
    let mut rx = backend.watch(&name("api", "prod", 443));
    assert!(!rx.borrow().exists);

    fake.apply(&service(
        "prod",
        "api",
        "10.96.1.1",
        &[("https", 443, IntOrString::Int(8443))],
    ));
    wait_view(&mut rx, "service added", |v| {
        v.exists && v.endpoints.is_empty()
    })
    .await;

    fake.apply(&pod(
        "prod",
        "api-0",
        "10.2.0.1",
        "api",
        "node-a",
        false,
        &[],
    ));
    fake.apply(&pod(
        "prod",
        "api-1",
        "10.2.0.2",
        "api",
        "node-a",
        false,
        &[],
    ));
    let eps = [ready("10.2.0.1", "api-0"), ready("10.2.0.2", "api-1")];
    fake.apply(&api_slice(&eps));
    let v = wait_view(&mut rx, "endpoints added", |v| v.endpoints.len() == 2).await;
    assert_eq!(addrs(&v), ["10.2.0.1:8443", "10.2.0.2:8443"]);
    assert!(v.endpoints.iter().all(|e| e.identity.is_none()));

    // api-0 gets meshed (MODIFIED pod): its identity appears.
    fake.apply(&pod(
        "prod",
        "api-0",
        "10.2.0.1",
        "api",
        "node-a",
        true,
        &[],
    ));
    let v = wait_view(&mut rx, "api-0 meshed", |v| {
        v.endpoints.iter().any(|e| e.identity.is_some())
    })
    .await;
    assert_eq!(
        v.endpoints[0].identity.as_deref(),
        Some("spiffe://td.test/ns/prod/sa/api")
    );

    // api-1 starts terminating (MODIFIED slice): only api-0 stays.
    let eps = [
        ready("10.2.0.1", "api-0"),
        ("10.2.0.2", "api-1", false, true, true),
    ];
    fake.apply(&api_slice(&eps));
    let v = wait_view(&mut rx, "terminating endpoint removed", |v| {
        v.endpoints.len() == 1
    })
    .await;
    assert_eq!(addrs(&v), ["10.2.0.1:8443"]);

    // Every endpoint terminating but still serving: they are used until gone.
    let eps = [
        ("10.2.0.1", "api-0", false, true, true),
        ("10.2.0.2", "api-1", false, false, true),
    ];
    fake.apply(&api_slice(&eps));
    let v = wait_view(&mut rx, "serving terminating fallback", |v| {
        addrs(v) == ["10.2.0.1:8443"] && v.endpoints[0].identity.is_some()
    })
    .await;
    assert!(v.exists);

    // Slice deleted: no endpoints; service deleted: does not exist.
    assert!(fake.delete::<EndpointSlice>("prod", "api-1"));
    wait_view(&mut rx, "slice deleted", |v| {
        v.exists && v.endpoints.is_empty()
    })
    .await;
    assert!(fake.delete::<Service>("prod", "api"));
    wait_view(&mut rx, "service deleted", |v| !v.exists).await;
}

#[tokio::test]
async fn pod_ip_targets_and_headless_services() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&headless("data", "db"));
    fake.apply(&pod("data", "db-0", "10.3.0.1", "db", "node-a", true, &[]));
    fake.apply(&slice(
        "data",
        "db-x",
        "db",
        &[],
        &[ready("10.3.0.1", "db-0")],
    ));
    let backend = start(&fake, 500).await;

    // A pod IP and any port: that pod.
    let mut rx = backend.watch(&addr("10.3.0.1:5432"));
    let v = wait_view(&mut rx, "pod by IP", |v| v.exists).await;
    assert_eq!(v.name, None);
    assert_eq!(addrs(&v), ["10.3.0.1:5432"]);
    assert_eq!(
        v.endpoints[0].identity.as_deref(),
        Some("spiffe://td.test/ns/data/sa/db")
    );

    // A headless service without ports: the asked port on every endpoint.
    let v = backend.watch(&name("db", "data", 5432)).borrow().clone();
    assert_eq!(addrs(&v), ["10.3.0.1:5432"]);
    assert_eq!(v.name.as_deref(), Some("db.data.svc.cluster.local:5432"));

    // The pod finishes: its IP no longer names it.
    let mut done = pod("data", "db-0", "10.3.0.1", "db", "node-a", true, &[]);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    fake.apply(&done);
    wait_view(&mut rx, "finished pod gone", |v| !v.exists).await;
    fake.apply(&pod("data", "db-0", "10.3.0.1", "db", "node-a", true, &[]));
    wait_view(&mut rx, "pod back", |v| v.exists).await;
    assert!(fake.delete::<Pod>("data", "db-0"));
    wait_view(&mut rx, "pod deleted", |v| !v.exists).await;
}

#[tokio::test]
async fn named_target_port_is_resolved_through_the_pod() {
    let fake = FakeApiServer::start().await.unwrap();
    // The slice does not carry the port number: the service's named target
    // port is looked up in each pod's container ports.
    fake.apply(&service(
        "ns",
        "app",
        "10.96.2.2",
        &[("grpc", 9000, IntOrString::String("grpc-port".into()))],
    ));
    fake.apply(&pod(
        "ns",
        "app-0",
        "10.4.0.1",
        "app",
        "node-a",
        false,
        &[("grpc-port", 7000)],
    ));
    fake.apply(&pod(
        "ns",
        "app-1",
        "10.4.0.2",
        "app",
        "node-a",
        false,
        &[("grpc-port", 7001)],
    ));
    fake.apply(&slice(
        "ns",
        "app-s",
        "app",
        &[("grpc", None)],
        &[ready("10.4.0.1", "app-0"), ready("10.4.0.2", "app-1")],
    ));
    let backend = start(&fake, 500).await;
    let mut rx = backend.watch(&name("app", "ns", 9000));
    let v = wait_view(&mut rx, "named ports", |v| v.endpoints.len() == 2).await;
    assert_eq!(addrs(&v), ["10.4.0.1:7000", "10.4.0.2:7001"]);
}

#[tokio::test]
async fn relists_after_410_gone_and_sees_what_it_missed() {
    let (fake, _backend, mut rx) = watching_web().await;
    let lists_before = fake.stats().lists_of("endpointslices");

    // Changes whose events are lost (compacted away), then the history
    // expires: watches get ERROR 410 and the backend must relist.
    fake.apply_unseen(&web_slice(&[
        ready("10.1.0.1", "web-0"),
        ready("10.1.0.9", "web-9"),
    ]));
    fake.delete_unseen::<Pod>("shop", "web-0");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), rx.changed())
            .await
            .is_err(),
        "an unseen change must not arrive without a relist"
    );
    fake.expire();
    // Each kind relists on its own: wait for both the new slice and the
    // pod deletion (web-0 no longer gives an identity).
    wait_view(&mut rx, "relisted slice and pods", |v| {
        addrs(v) == ["10.1.0.1:8080", "10.1.0.9:8080"]
            && v.endpoints.iter().all(|e| e.identity.is_none())
    })
    .await;
    assert!(fake.stats().lists_of("endpointslices") > lists_before);
    assert!(fake.stats().lists_of("pods") >= 2);

    // Watching resumes after the relist: a normal change arrives.
    web_moves_to(
        &fake,
        &mut rx,
        "change after relist",
        ready("10.1.0.9", "web-9"),
    )
    .await;
}

#[tokio::test]
async fn resumes_watches_from_bookmarks_without_relisting() {
    let (fake, backend, mut rx) = watching_web().await;

    // Pod changes move the global resourceVersion past the services' last
    // event; a bookmark tells the services watch so.
    for i in 0..5 {
        fake.apply(&pod(
            "other",
            &format!("p{i}"),
            &format!("10.9.0.{i}"),
            "x",
            "node-a",
            false,
            &[],
        ));
    }
    fake.bookmark();
    let bookmark_rv = fake.resource_version().to_string();
    let lists = fake.stats().lists.clone();
    // Make sure the bookmark was read before the stream ends: it is the
    // last line the services watch gets before this change.
    fake.apply(&pod(
        "other",
        "marker",
        "10.9.1.1",
        "x",
        "node-a",
        false,
        &[],
    ));
    let mut marker = backend.watch(&addr("10.9.1.1:80"));
    wait_view(&mut marker, "marker pod", |v| v.exists).await;

    fake.close_watches();
    wait_until("watches reopened", || fake.stats().watch_from.len() >= 6).await;
    let stats = fake.stats();
    assert_eq!(
        stats.lists, lists,
        "a closed watch resumes without relisting"
    );
    let resumed: Vec<_> = stats.watch_from[3..]
        .iter()
        .filter(|(p, _)| p == "services")
        .collect();
    assert_eq!(resumed.len(), 1, "{:?}", stats.watch_from);
    assert_eq!(
        resumed[0].1, bookmark_rv,
        "services watch resumed from the bookmark"
    );

    // Events after the reconnect still arrive.
    web_moves_to(
        &fake,
        &mut rx,
        "change after resume",
        ready("10.1.0.2", "web-1"),
    )
    .await;
}

#[tokio::test]
async fn paginated_initial_list() {
    let fake = FakeApiServer::start().await.unwrap();
    for i in 0..5 {
        fake.apply(&service(
            "many",
            &format!("s{i}"),
            &format!("10.96.3.{i}"),
            &[("", 80, IntOrString::Int(80))],
        ));
    }
    let backend = start(&fake, 2).await;
    assert_eq!(
        fake.stats().lists_of("services"),
        3,
        "5 services in pages of 2"
    );
    for i in 0..5 {
        let v = backend
            .watch(&addr(&format!("10.96.3.{i}:80")))
            .borrow()
            .clone();
        assert_eq!(v.name, Some(format!("s{i}.many.svc.cluster.local:80")));
    }
}

#[tokio::test]
async fn not_ready_until_every_kind_is_listed() {
    let fake = FakeApiServer::start().await.unwrap();
    web_objects(&fake);
    // As with missing RBAC for EndpointSlices: services and pods list, slices do not.
    fake.fail("endpointslices", 403);
    let backend =
        KubernetesBackend::start(fake.client(), TD.into(), "cluster.local".into()).unwrap();
    wait_until("a refused slice list and listed services and pods", || {
        let s = fake.stats();
        s.refused.get("endpointslices").copied().unwrap_or(0) >= 1
            && s.lists_of("services") >= 1
            && s.lists_of("pods") >= 1
    })
    .await;
    assert!(!backend.is_ready(), "ready without EndpointSlices");
    let mut rx = backend.watch(&name("web", "shop", 80));
    assert!(
        !rx.borrow().exists,
        "nothing is served before every kind is listed"
    );
    fake.heal();
    let v = wait_view(&mut rx, "served after the slices list", |v| {
        v.endpoints.len() == 2
    })
    .await;
    assert!(v.exists && backend.is_ready());
}
