//! Attacks on the node agent's registration, each refused (privileged: the
//! real agent binary on the real kernel, pods as network namespaces):
//!
//! * a process in the node's network namespace (or a hostNetwork pod)
//!   registering, which would capture the node's own traffic;
//! * a pod configuring another enrolled pod's address and registering (IP
//!   theft), and a pod claiming an address its namespace does not have;
//! * one peer opening connections until no registration slot is left;
//! * a registration when the pods map is full (refused before any write);
//! * anyone on the node connecting to a world-writable socket.
//!
//! Every refusal reaches the registering process with its reason and is in
//! the agent's log. Skips with a message when not root; fails instead under
//! CONDUIT_REQUIRE_PRIVILEGED=1. `helper_*` are the processes run inside the
//! pods (this test binary re-executed); on their own they do nothing.

use crate::support::{self, spawn_agent};

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;
use support::{BIN, TestNames, agent_status, privileged, setup_pod, sh, teardown, wait_for};

/// The pods: (name, host side address, pod address).
const VICTIM: (&str, &str, &str) = ("victim", "10.213.9.1", "10.213.9.2");
const THIEF: (&str, &str, &str) = ("thief", "10.213.10.1", "10.213.10.2");

/// Everything one test creates, removed in Drop (also on failure).
struct Env {
    /// One environment at a time (see `support::exclusive`); dropped last.
    _exclusive: std::sync::MutexGuard<'static, ()>,
    names: TestNames,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    socket: PathBuf,
    /// A network namespace without interfaces for the agent, when it runs
    /// in one of its own (as the DaemonSet's agent does).
    agent_ns: Option<String>,
    agent: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    children: Vec<Child>,
}

impl Env {
    fn new(test: &str) -> Self {
        let exclusive = support::exclusive();
        let names = TestNames::new(test);
        let env = Env {
            _exclusive: exclusive,
            cgroup: names.cgroup(),
            pin_dir: names.pin_dir(),
            // Under /run, not a private temporary directory: whether others
            // may connect must depend on the socket's own mode.
            socket: names.run_dir().join("agent.sock"),
            agent_ns: None,
            agent: None,
            log: Arc::default(),
            children: Vec::new(),
            names,
        };
        for (i, (pod, host_ip, pod_ip)) in [VICTIM, THIEF].into_iter().enumerate() {
            setup_pod(
                &env.ns(pod),
                &env.veth(i),
                host_ip,
                pod_ip,
                &env.cgroup,
                &[pod, "host"],
            );
        }
        env
    }

    fn ns(&self, pod: &str) -> String {
        self.names.netns(pod)
    }

    fn veth(&self, i: usize) -> String {
        self.names.veth(i)
    }

