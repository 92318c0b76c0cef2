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

use crate::support::{self, spawn_agent};

use conduit_kube::fake::FakeApiServer;
use k8s_openapi::api::core::v1::{Pod, PodIP, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use support::{BIN, TestNames, agent_status, privileged, setup_pod, teardown, wait_for};

const HOST_IP: &str = "10.213.8.1";
const POD_IP: &str = "10.213.8.2";
const NODE: &str = "node-a";
/// The agent's --claim-timeout, short so that the refusal cases are quick.
const CLAIM_TIMEOUT_SECS: u64 = 2;

fn pod(ns: &str, name: &str, ip: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: (!ip.is_empty()).then(|| ip.to_string()),
            pod_ips: (!ip.is_empty()).then(|| vec![PodIP { ip: ip.into() }]),
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
    kubeconfig: PathBuf,
    agent: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    _tmp: tempfile::TempDir,
}

impl Env {
    fn new(test: &str, api_url: &str) -> Self {
        let exclusive = support::exclusive();
        let names = TestNames::new(test);
        let tmp = tempfile::tempdir().unwrap();
        let kubeconfig = tmp.path().join("kubeconfig");
        std::fs::write(&kubeconfig, conduit_kube::fake::kubeconfig(api_url)).unwrap();
        let env = Env {
            _exclusive: exclusive,
            ns: names.netns("pod"),
            veth: names.veth(0),
            cgroup: names.cgroup(),
            pin_dir: names.pin_dir(),
            socket: tmp.path().join("agent.sock"),
            kubeconfig,
            agent: None,
            log: Arc::default(),
            _tmp: tmp,
        };
        setup_pod(
            &env.ns,
            &env.veth,
            HOST_IP,
            POD_IP,
            &env.cgroup,
            &["agent", "proxy"],
        );
        env
    }

    /// Starts the agent in cluster mode as in a pod: in a cgroup namespace
    /// of its own rooted at `<test cgroup>/agent`, with that namespace's
    /// cgroup2 mounted (as a container's /sys/fs/cgroup) besides the node's.
    /// `node_ns` is its --node-cgroup-ns (None: one it cannot open).
    fn start_agent(&mut self, node_ns: Option<String>) {
        let own = self._tmp.path().join("own-cgroup");
        std::fs::create_dir_all(&own).unwrap();
        let agent = format!(
            "{BIN} agent --cgroup {} --pin-dir {} --socket {} --claim-timeout {CLAIM_TIMEOUT_SECS} --node-cgroup-ns {}",
            self.cgroup.display(),
            self.pin_dir.display(),
            self.socket.display(),
            node_ns.unwrap_or_else(|| "/nonexistent/ns/cgroup".into()),
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec unshare --cgroup --mount sh -c 'mount -t cgroup2 none {} && exec {agent}'",
                self.cgroup.join("agent").display(),
                own.display(),
            ))
            .env("CONDUIT_NODE_NAME", NODE)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        let (child, ready) = spawn_agent(&mut cmd, Some(self.log.clone()));
        self.agent = Some(child);
        assert!(ready.contains("checks_pod_claims=true"), "{ready}");
    }

    /// Starts the proxy helper in the pod (netns, proxy cgroup) with
    /// CLAIM_ARGS `claim` (after the agent socket path); each stdout line
    /// `pick` keeps goes to the returned channel.
    fn spawn_helper(
        &self,
        claim: &str,
        pick: fn(&str) -> Option<String>,
    ) -> (Child, mpsc::Receiver<String>) {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {} {} --exact pod_claims::helper_register --nocapture --test-threads=1",
                self.cgroup.join("proxy").display(),
                self.ns,
                exe.display()
            ))
            .env("CLAIM_ARGS", format!("{}\n{claim}", self.socket.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(l) = pick(&l) {
                    let _ = tx.send(l);
                }
            }
        });
        (child, rx)
    }

    /// Runs the proxy helper in the pod (netns, proxy cgroup), claiming
    /// `namespace/name`; returns it with its first line (ENROLLED/REFUSED).
    fn register(&self, namespace: &str, name: &str) -> (Child, String) {
        let (child, rx) = self.spawn_helper(&format!("{namespace}\n{name}"), |l| {
            (l.contains("ENROLLED") || l.contains("REFUSED")).then(|| l.to_string())
        });
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("the proxy helper's answer within 15 s");
        (child, line)
    }

    /// Runs the proxy helper in `maintain` mode (re-registers when the
    /// agent restarts); its `STATE enrolled=...` lines.
    fn maintain(&self, namespace: &str, name: &str) -> (Child, mpsc::Receiver<String>) {
        self.spawn_helper(&format!("{namespace}\n{name}\nmaintain"), |l| {
            l.find("STATE ").map(|i| l[i..].to_string())
        })
    }

    /// SIGTERM: the agent leaves its pins (and capture) in place.
    fn stop_agent(&mut self) {
        let mut c = self.agent.take().unwrap();
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let _ = c.wait();
    }

    /// Registers and expects a refusal; returns the reason.
    fn refused(&self, namespace: &str, name: &str) -> String {
        let (mut child, line) = self.register(namespace, name);
        let _ = child.wait();
        let i = line
            .find("REFUSED ")
            .unwrap_or_else(|| panic!("{namespace}/{name} was not refused: {line}"));
        line[i + "REFUSED ".len()..].to_string()
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits for the agent's log to show `needle` (its stderr is read on
    /// another thread, so a line may trail the answer it explains).
    fn wait_logged(&self, needle: &str) {
        wait_for(&format!("the agent to log {needle:?}"), || {
            self.logged(needle)
        });
    }

    fn status(&self) -> serde_json::Value {
        agent_status(&self.pin_dir)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(c) = &mut self.agent {
            let _ = c.kill();
            let _ = c.wait();
        }
        teardown(
            &self.pin_dir,
            &self.socket,
            &self.ns,
            &self.veth,
            &self.cgroup,
            &["agent", "proxy", ""],
        );
    }
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
    let mut env = Env::new(conduit_tests::test_name!(), &fake.url());
    // The node's cgroup namespace: this test's (pid 1 may be off limits on
    // a test machine; in a pod it is the node's init, the default).
    env.start_agent(Some(format!("/proc/{}/ns/cgroup", std::process::id())));
    assert!(env.logged("entered the node's cgroup namespace"));

    // Accepted: the pod exists, on this node, with the namespace's IP.
    let (mut proxy, line) = env.register("shop", "web-0");
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
    wait_for("the pod to be removed", || {
        env.status()["pods"].as_array().unwrap().is_empty()
    });

    // Wrong namespace: web-0 exists on this node, but in shop.
    let reason = env.refused("kube-system", "web-0");
    assert!(
        reason.contains("namespace shop, not kube-system"),
        "{reason}"
    );
    // Wrong IP: web-2 is on this node, with another address.
    let reason = env.refused("shop", "web-2");
    assert!(
        reason.contains("10.1.0.99") && reason.contains(POD_IP),
        "{reason}"
    );
    // Pod on another node.
    let reason = env.refused("shop", "web-1");
    assert!(
        reason.contains("node-b") && reason.contains(NODE),
        "{reason}"
    );
    env.wait_logged("pod claim does not match the API server");
    assert!(env.status()["pods"].as_array().unwrap().is_empty());

    // Unknown pod: asked again until the claim timeout, then refused.
    let gets = fake.stats().gets;
    let started = Instant::now();
    let reason = env.refused("shop", "ghost");
    assert!(
        reason.contains("not confirmed") && reason.contains("does not exist"),
        "{reason}"
    );
    env.wait_logged("pod claim could not be confirmed by the API server");
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
            let _ = tx.send(env.register("shop", "late-0"));
        });
        wait_for("the agent to ask about late-0", || fake.stats().gets > gets);
        fake.apply(&pod("shop", "late-0", POD_IP, NODE));
        let (mut proxy, line) = rx.recv_timeout(Duration::from_secs(15)).unwrap();
        assert!(line.contains("ENROLLED"), "{line}");
        assert_eq!(env.status()["pods"][0]["name"], "late-0");
        drop(proxy.stdin.take());
        let _ = proxy.wait();
    });
    wait_for("late-0 to be removed", || {
        env.status()["pods"].as_array().unwrap().is_empty()
    });

    // An agent restart while the API server is away: the enrolled proxy
    // re-registers unchanged and is not asked about again (its claim was
    // checked), so capture does not stop.
    let (mut proxy, states) = env.maintain("shop", "web-0");
    let state = |rx: &mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(15)).unwrap();
    assert_eq!(state(&states), "STATE enrolled=true");
    env.stop_agent();
    assert_eq!(state(&states), "STATE enrolled=false");
    // The API server goes away (its port closes): every check would fail.
    // This agent cannot enter the node's cgroup namespace: it locates the
    // proxy's cgroup through the mounts.
    drop(fake);
    env.start_agent(None);
    env.wait_logged("located through the cgroup mounts");
    assert_eq!(state(&states), "STATE enrolled=true");
    env.wait_logged("adopted pod re-registers unchanged");
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
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pod = conduit_register::PodInfo::new(name, namespace);
    if args.next() == Some("maintain") {
        let _task = rt.enter();
        let _h = conduit_register::maintain(socket.into(), pod, inbound.into(), |up| {
            println!("STATE enrolled={up}");
            let _ = std::io::stdout().flush();
        });
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        return;
    }
    use std::os::fd::AsFd;
    let result = rt.block_on(conduit_register::register(
        std::path::Path::new(socket),
        &pod,
        inbound.as_fd(),
    ));
    match result {
        Ok(reg) => {
            let ips: Vec<String> = reg
                .enrolled()
                .pod_ips
                .iter()
                .map(|i| i.to_string())
                .collect();
            println!("ENROLLED {}", ips.join(","));
            std::io::stdout().flush().unwrap();
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
            drop(reg);
        }
        Err(conduit_register::RegisterError::Refused(reason)) => {
            println!("REFUSED {reason}");
        }
        Err(e) => println!("REFUSED (not by the agent) {e}"),
    }
    std::io::stdout().flush().unwrap();
}
