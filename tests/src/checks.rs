//! Assertions shared by the end-to-end tests, phrased so that a failure says
//! what the kernel did instead.

use crate::env::Env;
use crate::report::{ClientReport, Reply, Side, canonical};
use anyhow::{Result, bail, ensure};
use std::net::SocketAddr;

/// The connection was captured to the proxy's outbound listener, the proxy
/// recovered `dialled` as the original destination, and the application's
/// getpeername shows `dialled` (not the proxy).
pub fn captured_outbound(report: &ClientReport, dialled: SocketAddr) -> Result<()> {
    ensure!(
        report.dialled == dialled,
        "report is for {}, not {dialled}",
        report.dialled
    );
    let (peer, reply) = report.reply()?;
    let Reply::Proxy {
        side,
        original_dst,
        received,
        ..
    } = reply
    else {
        bail!("dialling {dialled} was not captured: {reply:?}");
    };
    ensure!(
        *side == Side::Outbound,
        "captured on the {side:?} listener, not outbound"
    );
    ensure!(
        *original_dst == canonical(dialled),
        "proxy recovered original destination {original_dst}, app dialled {dialled}"
    );
    ensure!(
        *peer == dialled,
        "app's getpeername shows {peer}, it dialled {dialled}"
    );
    ensure!(
        received.starts_with("hello from"),
        "proxy received {received:?}"
    );
    Ok(())
}

/// The connection reached the server `server` itself, with no proxy in
/// between: the server saw the client's own address `from` as its peer.
pub fn direct(report: &ClientReport, server: &str, from: std::net::IpAddr) -> Result<()> {
    let (peer, reply) = report.reply()?;
    let Reply::Server {
        name, peer: seen, ..
    } = reply
    else {
        bail!("dialling {} was captured: {reply:?}", report.dialled);
    };
    ensure!(name == server, "answered by {name}, not {server}");
    ensure!(
        seen.ip() == from,
        "server saw peer {seen}, expected the client {from} (something relayed)"
    );
    ensure!(
        *peer == report.dialled,
        "getpeername {peer} != dialled {}",
        report.dialled
    );
    Ok(())
}

/// Pod `app`'s traffic is captured both ways, IPv4 and IPv6: its dials to
/// pod `server`'s port 8080 reach its proxy's outbound listener, and
/// `server`'s dials to its port 9000 its proxy's inbound listener.
pub fn app_captured_both_ways(env: &Env) -> Result<()> {
    let s = env.pod("server");
    captured_outbound(&crate::client(env, "app", s.v4(8080))?, s.v4(8080))?;
    captured_outbound(&crate::client(env, "app", s.v6(8080))?, s.v6(8080))?;
    let a = env.pod("app");
    for dst in [a.v4(9000), a.v6(9000)] {
        let (orig, side) = crate::client(env, "server", dst)?.captured()?;
        ensure!(
            side == Side::Inbound && orig == dst,
            "inbound {dst}: {side:?} {orig}"
        );
    }
    Ok(())
}
