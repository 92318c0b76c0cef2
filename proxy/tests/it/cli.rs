//! The binary: `--help`, flags and environment, startup and SIGTERM drain.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_conduit-proxy");

#[test]
fn help_explains_every_flag_with_its_env_var() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--outbound-addrs",
        "--inbound-addrs",
        "--admin-addr",
        "--opaque-ports",
        "--detect-timeout",
        "--tcp-idle-timeout",
        "--header-read-timeout",
        "--http-idle-timeout",
        "--max-header-bytes",
        "--max-headers",
        "--max-connections",
        "--shutdown-grace-period",
        "--agent-socket",
        "--service",
        "--discovery-file",
        "--controller-identity",
        "--body-read-timeout",
        "--control-addr",
        "--control-token-file",
        "--inbound-loopback-ports",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let flags = help
        .lines()
        .filter(|l| {
            l.trim_start().starts_with("--") && !l.contains("--help") && !l.contains("--version")
        })
        .count();
    assert_eq!(
        help.matches("[env: CONDUIT_PROXY_").count(),
        flags,
        "every flag has an env var:\n{help}"
    );
}

/// Runs the proxy with `args`, which it must refuse; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_flags_are_refused_clearly() {
    let err = refused(&["--detect-timeout", "soon"]);
    assert!(err.contains("bad duration"), "{err}");
    let err = refused(&["--workers", "0"]);
    assert!(err.contains("--workers") && err.contains("0"), "{err}");

    // TLS to the controller needs trust anchors to check its identity.
    let err = refused(&[
        "--controller-addr=127.0.0.1:9",
        "--admin-addr=127.0.0.1:0",
        "--outbound-addrs=127.0.0.1:0",
        "--inbound-addrs=127.0.0.1:0",
        "--controller-identity=spiffe://cluster.local/ns/conduit/sa/conduit-controller",
    ]);
    assert!(
        err.contains("--controller-identity") && err.contains("trust anchors"),
        "{err}"
    );
    let err = refused(&[
        "--controller-addr=127.0.0.1:9",
        "--controller-identity=not-spiffe",
    ]);
    assert!(err.contains("bad --controller-identity"), "{err}");

    // The operator listener changes the proxy's state: loopback only.
    let err = refused(&[
        "--admin-addr=127.0.0.1:0",
        "--outbound-addrs=127.0.0.1:0",
        "--inbound-addrs=127.0.0.1:0",
        "--control-addr=0.0.0.0:0",
    ]);
    assert!(
        err.contains("--control-addr") && err.contains("not a loopback address"),
        "{err}"
    );
}

/// Attack: an observer on the network reads the service account token (and
/// forges discovery) when the proxy talks to its controller in plaintext.
/// Without `--controller-identity` the proxy refuses to start, unless the
/// operator explicitly chose `--controller-insecure-plaintext`.
#[test]
fn proxy_refuses_to_send_its_token_in_plaintext() {
    let token = tempfile::NamedTempFile::new().unwrap();
    let base = [
        "--controller-addr=127.0.0.1:9",
        "--admin-addr=127.0.0.1:0",
        "--outbound-addrs=127.0.0.1:0",
        "--inbound-addrs=127.0.0.1:0",
        "--identity=spiffe://cluster.local/ns/default/sa/web",
    ];
    let token_flag = format!("--identity-token-file={}", token.path().display());
    let mut args: Vec<&str> = base.to_vec();
    args.push(&token_flag);
    let err = refused(&args);
    assert!(
        err.contains("needs --controller-identity") && err.contains("service account token"),
        "{err}"
    );
    // Discovery alone is refused in plaintext too.
    let err = refused(&base[..4]);
    assert!(err.contains("needs --controller-identity"), "{err}");
    // Both at once: a contradiction.
    let err = refused(&[
        "--controller-addr=127.0.0.1:9",
        "--controller-identity=spiffe://cluster.local/ns/conduit/sa/conduit-controller",
        "--controller-insecure-plaintext",
    ]);
    assert!(err.contains("contradicts"), "{err}");
}

#[test]
fn runs_from_env_and_drains_on_sigterm() {
    // One thread by default: the runtime's, nothing else.
    runs_and_drains("1", 1);
}

#[test]
fn runs_and_drains_on_a_multi_threaded_runtime() {
    // The main thread and two workers.
    runs_and_drains("2", 3);
}

/// Starts the proxy from environment variables with `workers` runtime
/// workers, checks its admin port answers and that it runs `threads`
/// threads, then SIGTERMs it and waits for its drain.
fn runs_and_drains(workers: &str, threads: usize) {
    let mut child = Command::new(BIN)
        .env("CONDUIT_PROXY_WORKERS", workers)
        .env("CONDUIT_PROXY_OUTBOUND_ADDRS", "127.0.0.1:0")
        .env("CONDUIT_PROXY_INBOUND_ADDRS", "127.0.0.1:0")
        .env("CONDUIT_PROXY_ADMIN_ADDR", "127.0.0.1:0")
        .env("CONDUIT_PROXY_CONTROL_ADDR", "127.0.0.1:0")
        .env("CONDUIT_PROXY_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log on a thread so a silent proxy fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let admin = loop {
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                panic!("proxy did not log its listeners: {e}");
            }
        };
        if line.contains("ERROR") {
            let _ = child.kill();
            panic!("proxy failed to start: {line}");
        }
        if let Some(rest) = line.split("admin=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let admin: std::net::SocketAddr = admin.parse().unwrap();
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /live HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let running = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .count();
    assert_eq!(running, threads, "threads with --workers {workers}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = conduit_test_support::wait_until(
        "the proxy's exit after SIGTERM",
        Duration::from_secs(10),
        || {
            child
                .try_wait()?
                .ok_or_else(|| anyhow::anyhow!("still running"))
        },
    )
    .unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = rx.iter().collect();
    assert!(rest.iter().any(|l| l.contains("drained")), "{rest:?}");
}
