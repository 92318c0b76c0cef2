//! Privileged test of the agent in "cluster mode": the real agent binary,
//! pointed at the fake Kubernetes API server through a kubeconfig, checks
//! each registering proxy's pod claim (name, namespace, the IPs it finds in
//! the proxy's network namespace) and refuses a mismatch with a reason the
//! proxy receives and a log line. Cases: accepted, wrong namespace, wrong
//! IP, pod on another node, an IP the kubelet reports late (retried), an
//! unknown pod (refused once the claim timeout has passed), and an enrolled
//! proxy re-registering unchanged after an agent restart while the API
//! server is away (not asked again).
//!
//! The agent runs in a cgroup namespace of its own, as in a pod: the
//! proxy's cgroup must still resolve (it enters the node's namespace).
//!
//! Skips with a message when not root; fails instead under
//! CONDUIT_REQUIRE_PRIVILEGED=1. `helper_register` is the proxy run inside
//! the pod (this test binary re-executed); on its own it does nothing.

use crate::support::pod::{hold_until_stdin_closes, print_state, register_and_hold};
use crate::support::{
    AgentEnv, Pod, api_pod as pod, expect_line, privileged, spawn_lines, wait_for,
};

use conduit_kube::fake::FakeApiServer;
use std::os::unix::fs::MetadataExt;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const POD: Pod = Pod {
    name: "pod",
    host_ip: "10.213.8.1",
    pod_ip: "10.213.8.2",
};
const POD_IP: &str = POD.pod_ip;
const NODE: &str = "node-a";
/// The agent's --claim-timeout, short so that the refusal cases are quick.
const CLAIM_TIMEOUT_SECS: u64 = 2;

/// Starts the agent in cluster mode as in a pod: in a cgroup namespace
/// of its own rooted at `<test cgroup>/agent`, with that namespace's
/// cgroup2 mounted (as a container's /sys/fs/cgroup) besides the node's.
/// `node_ns` is its --node-cgroup-ns (None: one it cannot open).
fn start_agent(env: &mut AgentEnv, api_url: &str, node_ns: Option<String>) {
    let own = env.tmp.path().join("own-cgroup");
    std::fs::create_dir_all(&own).unwrap();
    // The agent's command line comes last: `"$0" "$@"` of both shells.
    let wrapper = format!(
        "echo $$ > {}/cgroup.procs && exec unshare --cgroup --mount sh -c 'mount -t cgroup2 none {} && exec \"$0\" \"$@\"' \"$0\" \"$@\"",
        env.cgroup.join("agent").display(),
        own.display(),
    );
    let mut cmd = env.cluster_agent_command(&["sh", "-c", &wrapper], NODE, api_url);
    cmd.args(["--claim-timeout", &CLAIM_TIMEOUT_SECS.to_string()])
        .arg("--node-cgroup-ns")
        .arg(node_ns.unwrap_or_else(|| "/nonexistent/ns/cgroup".into()));
    let ready = env.start_agent(cmd);
    assert!(ready.contains("checks_pod_claims=true"), "{ready}");
}

/// Starts the proxy helper in the pod (netns, proxy cgroup) with
/// CLAIM_ARGS `claim` (after the agent socket path); its stdout lines.
fn spawn_helper(env: &AgentEnv, claim: &str) -> (Child, mpsc::Receiver<String>) {
    spawn_lines(
        env.helper("pod_claims::helper_register", Some(POD.name), "proxy")
            .env("CLAIM_ARGS", format!("{}\n{claim}", env.socket.display())),
    )
}

/// Runs the proxy helper in the pod (netns, proxy cgroup), claiming
/// `namespace/name`; returns it with its answer (ENROLLED/REFUSED).
fn register(env: &AgentEnv, namespace: &str, name: &str) -> (Child, String) {
    let (child, lines) = spawn_helper(env, &format!("{namespace}\n{name}"));
    (child, expect_line(&lines, &["ENROLLED", "REFUSED"]))
}

/// Runs the proxy helper in `maintain` mode (re-registers when the
/// agent restarts); its `STATE enrolled=...` lines.
fn maintain(env: &AgentEnv, namespace: &str, name: &str) -> (Child, mpsc::Receiver<String>) {
    spawn_helper(env, &format!("{namespace}\n{name}\nmaintain"))
}

/// Registers and expects a refusal; returns the reason.
fn refused(env: &AgentEnv, namespace: &str, name: &str) -> String {
    let (mut child, line) = register(env, namespace, name);
    let _ = child.wait();
    let i = line
        .find("REFUSED ")
        .unwrap_or_else(|| panic!("{namespace}/{name} was not refused: {line}"));
    line[i + "REFUSED ".len()..].to_string()
}

