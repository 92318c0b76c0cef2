//! Outbound capture: an application's connect() in an enrolled pod goes to
//! the pod's proxy, which recovers the original destination with
//! getsockopt(SO_ORIGINAL_DST) / IP6T_SO_ORIGINAL_DST; the application's
//! getpeername still shows the address it dialled.

use anyhow::{Result, ensure};
use conduit_tests::checks::{captured_outbound, direct};
use conduit_tests::status::StatusExt as _;
use conduit_tests::{Env, ProxyMode, TestProxy, TestServer, client};
use std::net::{IpAddr, SocketAddr};

/// Pods: `app` (enrolled, with the test proxy) and `server`.
fn setup(test: &str) -> Result<Option<(Env, conduit_tests::Agent)>> {
    let Some(env) = Env::privileged(test, &["app", "server"])? else {
        return Ok(None);
    };
    let agent = env.agent_config()?.start()?;
    Ok(Some((env, agent)))
}

#[test]
fn outbound_ipv4_original_destination() -> Result<()> {
    let Some((env, agent)) = setup(conduit_tests::test_name!())? else {
        return Ok(());
    };
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let _proxy = TestProxy::start(&env, "app", ProxyMode::Report, Some(&agent.config.socket))?;
    let dst = env.pod("server").v4(8080);
    captured_outbound(&client(&env, "app", dst)?, dst)?;
    // A second destination port: the record is per connection, not per pod.
    let other = env.pod("server").v4(9999);
    captured_outbound(&client(&env, "app", other)?, other)?;

    // The agent's own account agrees: one pod, its proxy's uid and addresses,
    // and exactly two captures answered by getsockopt.
    let status = agent.config.status()?;
    let app = env.pod("app");
    ensure!(
        status.attached && status.pod_names() == ["app"],
        "{status:?}"
    );
    let pod = status.pod("app").unwrap();
    ensure!(
        pod.proxy_uid == conduit_tests::env::PROXY_UID && pod.proxy_alive,
        "{pod:?}"
    );
    ensure!(
        pod.pod_ips.contains(&IpAddr::V4(app.ipv4)) && pod.pod_ips.contains(&IpAddr::V6(app.ipv6)),
        "{pod:?}"
    );
    ensure!(
        status.counter("connect4", "captured") == 2,
        "{:?}",
        status.counters
    );
    ensure!(
        status.counter("getsockopt", "captured") == 2,
        "{:?}",
        status.counters
    );
    ensure!(
        status.counter("getpeername4", "captured") >= 2,
        "{:?}",
        status.counters
    );
    Ok(())
}

#[test]
fn outbound_ipv6_original_destination() -> Result<()> {
    let Some((env, agent)) = setup(conduit_tests::test_name!())? else {
        return Ok(());
    };
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let _proxy = TestProxy::start(&env, "app", ProxyMode::Report, Some(&agent.config.socket))?;
    let dst = env.pod("server").v6(8080);
    captured_outbound(&client(&env, "app", dst)?, dst)?;
    Ok(())
}

#[test]
fn outbound_ipv4_mapped_ipv6_original_destination() -> Result<()> {
    let Some((env, agent)) = setup(conduit_tests::test_name!())? else {
        return Ok(());
    };
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let _proxy = TestProxy::start(&env, "app", ProxyMode::Report, Some(&agent.config.socket))?;
    // An AF_INET6 socket dialling ::ffff:a.b.c.d (what dual-stack apps do).
    let mapped = SocketAddr::new(IpAddr::V6(env.pod("server").ipv4.to_ipv6_mapped()), 8080);
    captured_outbound(&client(&env, "app", mapped)?, mapped)?;
    Ok(())
}

#[test]
fn outbound_loopback_destinations_not_captured() -> Result<()> {
    let Some((env, agent)) = setup(conduit_tests::test_name!())? else {
        return Ok(());
    };
    let _local = TestServer::start(&env, "app", 8080, "local")?;
    let proxy = TestProxy::start(&env, "app", ProxyMode::Report, Some(&agent.config.socket))?;
    for dst in ["127.0.0.1:8080", "[::1]:8080"] {
        let dst: SocketAddr = dst.parse()?;
        direct(&client(&env, "app", dst)?, "local", dst.ip())?;
    }
    anyhow::ensure!(
        proxy.accepted().is_empty(),
        "proxy accepted {:?}",
        proxy.accepted()
    );
    Ok(())
}

#[test]
fn outbound_skip_ports_not_captured() -> Result<()> {
    let Some((env, agent)) = setup(conduit_tests::test_name!())? else {
        return Ok(());
    };
    let _server = TestServer::start(&env, "server", 9090, "server")?;
    let _proxy = TestProxy::start_with(
        &env,
        "app",
        ProxyMode::Report,
        Some(&agent.config.socket),
        &["--skip-outbound-port", "9090"],
    )?;
    let app = env.pod("app");
    direct(
        &client(&env, "app", env.pod("server").v4(9090))?,
        "server",
        IpAddr::V4(app.ipv4),
    )?;
    let dst = env.pod("server").v4(9091);
    captured_outbound(&client(&env, "app", dst)?, dst)?;
    Ok(())
}

#[test]
fn outbound_excluded_cidr_not_captured() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["app", "server", "other"])?
    else {
        return Ok(());
    };
    let mut config = env.agent_config()?;
    let excluded = env.pod("server");
    config.extra_args = vec![
        "--exclude-cidr".into(),
        format!("{}/32", excluded.ipv4),
        "--exclude-cidr".into(),
        format!("{}/128", excluded.ipv6),
    ];
    let agent = config.start()?;
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let _proxy = TestProxy::start(&env, "app", ProxyMode::Report, Some(&agent.config.socket))?;
    let app = env.pod("app");
    direct(
        &client(&env, "app", excluded.v4(8080))?,
        "server",
        IpAddr::V4(app.ipv4),
    )?;
    direct(
        &client(&env, "app", excluded.v6(8080))?,
        "server",
        IpAddr::V6(app.ipv6),
    )?;
    // Other destinations are still captured.
    let other = env.pod("other").v4(8080);
    captured_outbound(&client(&env, "app", other)?, other)?;
    Ok(())
}
