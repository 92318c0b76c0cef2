//! Unit tests of incremental changes: each change touches only what it
//! names, a change to one service recomputes and notifies only that
//! service's watchers, and replaying changes matches a full build.

use super::tests::{addrs, pod, slice, svc};
use super::*;
use crate::store::{Updated, ViewStore};
use std::collections::HashSet;

/// The API server's objects: services, slices, pods.
type Objects = (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>, Vec<Arc<Pod>>);

fn k(name: &str) -> Key {
    ("ns".to_string(), name.to_string())
}

fn target(t: &str) -> Target {
    Target::parse(t, "cluster.local").unwrap()
}

/// Three services a, b, c, each with one slice of two endpoints and pods.
fn objects() -> Objects {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    let mut pods = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let ip = format!("10.96.0.{}", i + 1);
        services.push(svc(name, &[&ip], &[(80, "TCP")], None));
        let eps = [format!("10.1.{i}.1"), format!("10.1.{i}.2")];
        slices.push(slice(
            &format!("{name}-1"),
            name,
            "IPv4",
            8080,
            &[&eps[0], &eps[1]],
        ));
        pods.push(pod(&format!("{name}-pod-1"), &eps[0], false));
        pods.push(pod(&format!("{name}-pod-2"), &eps[1], false));
    }
    (services, slices, pods)
}

const TARGETS: [&str; 9] = [
    "a.ns.svc.cluster.local:80",
    "b.ns.svc.cluster.local:80",
    "c.ns.svc.cluster.local:80",
    "10.96.0.1:80",
    "10.96.0.2:80",
    "10.96.0.3:80",
    "10.1.0.1:80",
    "10.1.1.1:80",
    "10.1.2.2:80",
];

fn built(objs: &Objects) -> Snapshot {
    Snapshot::build("td", "cluster.local", &objs.0, &objs.1, &objs.2)
}

#[test]
fn each_change_touches_only_what_it_names() {
    let mut snap = built(&objects());
    let set = |names: &[&str]| names.iter().map(|n| k(n)).collect::<HashSet<_>>();
    let ips = |ips: &[&str]| {
        ips.iter()
            .map(|i| i.parse().unwrap())
            .collect::<HashSet<_>>()
    };

    let t = snap.upsert_slice(slice("a-1", "a", "IPv4", 8080, &["10.1.0.9"]));
    assert_eq!((t.services, t.ips), (set(&["a"]), ips(&[])));

    // The slice moves from a to b: both touched.
    let t = snap.upsert_slice(slice("a-1", "b", "IPv4", 8080, &["10.1.0.9"]));
    assert_eq!(t.services, set(&["a", "b"]));

    // A pod is touched with the services whose slices hold its address.
    let t = snap.upsert_pod(&pod("c-pod-1", "10.1.2.1", false));
    assert_eq!((t.services, t.ips), (set(&["c"]), ips(&["10.1.2.1"])));

    // The pod moves to an address nobody uses: old and new IPs, old users.
    let t = snap.upsert_pod(&pod("c-pod-1", "10.1.7.7", false));
    assert_eq!(
        (t.services, t.ips),
        (set(&["c"]), ips(&["10.1.2.1", "10.1.7.7"]))
    );
    let t = snap.remove_pod(&k("c-pod-1"));
    assert_eq!((t.services, t.ips), (set(&[]), ips(&["10.1.7.7"])));

    // A service's cluster IP changes: the service and both IPs.
    let t = snap.upsert_service(&svc("b", &["10.96.9.9"], &[(80, "TCP")], None));
    assert_eq!(
        (t.services, t.ips),
        (set(&["b"]), ips(&["10.96.0.2", "10.96.9.9"]))
    );
    let t = snap.remove_slice(&k("c-1"));
    assert_eq!(t.services, set(&["c"]));
    let t = snap.remove_slice(&k("c-1"));
    assert!(t.is_empty(), "already gone: {t:?}");
}

