//! The mesh when things go wrong: a peer with the wrong identity is
//! refused, and so is a client without a certificate of the mesh; the controller going away breaks nothing already known; a
//! killed proxy stops its pod's capture (connections go direct or fail
//! fast, never hang) until it registers again.

use anyhow::{Context, Result, ensure};
use conduit_tests::mesh::app::HttpAnswer;
use conduit_tests::mesh::controller::{issue_leaf, make_ca};
use conduit_tests::mesh::scrape;
use conduit_tests::mesh::spec::{
    GRPC_PORT, HTTP_PORT, INBOUND_PORT, MeshSpec, ServerSpec, ServiceSpec,
};
use conduit_tests::mesh::tls::s_client;
use conduit_tests::mesh::{Mesh, report};
use conduit_tests::status::StatusExt as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Longest a refused or failed-over request may take: "fail fast".
const FAST: Duration = Duration::from_secs(3);

#[test]
fn a_peer_with_the_wrong_identity_is_refused() -> Result<()> {
    let mut spec = MeshSpec::with_servers(1);
    // Discovery says service `billing` is run by service account `billing`;
    // the pod behind it, `impostor`, really is `web` (its certificate says so).
    spec.servers.push(ServerSpec {
        pod: "impostor".into(),
        service_account: "web".into(),
    });
    spec.services.push(ServiceSpec {
        name: "billing".into(),
        ip_octet: 20,
        ports: vec![(80, HTTP_PORT)],
        endpoints: vec!["impostor".into()],
        announced_service_account: Some("billing".into()),
        ipv6: false,
    });
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), spec)? else {
        return Ok(());
    };
    // The real service works.
    mesh.curl(&mesh.url_by_name("web", 80, "/fine"))?.answer()?;

    let start = Instant::now();
    let r = mesh.curl(&mesh.url_by_name("billing", 80, "/impostor"))?;
    ensure!(
        r.status != 200,
        "a peer with the wrong identity answered: {r:?}"
    );
    ensure!(
        start.elapsed() < Duration::from_secs(6),
        "refusal took {:?}",
        start.elapsed()
    );
    let reached = mesh
        .app("impostor")
        .http_requests()
        .iter()
        .any(|a| a.path == "/impostor");
    ensure!(
        !reached,
        "the request reached the application behind the wrong identity"
    );
    let refused = mesh
        .proxy("client")
        .metrics()?
        .sum("conduit_errors_total", &[("reason", "tls_peer_identity")]);
    ensure!(refused >= 1.0, "no tls_peer_identity error counted");
    let log = mesh.proxy("client").process.output_text();
    ensure!(
        log.contains(&mesh.spec.identity("billing")) && log.contains(&mesh.identity("impostor")),
        "the client proxy's log names neither the expected nor the presented identity:\n{log}"
    );
    Ok(())
}

#[test]
fn the_inbound_port_refuses_peers_without_a_certificate_of_the_mesh() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::with_servers(1))?
    else {
        return Ok(());
    };
    let dir = mesh.env.run_dir().join("certs");
    std::fs::create_dir_all(&dir)?;
    let client_id = mesh.identity("client");
    let (other_cert, other_key) = (dir.join("other-ca.crt"), dir.join("other-ca.key"));
    make_ca(&other_cert, &other_key, "another mesh")?;
    let mesh_leaf = issue_leaf(
        &mesh.files.issuer_cert,
        &mesh.files.issuer_key,
        &client_id,
        &dir,
        "mesh-leaf",
    )?;
    let other_leaf = issue_leaf(&other_cert, &other_key, &client_id, &dir, "other-leaf")?;
    let addr = format!("{}:{INBOUND_PORT}", mesh.env.pod("web-1").ipv4);
    let anchors = &mesh.files.issuer_cert;

    let (code, out) = s_client(&addr, "conduit/opaque", anchors, None)?;
    ensure!(
        code != 124 && out.contains("alert"),
        "no client certificate was not refused ({code}):\n{out}"
    );
    let (code, out) = s_client(&addr, "conduit/opaque", anchors, Some(&other_leaf))?;
    ensure!(
        code != 124 && out.contains("alert"),
        "a certificate of another CA (same SPIFFE ID) was not refused ({code}):\n{out}"
    );
    // Control: the same identity certified by the mesh's issuer is accepted
    // (no alert; the proxy then waits for a transport header it never gets).
    let (code, out) = s_client(&addr, "conduit/opaque", anchors, Some(&mesh_leaf))?;
    ensure!(
        out.contains("ALPN protocol: conduit/opaque") && !out.contains("alert"),
        "the mesh's own certificate was refused ({code}):\n{out}"
    );
    Ok(())
}

