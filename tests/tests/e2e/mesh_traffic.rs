//! The demo's mesh with real clients: curl (HTTP/1.1) and a tonic gRPC
//! client (unary, server streaming, a long-lived bidirectional stream)
//! call service `web` by name and by service IP; every call passes through
//! the client's proxy and a server's proxy with mTLS identities, and the
//! bytes between the pods are TLS on the wire.

use anyhow::{Context, Result, ensure};
use conduit_tests::mesh::spec::{GRPC_PORT, MeshSpec};
use conduit_tests::mesh::{Mesh, report};
use conduit_tests::status::StatusExt as _;
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
            // The application's peer is its own pod's proxy, which reaches
            // it at the pod's own address (never loopback).
            ensure!(
                mesh.via_own_proxy(&a),
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
        // Started with the allocator setting of a proxy in a pod.
        let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
        let want = format!(
            "{}={}",
            conduit_base::malloc::TUNABLES_VAR,
            conduit_base::malloc::PROXY_TUNABLES
        );
        ensure!(
            environ.split(|b| *b == 0).any(|v| v == want.as_bytes()),
            "{pod} proxy environment lacks {want}"
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
    // Everything leaving or entering the client pod, the proxy's talk with
    // the controller included (TLS too: `--grpc-tls`).
    let capture = PacketCapture::start(client.host_veth(), pcap, "tcp")?;
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
    // The client proxy asked the controller about `web` during the capture
    // (discovery is lazy): the name never crossed the wire in the clear.
    ensure!(
        !contains(&bytes, fqdn_port(&mesh, GRPC_PORT).as_bytes()),
        "a discovery request crossed the wire in plaintext"
    );
    controller_port_is_tls_as_its_identity(&mesh)
}

fn fqdn_port(mesh: &Mesh, port: u16) -> String {
    format!("{}:{port}", mesh.spec.fqdn("web"))
}

/// The controller's gRPC port: TLS, a certificate that verifies against the
/// mesh's trust anchors and names the controller's SPIFFE identity.
fn controller_port_is_tls_as_its_identity(mesh: &Mesh) -> Result<()> {
    let grpc = mesh
        .controller
        .as_ref()
        .map(|c| c.grpc)
        .context("controller")?;
    let (code, out) =
        conduit_tests::mesh::tls::s_client(&grpc.to_string(), "h2", &mesh.files.issuer_cert, None)?;
    ensure!(
        out.contains("Verify return code: 0 (ok)") && out.contains("ALPN protocol: h2"),
        "the controller's gRPC port is not verified TLS ({code}):\n{out}"
    );
    let pem_start = out
        .find("-----BEGIN CERTIFICATE-----")
        .context("no certificate")?;
    let pem_end = out
        .find("-----END CERTIFICATE-----")
        .context("no certificate end")?;
    let pem = &out[pem_start..pem_end + "-----END CERTIFICATE-----".len()];
    let san = conduit_tests::cmd::stdin_output(
        "openssl",
        &["x509", "-noout", "-ext", "subjectAltName"],
        pem,
    )?;
    ensure!(
        san.contains(conduit_tests::mesh::spec::CONTROLLER_IDENTITY),
        "the controller presents another identity: {san}"
    );
    Ok(())
}

/// Unix time now, in seconds.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[test]
fn certificates_rotate_while_traffic_flows() -> Result<()> {
    use conduit_tests::wait::{fatal, wait_until};
    use std::collections::BTreeSet;
    // 6 s leaf certificates: each proxy renews at about 70% of the lifetime,
    // so several generations pass within the test.
    let mut spec = MeshSpec::with_servers(1);
    spec.controller_args = vec!["--leaf-lifetime".into(), "6s".into()];
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), spec)? else {
        return Ok(());
    };
    let expiry = |pod: &str| -> Result<f64> {
        Ok(mesh
            .proxy(pod)
            .metrics()?
            .sum("identity_cert_expiration_timestamp_seconds", &[]))
    };
    let first = expiry("web-1")?.max(expiry("client")?);
    ensure!(first > 0.0, "a proxy holds no certificate");
    let url = mesh.url_by_name("web", 80, "/rotating");
    let mut seen: [BTreeSet<u64>; 2] = Default::default();
    let mut requests = 0;
    // Every request must succeed, across renewals, until both proxies have
    // held three certificates and the first ones have expired.
    wait_until(
        "three certificate generations on both proxies, past the first expiry",
        Duration::from_secs(40),
        || {
            mesh.curl(&url)?
                .answer()
                .map_err(|e| fatal(format!("request {requests} failed: {e:#}")))?;
            requests += 1;
            for (set, pod) in seen.iter_mut().zip(["client", "web-1"]) {
                set.insert(expiry(pod)? as u64);
            }
            ensure!(
                seen.iter().all(|s| s.len() >= 3) && unix_now() > first + 1.0,
                "certificate expiries seen (client, web-1): {seen:?}, first expiry {first}"
            );
            Ok(())
        },
    )?;
    // A new handshake with the server's proxy, now that its first
    // certificate has expired: it presents a current one that verifies.
    let dir = mesh.env.run_dir().join("certs");
    std::fs::create_dir_all(&dir)?;
    let leaf = conduit_tests::mesh::controller::issue_leaf(
        &mesh.files.issuer_cert,
        &mesh.files.issuer_key,
        &mesh.identity("client"),
        &dir,
        "rotation-check",
    )?;
    let addr = format!(
        "{}:{}",
        mesh.env.pod("web-1").ipv4,
        conduit_tests::mesh::spec::INBOUND_PORT
    );
    let (code, out) = conduit_tests::mesh::tls::s_client(
        &addr,
        "conduit/opaque",
        &mesh.files.issuer_cert,
        Some(&leaf),
    )?;
    ensure!(
        out.contains("Verify return code: 0 (ok)") && !out.contains("alert"),
        "the server proxy's certificate did not verify after rotation ({code}):\n{out}"
    );
    eprintln!("{requests} requests, all answered, across certificates {seen:?}");
    Ok(())
}

