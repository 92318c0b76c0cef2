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

use crate::support::{self, spawn_agent};

use conduit_kube::fake::FakeApiServer;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use support::{BIN, TestNames, agent_status, privileged, setup_pod, teardown, wait_for};

const HOST_IP: &str = "10.213.9.1";
const POD_IP: &str = "10.213.9.2";
const NODE: &str = "node-a";
const PROXY_ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const APP_ID: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn scope(id: &str) -> String {
    format!("cri-containerd-{id}.scope")
}

fn status(name: &str, id: &str) -> ContainerStatus {
    ContainerStatus {
        name: name.into(),
        container_id: Some(format!("containerd://{id}")),
        ..Default::default()
    }
}

fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some("shop".into()),
            name: Some("web-0".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(NODE.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(POD_IP.into()),
            pod_ips: Some(vec![PodIP { ip: POD_IP.into() }]),
            init_container_statuses: Some(vec![status("conduit-proxy", PROXY_ID)]),
            container_statuses: Some(vec![status("app", APP_ID)]),
            ..Default::default()
        }),
    }
}

/// Everything the test creates, removed in Drop (also on failure).
struct Env {
    /// One environment at a time (see `support::exclusive`); dropped last.
    _exclusive: std::sync::MutexGuard<'static, ()>,
    ns: String,
    veth: String,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    socket: PathBuf,
    agent: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    tmp: tempfile::TempDir,
}

impl Env {
    fn new(test: &str) -> Self {
        let exclusive = support::exclusive();
        let names = TestNames::new(test);
        let tmp = tempfile::tempdir().unwrap();
        let env = Env {
            _exclusive: exclusive,
            ns: names.netns("pod"),
            veth: names.veth(0),
            cgroup: names.cgroup(),
            pin_dir: names.pin_dir(),
            socket: tmp.path().join("agent.sock"),
            agent: None,
            log: Arc::default(),
            tmp,
        };
        setup_pod(
            &env.ns,
            &env.veth,
            HOST_IP,
            POD_IP,
            &env.cgroup,
            &[&scope(PROXY_ID), &scope(APP_ID)],
        );
        env
    }

    fn start_agent(&mut self, api_url: &str) {
        let kubeconfig = self.tmp.path().join("kubeconfig");
        std::fs::write(&kubeconfig, conduit_kube::fake::kubeconfig(api_url)).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("agent")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args([
                "--claim-timeout",
                "2",
                "--discover",
                "--discover-interval",
                "200",
            ])
            .env("CONDUIT_NODE_NAME", NODE)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        let (child, ready) = spawn_agent(&mut cmd, Some(self.log.clone()));
        self.agent = Some(child);
        assert!(ready.contains("checks_pod_claims=true"), "{ready}");
    }

    /// Runs the helper in the pod's network namespace, in the container
    /// cgroup `container`; its `STATE` lines go to the returned channel.
    fn spawn_helper(&self, container: &str) -> (Child, mpsc::Receiver<String>) {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {} {} --exact discover_claims::helper_discovered --nocapture --test-threads=1",
                self.cgroup.join(scope(container)).display(),
                self.ns,
                exe.display()
            ))
            .env("DISCOVER_HELPER", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(i) = l.find("STATE ") {
                    let _ = tx.send(l[i..].to_string());
                }
            }
        });
        (child, rx)
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(c) = &mut self.agent {
            let _ = c.kill();
            let _ = c.wait();
        }
        let subs = [scope(PROXY_ID), scope(APP_ID), String::new()];
        let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
        teardown(
            &self.pin_dir,
            &self.socket,
            &self.ns,
            &self.veth,
            &self.cgroup,
            &subs,
        );
    }
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
    let mut env = Env::new(conduit_tests::test_name!());
    env.start_agent(&fake.url());

    // The application container binds the registration socket first.
    let (impostor, _states) = env.spawn_helper(APP_ID);
    wait_for("the impostor to be refused", || {
        env.logged("is not pod shop/web-0's conduit-proxy container")
    });
    assert!(
        env.logged(&format!("cri-containerd-{APP_ID}.scope")),
        "the refusal names the impostor's cgroup"
    );
    assert!(
        agent_status(&env.pin_dir)["pods"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    stop(impostor);

    // The proxy container: found, checked and enrolled.
    let (proxy, states) = env.spawn_helper(PROXY_ID);
    let state = states
        .recv_timeout(Duration::from_secs(15))
        .expect("the proxy's state within 15 s");
    assert_eq!(state, "STATE enrolled=true");
    let st = agent_status(&env.pin_dir);
    let pods = st["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 1, "{st:#}");
    assert_eq!(pods[0]["name"].as_str(), Some("web-0"));

    // An agent restart while the API server is away: the adopted proxy is
    // found again and not checked again (its container and claim were), so
    // capture does not stop.
    let mut agent = env.agent.take().unwrap();
    let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).unwrap();
    let _ = agent.wait();
    let state = |rx: &mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(15)).unwrap();
    assert_eq!(state(&states), "STATE enrolled=false");
    let url = fake.url();
    drop(fake);
    env.start_agent(&url);
    assert_eq!(state(&states), "STATE enrolled=true");
    // (The agent's log is read on another thread: it may lag the answer.)
    wait_for("the agent's log line", || {
        env.logged("adopted pod re-registers unchanged")
    });
    assert_eq!(agent_status(&env.pin_dir)["pods"][0]["name"], "web-0");

    stop(proxy);
    wait_for("the pod to be removed", || {
        agent_status(&env.pin_dir)["pods"]
            .as_array()
            .unwrap()
            .is_empty()
    });
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
            |on| println!("STATE enrolled={on}"),
        );
        tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            while std::io::stdin().read_line(&mut s).is_ok_and(|n| n > 0) {}
        })
        .await
        .unwrap();
    });
}
