//! The file backend against real files: views, reload on change, and a
//! broken file keeping the last good state with an error naming the line.

use crate::common;

use common::*;
use conduit_controller::file::FileBackend;
use conduit_controller::model::{DiscoveryBackend, Target};
use std::time::Duration;

fn web_target() -> Target {
    Target::Service {
        name: "web".into(),
        namespace: "default".into(),
        port: 80,
    }
}

fn addrs(view: &conduit_controller::model::DestinationView) -> Vec<String> {
    view.endpoints.iter().map(|e| e.addr.to_string()).collect()
}

#[tokio::test]
async fn views_by_name_cluster_ip_and_pod_ip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.yaml");
    std::fs::write(&path, web_service(&["10.0.0.1", "10.0.0.2"])).unwrap();
    let backend = FileBackend::start(&path, settings(), Duration::from_secs(1), None).unwrap();

    let by_name = backend.watch(&web_target()).borrow().clone();
    assert!(by_name.exists);
    assert_eq!(
        by_name.name.as_deref(),
        Some("web.default.svc.cluster.local:80")
    );
    assert_eq!(addrs(&by_name), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    let ep = &by_name.endpoints[0];
    assert_eq!(
        ep.identity.as_deref(),
        Some("spiffe://test.local/ns/default/sa/web")
    );
    assert_eq!(ep.meshed_inbound_port, Some(4143));
    assert_eq!(ep.labels.get("pod").map(String::as_str), Some("10.0.0.1"));

    let by_ip = backend
        .watch(&Target::Addr("10.96.0.10:80".parse().unwrap()))
        .borrow()
        .clone();
    assert_eq!(by_ip, by_name);

    let pod = backend
        .watch(&Target::Addr("10.0.0.2:8080".parse().unwrap()))
        .borrow()
        .clone();
    assert!(pod.exists);
    assert_eq!(pod.name, None);
    assert_eq!(addrs(&pod), ["10.0.0.2:8080"]);

    for unknown in [
        Target::Addr("10.96.0.10:81".parse().unwrap()),
        Target::Addr("192.0.2.1:80".parse().unwrap()),
        Target::Service {
            name: "db".into(),
            namespace: "default".into(),
            port: 80,
        },
    ] {
        let v = backend.watch(&unknown).borrow().clone();
        assert!(
            !v.exists && v.endpoints.is_empty(),
            "{unknown} should not exist"
        );
    }
}

#[tokio::test]
async fn reloads_on_change_and_keeps_last_good_state_on_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.yaml");
    std::fs::write(&path, web_service(&["10.0.0.1"])).unwrap();
    let backend = FileBackend::start(&path, settings(), Duration::from_secs(30), None).unwrap();
    let mut web = backend.watch(&web_target());
    let mut status = backend.status();

    // A change (written in place, not renamed) is picked up by notification,
    // long before the 30 s poll.
    std::fs::write(&path, web_service(&["10.0.0.1", "10.0.0.3"])).unwrap();
    let v = wait_for(&mut web, |v| v.endpoints.len() == 2).await;
    assert_eq!(addrs(&v), ["10.0.0.1:8080", "10.0.0.3:8080"]);

    // A file with a syntax error: refused, the error names the line.
    let before = status.borrow_and_update().failed;
    let broken = web_service(&["10.0.0.9"]).replace("targetPort: 8080", "targetPort: [8080");
    write_atomic(&path, &broken);
    let s = wait_for(&mut status, |s| s.failed > before).await;
    let err = s.last_error.unwrap();
    assert!(err.contains("line "), "error should name the line: {err}");
    assert_eq!(
        addrs(&web.borrow()),
        ["10.0.0.1:8080", "10.0.0.3:8080"],
        "last good state kept"
    );

    // A file with a bad value: the line of the value.
    let before = status.borrow().failed;
    let bad_ip = web_service(&["10.0.0.1", "10.0.0.300"]);
    write_atomic(&path, &bad_ip);
    let s = wait_for(&mut status, |s| s.failed > before).await;
    let err = s.last_error.unwrap();
    let line = bad_ip
        .lines()
        .position(|l| l.contains("10.0.0.300"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("line {line} ")),
        "error should name line {line}: {err}"
    );
    assert!(
        err.contains("endpoints[1].ip"),
        "error should name the field: {err}"
    );

    // A semantic error (duplicate service) names the service's line.
    let before = status.borrow().failed;
    let dup = format!(
        "{}{}",
        web_service(&["10.0.0.1"]),
        &web_service(&["10.0.0.2"])["services:\n".len()..]
    );
    write_atomic(&path, &dup);
    let s = wait_for(&mut status, |s| s.failed > before).await;
    let err = s.last_error.unwrap();
    assert!(err.contains("defined twice"), "{err}");
    let second = dup
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("name: web"))
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert!(
        err.contains(&format!("line {second}:")),
        "should name line {second}: {err}"
    );
    assert_eq!(web.borrow().endpoints.len(), 2, "still the last good state");

    // Unknown fields (typos) are refused too.
    let before = status.borrow().failed;
    write_atomic(
        &path,
        &web_service(&["10.0.0.1"]).replace("meshed:", "meshd:"),
    );
    let s = wait_for(&mut status, |s| s.failed > before).await;
    assert!(s.last_error.unwrap().contains("meshd"));

    // A good file again: applied, error cleared.
    write_atomic(&path, &web_service(&["10.0.0.4"]));
    let v = wait_for(&mut web, |v| v.endpoints.len() == 1).await;
    assert_eq!(addrs(&v), ["10.0.0.4:8080"]);
    assert_eq!(backend.status().borrow().last_error, None);
}