    /// Starts the agent (in a network namespace of its own with
    /// `own_netns`) with `extra` arguments and waits until it is ready.
    fn start_agent(&mut self, own_netns: bool, extra: &[&str]) {
        let mut cmd = if own_netns {
            let ns = self.names.netns("agent");
            // (A killed run of the same test may have left it.)
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
            sh(&format!("ip netns add {ns}"));
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}")).arg(BIN);
            self.agent_ns = Some(ns);
            c
        } else {
            Command::new(BIN)
        };
        cmd.arg("agent")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(extra)
            .env_remove("CONDUIT_NODE_NAME");
        let (child, _) = spawn_agent(&mut cmd, Some(self.log.clone()));
        self.agent = Some(child);
    }

    /// Waits until the agent has logged a line containing every one of `words`.
    fn wait_log(&self, words: &[&str]) -> String {
        let mut found = String::new();
        wait_for(&format!("the agent to log {words:?}"), || {
            let log = self.log.lock().unwrap();
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

    /// Runs helper `name` with HELPER_ARGS `args` in `pod`'s network
    /// namespace (`None`: the node's), in cgroup `<test>/<sub>`, as root.
    fn helper(&self, name: &str, pod: Option<&str>, sub: &str, args: &str) -> Command {
        let exe = std::env::current_exe().unwrap();
        let netns = pod
            .map(|p| format!("ip netns exec {} ", self.ns(p)))
            .unwrap_or_default();
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {netns}{} --exact security::{name} --nocapture --test-threads=1",
                self.cgroup.join(sub).display(),
                exe.display()
            ))
            .env("HELPER_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        c
    }

    /// Registers pod `name` from `netns` (see [`Env::helper`]) claiming
    /// `ips`; returns the answer line (`ENROLLED ips` or `REFUSED reason`).
    /// An enrolled helper holds its registration until the test ends.
    fn register(&mut self, netns: Option<&str>, name: &str, ips: &[&str]) -> String {
        let sub = netns.unwrap_or("host");
        let args = format!("{}\n{name}\n{}", self.socket.display(), ips.join(","));
        let mut child = self
            .helper("helper_register", netns, sub, &args)
            .spawn()
            .unwrap();
        let lines = lines_of(&mut child);
        self.children.push(child);
        expect_line(&lines, &["ENROLLED", "REFUSED"])
    }

    fn pods(&self) -> Vec<serde_json::Value> {
        agent_status(&self.pin_dir)["pods"]
            .as_array()
            .unwrap()
            .clone()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in self.children.iter_mut().chain(self.agent.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (i, (pod, ..)) in [VICTIM, THIEF].into_iter().enumerate() {
            teardown(
                &self.pin_dir,
                &self.socket,
                &self.ns(pod),
                &self.veth(i),
                &self.cgroup,
                &[pod, "host"],
            );
        }
        if let Some(ns) = &self.agent_ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(self.socket.parent().unwrap());
    }
}

/// The child's stdout, line by line.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    rx
}

/// The first line holding one of `markers`, from the marker on.
fn expect_line(lines: &mpsc::Receiver<String>, markers: &[&str]) -> String {
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

#[test]
fn host_netns_registration_is_refused() {
    if !privileged(conduit_tests::test_name!()) {
        return;
    }
    let mut env = Env::new(conduit_tests::test_name!());
    // As the DaemonSet runs it: hostPID, but a network namespace of its own.
    env.start_agent(true, &[]);
    // A process of the node (or a hostNetwork pod), in a cgroup of its own.
    let answer = env.register(None, "node-grabber", &[]);
    assert!(
        answer.starts_with("REFUSED") && answer.contains("node's own network namespace"),
        "{answer}"
    );
    env.wait_log(&["registration refused", "host_netns", "node-grabber"]);
    assert!(env.pods().is_empty(), "{:?}", env.pods());
    // Control: a pod registers fine with the same agent.
    let answer = env.register(Some(VICTIM.0), VICTIM.0, &[]);
    assert_eq!(answer, format!("ENROLLED {}", VICTIM.2));
}

#[test]
fn claiming_another_pods_ip_is_refused() {
    if !privileged(conduit_tests::test_name!()) {
        return;
    }
    let mut env = Env::new(conduit_tests::test_name!());
    env.start_agent(false, &[]);
    let answer = env.register(Some(VICTIM.0), VICTIM.0, &[]);
    assert_eq!(answer, format!("ENROLLED {}", VICTIM.2));
    // The thief configures the victim's address in its own namespace (it has
    // NET_ADMIN there), which the agent then finds there.
    sh(&format!(
        "ip -n {} addr add {}/32 dev lo",
        env.ns(THIEF.0),
        VICTIM.2
    ));
    for claim in [vec![], vec![VICTIM.2]] {
        let answer = env.register(Some(THIEF.0), THIEF.0, &claim);
        let want = format!("address {} belongs to pod test/{}", VICTIM.2, VICTIM.0);
        assert!(
            answer.starts_with("REFUSED") && answer.contains(&want),
            "claiming {claim:?}: {answer}"
        );
    }
    env.wait_log(&["registration refused", "ip_of_another_pod", "test/thief"]);
    // The victim keeps its address; the thief is not enrolled.
    let pods = env.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0]["name"], VICTIM.0);
    assert_eq!(pods[0]["pod_ips"], serde_json::json!([VICTIM.2]));
    // Claiming only its own address, the thief is enrolled with just that.
    let answer = env.register(Some(THIEF.0), THIEF.0, &[THIEF.2]);
    assert_eq!(answer, format!("ENROLLED {}", THIEF.2));
}