#[test]
fn agent_checks_pod_claims_against_the_api_server() {
    if !privileged(conduit_tests::test_name!()) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = rt.block_on(FakeApiServer::start()).unwrap();
    fake.apply(&pod("shop", "web-0", POD_IP, NODE));
    fake.apply(&pod("shop", "web-1", POD_IP, "node-b"));
    fake.apply(&pod("shop", "web-2", "10.1.0.99", NODE));
    let mut env = AgentEnv::new(conduit_tests::test_name!(), &[POD], &["agent", "proxy"]);
    let url = fake.url();
    // The node's cgroup namespace: this test's (pid 1 may be off limits on
    // a test machine; in a pod it is the node's init, the default).
    start_agent(
        &mut env,
        &url,
        Some(format!("/proc/{}/ns/cgroup", std::process::id())),
    );
    assert!(env.logged("entered the node's cgroup namespace"));

    // Accepted: the pod exists, on this node, with the namespace's IP.
    let (mut proxy, line) = register(&env, "shop", "web-0");
    assert!(line.contains(&format!("ENROLLED {POD_IP}")), "{line}");
    let st = env.status();
    let pods = st["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 1, "{st:#}");
    assert_eq!(
        (pods[0]["namespace"].as_str(), pods[0]["name"].as_str()),
        (Some("shop"), Some("web-0"))
    );
    // The proxy's cgroup resolved from the agent's own cgroup namespace.
    let proxy_cgroup = std::fs::metadata(env.cgroup.join("proxy")).unwrap().ino();
    assert_eq!(pods[0]["proxy_cgroup_id"].as_u64(), Some(proxy_cgroup));
    drop(proxy.stdin.take());
    let _ = proxy.wait();
    wait_for("the pod to be removed", || env.pods().is_empty());

    // Wrong namespace: web-0 exists on this node, but in shop.
    let reason = refused(&env, "kube-system", "web-0");
    assert!(
        reason.contains("namespace shop, not kube-system"),
        "{reason}"
    );
    // Wrong IP: web-2 is on this node, with another address.
    let reason = refused(&env, "shop", "web-2");
    assert!(
        reason.contains("10.1.0.99") && reason.contains(POD_IP),
        "{reason}"
    );
    // Pod on another node.
    let reason = refused(&env, "shop", "web-1");
    assert!(
        reason.contains("node-b") && reason.contains(NODE),
        "{reason}"
    );
    env.wait_log(&["pod claim does not match the API server"]);
    assert!(env.pods().is_empty());

    // Unknown pod: asked again until the claim timeout, then refused.
    let gets = fake.stats().gets;
    let started = Instant::now();
    let reason = refused(&env, "shop", "ghost");
    assert!(
        reason.contains("not confirmed") && reason.contains("does not exist"),
        "{reason}"
    );
    env.wait_log(&["pod claim could not be confirmed by the API server"]);
    assert!(
        fake.stats().gets >= gets + 3,
        "asked {} time(s), not retried",
        fake.stats().gets - gets
    );
    // Bounded: refused around the claim timeout, not left hanging.
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(CLAIM_TIMEOUT_SECS + 5),
        "refused after {took:?}"
    );

    // The kubelet reports a new pod's IP late: the registration waits.
    fake.apply(&pod("shop", "late-0", "", NODE));
    let gets = fake.stats().gets;
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(register(&env, "shop", "late-0"));
        });
        wait_for("the agent to ask about late-0", || fake.stats().gets > gets);
        fake.apply(&pod("shop", "late-0", POD_IP, NODE));
        let (mut proxy, line) = rx.recv_timeout(Duration::from_secs(15)).unwrap();
        assert!(line.contains("ENROLLED"), "{line}");
        assert_eq!(env.status()["pods"][0]["name"], "late-0");
        drop(proxy.stdin.take());
        let _ = proxy.wait();
    });
    wait_for("late-0 to be removed", || env.pods().is_empty());

    // An agent restart while the API server is away: the enrolled proxy
    // re-registers unchanged and is not asked about again (its claim was
    // checked), so capture does not stop.
    let (mut proxy, states) = maintain(&env, "shop", "web-0");
    let state = |rx: &mpsc::Receiver<String>| expect_line(rx, &["STATE "]);
    assert_eq!(state(&states), "STATE enrolled=true");
    env.stop_agent();
    assert_eq!(state(&states), "STATE enrolled=false");
    // The API server goes away (its port closes): every check would fail.
    // This agent cannot enter the node's cgroup namespace: it locates the
    // proxy's cgroup through the mounts.
    drop(fake);
    start_agent(&mut env, &url, None);
    env.wait_log(&["located through the cgroup mounts"]);
    assert_eq!(state(&states), "STATE enrolled=true");
    env.wait_log(&["adopted pod re-registers unchanged"]);
    let st = env.status();
    assert_eq!(st["pods"][0]["name"], "web-0");
    assert_eq!(
        st["pods"][0]["proxy_cgroup_id"].as_u64(),
        Some(proxy_cgroup)
    );
    drop(proxy.stdin.take());
    let _ = proxy.wait();
}

/// Pod-side proxy: registers once with the claim from CLAIM_ARGS (socket,
/// namespace, name), prints ENROLLED <ips> or REFUSED <reason>, and holds
/// an accepted registration until its stdin closes.
#[test]
fn helper_register() {
    let Ok(args) = std::env::var("CLAIM_ARGS") else {
        return;
    };
    let mut args = args.lines();
    let (socket, namespace, name) = (
        args.next().unwrap(),
        args.next().unwrap(),
        args.next().unwrap(),
    );
    let inbound = std::net::TcpListener::bind("0.0.0.0:4143").unwrap();
    let pod = conduit_register::PodInfo::new(name, namespace);
    if args.next() == Some("maintain") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let _task = rt.enter();
        let _h = conduit_register::maintain(socket.into(), pod, inbound.into(), print_state);
        hold_until_stdin_closes();
        return;
    }
    register_and_hold(socket.as_ref(), &pod, &inbound);
}
