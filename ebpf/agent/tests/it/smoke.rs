//! Privileged smoke test of the real agent binary on the real kernel: load
//! and attach, enrol a pod (a network namespace with a proxy registering
//! through conduit-register), capture an outbound connect with its original
//! destination, stop capture when the proxy goes, restart the agent without
//! losing capture, clean up. The full scenarios live in tests/ (conduit-tests).
//!
//! Skips with a message when not root; fails instead under
//! CONDUIT_REQUIRE_PRIVILEGED=1. The `helper_*` tests are the processes the
//! smoke test runs inside the pod (this test binary re-executed); on their
//! own they do nothing.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{AgentEnv, BIN, Pod, cleanup_command, expect_line, privileged, spawn_lines};
use crate::support::{pod::print_state, wait_for};

const POD: Pod = Pod {
    name: "pod",
    host_ip: "10.213.7.1",
    pod_ip: "10.213.7.2",
};
const HOST_IP: &str = POD.host_ip;
const POD_IP: &str = POD.pod_ip;

fn env(test: &str) -> AgentEnv {
    AgentEnv::new(test, &[POD], &["proxy", "app"])
}

fn start_agent(env: &mut AgentEnv) {
    let mut cmd = env.agent_command(&[]);
    cmd.args(["--grace-period", "20"]);
    env.start_agent(cmd);
}

/// Runs this test binary's `name` helper in the pod, in cgroup `sub`.
fn helper(env: &AgentEnv, name: &str, sub: &str, args: &str) -> Command {
    let mut c = env.helper(&format!("smoke::{name}"), Some(POD.name), sub);
    c.env("SMOKE_ARGS", args);
    c
}

/// `status --check --socket`: (exit status 0, stderr).
fn check(env: &AgentEnv) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["status", "--check", "--pin-dir"])
        .arg(&env.pin_dir)
        .arg("--socket")
        .arg(&env.socket)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn counter(status: &serde_json::Value, program: &str, outcome: &str) -> u64 {
    status["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["program"] == program && c["outcome"] == outcome)
        .and_then(|c| c["value"].as_u64())
        .unwrap_or(0)
}

#[test]
fn agent_captures_enrolled_pod_and_survives_restart() {
    if !privileged(conduit_tests::test_name!()) {
        return;
    }
    let mut env = env(conduit_tests::test_name!());
    // Before the agent: the probe check fails, naming what is missing.
    let (ok, why) = check(&env);
    assert!(!ok && why.contains("nothing is pinned"), "{why}");
    start_agent(&mut env);
    let (ok, why) = check(&env);
    assert!(ok, "status --check with the agent ready: {why}");
    let st = env.status();
    if !st["attached"].as_bool().unwrap() {
        panic!("not attached after agent ready: {st:#}");
    }
    assert_eq!(st["pods"].as_array().unwrap().len(), 0);

    // An app in a namespace nobody registered is not captured.
    let out = helper(&env, "helper_client", "app", &format!("{HOST_IP}:8080"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CLIENT refused"),
        "{out:?}"
    );

    let socket = env.socket.display().to_string();
    let (proxy, lines) = spawn_lines(&mut helper(&env, "helper_proxy", "proxy", &socket));
    env.children.push(proxy);
    let enrolled = expect_line(&lines, &["ENROLLED"]);
    assert!(enrolled.contains(POD_IP), "{enrolled}");
    let st = env.status();
    assert_eq!(st["pods"][0]["name"], "smoke");
    assert_eq!(st["pods"][0]["proxy_alive"], true);

    let client = |env: &AgentEnv| {
        let out = helper(env, "helper_client", "app", &format!("{HOST_IP}:8080"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let got = client(&env);
    assert!(
        got.contains(&format!("CLIENT orig={HOST_IP}:8080 peer={HOST_IP}:8080")),
        "{got}"
    );
    assert!(counter(&env.status(), "connect4", "captured") >= 1);

    // Agent restart: capture continues throughout, the new agent adopts.
    env.stop_agent();
    let got = client(&env);
    assert!(
        got.contains(&format!("CLIENT orig={HOST_IP}:8080")),
        "without agent: {got}"
    );
    expect_line(&lines, &["STATE enrolled=false"]);
    start_agent(&mut env);
    assert!(env.status()["attached"].as_bool().unwrap());
    // The proxy registers again with the new agent (within its backoff).
    expect_line(&lines, &["STATE enrolled=true"]);
    assert_eq!(env.pods().len(), 1);
    assert!(client(&env).contains(&format!("CLIENT orig={HOST_IP}:8080")));

    // The proxy goes: capture stops.
    for c in &mut env.children {
        let _ = c.kill();
        let _ = c.wait();
    }
    wait_for("the pod to be removed", || env.pods().is_empty());
    assert!(client(&env).contains("CLIENT refused"));

    // Cleanup leaves nothing pinned.
    env.kill_agent();
    // The killed agent left its socket behind: the probe says so.
    assert!(env.socket.exists());
    let (ok, why) = check(&env);
    assert!(!ok && why.contains("does not accept"), "{why}");
    let out = cleanup_command(&env.pin_dir, &env.socket).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new(&env.pin_dir).exists());
    assert_eq!(env.status()["programs"].as_array().unwrap().len(), 0);
    // The socket and its (now empty) directory are gone too.
    assert!(!env.socket.parent().unwrap().exists());
    let (ok, why) = check(&env);
    assert!(!ok && why.contains("nothing is pinned"), "{why}");
}

/// Pod-side proxy: registers, then answers each connection on 4140 with its
/// original destination.
#[test]
fn helper_proxy() {
    let Ok(socket) = std::env::var("SMOKE_ARGS") else {
        return;
    };
    let outbound = TcpListener::bind("127.0.0.1:4140").unwrap();
    let inbound = TcpListener::bind("0.0.0.0:4143").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pod = conduit_register::PodInfo::new("smoke", "test");
    let (tx, rx) = mpsc::channel();
    let fd: std::os::fd::OwnedFd = inbound.into();
    let _task = rt.enter();
    let _h = conduit_register::maintain(PathBuf::from(socket), pod, fd, move |up| {
        print_state(up);
        let _ = tx.send(up);
    });
    assert!(rx.recv_timeout(Duration::from_secs(15)).unwrap());
    println!("ENROLLED {POD_IP}");
    std::io::stdout().flush().unwrap();
    for conn in outbound.incoming() {
        let mut conn = conn.unwrap();
        let orig =
            nix::sys::socket::getsockopt(&conn.as_fd(), nix::sys::socket::sockopt::OriginalDst)
                .map(|sa| {
                    SocketAddrV4::new(
                        u32::from_be(sa.sin_addr.s_addr).into(),
                        u16::from_be(sa.sin_port),
                    )
                    .to_string()
                })
                .unwrap_or_else(|e| format!("error:{e}"));
        let _ = writeln!(conn, "{orig}");
    }
}

/// Pod-side application: connects, prints what the proxy said and the peer.
#[test]
fn helper_client() {
    let Ok(target) = std::env::var("SMOKE_ARGS") else {
        return;
    };
    match TcpStream::connect_timeout(&target.parse().unwrap(), Duration::from_secs(3)) {
        Ok(mut s) => {
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            println!(
                "CLIENT orig={} peer={}",
                answer.trim(),
                s.peer_addr().unwrap()
            );
        }
        Err(e) => println!("CLIENT refused ({e})"),
    }
}