#[tokio::test]
async fn deleted_file_keeps_state_and_returning_file_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.yaml");
    std::fs::write(&path, web_service(&["10.0.0.1"])).unwrap();
    let backend = FileBackend::start(&path, settings(), Duration::from_millis(200), None).unwrap();
    let mut web = backend.watch(&web_target());
    let mut status = backend.status();
    std::fs::remove_file(&path).unwrap();
    let s = wait_for(&mut status, |s| s.failed > 0).await;
    assert!(s.last_error.unwrap().contains("cannot read"));
    assert_eq!(web.borrow().endpoints.len(), 1);
    std::fs::write(&path, web_service(&[])).unwrap();
    let v = wait_for(&mut web, |v| v.endpoints.is_empty()).await;
    assert!(v.exists, "service without endpoints exists");
}

#[test]
fn a_bad_file_at_startup_is_an_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.yaml");
    std::fs::write(&path, "services:\n  - name: web\n    ports: oops\n").unwrap();
    let err = FileBackend::start(&path, settings(), Duration::from_secs(1), None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("line 3"), "{err}");
}

/// A small discovery file whose aliases expand to 4 million labels, and a
/// file far over the size limit: both refused at once with an error saying
/// why, instead of the controller eating the node's memory (serde_yaml
/// built every aliased copy; nothing bounded the file's size).
#[test]
fn an_alias_bomb_and_an_oversized_file_are_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.yaml");
    let mut bomb = String::from(
        "services:\n  - name: web\n    ports: [{port: 80}]\n    endpoints:\n      - ip: 10.0.0.1\n        labels: &l {",
    );
    let labels: Vec<String> = (0..2_000).map(|i| format!("k{i}: v")).collect();
    bomb.push_str(&labels.join(","));
    bomb.push_str("}\n");
    for i in 0..2_000 {
        bomb.push_str(&format!("      - {{ip: 10.0.{}.{}, labels: *l}}\n", i / 250, i % 250 + 2));
    }
    assert!(bomb.len() < 100_000, "{}", bomb.len());
    std::fs::write(&path, &bomb).unwrap();
    let started = std::time::Instant::now();
    let err = FileBackend::start(&path, settings(), Duration::from_secs(1), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("line "), "{err}");
    assert!(err.contains("budget") || err.contains("alias"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // 1 GiB (sparse): refused after reading 16 MiB.
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(1 << 30).unwrap();
    let err = FileBackend::start(&path, settings(), Duration::from_secs(1), None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("larger than 16777216 bytes"), "{err}");
}

#[tokio::test]
async fn follows_a_configmap_style_symlink_swap() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..v1")).unwrap();
    std::fs::write(d.join("..v1/discovery.yaml"), web_service(&["10.0.0.1"])).unwrap();
    symlink("..v1", d.join("..data")).unwrap();
    symlink("..data/discovery.yaml", d.join("discovery.yaml")).unwrap();
    // Poll only every 30 s: the change must come through notifications.
    let backend = FileBackend::start(
        d.join("discovery.yaml"),
        settings(),
        Duration::from_secs(30),
        None,
    )
    .unwrap();
    let mut web = backend.watch(&web_target());
    assert_eq!(addrs(&web.borrow()), ["10.0.0.1:8080"]);

    // What the kubelet does: a new directory, then an atomic `..data` swap.
    std::fs::create_dir(d.join("..v2")).unwrap();
    std::fs::write(d.join("..v2/discovery.yaml"), web_service(&["10.0.0.2"])).unwrap();
    symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    let v = wait_for(&mut web, |v| {
        v.endpoints.len() == 1
            && v.endpoints[0].addr.port() == 8080
            && v.endpoints[0].addr.ip().to_string() == "10.0.0.2"
    })
    .await;
    assert_eq!(addrs(&v), ["10.0.0.2:8080"]);
}
