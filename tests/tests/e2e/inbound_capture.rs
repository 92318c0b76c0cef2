//! Inbound capture with sk_lookup: connections from outside to an enrolled
//! pod's own address go to the proxy's inbound listener, without NAT, so
//! getsockname on the accepted socket is the original destination. The
//! proxy's own ports and the skip-ports are left alone.

use anyhow::{Result, bail, ensure};
use conduit_tests::checks::direct;
use conduit_tests::report::{Reply, Side};
use conduit_tests::status::StatusExt as _;
use conduit_tests::{Env, ProxyMode, TestProxy, TestServer, client};
use std::net::IpAddr;

#[test]
fn inbound_sk_lookup_original_destination() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["pod", "client"])? else {
        return Ok(());
    };
    let agent = env.agent_config()?.start()?;
    let app = TestServer::start(&env, "pod", 8080, "app")?;
    let proxy = TestProxy::start(&env, "pod", ProxyMode::Report, Some(&agent.config.socket))?;
    let (p, c) = (env.pod("pod"), env.pod("client"));
    // 8080 has a listener (the app), 8081 none: both go to the proxy.
    for (dst, from) in [
        (p.v4(8080), IpAddr::V4(c.ipv4)),
        (p.v6(8080), IpAddr::V6(c.ipv6)),
        (p.v4(8081), IpAddr::V4(c.ipv4)),
    ] {
        let report = client(&env, "client", dst)?;
        let (peer, reply) = report.reply()?;
        let Reply::Proxy {
            side,
            original_dst,
            peer: proxy_saw,
            local,
            ..
        } = reply
        else {
            bail!("inbound {dst} was not steered to the proxy: {reply:?}");
        };
        ensure!(*side == Side::Inbound, "accepted on {side:?}");
        ensure!(
            *original_dst == dst && *local == dst,
            "getsockname gave {local}, dialled {dst}"
        );
        ensure!(
            proxy_saw.ip() == from,
            "proxy saw peer {proxy_saw}, client is {from} (NAT?)"
        );
        ensure!(*peer == dst, "client's getpeername {peer}");
    }
    ensure!(
        app.accepted().is_empty(),
        "the app was reached directly: {:?}",
        app.accepted()
    );
    let status = agent.config.status()?;
    let pod = status
        .pod("pod")
        .ok_or_else(|| anyhow::anyhow!("pod not enrolled: {status:?}"))?;
    let link = pod
        .sk_lookup_link_id
        .ok_or_else(|| anyhow::anyhow!("no sk_lookup link: {pod:?}"))?;
    ensure!(
        status
            .programs
            .iter()
            .any(|p| p.attach_type == "sk_lookup" && p.link_id == Some(link)),
        "no sk_lookup program with link {link}: {:?}",
        status.programs
    );
    ensure!(
        status.counter("sk_lookup", "captured") == 3,
        "{:?}",
        status.counters
    );
    ensure!(
        proxy.accepted().len() == 3,
        "proxy accepted {:?}",
        proxy.accepted()
    );
    Ok(())
}

#[test]
fn inbound_skip_ports_untouched() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["pod", "client"])? else {
        return Ok(());
    };
    let agent = env.agent_config()?.start()?;
    let _app = TestServer::start(&env, "pod", 9090, "skipped")?;
    let proxy = TestProxy::start_with(
        &env,
        "pod",
        ProxyMode::Report,
        Some(&agent.config.socket),
        &["--skip-inbound-port", "9090"],
    )?;
    let (p, c) = (env.pod("pod"), env.pod("client"));
    direct(
        &client(&env, "client", p.v4(9090))?,
        "skipped",
        IpAddr::V4(c.ipv4),
    )?;
    direct(
        &client(&env, "client", p.v6(9090))?,
        "skipped",
        IpAddr::V6(c.ipv6),
    )?;
    // The proxy's own inbound port is reached as itself.
    let (orig, side) = client(&env, "client", p.v4(4143))?.captured()?;
    ensure!(
        side == Side::Inbound && orig == p.v4(4143),
        "{orig} {side:?}"
    );
    ensure!(
        proxy.accepted().len() == 1,
        "proxy accepted {:?}",
        proxy.accepted()
    );
    Ok(())
}

#[test]
fn inbound_relay_reaches_the_app() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["pod", "client"])? else {
        return Ok(());
    };
    let agent = env.agent_config()?.start()?;
    let app = TestServer::start(&env, "pod", 8080, "app")?;
    let proxy = TestProxy::start(&env, "pod", ProxyMode::Relay, Some(&agent.config.socket))?;
    let dst = env.pod("pod").v4(8080);
    let report = client(&env, "client", dst)?;
    let reply = report.served_by("app")?;
    let Reply::Server { peer, .. } = reply else {
        unreachable!()
    };
    ensure!(
        peer.ip().is_loopback(),
        "the app should see the proxy on loopback, saw {peer}"
    );
    ensure!(
        proxy.accepted().len() == 1 && app.accepted().len() == 1,
        "{:?} {:?}",
        proxy.accepted(),
        app.accepted()
    );
    Ok(())
}
