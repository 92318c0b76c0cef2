//! One agent test's environment: its pods (network namespaces joined to the
//! node by veth pairs), its cgroup tree, the agent (started by the test,
//! its log kept) and the helper processes it runs inside the pods; all of
//! it removed in `Drop`, also when the test fails.

use super::{BIN, TestNames, agent_status, cleanup_command, exclusive, setup_pod, sh, wait_for};
use conduit_base::sync::Unpoisoned;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

/// A test pod: its name and the two ends of its veth pair (`/24`).
#[derive(Debug, Clone, Copy)]
pub struct Pod {
    pub name: &'static str,
    /// The node's end.
    pub host_ip: &'static str,
    /// The pod's end.
    pub pod_ip: &'static str,
}

/// Everything one test creates, removed in `Drop`.
pub struct AgentEnv {
    pub names: TestNames,
    /// The test's cgroup, which the agent attaches to (`--cgroup`).
    pub cgroup: PathBuf,
    /// `--pin-dir`.
    pub pin_dir: PathBuf,
    /// `--socket`: in the test's run directory under /run, not a private
    /// temporary one, so that who may connect depends on the socket's mode.
    pub socket: PathBuf,
    /// A private directory of the test's (kubeconfig, mount points).
    pub tmp: tempfile::TempDir,
    /// The pods' network namespaces and veth pairs.
    pods: Vec<(String, String)>,
    /// Sub-cgroups of `cgroup`.
    subs: Vec<String>,
    /// Further network namespaces to remove (one the agent runs in).
    extra_netns: Vec<String>,
    agent: Option<Child>,
    /// Every line the agents logged.
    log: Arc<Mutex<Vec<String>>>,
    /// Helpers the test leaves to the environment: killed in `Drop`.
    pub children: Vec<Child>,
    /// One environment at a time (see [`exclusive`]).
    _exclusive: MutexGuard<'static, ()>,
}

impl AgentEnv {
    /// The environment of test `test`: `pods`, and the cgroups `subs` under
    /// the test's cgroup. Leftovers of a killed run of the same test (the
    /// names are the test's) are removed first.
    pub fn new(test: &str, pods: &[Pod], subs: &[&str]) -> Self {
        let guard = exclusive();
        let names = TestNames::new(test);
        let _ = std::fs::remove_dir_all(names.run_dir());
        let env = AgentEnv {
            cgroup: names.cgroup(),
            pin_dir: names.pin_dir(),
            socket: names.run_dir().join("agent.sock"),
            tmp: tempfile::tempdir().unwrap(),
            pods: pods
                .iter()
                .enumerate()
                .map(|(i, p)| (names.netns(p.name), names.veth(i)))
                .collect(),
            subs: subs.iter().map(|s| s.to_string()).collect(),
            extra_netns: Vec::new(),
            agent: None,
            log: Arc::default(),
            children: Vec::new(),
            names,
            _exclusive: guard,
        };
        for (pod, (ns, veth)) in pods.iter().zip(&env.pods) {
            setup_pod(ns, veth, pod.host_ip, pod.pod_ip);
        }
        for sub in subs {
            std::fs::create_dir_all(env.cgroup.join(sub)).unwrap();
        }
        env
    }

    /// The network namespace of pod `pod`.
    pub fn netns(&self, pod: &str) -> String {
        self.names.netns(pod)
    }

    /// A new network namespace `ct-<test>-<name>` without interfaces,
    /// removed in `Drop`.
    pub fn empty_netns(&mut self, name: &str) -> String {
        let ns = self.names.netns(name);
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        sh(&format!("ip netns add {ns}"));
        self.extra_netns.push(ns.clone());
        ns
    }

    /// `conduit-ebpf agent --cgroup <test> --pin-dir .. --socket ..`, run
    /// through `wrapper` (a command that ends by executing its arguments,
    /// e.g. `nsenter --net=...`) when given; not in a cluster (no
    /// `CONDUIT_NODE_NAME`) unless the caller sets it.
    pub fn agent_command(&self, wrapper: &[&str]) -> Command {
        let mut cmd = match wrapper {
            [] => Command::new(BIN),
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
        };
        cmd.arg("agent")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(&self.socket)
            .env_remove("CONDUIT_NODE_NAME");
        cmd
    }

