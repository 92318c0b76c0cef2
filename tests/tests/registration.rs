//! Capture follows the proxy's registration: it stops when the registration
//! closes (told to, or the proxy dies) and resumes when a proxy registers
//! again, outbound and inbound. Connections made while no proxy is
//! registered go direct (the app in pod `app` listens on 9000 for inbound).

use anyhow::{Result, ensure};
use conduit_tests::checks::{captured_outbound, direct};
use conduit_tests::report::Side;
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
    let s = env.pod("server");
    ensure!(
        agent.status()?.pod_names() == ["app"],
        "pod app not enrolled"
    );
    captured_outbound(&client(env, "app", s.v4(8080))?, s.v4(8080))?;
    captured_outbound(&client(env, "app", s.v6(8080))?, s.v6(8080))?;
    let a = env.pod("app");
    for dst in [a.v4(9000), a.v6(9000)] {
        let (orig, side) = client(env, "server", dst)?.captured()?;
        ensure!(
            side == Side::Inbound && orig == dst,
            "inbound {dst}: {side:?} {orig}"
        );
    }
    Ok(())
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
