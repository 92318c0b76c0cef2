//! Only enrolled pods are captured: a pod whose proxy has not registered,
//! and a namespace with no proxy at all, reach their destinations directly,
//! while an enrolled pod on the same node is captured at the same time. In
//! an enrolled pod everything but the proxy is captured, an application
//! running under the proxy's uid included.

use anyhow::{Context, Result, ensure};
use conduit_tests::checks::{captured_outbound, direct};
use conduit_tests::env::PROXY_UID;
use conduit_tests::{Agent, Env, ProxyMode, TestProxy, TestServer, client, client_as};
use std::net::IpAddr;

/// Over IPv4 and IPv6 at once: pod `other` reaches the server directly while
/// pod `enrolled` is captured, and only `enrolled` is in the agent's status.
fn only_enrolled_captured(env: &Env, agent: &Agent, other: &str) -> Result<()> {
    let (s, o) = (env.pod("server"), env.pod(other));
    for (dst, from) in [
        (s.v4(8080), IpAddr::V4(o.ipv4)),
        (s.v6(8080), IpAddr::V6(o.ipv6)),
    ] {
        direct(&client(env, other, dst)?, "server", from)?;
        captured_outbound(&client(env, "enrolled", dst)?, dst)?;
    }
    let pods = agent.config.status()?.pods;
    ensure!(
        pods.len() == 1 && pods[0].name == "enrolled",
        "enrolled pods: {pods:?}"
    );
    Ok(())
}

#[test]
fn pod_with_unregistered_proxy_not_captured() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["enrolled", "idle", "server"])?
    else {
        return Ok(());
    };
    let agent = env.agent_config()?.start()?;
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let _enrolled = TestProxy::start(
        &env,
        "enrolled",
        ProxyMode::Report,
        Some(&agent.config.socket),
    )?;
    // Listening on 4140/4143 like a proxy, but never registered.
    let idle = TestProxy::start(&env, "idle", ProxyMode::Report, None)?;
    only_enrolled_captured(&env, &agent, "idle")?;
    ensure!(
        idle.accepted().is_empty(),
        "the unregistered proxy accepted {:?}",
        idle.accepted()
    );
    Ok(())
}

#[test]
fn non_enrolled_namespace_not_captured() -> Result<()> {
    let Some(env) = Env::privileged(
        conduit_tests::test_name!(),
        &["enrolled", "outside", "server"],
    )?
    else {
        return Ok(());
    };
    let agent = env.agent_config()?.start()?;
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let enrolled = TestProxy::start(
        &env,
        "enrolled",
        ProxyMode::Report,
        Some(&agent.config.socket),
    )?;
    only_enrolled_captured(&env, &agent, "outside")?;
    // The enrolled pod's proxy saw its own pod's two connections, no others.
    ensure!(
        enrolled.accepted().len() == 2,
        "enrolled proxy accepted {:?}",
        enrolled.accepted()
    );
    Ok(())
}

/// An application that runs under the proxy's uid (by mistake, or to
/// bypass the mesh) is captured like any other: the proxy's own sockets are
/// told apart by the proxy's cgroup, not by its uid.
#[test]
fn app_running_as_proxy_uid_is_still_captured() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["enrolled", "server"])? else {
        return Ok(());
    };
    let agent = env.agent_config()?.start()?;
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let proxy = TestProxy::start(
        &env,
        "enrolled",
        ProxyMode::Report,
        Some(&agent.config.socket),
    )?;
    let s = env.pod("server");
    for dst in [s.v4(8080), s.v6(8080)] {
        let report = client_as(&env, "enrolled", dst, Some(PROXY_UID))?;
        captured_outbound(&report, dst)
            .with_context(|| format!("an app running as uid {PROXY_UID}"))?;
    }
    ensure!(
        proxy.accepted().len() == 2,
        "proxy accepted {:?}",
        proxy.accepted()
    );
    let status = agent.config.status()?;
    ensure!(
        status.pods.len() == 1 && status.pods[0].proxy_uid == PROXY_UID,
        "{:?}",
        status.pods
    );
    Ok(())
}