#[test]
fn stopping_the_controller_keeps_established_and_new_traffic() -> Result<()> {
    let Some(mut mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    let fqdn = mesh.spec.fqdn("web");
    let grpc_target = format!("http://{fqdn}:{GRPC_PORT}");
    let mut bidi = mesh.bidi(&grpc_target)?;
    bidi.send("before")?;
    let urls = [
        mesh.url_by_name("web", 80, "/x"),
        mesh.url_by_ip("web", 80, "/x"),
    ];
    for u in &urls {
        mesh.curl(u)?.answer()?;
    }
    ensure!(mesh.grpc(&grpc_target, 1, 1, "before")?.ok);

    mesh.stop_controller()?;
    // The established stream keeps flowing.
    for i in 0..3 {
        bidi.send(&format!("during-{i}"))?;
    }
    // New connections and requests use the last known endpoints.
    for _ in 0..3 {
        for u in &urls {
            mesh.curl(u)?
                .answer()
                .context("a new request while the controller is down")?;
        }
    }
    let r = mesh.grpc(&grpc_target, 2, 2, "during")?;
    ensure!(r.ok, "new gRPC calls while the controller is down: {r:?}");

    // And everything still works once it is back (same issuer).
    mesh.start_controller()?;
    bidi.send("after")?;
    mesh.curl(&urls[0])?.answer()?;
    Ok(())
}

/// Asks server `pod`'s application from the host (a client outside the
/// mesh): with the pod's proxy registered, sk_lookup steers the connection
/// to the proxy and the application sees its own pod's address as the peer
/// (the proxy's connection); without it, the host's own address.
fn from_host(mesh: &Mesh, pod: &str) -> Result<HttpAnswer> {
    let addr = SocketAddr::new(IpAddr::V4(mesh.env.pod(pod).ipv4), HTTP_PORT);
    let (code, body) = scrape::get(addr, "/from-host")?;
    ensure!(code == 200, "{addr}: {code} {body}");
    Ok(serde_json::from_str(body.trim())?)
}

#[test]
fn killing_a_proxy_stops_its_pods_capture_until_it_registers_again() -> Result<()> {
    let Some(mut mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    let vip_url = mesh.url_by_ip("web", 80, "/vip");
    let web1 = mesh.env.pod("web-1").ipv4;
    let direct_url = format!("http://{web1}:{HTTP_PORT}/direct");
    mesh.curl(&vip_url)?.answer()?;

    // The client's proxy dies: the client pod is no longer captured.
    mesh.kill_proxy("client")?;
    let start = Instant::now();
    let r = mesh.curl(&vip_url)?;
    ensure!(
        r.exit != 0 && start.elapsed() < FAST,
        "service IP without a proxy: {r:?} after {:?}",
        start.elapsed()
    );
    // A pod IP is reached directly (and steered into web-1's own proxy).
    let a = mesh.curl(&direct_url)?.answer()?;
    ensure!(a.server == "web-1" && mesh.via_own_proxy(&a), "{a:?}");
    let status = mesh.agent.config.status()?;
    ensure!(
        !status.pod_names().contains(&"client"),
        "client still enrolled"
    );

    // A new proxy registers: capture (and mTLS) resume.
    mesh.start_proxy("client")?;
    for _ in 0..3 {
        mesh.curl(&vip_url)?.answer()?;
    }
    let m = mesh.proxy("client").metrics()?;
    ensure!(
        report::requests(&m, "outbound") >= 3.0,
        "{:?}",
        report::rows(&m)
    );

    // A server's proxy dies: its pod's inbound capture stops (the host
    // reaches the application directly), and the client's requests fail
    // over to web-2 or fail fast, never hang.
    ensure!(
        mesh.via_own_proxy(&from_host(&mesh, "web-1")?),
        "web-1 not captured before"
    );
    mesh.kill_proxy("web-1")?;
    let a = from_host(&mesh, "web-1")?;
    ensure!(
        !mesh.via_own_proxy(&a),
        "web-1 still captured without its proxy: {a:?}"
    );
    for _ in 0..4 {
        let start = Instant::now();
        let r = mesh.curl(&vip_url)?;
        ensure!(
            start.elapsed() < FAST,
            "a request hung for {:?}: {r:?}",
            start.elapsed()
        );
        if r.status == 200 {
            ensure!(r.answer()?.server == "web-2", "{r:?}");
        }
    }
    // web-1's proxy registers again: captured again, and serving.
    mesh.start_proxy("web-1")?;
    ensure!(
        mesh.via_own_proxy(&from_host(&mesh, "web-1")?),
        "web-1 not captured again"
    );
    let a = mesh.curl(&direct_url)?.answer()?;
    ensure!(a.server == "web-1", "{a:?}");
    Ok(())
}
