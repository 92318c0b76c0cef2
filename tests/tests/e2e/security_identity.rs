//! Attacks on mTLS in the netns mesh (issue 10, "identity fails closed"):
//! blocking the controller must not downgrade new traffic to plaintext. A
//! destination discovery has not answered about is refused inside the
//! cluster's networks (the default covers the mesh's 10.77.x.x and fd77::);
//! only destinations outside them go out directly, and every such
//! connection is counted with its reason. See docs/security.md.

use anyhow::{Context, Result, ensure};
use conduit_tests::cmd::ip;
use conduit_tests::mesh::spec::{HTTP_PORT, MeshSpec};
use conduit_tests::mesh::{Mesh, scrape};
use conduit_tests::wait_until;
use conduit_tests::wire::{PacketCapture, contains};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

/// The client proxy's plaintext and refusal counters.
fn counters(mesh: &Mesh) -> Result<scrape::Metrics> {
    mesh.proxy("client").metrics()
}

#[test]
fn blocking_the_controller_does_not_downgrade_to_plaintext() -> Result<()> {
    let Some(mut mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    // Known traffic first (the service is resolved while the controller is up).
    mesh.curl(&mesh.url_by_name("web", 80, "/before"))?
        .answer()?;
    // The attacker takes the controller away.
    mesh.stop_controller()?;
    new_meshed_destination_is_refused(&mesh, "downgrade-marker-9c41e7")
}

/// Like [`blocking_the_controller_does_not_downgrade_to_plaintext`], with
/// the controller running but its packets dropped on the client pod's way
/// out (the open connection does not notice; new streams get no answer).
#[test]
fn dropping_the_controllers_packets_does_not_downgrade_either() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    mesh.curl(&mesh.url_by_name("web", 80, "/before"))?
        .answer()?;
    let controller = mesh.env.pod("controller").ipv4.to_string();
    mesh.env.pod("client").netns().exec(
        "iptables",
        &["-I", "OUTPUT", "-d", &controller, "-j", "DROP"],
    )?;
    new_meshed_destination_is_refused(&mesh, "dropped-marker-51b0d2")
}

/// With discovery unable to answer, a request from the client to web-1's
/// pod address (a meshed destination never asked about) is refused by the
/// client's proxy: counted, logged, at once once refused, and never on the
/// wire; the service known before keeps answering.
fn new_meshed_destination_is_refused(mesh: &Mesh, marker: &str) -> Result<()> {
    let client = mesh.env.pod("client");
    let pcap = mesh.env.run_dir().join(format!("{marker}.pcap"));
    let capture = PacketCapture::start(client.host_veth(), pcap, "tcp")?;
    let web1 = mesh.env.pod("web-1").ipv4;
    let url = format!("http://{web1}:{HTTP_PORT}/{marker}");
    // Keep asking past the discovery wait (3 s): before it the request
    // waits for endpoints and fails; after it, the proxy refuses at once.
    wait_until(
        "the client proxy to refuse the unanswered meshed destination",
        Duration::from_secs(20),
        || {
            let r = mesh.curl(&url)?;
            ensure!(r.status != 200, "a new meshed destination answered: {r:?}");
            let m = counters(mesh)?;
            let refused = m.sum(
                "conduit_outbound_refused_total",
                &[("reason", "discovery_unavailable")],
            );
            ensure!(refused >= 1.0, "no refusal counted yet ({r:?})");
            Ok(())
        },
    )?;
    // A refusal is immediate (a reset), not a timeout.
    let r = mesh.curl(&url)?;
    ensure!(
        r.status == 0 && r.exit != 0 && r.seconds < 1.0,
        "refused request: {r:?}"
    );
    let bytes = capture.stop()?;
    ensure!(
        !contains(&bytes, marker.as_bytes()),
        "the request crossed the wire in plaintext with the controller away"
    );
    let m = counters(mesh)?;
    ensure!(
        m.sum("conduit_outbound_plaintext_total", &[]) == 0.0,
        "plaintext counted: {:?}",
        m.find("conduit_outbound_plaintext_total", &[])
            .collect::<Vec<_>>()
    );
    let log = mesh.proxy("client").process.output_text();
    ensure!(
        log.contains("outbound connection refused") && log.contains("inside the cluster networks"),
        "no clear log line:\n{log}"
    );
    // What was known before keeps working (mTLS, last known endpoints).
    mesh.curl(&mesh.url_by_name("web", 80, "/known"))?
        .answer()
        .context("known service with the controller away")?;
    Ok(())
}

/// A tiny HTTP/1.1 server on the host, answering 200 with `body`.
fn host_server(addr: SocketAddr, body: &'static str) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(())
}

#[test]
fn outside_the_cluster_networks_goes_direct_and_is_counted() -> Result<()> {
    let Some(mut mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    // An address outside the default cluster networks (198.18.0.0/15, the
    // benchmarking range), on the host's bridge, so the client pod reaches
    // it through its default route; one per test subnet.
    let subnet = mesh.env.pod("client").ipv4.octets()[2];
    let outside = Ipv4Addr::new(198, 18, subnet, 1);
    let bridge = mesh.env.topology().bridge().name().to_owned();
    ip(&["addr", "add", &format!("{outside}/32"), "dev", &bridge])?;
    let addr = SocketAddr::from((outside, 18080));
    host_server(addr, "from-outside")?;

    mesh.stop_controller()?;
    let url = format!("http://{addr}/external");
    wait_until(
        "the outside destination to answer directly",
        Duration::from_secs(20),
        || {
            let r = mesh.curl(&url)?;
            ensure!(r.status == 200 && r.body.contains("from-outside"), "{r:?}");
            Ok(())
        },
    )?;
    let m = counters(&mesh)?;
    ensure!(
        m.sum(
            "conduit_outbound_plaintext_total",
            &[("reason", "not_in_cluster_networks")]
        ) >= 1.0,
        "the direct connection is not counted: {:?}",
        m.find("conduit_outbound_plaintext_total", &[])
            .collect::<Vec<_>>()
    );
    ensure!(
        m.sum("conduit_outbound_refused_total", &[]) == 0.0,
        "refused: {:?}",
        m.find("conduit_outbound_refused_total", &[])
            .collect::<Vec<_>>()
    );
    Ok(())
}
