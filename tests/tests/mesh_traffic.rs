//! The demo's mesh with real clients: curl (HTTP/1.1) and a tonic gRPC
//! client (unary, server streaming, a long-lived bidirectional stream)
//! call service `web` by name and by service IP; every call passes through
//! the client's proxy and a server's proxy with mTLS identities, and the
//! bytes between the pods are TLS on the wire.

use anyhow::{Result, ensure};
use conduit_tests::mesh::spec::{GRPC_PORT, MeshSpec};
use conduit_tests::mesh::{Mesh, report};
use conduit_tests::wire::{PacketCapture, contains, has_tls_client_hello, has_tls_server_hello};
use std::time::Duration;

const SERVERS: [&str; 2] = ["web-1", "web-2"];

#[test]
fn http1_and_grpc_by_name_and_by_service_ip_through_both_proxies() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    let fqdn = mesh.spec.fqdn("web");
    for url in [
        mesh.url_by_name("web", 80, "/by-name"),
        mesh.url_by_ip("web", 80, "/by-ip"),
    ] {
        for _ in 0..3 {
            let a = mesh.curl(&url)?.answer()?;
            ensure!(SERVERS.contains(&a.server.as_str()), "{a:?}");
            ensure!(a.version == "HTTP/1.1" && a.method == "GET", "{a:?}");
            // The application's peer is its own pod's proxy, on loopback.
            ensure!(
                a.peer.ip().is_loopback(),
                "not through the server's proxy: {a:?}"
            );
        }
    }
    let by_name = mesh.curl(&mesh.url_by_name("web", 80, "/host"))?.answer()?;
    ensure!(by_name.host == fqdn, "Host header: {by_name:?}");

    for target in [
        format!("http://{fqdn}:{GRPC_PORT}"),
        format!("http://{}:{GRPC_PORT}", mesh.service_ip("web")),
    ] {
        let r = mesh.grpc(&target, 3, 5, "grpc-hello")?;
        ensure!(r.ok, "gRPC to {target}: {r:?}");
        ensure!(r.unary.len() == 3 && r.stream.len() == 5, "{r:?}");
        ensure!(
            r.unary
                .iter()
                .chain(&r.stream)
                .all(|s| SERVERS.contains(&s.as_str())),
            "{r:?}"
        );
    }
    let mut bidi = mesh.bidi(&format!("http://{fqdn}:{GRPC_PORT}"))?;
    for i in 0..3 {
        let a = bidi.send(&format!("bidi-{i}"))?;
        ensure!(
            a.text == format!("bidi-{i}") && SERVERS.contains(&a.server.as_str()),
            "{a:?}"
        );
    }
    drop(bidi);

    // Both proxies counted the requests, with each other's identities.
    let client_id = mesh.identity("client");
    let web_id = mesh.identity("web-1");
    let m = mesh.proxy("client").metrics()?;
    ensure!(
        report::requests(&m, "outbound") >= 7.0,
        "client proxy outbound: {:?}",
        report::rows(&m)
    );
    let seen = report::identities(&m, "outbound");
    ensure!(
        seen.contains(&web_id),
        "client proxy's outbound identities: {seen:?}"
    );
    let mut inbound = 0.0;
    for pod in SERVERS {
        let m = mesh.proxy(pod).metrics()?;
        inbound += report::requests(&m, "inbound");
        let seen = report::identities(&m, "inbound");
        ensure!(
            seen.contains(&client_id),
            "{pod} inbound identities: {seen:?}"
        );
    }
    ensure!(
        inbound >= 7.0,
        "server proxies counted {inbound} inbound requests"
    );

    // Every proxy runs as uid 1337 without capabilities, in its own cgroup.
    for pod in ["client", "web-1", "web-2"] {
        let pid = mesh.proxy(pod).process.pid();
        let st = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |k: &str| {
            st.lines()
                .find(|l| l.starts_with(k))
                .map(|l| {
                    l[k.len()..]
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        };
        ensure!(
            field("Uid:") == "1337 1337 1337 1337",
            "{pod} proxy uid: {}",
            field("Uid:")
        );
        ensure!(
            field("CapEff:") == "0000000000000000",
            "{pod} proxy caps: {}",
            field("CapEff:")
        );
        ensure!(
            field("CapPrm:") == "0000000000000000",
            "{pod} proxy caps: {}",
            field("CapPrm:")
        );
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let v2 = cg
            .lines()
            .find(|l| l.starts_with("0::"))
            .unwrap_or_default();
        ensure!(
            v2.ends_with(&format!("/{pod}/proxy")),
            "{pod} proxy cgroup: {cg}"
        );
    }

    // The agent captured the client's connections.
    let status = mesh.agent.config.status()?;
    ensure!(
        status.counter("connect4", "captured") >= 7,
        "{:?}",
        status.counters
    );
    let mut pods = status.pod_names();
    pods.sort();
    ensure!(pods == ["client", "web-1", "web-2"], "enrolled: {pods:?}");
    Ok(())
}

#[test]
fn bytes_between_pods_are_tls() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    let client = mesh.env.pod("client");
    let pcap = mesh.env.run_dir().join("client.pcap");
    // Everything leaving or entering the client pod, except the controller
    // traffic (plaintext gRPC by design, see docs/controller.md).
    let controller = mesh.env.pod("controller").ipv4;
    let capture = PacketCapture::start(
        client.host_veth(),
        pcap,
        &format!("tcp and not host {controller}"),
    )?;
    let http_marker = "plaintext-marker-http-4f2a9c";
    let grpc_marker = "plaintext-marker-grpc-77d1e0";
    let a = mesh
        .curl(&mesh.url_by_name("web", 80, &format!("/{http_marker}")))?
        .answer()?;
    ensure!(a.path.contains(http_marker), "{a:?}");
    let r = mesh.grpc(
        &format!("http://{}:{GRPC_PORT}", mesh.spec.fqdn("web")),
        1,
        2,
        grpc_marker,
    )?;
    ensure!(r.ok, "{r:?}");
    // The servers did receive the markers in the clear (after their proxy).
    let got: usize = SERVERS
        .iter()
        .map(|p| {
            mesh.app(p)
                .http_requests()
                .iter()
                .filter(|a| a.path.contains(http_marker))
                .count()
        })
        .sum();
    ensure!(got == 1, "the HTTP marker reached the servers {got} times");
    // Wait until the capture holds the server's handshake answer, then look.
    let until_tls = conduit_tests::wait_until("TLS on the wire", Duration::from_secs(5), || {
        let b = capture.bytes()?;
        ensure!(
            has_tls_client_hello(&b) && has_tls_server_hello(&b),
            "no TLS hellos in {} bytes",
            b.len()
        );
        Ok(())
    });
    let bytes = capture.stop()?;
    until_tls?;
    ensure!(
        !contains(&bytes, http_marker.as_bytes()),
        "the HTTP marker crossed the wire in plaintext"
    );
    ensure!(
        !contains(&bytes, grpc_marker.as_bytes()),
        "the gRPC marker crossed the wire in plaintext"
    );
    ensure!(
        contains(&bytes, b"conduit/"),
        "no conduit ALPN in the ClientHellos"
    );
    Ok(())
}
