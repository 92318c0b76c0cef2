//! Pods under Pod Security `baseline` have no hostPath, so their proxy
//! cannot reach the agent's socket. In discovery mode the proxy listens on
//! an abstract unix socket in its pod's network namespace and the agent
//! (`--discover`) finds it there, takes its inbound listener with
//! `pidfd_getfd` and enrols the pod through the same checks as the socket
//! path. Here the agent's socket lives in a directory only root may enter,
//! and the proxy runs as uid 1337: it cannot reach it, and is still
//! enrolled, captured both ways, and un-enrolled when it dies. The real
//! `conduit-proxy` in that mode carries mTLS in the local mesh.

use anyhow::{Result, ensure};
use conduit_tests::checks::{app_captured_both_ways, direct};
use conduit_tests::env::PROXY_UID;
use conduit_tests::{AgentConfig, Env, ProxyMode, TestProxy, TestServer, client, wait_until};
use nix::sys::signal::Signal;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// How long the agent may take to notice a proxy (it looks every 200 ms
/// here) or a dead one.
const TIMEOUT: Duration = Duration::from_secs(10);

fn discovering_agent(env: &Env) -> Result<AgentConfig> {
    let mut cfg = env.agent_config()?;
    let private = env.run_dir().join("private");
    std::fs::create_dir_all(&private)?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
    cfg.socket = private.join("agent.sock");
    cfg.extra_args = vec!["--discover".into(), "--discover-interval=200".into()];
    Ok(cfg)
}

fn start_proxy(env: &Env) -> Result<TestProxy> {
    // No --agent-socket: discovery only.
    let mut proxy = TestProxy::start_with(
        env,
        "app",
        ProxyMode::Report,
        None,
        &["--agent-discovery-abstract"],
    )?;
    proxy.wait_registered(1)?;
    Ok(proxy)
}

fn expect_captured(env: &Env, agent: &AgentConfig, proxy: &TestProxy) -> Result<()> {
    let pods = agent.status()?.pods;
    ensure!(
        pods.len() == 1
            && pods[0].name == "app"
            && pods[0].proxy_pid == proxy.process.pid()
            && pods[0].proxy_uid == PROXY_UID,
        "enrolled: {pods:?}"
    );
    // Inbound: sk_lookup hands connections to the listener the agent took
    // out of the proxy with pidfd_getfd.
    app_captured_both_ways(env)
}

/// Enrolled and captured both ways, released when it dies, found again
/// when a new proxy starts.
#[test]
fn discovered_proxy_without_agent_socket() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["app", "server"])? else {
        return Ok(());
    };
    let agent = discovering_agent(&env)?.start()?;
    let dir_mode = std::fs::metadata(agent.config.socket.parent().unwrap())?
        .permissions()
        .mode();
    ensure!(
        dir_mode & 0o077 == 0 && PROXY_UID != 0,
        "the proxy (uid {PROXY_UID}) could reach the socket's directory (mode {dir_mode:o})"
    );
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let _local_app = TestServer::start(&env, "app", 9000, "local-app")?;

    let mut proxy = start_proxy(&env)?;
    expect_captured(&env, &agent.config, &proxy)?;

    // The proxy dies: its end of the registration closes, the pod is
    // released and traffic goes direct again.
    proxy.process.signal(Signal::SIGKILL)?;
    proxy.process.wait_exit(Duration::from_secs(5))?;
    let (s, a) = (env.pod("server"), env.pod("app"));
    wait_until("the pod to be released", TIMEOUT, || {
        let pods = agent.config.status()?.pods;
        ensure!(pods.is_empty(), "still enrolled: {pods:?}");
        direct(
            &client(&env, "app", s.v4(8080))?,
            "server",
            IpAddr::V4(a.ipv4),
        )
    })?;
    direct(
        &client(&env, "server", a.v4(9000))?,
        "local-app",
        IpAddr::V4(s.ipv4),
    )?;

    // A new proxy in the same pod is found again.
    let proxy = start_proxy(&env)?;
    expect_captured(&env, &agent.config, &proxy)?;
    Ok(())
}

/// The real `conduit-proxy` in discovery mode (what `inject` sets), in the
/// local mesh: found by the agent, certified, and carrying mTLS between
/// pods; a restarted proxy is found again.
#[test]
fn real_proxies_in_discovery_mode_carry_mtls() -> Result<()> {
    use conduit_tests::mesh::Mesh;
    use conduit_tests::mesh::spec::MeshSpec;
    let mut spec = MeshSpec::with_servers(1);
    spec.agent_args
        .extend(["--discover".into(), "--discover-interval=200".into()]);
    spec.proxy_args
        .extend(["--agent-discovery".into(), "abstract".into()]);
    let Some(mut mesh) = Mesh::privileged(conduit_tests::test_name!(), spec)? else {
        return Ok(());
    };
    for pod in ["client", "web-1"] {
        let out = mesh.proxy(pod).process.output_text();
        ensure!(
            out.contains("waiting for the node agent to find this proxy")
                && out.contains("the node agent enrolled the pod"),
            "{pod}'s proxy was not found through discovery:\n{out}"
        );
    }
    let check = |mesh: &Mesh, path: &str| -> Result<()> {
        let a = mesh.curl(&mesh.url_by_name("web", 80, path))?.answer()?;
        ensure!(a.server == "web-1" && mesh.via_own_proxy(&a), "{a:?}");
        let client = mesh.proxy("client").metrics()?;
        let peer = mesh.identity("web-1");
        let answered = client.sum(
            "conduit_response_total",
            &[("direction", "outbound"), ("peer_identity", &peer)],
        );
        ensure!(answered >= 1.0, "no mTLS answer from {peer}");
        ensure!(
            client.sum("conduit_agent_registered", &[]) == 1.0,
            "the client's proxy does not see its enrolment"
        );
        Ok(())
    };
    check(&mesh, "/found")?;
    mesh.kill_proxy("web-1")?;
    mesh.start_proxy("web-1")?;
    check(&mesh, "/found-again")?;
    Ok(())
}
