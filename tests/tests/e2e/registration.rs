//! Capture follows the proxy's registration: it stops when the registration
//! closes (told to, or the proxy dies) and resumes when a proxy registers
//! again, outbound and inbound. Connections made while no proxy is
//! registered go direct (the app in pod `app` listens on 9000 for inbound).
//! One registration per pod: a second registrant is refused while the first
//! lives. (More attacks on registration: ebpf/agent/tests/security.rs.)

use anyhow::{Result, ensure};
use conduit_tests::checks::{app_captured_both_ways, captured_outbound, direct};
use conduit_tests::status::StatusExt as _;
use conduit_tests::{Agent, AgentConfig};
use conduit_tests::{Env, ProxyMode, TestProxy, TestServer, client, wait_until};
use nix::sys::signal::Signal;
use std::net::IpAddr;
use std::time::Duration;

/// How long the agent may take to notice a closed registration.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

fn expect_direct(env: &Env, agent: &AgentConfig) -> Result<()> {
    let (s, a) = (env.pod("server"), env.pod("app"));
    wait_until("capture to stop", STOP_TIMEOUT, || {
        direct(
            &client(env, "app", s.v4(8080))?,
            "server",
            IpAddr::V4(a.ipv4),
        )
    })?;
    // And it stays stopped, for IPv6 too; inbound too: the app answers
    // itself. (client pod, destination, who answers, source it sees)
    for (pod, dst, answers, from) in [
        ("app", s.v4(8080), "server", IpAddr::V4(a.ipv4)),
        ("app", s.v6(8080), "server", IpAddr::V6(a.ipv6)),
        ("server", a.v4(9000), "local-app", IpAddr::V4(s.ipv4)),
        ("server", a.v6(9000), "local-app", IpAddr::V6(s.ipv6)),
    ] {
        direct(&client(env, pod, dst)?, answers, from)?;
    }
    let status = agent.status()?;
    ensure!(
        status.pods.is_empty(),
        "pods still enrolled: {:?}",
        status.pods
    );
    Ok(())
}

fn expect_captured(env: &Env, agent: &AgentConfig) -> Result<()> {
    ensure!(
        agent.status()?.pod_names() == ["app"],
        "pod app not enrolled"
    );
    app_captured_both_ways(env)
}

/// Starts the agent, the server (8080), the app (9000) and a registered
/// proxy in pod `app`, and checks capture is on; returns what must stay
/// alive: (agent, server, app, proxy).
fn captured_app(env: &Env) -> Result<(Agent, TestServer, TestServer, TestProxy)> {
    let agent = env.agent_config()?.start()?;
    let server = TestServer::start(env, "server", 8080, "server")?;
    let local_app = TestServer::start(env, "app", 9000, "local-app")?;
    let proxy = TestProxy::start(env, "app", ProxyMode::Report, Some(&agent.config.socket))?;
    expect_captured(env, &agent.config)?;
    Ok((agent, server, local_app, proxy))
}

#[test]
fn capture_stops_when_registration_closes_and_resumes_on_register() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["app", "server"])? else {
        return Ok(());
    };
    let (agent, _server, _local_app, mut proxy) = captured_app(&env)?;

    proxy.unregister()?;
    proxy.wait_unregistered(1)?;
    expect_direct(&env, &agent.config)?;

    // Capture is on again as soon as the agent has answered the registration.
    proxy.register()?;
    proxy.wait_registered(2)?;
    expect_captured(&env, &agent.config)?;
    Ok(())
}

#[test]
fn capture_stops_when_proxy_dies_and_resumes_with_a_new_proxy() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["app", "server"])? else {
        return Ok(());
    };
    let (agent, _server, _local_app, mut proxy) = captured_app(&env)?;

    proxy.process.signal(Signal::SIGKILL)?;
    proxy.process.wait_exit(Duration::from_secs(5))?;
    expect_direct(&env, &agent.config)?;

    let _proxy = TestProxy::start(&env, "app", ProxyMode::Report, Some(&agent.config.socket))?;
    expect_captured(&env, &agent.config)?;
    Ok(())
}

/// A second process in an enrolled pod (another container, or an
/// application that reached the socket) registering with a listener of its
/// own would take over the pod's capture; it is refused while the first
/// registration is open, and registers once the first proxy is gone.
#[test]
fn second_registration_for_an_enrolled_netns_is_refused() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["app", "server"])? else {
        return Ok(());
    };
    let (mut agent, _server, _local_app, mut first) = captured_app(&env)?;
    let socket = agent.config.socket.display().to_string();
    // Other ports (the first proxy holds the defaults); it keeps retrying.
    let mut second = TestProxy::start_with(
        &env,
        "app",
        ProxyMode::Report,
        None,
        &[
            "--agent-socket",
            &socket,
            "--outbound-port",
            "4240",
            "--inbound-port",
            "4243",
            "--admin-port",
            "4291",
        ],
    )?;
    let refused =
        agent
            .process
            .wait_for_line("the second registration refused", STOP_TIMEOUT, |l| {
                l.contains("registration refused")
                    && l.contains("one registration per network namespace")
            })?;
    ensure!(
        refused.contains(&format!("proxy pid {}", first.process.pid())),
        "{refused}"
    );
    // The first proxy still has the pod: the status names it, and it is
    // the one that accepts the app's connections.
    let pods = agent.config.status()?.pods;
    ensure!(
        pods.len() == 1 && pods[0].proxy_pid == first.process.pid(),
        "enrolled: {pods:?}, first proxy pid {}",
        first.process.pid()
    );
    let s = env.pod("server");
    captured_outbound(&client(&env, "app", s.v4(8080))?, s.v4(8080))?;
    ensure!(
        second.accepted().is_empty(),
        "the refused proxy accepted {:?}",
        second.accepted()
    );

    // The first proxy dies: the second one (retrying) gets the pod.
    first.process.signal(Signal::SIGKILL)?;
    first.process.wait_exit(Duration::from_secs(5))?;
    second.wait_registered(1)?;
    let pods = agent.config.status()?.pods;
    ensure!(
        pods.len() == 1 && pods[0].proxy_pid == second.process.pid(),
        "enrolled: {pods:?}, second proxy pid {}",
        second.process.pid()
    );
    let report = client(&env, "app", s.v4(8080))?;
    let (orig, _) = report.captured()?;
    ensure!(orig == s.v4(8080), "original destination {orig}");
    ensure!(
        second.accepted().len() == 1,
        "the second proxy accepted {:?}",
        second.accepted()
    );
    Ok(())
}
