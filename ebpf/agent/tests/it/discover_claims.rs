//! Privileged test of discovery in "cluster mode": the real agent
//! (`--discover`, pointed at the fake API server through a kubeconfig) finds
//! whatever listens on the abstract registration socket in a pod's network
//! namespace, and enrols the pod only if that process runs in the pod's
//! `conduit-proxy` container: its cgroup must be the one named by the
//! container id the API server reports. An application container of the
//! same pod that binds the name first (an impostor) is refused with the
//! reason and a log line; the real proxy is then enrolled, and after an
//! agent restart while the API server is away it is enrolled again (it was
//! checked before).
//!
//! Container cgroups are named as containerd's systemd driver names them
//! (`cri-containerd-<id>.scope`). Skips with a message when not root; fails
//! instead under CONDUIT_REQUIRE_PRIVILEGED=1. `helper_discovered` is the
//! process run inside the pod (this test binary re-executed); on its own it
//! does nothing.

use crate::support::pod::{hold_until_stdin_closes, print_state};
use crate::support::{AgentEnv, Pod, api_pod, expect_line, k8s, privileged, spawn_lines, wait_for};

use conduit_kube::fake::FakeApiServer;
use std::process::Child;
use std::sync::mpsc;

const POD: Pod = Pod {
    name: "pod",
    host_ip: "10.213.9.1",
    pod_ip: "10.213.9.2",
};
const POD_IP: &str = POD.pod_ip;
const NODE: &str = "node-a";
const PROXY_ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const APP_ID: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn scope(id: &str) -> String {
    format!("cri-containerd-{id}.scope")
}

fn status_of(name: &str, id: &str) -> k8s::ContainerStatus {
    k8s::ContainerStatus {
        name: name.into(),
        container_id: Some(format!("containerd://{id}")),
        ..Default::default()
    }
}

/// Pod shop/web-0 on this node, with its proxy and application containers.
fn pod() -> k8s::Pod {
    let mut pod = api_pod("shop", "web-0", POD_IP, NODE);
    let status = pod.status.as_mut().unwrap();
    status.init_container_statuses = Some(vec![status_of("conduit-proxy", PROXY_ID)]);
    status.container_statuses = Some(vec![status_of("app", APP_ID)]);
    pod
}

fn env(test: &str) -> AgentEnv {
    AgentEnv::new(test, &[POD], &[&scope(PROXY_ID), &scope(APP_ID)])
}

/// Starts the agent in cluster mode, discovering, against the API server
/// at `api_url`.
fn start_agent(env: &mut AgentEnv, api_url: &str) {
    let mut cmd = env.cluster_agent_command(&[], NODE, api_url);
    cmd.args([
        "--claim-timeout",
        "2",
        "--discover",
        "--discover-interval",
        "200",
    ]);
    let ready = env.start_agent(cmd);
    assert!(ready.contains("checks_pod_claims=true"), "{ready}");
}

/// Runs the helper in the pod's network namespace, in the container
/// cgroup `container`; its lines go to the returned channel.
fn spawn_helper(env: &AgentEnv, container: &str) -> (Child, mpsc::Receiver<String>) {
    spawn_lines(
        env.helper(
            "discover_claims::helper_discovered",
            Some(POD.name),
            &scope(container),
        )
        .env("DISCOVER_HELPER", "1"),
    )
}

fn stop(mut child: Child) {
    drop(child.stdin.take());
    let _ = child.wait();
}

#[test]
fn discovery_enrols_only_the_pods_proxy_container() {
    if !privileged(conduit_tests::test_name!()) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = rt.block_on(FakeApiServer::start()).unwrap();
    fake.apply(&pod());
    let mut env = env(conduit_tests::test_name!());
    start_agent(&mut env, &fake.url());

    // The application container binds the registration socket first.
    let (impostor, _states) = spawn_helper(&env, APP_ID);
    env.wait_log(&["is not pod shop/web-0's conduit-proxy container"]);
    assert!(
        env.logged(&format!("cri-containerd-{APP_ID}.scope")),
        "the refusal names the impostor's cgroup"
    );
    assert!(env.pods().is_empty());
    stop(impostor);

    // The proxy container: found, checked and enrolled.
    let (proxy, states) = spawn_helper(&env, PROXY_ID);
    let state = |rx: &mpsc::Receiver<String>| expect_line(rx, &["STATE "]);
    assert_eq!(state(&states), "STATE enrolled=true");
    let pods = env.pods();
    assert_eq!(pods.len(), 1, "{pods:#?}");
    assert_eq!(pods[0]["name"].as_str(), Some("web-0"));

    // An agent restart while the API server is away: the adopted proxy is
    // found again and not checked again (its container and claim were), so
    // capture does not stop.
    env.stop_agent();
    assert_eq!(state(&states), "STATE enrolled=false");
    let url = fake.url();
    drop(fake);
    start_agent(&mut env, &url);
    assert_eq!(state(&states), "STATE enrolled=true");
    // (The agent's log is read on another thread: it may lag the answer.)
    env.wait_log(&["adopted pod re-registers unchanged"]);
    assert_eq!(env.pods()[0]["name"], "web-0");

    stop(proxy);
    wait_for("the pod to be removed", || env.pods().is_empty());
}

/// Inside the pod: an inbound listener on 4143 and the abstract
/// registration socket, serving pod shop/web-0 until stdin closes.
#[test]
fn helper_discovered() {
    if std::env::var_os("DISCOVER_HELPER").is_none() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _inbound = tokio::net::TcpListener::bind("0.0.0.0:4143").await.unwrap();
        let unix =
            conduit_register::discovery::bind(conduit_register::discovery::ABSTRACT_NAME).unwrap();
        let _task = conduit_register::discovery::serve(
            unix,
            conduit_register::PodInfo::new("web-0", "shop"),
            print_state,
        );
        tokio::task::spawn_blocking(hold_until_stdin_closes)
            .await
            .unwrap();
    });
}
