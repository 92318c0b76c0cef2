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

use crate::support::pod::{hold_until_stdin_closes, register_and_hold};
use crate::support::{AgentEnv, Pod, expect_line, privileged, sh, spawn_lines};

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

const VICTIM: Pod = Pod {
    name: "victim",
    host_ip: "10.213.9.1",
    pod_ip: "10.213.9.2",
};
const THIEF: Pod = Pod {
    name: "thief",
    host_ip: "10.213.10.1",
    pod_ip: "10.213.10.2",
};

/// Test `test`'s environment with the agent started, or `None` when the
/// test cannot run here (see [`privileged`]): the pods, each with a cgroup
/// of its own, a cgroup for processes of the node, and the agent (in a
/// network namespace of its own without interfaces with `own_netns`, as
/// the DaemonSet's agent runs) with `extra` arguments, ready.
fn started(test: &str, own_netns: bool, extra: &[&str]) -> Option<AgentEnv> {
    if !privileged(test) {
        return None;
    }
    let mut env = AgentEnv::new(test, &[VICTIM, THIEF], &[VICTIM.name, THIEF.name, "host"]);
    let mut cmd = if own_netns {
        let ns = env.empty_netns("agent");
        env.agent_command(&["nsenter", &format!("--net=/run/netns/{ns}")])
    } else {
        env.agent_command(&[])
    };
    cmd.args(extra);
    env.start_agent(cmd);
    Some(env)
}

/// Runs helper `name` with HELPER_ARGS `args` in `pod`'s network
/// namespace (`None`: the node's), in cgroup `<test>/<sub>`, as root.
fn helper(env: &AgentEnv, name: &str, pod: Option<&str>, sub: &str, args: &str) -> Command {
    let mut c = env.helper(&format!("security::{name}"), pod, sub);
    c.env("HELPER_ARGS", args);
    c
}

/// Registers pod `name` from `netns` (see [`helper`]) claiming `ips`;
/// returns the answer line (`ENROLLED ips` or `REFUSED reason`). An
/// enrolled helper holds its registration until the test ends.
fn register(env: &mut AgentEnv, netns: Option<&str>, name: &str, ips: &[&str]) -> String {
    let sub = netns.unwrap_or("host");
    let args = format!("{}\n{name}\n{}", env.socket.display(), ips.join(","));
    let (child, lines) = spawn_lines(&mut helper(env, "helper_register", netns, sub, &args));
    env.children.push(child);
    expect_line(&lines, &["ENROLLED", "REFUSED"])
}

#[test]
fn host_netns_registration_is_refused() {
    // As the DaemonSet runs it: hostPID, but a network namespace of its own.
    let Some(mut env) = started(conduit_tests::test_name!(), true, &[]) else {
        return;
    };
    // A process of the node (or a hostNetwork pod), in a cgroup of its own.
    let answer = register(&mut env, None, "node-grabber", &[]);
    assert!(
        answer.starts_with("REFUSED") && answer.contains("node's own network namespace"),
        "{answer}"
    );
    env.wait_log(&["registration refused", "host_netns", "node-grabber"]);
    assert!(env.pods().is_empty(), "{:?}", env.pods());
    // Control: a pod registers fine with the same agent.
    let answer = register(&mut env, Some(VICTIM.name), VICTIM.name, &[]);
    assert_eq!(answer, format!("ENROLLED {}", VICTIM.pod_ip));
}