#[test]
fn claiming_an_ip_not_in_the_netns_is_refused() {
    if !privileged(conduit_tests::test_name!()) {
        return;
    }
    let mut env = Env::new(conduit_tests::test_name!());
    env.start_agent(false, &[]);
    let answer = env.register(Some(THIEF.0), THIEF.0, &[THIEF.2, VICTIM.2]);
    let want = format!(
        "claimed address {} is not configured in the proxy's network namespace",
        VICTIM.2
    );
    assert!(
        answer.starts_with("REFUSED") && answer.contains(&want),
        "{answer}"
    );
    env.wait_log(&["registration refused", "ip_not_in_netns"]);
    assert!(env.pods().is_empty(), "{:?}", env.pods());
    // The victim, registering after, gets its address.
    let answer = env.register(Some(VICTIM.0), VICTIM.0, &[VICTIM.2]);
    assert_eq!(answer, format!("ENROLLED {}", VICTIM.2));
}

/// More connections than the agent serves at once (2048).
const FLOOD: usize = 2100;

#[test]
fn one_peer_cannot_exhaust_registration_slots() {
    if !privileged(conduit_tests::test_name!()) {
        return;
    }
    let mut env = Env::new(conduit_tests::test_name!());
    env.start_agent(false, &[]);
    // The flooder connects FLOOD times and sends nothing.
    let args = format!("{}\n{FLOOD}", env.socket.display());
    let mut flood = env
        .helper("helper_flood", Some(THIEF.0), THIEF.0, &args)
        .spawn()
        .unwrap();
    let lines = lines_of(&mut flood);
    env.children.push(flood);
    assert_eq!(expect_line(&lines, &["OPEN"]), format!("OPEN {FLOOD}"));
    // The agent has turned connections away (it is full, or the flooder has
    // its share): from now on the flood holds whatever it can.
    let refused = env.wait_log(&["registration refused", "registrations"]);
    // A pod registering meanwhile is served at its first attempt.
    let answer = env.register(Some(VICTIM.0), VICTIM.0, &[]);
    assert_eq!(answer, format!("ENROLLED {}", VICTIM.2), "flood: {refused}");
    assert!(
        refused.contains("this network namespace has 4 registrations in progress already"),
        "{refused}"
    );
    // The flooder's pending connections are dropped at the request timeout.
    env.wait_log(&["registration refused", "no request within 5 s"]);
}

/// Entries of the pinned map `name`, from bpftool.
fn map_entries(pin_dir: &Path, name: &str) -> usize {
    let out = Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(pin_dir.join(name))
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array().unwrap().len()
}

#[test]
fn full_pods_map_refuses_registration_cleanly() {
    if !privileged(conduit_tests::test_name!()) {
        return;
    }
    const MAX_PODS: u64 = conduit_ebpf_common::MAX_PODS as u64;
    let size = std::mem::size_of::<conduit_ebpf_common::PodConfig>();
    let mut env = Env::new(conduit_tests::test_name!());
    env.start_agent(false, &[]);
    // Fill the pods map with MAX_PODS other pods (made-up namespaces).
    let pods = env.pin_dir.join(conduit_ebpf_common::MAP_PODS);
    let key = |i: u64| {
        ((1u64 << 40) + i)
            .to_le_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let value = vec!["00"; size].join(" ");
    let batch: String = (0..MAX_PODS)
        .map(|i| {
            format!(
                "map update pinned {} key hex {} value hex {value}\n",
                pods.display(),
                key(i)
            )
        })
        .collect();
    std::fs::create_dir_all(env.names.run_dir()).unwrap();
    let file = env.names.run_dir().join("fill");
    std::fs::write(&file, batch).unwrap();
    let out = Command::new("bpftool")
        .args(["batch", "file"])
        .arg(&file)
        .output()
        .expect("bpftool");
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        map_entries(&env.pin_dir, conduit_ebpf_common::MAP_PODS),
        MAX_PODS as usize
    );

    let answer = env.register(Some(VICTIM.0), VICTIM.0, &[]);
    assert!(
        answer.starts_with("REFUSED")
            && answer.contains(&format!("the pods map is full ({MAX_PODS} pods")),
        "{answer}"
    );
    env.wait_log(&["registration refused", "pods_map_full"]);
    // Nothing of the refused pod was written.
    for map in [
        conduit_ebpf_common::MAP_POD_IPS,
        conduit_ebpf_common::MAP_LISTENERS,
    ] {
        assert_eq!(map_entries(&env.pin_dir, map), 0, "{map}");
    }
    // Room again: the pod registers.
    sh(&format!(
        "bpftool map delete pinned {} key hex {}",
        pods.display(),
        key(0)
    ));
    let answer = env.register(Some(VICTIM.0), VICTIM.0, &[]);
    assert_eq!(answer, format!("ENROLLED {}", VICTIM.2));
}

