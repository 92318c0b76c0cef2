//! The sockops + sk_msg fast path (`--sockmap-fastpath`, off by default):
//! with it on, captured connections still carry their bytes both ways
//! through the relaying proxy, and the proxy's own connections stay
//! uncaptured.

use anyhow::{Result, bail, ensure};
use conduit_tests::report::Reply;
use conduit_tests::{Env, ProxyMode, TestProxy, TestServer, client};

#[test]
fn fastpath_relays_captured_connections() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["app", "server"])? else {
        return Ok(());
    };
    let mut config = env.agent_config()?;
    config.extra_args = vec!["--sockmap-fastpath".into()];
    let agent = config.start()?;
    let server = TestServer::start(&env, "server", 8080, "server")?;
    let proxy = TestProxy::start(&env, "app", ProxyMode::Relay, Some(&agent.config.socket))?;
    let s = env.pod("server");
    for (n, dst) in [s.v4(8080), s.v6(8080), s.v4(8080)].into_iter().enumerate() {
        let report = client(&env, "app", dst)?;
        let (peer, reply) = report.reply()?;
        ensure!(*peer == dst, "getpeername {peer} != {dst}");
        let Reply::Server { name, received, .. } = reply else {
            bail!("{reply:?}")
        };
        ensure!(
            name == "server" && received == "hello from app",
            "{reply:?}"
        );
        ensure!(
            proxy.accepted().len() == n + 1,
            "proxy accepted {:?}",
            proxy.accepted()
        );
        ensure!(
            proxy.accepted()[n].2 == conduit_tests::report::canonical(dst),
            "{:?}",
            proxy.accepted()
        );
    }
    ensure!(
        server.accepted().len() == 3,
        "server accepted {:?}",
        server.accepted()
    );
    Ok(())
}
