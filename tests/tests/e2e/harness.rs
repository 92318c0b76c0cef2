//! The harness itself, with plain sockets and no agent: pods reach each other
//! over IPv4 and IPv6, processes land in the right netns, cgroup and user,
//! and everything is gone after drop.

use anyhow::{Result, ensure};
use conduit_tests::cmd::ip;
use conduit_tests::report::Reply;
use conduit_tests::{Env, TestServer, bins, client};
use std::path::Path;
use std::time::Duration;

#[test]
fn pods_talk_over_ipv4_and_ipv6() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["a", "b"])? else {
        return Ok(());
    };
    let server = TestServer::start(&env, "b", 8080, "server-b")?;
    let (a, b) = (env.pod("a"), env.pod("b"));
    for dst in [b.v4(8080), b.v6(8080)] {
        let report = client(&env, "a", dst)?;
        let (peer, reply) = report.reply()?;
        ensure!(*peer == dst, "getpeername {peer} != dialled {dst}");
        let Reply::Server {
            name,
            peer: seen,
            received,
            local,
        } = reply
        else {
            panic!("{reply:?}")
        };
        ensure!(
            name == "server-b" && received == "hello from a",
            "{reply:?}"
        );
        ensure!(*local == dst, "server's local address {local} != {dst}");
        let want = if dst.is_ipv4() {
            a.ipv4.into()
        } else {
            std::net::IpAddr::V6(a.ipv6)
        };
        ensure!(seen.ip() == want, "server saw {seen}, want {want}");
    }
    ensure!(
        server.accepted().len() == 2,
        "server accepted {:?}",
        server.accepted()
    );
    Ok(())
}

#[test]
fn processes_run_in_their_pod_cgroup_and_user() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["a"])? else {
        return Ok(());
    };
    let cg = env.pod_cgroup("a", "proxy")?;
    let done = env
        .spawn("a", "proxy", "/bin/sh")?
        .user(1337, 1337)
        .args(["-c", "id -u; cat /proc/self/cgroup | grep '^0::'; readlink /proc/self/ns/net; grep CapEff /proc/self/status"])
        .run(Duration::from_secs(10))?;
    ensure!(done.status.success(), "sh failed: {}", done.stderr());
    let out: Vec<&str> = done.stdout().collect();
    ensure!(out[0] == "1337", "uid: {out:?}");
    let rel = cg
        .path()
        .strip_prefix(conduit_tests::cgroup::cgroup2_mount()?)?;
    ensure!(
        out[1] == format!("0::/{}", rel.display()),
        "cgroup: {out:?}"
    );
    let ns = std::fs::read_link("/proc/self/ns/net")?;
    ensure!(
        Path::new(out[2]) != ns,
        "process ran in the test's own netns"
    );
    ensure!(
        out[3].ends_with("0000000000000000"),
        "capabilities left: {out:?}"
    );
    Ok(())
}

#[test]
fn drop_removes_everything() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["a", "b"])? else {
        return Ok(());
    };
    let bridge = env.topology().bridge().name().to_owned();
    let veth = env.pod("a").host_veth().to_owned();
    let netns = env.pod("a").netns().path();
    let cgroup = env.cgroup().path().to_owned();
    let server = TestServer::start(&env, "b", 8080, "server-b")?;
    let pid = server.process.pid();
    // Drop the environment while the server still runs: the cgroup kill
    // must take it down.
    std::mem::forget(server);
    drop(env);
    ensure!(!netns.exists(), "netns left: {}", netns.display());
    ensure!(!cgroup.exists(), "cgroup left: {}", cgroup.display());
    ensure!(
        ip(&["link", "show", &bridge]).is_err(),
        "bridge {bridge} left"
    );
    ensure!(ip(&["link", "show", &veth]).is_err(), "veth {veth} left");
    // Forgotten, so never reaped: it may linger as a zombie, but must not run.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    ensure!(
        stat.is_empty() || stat.contains(") Z "),
        "server process {pid} still runs: {stat}"
    );
    let _ = bins::find(bins::TEST_APP)?;
    Ok(())
}