#[test]
fn a_change_to_one_service_recomputes_and_notifies_only_its_watchers() {
    let store = ViewStore::new(built(&objects()), Snapshot::view);
    let mut rx: Vec<_> = TARGETS.iter().map(|t| store.watch(&target(t))).collect();
    for r in &mut rx {
        r.borrow_and_update();
    }
    let u = store.update(
        |s| s.upsert_slice(slice("a-1", "a", "IPv4", 8080, &["10.1.0.1"])),
        Snapshot::affects,
    );
    // a by name and by cluster IP; nothing else is computed again.
    assert_eq!(
        u,
        Updated {
            recomputed: 2,
            changed: 2
        }
    );
    let changed: Vec<&str> = TARGETS
        .iter()
        .zip(&rx)
        .filter(|(_, r)| r.has_changed().unwrap())
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(changed, ["a.ns.svc.cluster.local:80", "10.96.0.1:80"]);
    assert_eq!(addrs(&rx[0].borrow()), ["10.1.0.1:8080"]);

    // A pod of b changes service account: b's views and the pod's address.
    let mut moved = (*pod("b-pod-1", "10.1.1.1", false)).clone();
    if let Some(spec) = moved.spec.as_mut() {
        spec.service_account_name = Some("other".into());
    }
    let u = store.update(|s| s.upsert_pod(&moved), Snapshot::affects);
    assert_eq!(
        u,
        Updated {
            recomputed: 3,
            changed: 3
        }
    );
    assert!(!rx[2].has_changed().unwrap(), "c not notified");
}

/// Applies one change to the object lists the way the API server would.
fn apply(objs: &mut Objects, snap: &mut Snapshot, step: usize) {
    fn put<T: k8s_openapi::Metadata<Ty = ObjectMeta>>(list: &mut Vec<Arc<T>>, obj: Arc<T>) {
        let name = obj.metadata().name.clone();
        list.retain(|o| o.metadata().name != name);
        list.push(obj);
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    match step {
        0 => {
            let s = slice("a-1", "a", "IPv4", 8080, &["10.1.0.1", "10.1.5.5"]);
            snap.upsert_slice(s.clone());
            put(&mut objs.1, s);
        }
        1 => {
            let p = pod("new", "10.1.5.5", false);
            snap.upsert_pod(&p);
            put(&mut objs.2, p);
        }
        2 => {
            let s = svc("a", &["10.96.0.7"], &[(80, "TCP")], None);
            snap.upsert_service(&s);
            put(&mut objs.0, s);
        }
        3 => {
            snap.remove_pod(&k("b-pod-1"));
            objs.2
                .retain(|p| p.metadata.name.as_deref() != Some("b-pod-1"));
        }
        4 => {
            let s = slice("b-1", "c", "IPv4", 9090, &["10.1.1.2"]);
            snap.upsert_slice(s.clone());
            put(&mut objs.1, s);
        }
        5 => {
            snap.remove_service(&k("c"));
            objs.0.retain(|s| s.metadata.name.as_deref() != Some("c"));
        }
        6 => {
            let s = svc("c", &["10.96.0.3"], &[(80, "TCP")], None);
            snap.upsert_service(&s);
            put(&mut objs.0, s);
        }
        7 => {
            let p = pod("a-pod-1", "10.1.0.1", true);
            snap.upsert_pod(&p);
            put(&mut objs.2, p);
        }
        _ => {
            snap.remove_slice(&k("b-1"));
            objs.1.retain(|s| s.metadata.name.as_deref() != Some("b-1"));
        }
    }
}

#[test]
fn replaying_changes_matches_a_full_build() {
    let mut objs = objects();
    let mut snap = built(&objs);
    let extra = ["10.96.0.7:80", "10.1.5.5:80", "10.1.1.2:9090"];
    for step in 0..9 {
        apply(&mut objs, &mut snap, step);
        let full = built(&objs);
        for t in TARGETS.iter().chain(&extra) {
            assert_eq!(
                Snapshot::view(&snap, &target(t)),
                Snapshot::view(&full, &target(t)),
                "after step {step}, {t}"
            );
        }
    }
}
