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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::{self, spawn_agent};

use support::{BIN, TestNames, agent_status, privileged, setup_pod, teardown, wait_for};

const HOST_IP: &str = "10.213.7.1";
const POD_IP: &str = "10.213.7.2";

/// Everything the test creates, removed in Drop (also on failure).
struct Env {
    /// One environment at a time (see `support::exclusive`); dropped last.
    _exclusive: std::sync::MutexGuard<'static, ()>,
    ns: String,
    veth: String,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    socket: PathBuf,
    children: Vec<Child>,
    _tmp: tempfile::TempDir,
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
            socket: tmp.path().join("run").join("agent.sock"),
            children: Vec::new(),
            _tmp: tmp,
        };
        setup_pod(
            &env.ns,
            &env.veth,
            HOST_IP,
            POD_IP,
            &env.cgroup,
            &["proxy", "app"],
        );
        env
    }

    fn agent(&mut self) -> usize {
        let mut cmd = Command::new(BIN);
        cmd.args(["agent", "--grace-period", "20"])
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(&self.socket)
            // Not in a cluster: no pod claim checks.
            .env_remove("CONDUIT_NODE_NAME");
        let (child, _) = spawn_agent(&mut cmd, None);
        self.children.push(child);
        self.children.len() - 1
    }

    /// Runs this test binary's `name` helper in the pod netns, in cgroup `sub`.
    fn helper(&self, name: &str, sub: &str, args: &str) -> Command {
        let exe = std::env::current_exe().unwrap();
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {} {} --exact smoke::{name} --nocapture --test-threads=1",
                self.cgroup.join(sub).display(),
                self.ns,
                exe.display()
            ))
            .env("SMOKE_ARGS", args)
            .stdout(Stdio::piped());
        c
    }

    fn status(&self) -> serde_json::Value {
        agent_status(&self.pin_dir)
    }

    /// `status --check --socket`: (exit status 0, stderr).
    fn check(&self) -> (bool, String) {
        let out = Command::new(BIN)
            .args(["status", "--check", "--pin-dir"])
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn stop(&mut self, i: usize) {
        let pid = self.children[i].id() as i32;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM);
        let _ = self.children[i].wait();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        teardown(
            &self.pin_dir,
            &self.socket,
            &self.ns,
            &self.veth,
            &self.cgroup,
            &["proxy", "app", ""],
        );
    }
}

/// Reads the proxy helper's stdout until a line starting with `prefix`.
fn expect_line(lines: &mpsc::Receiver<String>, prefix: &str) -> String {
    loop {
        let l = lines
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("no line {prefix:?}"));
        // libtest prints "test helper_proxy ... " before the helper's output.
        if let Some(i) = l.find(prefix) {
            return l[i + prefix.len()..].trim().to_string();
        }
    }
}

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
    let mut env = Env::new(conduit_tests::test_name!());
    // Before the agent: the probe check fails, naming what is missing.
    let (ok, why) = env.check();
    assert!(!ok && why.contains("nothing is pinned"), "{why}");
    let first = env.agent();
    let (ok, why) = env.check();
    assert!(ok, "status --check with the agent ready: {why}");
    let st = env.status();
    if !st["attached"].as_bool().unwrap() {
        panic!("not attached after agent ready: {st:#}");
    }
    assert_eq!(st["pods"].as_array().unwrap().len(), 0);

    // An app in a namespace nobody registered is not captured.
    let out = env
        .helper("helper_client", "app", &format!("{HOST_IP}:8080"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CLIENT refused"),
        "{out:?}"
    );

    let mut proxy = env
        .helper("helper_proxy", "proxy", &env.socket.display().to_string())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut proxy);
    env.children.push(proxy);
    let enrolled = expect_line(&lines, "ENROLLED");
    assert!(enrolled.contains(POD_IP), "{enrolled}");
    let st = env.status();
    assert_eq!(st["pods"][0]["name"], "smoke");
    assert_eq!(st["pods"][0]["proxy_alive"], true);

    let client = |env: &Env| {
        let out = env
            .helper("helper_client", "app", &format!("{HOST_IP}:8080"))
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
    env.stop(first);
    let got = client(&env);
    assert!(
        got.contains(&format!("CLIENT orig={HOST_IP}:8080")),
        "without agent: {got}"
    );
    expect_line(&lines, "STATE enrolled=false");
    env.agent();
    assert!(env.status()["attached"].as_bool().unwrap());
    // The proxy registers again with the new agent (within its backoff).
    expect_line(&lines, "STATE enrolled=true");
    assert_eq!(env.status()["pods"].as_array().unwrap().len(), 1);
    assert!(client(&env).contains(&format!("CLIENT orig={HOST_IP}:8080")));

    // The proxy goes: capture stops.
    for c in env.children.iter_mut().skip(1).take(1) {
        let _ = c.kill();
        let _ = c.wait();
    }
    wait_for("the pod to be removed", || {
        env.status()["pods"].as_array().unwrap().is_empty()
    });
    assert!(client(&env).contains("CLIENT refused"));

    // Cleanup leaves nothing pinned.
    for c in &mut env.children {
        let _ = c.kill();
        let _ = c.wait();
    }
    // The killed agent left its socket behind: the probe says so.
    assert!(env.socket.exists());
    let (ok, why) = env.check();
    assert!(!ok && why.contains("does not accept"), "{why}");
    let out = Command::new(BIN)
        .args(["cleanup", "--pin-dir"])
        .arg(&env.pin_dir)
        .arg("--socket")
        .arg(&env.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new(&env.pin_dir).exists());
    assert_eq!(env.status()["programs"].as_array().unwrap().len(), 0);
    // The socket and its (now empty) directory are gone too.
    assert!(!env.socket.parent().unwrap().exists());
    let (ok, why) = env.check();
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
        println!("STATE enrolled={up}");
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