#[test]
fn claiming_another_pods_ip_is_refused() {
    let Some(mut env) = started(conduit_tests::test_name!(), false, &[]) else {
        return;
    };
    let answer = register(&mut env, Some(VICTIM.name), VICTIM.name, &[]);
    assert_eq!(answer, format!("ENROLLED {}", VICTIM.pod_ip));
    // The thief configures the victim's address in its own namespace (it has
    // NET_ADMIN there), which the agent then finds there.
    sh(&format!(
        "ip -n {} addr add {}/32 dev lo",
        env.netns(THIEF.name),
        VICTIM.pod_ip
    ));
    for claim in [vec![], vec![VICTIM.pod_ip]] {
        let answer = register(&mut env, Some(THIEF.name), THIEF.name, &claim);
        let want = format!(
            "address {} belongs to pod test/{}",
            VICTIM.pod_ip, VICTIM.name
        );
        assert!(
            answer.starts_with("REFUSED") && answer.contains(&want),
            "claiming {claim:?}: {answer}"
        );
    }
    env.wait_log(&["registration refused", "ip_of_another_pod", "test/thief"]);
    // The victim keeps its address; the thief is not enrolled.
    let pods = env.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0]["name"], VICTIM.name);
    assert_eq!(pods[0]["pod_ips"], serde_json::json!([VICTIM.pod_ip]));
    // Claiming only its own address, the thief is enrolled with just that.
    let answer = register(&mut env, Some(THIEF.name), THIEF.name, &[THIEF.pod_ip]);
    assert_eq!(answer, format!("ENROLLED {}", THIEF.pod_ip));
}

#[test]
fn claiming_an_ip_not_in_the_netns_is_refused() {
    let Some(mut env) = started(conduit_tests::test_name!(), false, &[]) else {
        return;
    };
    let answer = register(
        &mut env,
        Some(THIEF.name),
        THIEF.name,
        &[THIEF.pod_ip, VICTIM.pod_ip],
    );
    let want = format!(
        "claimed address {} is not configured in the proxy's network namespace",
        VICTIM.pod_ip
    );
    assert!(
        answer.starts_with("REFUSED") && answer.contains(&want),
        "{answer}"
    );
    env.wait_log(&["registration refused", "ip_not_in_netns"]);
    assert!(env.pods().is_empty(), "{:?}", env.pods());
    // The victim, registering after, gets its address.
    let answer = register(&mut env, Some(VICTIM.name), VICTIM.name, &[VICTIM.pod_ip]);
    assert_eq!(answer, format!("ENROLLED {}", VICTIM.pod_ip));
}

/// More connections than the agent serves at once (2048).
const FLOOD: usize = 2100;

#[test]
fn one_peer_cannot_exhaust_registration_slots() {
    let Some(mut env) = started(conduit_tests::test_name!(), false, &[]) else {
        return;
    };
    // The flooder connects FLOOD times and sends nothing.
    let args = format!("{}\n{FLOOD}", env.socket.display());
    let (flood, lines) = spawn_lines(&mut helper(
        &env,
        "helper_flood",
        Some(THIEF.name),
        THIEF.name,
        &args,
    ));
    env.children.push(flood);
    assert_eq!(expect_line(&lines, &["OPEN"]), format!("OPEN {FLOOD}"));
    // The agent has turned connections away (it is full, or the flooder has
    // its share): from now on the flood holds whatever it can.
    let refused = env.wait_log(&["registration refused", "registrations"]);
    // A pod registering meanwhile is served at its first attempt.
    let answer = register(&mut env, Some(VICTIM.name), VICTIM.name, &[]);
    assert_eq!(
        answer,
        format!("ENROLLED {}", VICTIM.pod_ip),
        "flood: {refused}"
    );
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
    const MAX_PODS: u64 = conduit_ebpf_common::MAX_PODS as u64;
    let size = std::mem::size_of::<conduit_ebpf_common::PodConfig>();
    let Some(mut env) = started(conduit_tests::test_name!(), false, &[]) else {
        return;
    };
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

    let answer = register(&mut env, Some(VICTIM.name), VICTIM.name, &[]);
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
    let answer = register(&mut env, Some(VICTIM.name), VICTIM.name, &[]);
    assert_eq!(answer, format!("ENROLLED {}", VICTIM.pod_ip));
}

#[test]
fn registration_socket_is_not_world_writable() {
    const GROUP: u32 = 4242;
    let Some(mut env) = started(
        conduit_tests::test_name!(),
        false,
        &["--socket-group", &GROUP.to_string()],
    ) else {
        return;
    };
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
    let answer = register(&mut env, Some(VICTIM.name), VICTIM.name, &[]);
    assert_eq!(answer, format!("ENROLLED {}", VICTIM.pod_ip));
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
    register_and_hold(Path::new(socket), &pod, &inbound);
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
    hold_until_stdin_closes();
    drop(held);
}
