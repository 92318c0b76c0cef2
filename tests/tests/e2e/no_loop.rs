//! The proxy's own connections are not captured: a relaying proxy reaches
//! the original destination instead of looping back into itself.

use anyhow::{Result, bail, ensure};
use conduit_tests::report::{ProxyEvent, Reply};
use conduit_tests::{Env, ProxyMode, TestProxy, TestServer, client, wait_until};
use std::net::IpAddr;
use std::time::Duration;

#[test]
fn proxy_own_connections_not_captured() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["app", "server"])? else {
        return Ok(());
    };
    let agent = env.agent_config()?.start()?;
    let server = TestServer::start(&env, "server", 8080, "server")?;
    let proxy = TestProxy::start(&env, "app", ProxyMode::Relay, Some(&agent.config.socket))?;
    let app = env.pod("app");
    let targets = [
        (env.pod("server").v4(8080), IpAddr::V4(app.ipv4)),
        (env.pod("server").v6(8080), IpAddr::V6(app.ipv6)),
    ];
    for (n, (dst, app_ip)) in targets.into_iter().enumerate() {
        let report = client(&env, "app", dst)?;
        let (peer, reply) = report.reply()?;
        ensure!(*peer == dst, "app's getpeername {peer} != dialled {dst}");
        let Reply::Server {
            name,
            peer: server_saw,
            received,
            ..
        } = reply
        else {
            bail!("expected the server's answer relayed by the proxy, got {reply:?}");
        };
        ensure!(
            name == "server" && received == "hello from app",
            "{reply:?}"
        );
        ensure!(server_saw.ip() == app_ip, "server saw {server_saw}");
        // The proxy accepted the app's connection, and its own connection to
        // the original destination is the one the server saw.
        let relayed = wait_until(
            "the proxy to finish relaying",
            Duration::from_secs(10),
            || {
                proxy
                    .events()
                    .into_iter()
                    .filter_map(|e| match e {
                        ProxyEvent::Relayed {
                            upstream_local,
                            upstream_peer,
                            bytes_up,
                            bytes_down,
                            ..
                        } => Some((upstream_local, upstream_peer, bytes_up, bytes_down)),
                        _ => None,
                    })
                    .nth(n)
                    .ok_or_else(|| anyhow::anyhow!("events: {:?}", proxy.events()))
            },
        )?;
        ensure!(
            relayed.0 == *server_saw && relayed.1 == dst,
            "relayed {relayed:?}, server saw {server_saw}"
        );
        ensure!(
            relayed.2 > 0 && relayed.3 > 0,
            "no bytes relayed: {relayed:?}"
        );
        // Exactly one capture per app connection: a captured proxy connection
        // would have been accepted again (and again).
        let accepted = proxy.accepted();
        ensure!(accepted.len() == n + 1, "proxy accepted {accepted:?}");
        ensure!(
            accepted[n].2 == dst,
            "original destination {:?}",
            accepted[n]
        );
        ensure!(
            server.accepted().len() == n + 1,
            "server accepted {:?}",
            server.accepted()
        );
    }
    Ok(())
}