#[test]
fn registration_socket_is_not_world_writable() {
    if !privileged(conduit_tests::test_name!()) {
        return;
    }
    const GROUP: u32 = 4242;
    let mut env = Env::new(conduit_tests::test_name!());
    env.start_agent(false, &["--socket-group", &GROUP.to_string()]);
    let meta = std::fs::metadata(&env.socket).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "mode {:o}",
        meta.permissions().mode()
    );
    assert_eq!((meta.uid(), meta.gid()), (0, GROUP));
    // Anyone else on the node (uid/gid 65534) cannot even connect.
    assert_eq!(connect_as(&env.socket, 65534, 65534), Err(libc::EACCES));
    // A member of the socket's group can.
    assert_eq!(connect_as(&env.socket, 65534, GROUP), Ok(()));
    // The agent still serves root (the registering helpers run as root).
    let answer = env.register(Some(VICTIM.0), VICTIM.0, &[]);
    assert_eq!(answer, format!("ENROLLED {}", VICTIM.2));
}

/// Connects to `socket` from a process (helper_connect) running as
/// `uid`/`gid` without supplementary groups; `Err(errno)` when it failed.
fn connect_as(socket: &Path, uid: u32, gid: u32) -> Result<(), i32> {
    use std::os::unix::process::CommandExt;
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "security::helper_connect",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HELPER_ARGS", socket)
        // (std drops the supplementary groups when root sets a uid.)
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.find("CONNECT ").map(|i| &l[i + 8..]))
        .unwrap_or_else(|| panic!("helper_connect said nothing: {out:?}"));
    match line.trim() {
        "ok" => Ok(()),
        errno => Err(errno.parse().unwrap()),
    }
}

/// Connects to the socket HELPER_ARGS names; prints `CONNECT ok` or
/// `CONNECT <errno>`.
#[test]
fn helper_connect() {
    let Ok(socket) = std::env::var("HELPER_ARGS") else {
        return;
    };
    match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(_) => println!("CONNECT ok"),
        Err(e) => println!("CONNECT {}", e.raw_os_error().unwrap_or(-1)),
    }
}

/// Pod-side registrant: HELPER_ARGS is the socket, the pod name and the
/// claimed addresses (comma-separated, may be empty). Prints `ENROLLED
/// <addresses>` and holds the registration until stdin closes, or prints
/// `REFUSED <reason>`.
#[test]
fn helper_register() {
    let Ok(args) = std::env::var("HELPER_ARGS") else {
        return;
    };
    let mut args = args.lines();
    let (socket, name) = (args.next().unwrap(), args.next().unwrap());
    let claimed = args.next().unwrap_or("");
    // Any port: some registrants run in the node's namespace.
    let inbound = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let mut pod = conduit_register::PodInfo::new(name, "test");
    pod.pod_ips = claimed
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    use std::os::fd::AsFd;
    let result = rt.block_on(conduit_register::register(
        Path::new(socket),
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
        Err(conduit_register::RegisterError::Refused(reason)) => println!("REFUSED {reason}"),
        Err(e) => println!("REFUSED (not by the agent) {e}"),
    }
    std::io::stdout().flush().unwrap();
}

/// The flooder: HELPER_ARGS is the socket and a count; connects that many
/// times without sending anything, prints `OPEN <connected>`, and holds the
/// connections until stdin closes.
#[test]
fn helper_flood() {
    let Ok(args) = std::env::var("HELPER_ARGS") else {
        return;
    };
    let mut args = args.lines();
    let socket = args.next().unwrap();
    let n: usize = args.next().unwrap().parse().unwrap();
    let held: Vec<_> = (0..n)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(socket).ok())
        .collect();
    println!("OPEN {}", held.len());
    std::io::stdout().flush().unwrap();
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
    drop(held);
}