#[test]
fn test_proxy_runs_unregistered() -> Result<()> {
    use conduit_tests::report::{ProxyEvent, Side};
    use conduit_tests::{ProxyMode, TestProxy};
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["a", "b"])? else {
        return Ok(());
    };
    let proxy = TestProxy::start(&env, "a", ProxyMode::Report, None)?;
    // Inbound, dialled directly: the original destination is the listener itself.
    let dst = env.pod("a").v4(4143);
    let report = client(&env, "b", dst)?;
    let (orig, side) = report.captured()?;
    ensure!(orig == dst && side == Side::Inbound, "{report:?}");
    let dst6 = env.pod("a").v6(4143);
    let (orig, _) = client(&env, "b", dst6)?.captured()?;
    ensure!(orig == dst6, "IPv6 inbound original destination {orig}");
    // Outbound, dialled directly (not captured): no original destination, so
    // the proxy reports a failure and closes the connection.
    let report = client(&env, "a", "127.0.0.1:4140".parse()?)?;
    ensure!(
        report.reply().is_err(),
        "uncaptured outbound got a reply: {report:?}"
    );
    conduit_tests::wait_until(
        "the proxy to report the failure",
        Duration::from_secs(5),
        || {
            let failed = proxy.events().into_iter().any(|e| matches!(e, ProxyEvent::Failed { error, .. } if error.contains("SO_ORIGINAL_DST")));
            if failed {
                Ok(())
            } else {
                anyhow::bail!("events: {:?}", proxy.events())
            }
        },
    )?;
    Ok(())
}

/// The skip rule, for real: this very test binary, run again as an
/// unprivileged user, skips a privileged test with a visible SKIPPED line,
/// and fails it under CONDUIT_REQUIRE_PRIVILEGED=1.
#[test]
fn unprivileged_runs_skip_visibly_or_fail_when_required() -> Result<()> {
    if !conduit_tests::privilege::check(conduit_tests::test_name!()) {
        return Ok(());
    }
    let me = std::env::current_exe()?;
    let run = |require: &str| {
        conduit_tests::process::Spawn::new("unprivileged", &me)
            .user(65534, 65534)
            .env(conduit_tests::privilege::REQUIRE_VAR, require)
            .args([
                "--exact",
                "harness::pods_talk_over_ipv4_and_ipv6",
                "--test-threads=1",
            ])
            .quiet()
            .run(Duration::from_secs(30))
    };
    let skipped = run("0")?;
    ensure!(
        skipped.status.success(),
        "skipping run failed: {}",
        skipped.stderr()
    );
    ensure!(
        skipped
            .stderr()
            .contains("SKIPPED pods_talk_over_ipv4_and_ipv6: not running as root"),
        "no SKIPPED line: {}",
        skipped.stderr()
    );
    let required = run("1")?;
    ensure!(
        !required.status.success(),
        "required run passed without root"
    );
    let all: Vec<String> = required.lines.iter().map(|(_, l)| l.clone()).collect();
    ensure!(all.join("\n").contains("needs root"), "{all:?}");
    Ok(())
}

/// The packet capture helper sees what travels on a pod's veth: here the
/// plaintext line of a direct connection (issue 6 uses it to check TLS).
#[test]
fn packet_capture_sees_plaintext_on_the_veth() -> Result<()> {
    use conduit_tests::wire::{PacketCapture, contains};
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["a", "b"])? else {
        return Ok(());
    };
    let _server = TestServer::start(&env, "b", 8080, "server-b")?;
    let pcap = env.run_dir().join("b.pcap");
    let capture = PacketCapture::start(env.pod("b").host_veth(), pcap, "tcp port 8080")?;
    client(&env, "a", env.pod("b").v4(8080))?.served_by("server-b")?;
    capture.wait_for(b"\"name\":\"server-b\"", Duration::from_secs(5))?;
    let bytes = capture.stop()?;
    ensure!(
        contains(&bytes, b"hello from a"),
        "the request was not on the wire ({} bytes)",
        bytes.len()
    );
    ensure!(
        contains(&bytes, b"\"name\":\"server-b\""),
        "the reply was not on the wire"
    );
    Ok(())
}