#[test]
fn ipv6_service_and_pod_addresses_through_the_proxies() -> Result<()> {
    use conduit_tests::mesh::app::HttpAnswer;
    use conduit_tests::mesh::spec::{HTTP_PORT, ServiceSpec};
    let mut spec = MeshSpec::with_servers(1);
    spec.services.push(ServiceSpec {
        name: "web6".into(),
        ip_octet: 16,
        ports: vec![(80, HTTP_PORT)],
        endpoints: vec!["web-1".into()],
        announced_service_account: None,
        ipv6: true,
    });
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), spec)? else {
        return Ok(());
    };
    // A call to the IPv6 service address: captured by connect6, its
    // original destination read back as IPv6, discovered, and carried over
    // mTLS to the server pod's proxy at the pod's IPv6 address.
    let url = mesh.url_by_ip("web6", 80, "/over-ipv6");
    ensure!(url.contains("[fd96:"), "{url}");
    let a = mesh.curl(&url)?.answer()?;
    ensure!(a.server == "web-1" && a.path == "/over-ipv6", "{a:?}");
    ensure!(
        mesh.via_own_proxy(&a),
        "not through the server's proxy: {a:?}"
    );
    // Labelled with the service's name, although this first request set
    // off discovery's first lookup of the address.
    let dst = format!("{}:80", mesh.spec.fqdn("web6"));
    let client = mesh.proxy("client").metrics()?;
    let peer = mesh.identity("web-1");
    let answered = client.sum(
        "conduit_response_total",
        &[
            ("direction", "outbound"),
            ("dst", &dst),
            ("peer_identity", &peer),
        ],
    );
    ensure!(
        answered >= 1.0,
        "no mTLS response for {dst} from {peer}: {:?}",
        client.label_values("conduit_response_total", &[], "dst")
    );
    let requests = client.sum(
        "conduit_request_total",
        &[("direction", "outbound"), ("dst", &dst)],
    );
    ensure!(requests >= 1.0, "the request was not counted under {dst}");
    // The server pod's own IPv6 address, from outside the mesh (the host):
    // sk_lookup steers it to the pod's proxy, which reaches the application
    // at that same IPv6 address (not [::1]).
    let addr = std::net::SocketAddr::new(mesh.env.pod("web-1").ipv6.into(), HTTP_PORT);
    let (code, body) = conduit_tests::mesh::scrape::get(addr, "/pod-ipv6")?;
    ensure!(code == 200, "{addr}: {code} {body}");
    let a: HttpAnswer = serde_json::from_str(body.trim())?;
    ensure!(
        a.peer.ip() == std::net::IpAddr::V6(mesh.env.pod("web-1").ipv6),
        "the application was not reached at the pod's IPv6 address by its proxy: {a:?}"
    );
    Ok(())
}