    /// [`AgentEnv::agent_command`] in cluster mode: on node `node`, its API
    /// server the one at `api_url` (the fake's), through a kubeconfig.
    pub fn cluster_agent_command(&self, wrapper: &[&str], node: &str, api_url: &str) -> Command {
        let kubeconfig = self.tmp.path().join("kubeconfig");
        std::fs::write(&kubeconfig, conduit_kube::fake::kubeconfig(api_url)).unwrap();
        let mut cmd = self.agent_command(wrapper);
        cmd.env("CONDUIT_NODE_NAME", node)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST");
        cmd
    }

    /// Starts the agent from `cmd` (see [`AgentEnv::agent_command`]); its
    /// log lines are kept. Returns once it is ready, with its ready line.
    pub fn start_agent(&mut self, mut cmd: Command) -> String {
        assert!(self.agent.is_none(), "an agent is running already");
        let (child, ready) = super::spawn_agent(&mut cmd, Some(self.log.clone()));
        self.agent = Some(child);
        ready
    }

    /// SIGTERM: the agent leaves its pins (and capture) in place.
    pub fn stop_agent(&mut self) {
        let mut c = self.agent.take().expect("an agent to stop");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
        let _ = c.wait();
    }

    /// SIGKILL: the agent leaves its socket behind too.
    pub fn kill_agent(&mut self) {
        let mut c = self.agent.take().expect("an agent to kill");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Whether the agent has logged a line containing `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.locked().iter().any(|l| l.contains(needle))
    }

    /// Waits until the agent has logged a line containing every one of
    /// `words` (its log is read on another thread, so a line may trail the
    /// answer it explains); returns the line.
    pub fn wait_log(&self, words: &[&str]) -> String {
        let mut found = String::new();
        wait_for(&format!("the agent to log {words:?}"), || {
            let log = self.log.locked();
            match log.iter().find(|l| words.iter().all(|w| l.contains(w))) {
                Some(l) => {
                    found = l.clone();
                    true
                }
                None => false,
            }
        });
        found
    }

    /// Runs this test binary's test `test` (`module::helper_x`, the
    /// process a test runs in a pod) in `pod`'s network namespace (`None`:
    /// the node's), in the sub-cgroup `sub`, as root; stdin and stdout
    /// piped (a helper that holds something holds it until stdin closes).
    pub fn helper(&self, test: &str, pod: Option<&str>, sub: &str) -> Command {
        let exe = std::env::current_exe().unwrap();
        let netns = pod
            .map(|p| format!("ip netns exec {} ", self.netns(p)))
            .unwrap_or_default();
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {netns}{} --exact {test} --nocapture --test-threads=1",
                self.cgroup.join(sub).display(),
                exe.display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        c
    }

    /// `status --json` of the test's agent (also once it is gone).
    pub fn status(&self) -> serde_json::Value {
        agent_status(&self.pin_dir)
    }

    /// The enrolled pods in `status --json`.
    pub fn pods(&self) -> Vec<serde_json::Value> {
        self.status()["pods"].as_array().unwrap().clone()
    }
}

impl Drop for AgentEnv {
    fn drop(&mut self) {
        for c in self.children.iter_mut().chain(self.agent.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = cleanup_command(&self.pin_dir, &self.socket).output();
        for ns in self.pods.iter().map(|(ns, _)| ns).chain(&self.extra_netns) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for (_, veth) in &self.pods {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{veth}h")])
                .stderr(Stdio::null())
                .status();
        }
        for sub in &self.subs {
            let _ = std::fs::remove_dir(self.cgroup.join(sub));
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(self.names.run_dir());
    }
}

/// Spawns `cmd` (stdout piped); returns it with its stdout, line by line.
pub fn spawn_lines(cmd: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    (child, rx)
}

/// The next line holding one of `markers` (within 15 s), from the marker on.
pub fn expect_line(lines: &mpsc::Receiver<String>, markers: &[&str]) -> String {
    loop {
        let l = lines
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("no line with {markers:?} within 15 s"));
        // libtest prints "test helper_x ... " before the helper's output.
        if let Some(i) = markers.iter().filter_map(|m| l.find(m)).min() {
            return l[i..].trim().to_string();
        }
    }
}
