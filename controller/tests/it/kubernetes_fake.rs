//! The fake API server's wire format, seen by a real kube::Client at the
//! level of single requests: list JSON (no kind on items, resourceVersion,
//! continue tokens), watch events with resourceVersions, BOOKMARK, ERROR
//! 410 for a compacted resourceVersion, selectors, and Status errors.

use crate::kubernetes_common;

use conduit_controller::kubernetes::fake::FakeApiServer;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kubernetes_common::{WAIT, pod};

#[tokio::test]
async fn list_json_is_what_the_api_server_sends() {
    let fake = FakeApiServer::start().await.unwrap();
    for i in 0..3 {
        fake.apply(&pod(
            "ns",
            &format!("p{i}"),
            &format!("10.0.0.{i}"),
            "sa",
            "node-a",
            false,
            &[],
        ));
    }
    let client = fake.client();
    let req = hyper::Request::get("/api/v1/namespaces/ns/pods?limit=2")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"], "PodList");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["metadata"]["resourceVersion"], "3");
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert!(
        v["items"][0].get("kind").is_none(),
        "list items carry no kind"
    );
    assert_eq!(v["items"][0]["metadata"]["resourceVersion"], "1");
    let token = v["metadata"]["continue"].as_str().unwrap();
    let api: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let rest = api
        .list(&ListParams::default().limit(2).continue_token(token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.items[0].metadata.name.as_deref(), Some("p2"));
    assert!(rest.metadata.continue_.is_none());

    // Field selectors on pods, and unsupported ones refused like the real server.
    let on_node = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().fields("spec.nodeName=node-a,metadata.name=p1"))
        .await
        .unwrap();
    assert_eq!(on_node.items.len(), 1);
    match api
        .list(&ListParams::default().fields("spec.color=blue"))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 400),
        other => panic!("expected 400, got {other:?}"),
    }
    match api.get("nope").await {
        Err(kube::Error::Api(s)) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("expected 404, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_streams_events_bookmarks_and_410() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&pod("ns", "a", "10.0.0.1", "sa", "node-a", false, &[]));
    let api: Api<Pod> = Api::namespaced(fake.client(), "ns");
    let rv = fake.resource_version().to_string();
    let mut events = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    fake.apply(&pod("ns", "b", "10.0.0.2", "sa", "node-a", false, &[]));
    fake.apply(&pod("ns", "b", "10.0.0.3", "sa", "node-a", false, &[]));
    fake.delete::<Pod>("ns", "b");
    fake.apply(&pod("other", "c", "10.0.0.4", "sa", "node-a", false, &[]));
    fake.bookmark();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let ev = tokio::time::timeout(WAIT, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(match ev {
            WatchEvent::Added(p) => format!("ADDED {}", p.metadata.resource_version.unwrap()),
            WatchEvent::Modified(p) => format!("MODIFIED {}", p.metadata.resource_version.unwrap()),
            WatchEvent::Deleted(p) => format!("DELETED {}", p.metadata.resource_version.unwrap()),
            WatchEvent::Bookmark(b) => format!("BOOKMARK {}", b.metadata.resource_version),
            WatchEvent::Error(e) => format!("ERROR {}", e.code),
        });
    }
    // The other namespace's pod (rv 5) is not in this watch; the bookmark
    // carries the latest resourceVersion.
    assert_eq!(seen, ["ADDED 2", "MODIFIED 3", "DELETED 4", "BOOKMARK 5"]);

    // Resuming from before a compaction: ERROR 410 Gone, then the stream ends.
    fake.expire();
    let ev = tokio::time::timeout(WAIT, events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev, WatchEvent::Error(ref e) if e.code == 410),
        "{ev:?}"
    );
    let mut old = api
        .watch(&WatchParams::default(), "2")
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(WAIT, old.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(WatchEvent::Error(e)) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected 410, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, old.next())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn streaming_list_watchers_get_the_initial_state_and_its_end_bookmark() {
    use kube::runtime::watcher::{self, Event};
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&pod("ns", "a", "10.0.0.1", "sa", "node-a", false, &[]));
    let api: Api<Pod> = Api::all(fake.client());
    let mut events = watcher::watcher(api, watcher::Config::default().streaming_lists()).boxed();
    let mut names = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Event::Init => {}
            Event::InitApply(p) => names.push(p.metadata.name.unwrap()),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(names, ["a"]);
    assert_eq!(
        fake.stats().lists_of("pods"),
        0,
        "no list request in streaming mode"
    );
    fake.apply(&pod("ns", "b", "10.0.0.2", "sa", "node-a", false, &[]));
    match tokio::time::timeout(WAIT, events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Event::Apply(p) => assert_eq!(p.metadata.name.as_deref(), Some("b")),
        other => panic!("unexpected {other:?}"),
    }
}
