//! The real `conduit-controller` binary: flags, serving a file over TLS by
//! default (plaintext refused), Certify with a token file, the trust anchors
//! it writes, admin endpoints, clean exit on SIGTERM, and a clear error for
//! a bad discovery file.

use crate::binary_common;
use conduit_test_support::metrics::assert_sample;
use conduit_test_support::wait::{fatal, wait_until_async};

use binary_common::{BIN, Proc, free_port};
use conduit_controller_api::client::{WatchOptions, watch_destination_with};
use conduit_controller_api::identity::v1::{CertifyRequest, identity_client::IdentityClient};
use rcgen::{CertificateParams, KeyPair, SanType};
use std::process::{Command, Stdio};
use std::time::Duration;
use tonic::transport::Endpoint;
use x509_parser::prelude::*;

async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[test]
fn help_lists_the_flags() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--discovery",
        "--grpc-addr",
        "--admin-addr",
        "--trust-domain",
        "--issuer-cert",
        "--issuer-key",
        "--leaf-lifetime",
        "--token-file",
        "--write-trust-anchors",
    ] {
        assert!(help.contains(flag), "--help should list {flag}:\n{help}");
    }
}

#[test]
fn a_bad_discovery_file_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.yaml");
    std::fs::write(
        &path,
        "services:\n  - name: web\n    ports: [{port: 80}]\n    endpoints: [{ip: nope}]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg(format!("--discovery=file:{}", path.display()))
        .arg("--grpc-addr=127.0.0.1:0")
        .arg("--admin-addr=127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4"), "{err}");
    let out = Command::new(BIN)
        .arg("--discovery=consul")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("file:PATH"));
}

#[tokio::test]
async fn serves_discovery_and_identity_then_exits_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let discovery = dir.path().join("d.yaml");
    std::fs::write(
        &discovery,
        "services:\n  - name: web\n    clusterIP: 10.96.0.10\n    ports: [{port: 80, targetPort: 8080}]\n    endpoints:\n      - {ip: 10.0.0.1, serviceAccount: web, meshed: true}\n",
    )
    .unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tokens:\n  - {token: web-token-0123456789, namespace: default, serviceAccount: web}\n",
    )
    .unwrap();
    let anchors = dir.path().join("anchors.pem");
    let (grpc, admin) = (free_port(), free_port());
    let child = Proc(
        Command::new(BIN)
            .arg(format!("--discovery=file:{}", discovery.display()))
            .arg(format!("--grpc-addr=127.0.0.1:{grpc}"))
            .arg(format!("--admin-addr=127.0.0.1:{admin}"))
            .arg("--trust-domain=example.org")
            .arg(format!("--token-file={}", tokens.display()))
            .arg(format!("--write-trust-anchors={}", anchors.display()))
            .arg("--leaf-lifetime=1h")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = std::sync::Mutex::new(child);
    wait_until_async(
        "the controller's readiness",
        Duration::from_secs(20),
        || async {
            if let Some(st) = child.lock().unwrap().0.try_wait()? {
                return Err(fatal(format!("controller exited: {st}")));
            }
            let r = http_get(admin, "/ready").await;
            anyhow::ensure!(
                r.as_deref().is_some_and(|r| r.starts_with("HTTP/1.1 200")),
                "answered {r:?}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    let mut child = child.into_inner().unwrap();
    assert!(
        http_get(admin, "/live")
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );

    // Attack: a client (or an observer) speaking plaintext gRPC to the
    // controller. TLS is the default: plaintext gets no answer.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect_lazy();
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        conduit_controller_api::destination::v1::destination_client::DestinationClient::new(plain)
            .get(conduit_controller_api::destination::v1::GetRequest {
                target: "10.96.0.10:80".into(),
            }),
    )
    .await
    .expect("a plaintext call fails at once");
    assert!(refused.is_err(), "plaintext gRPC was answered");

    // Over TLS, checking the controller's identity against the anchors.
    let anchors_pem = std::fs::read(&anchors).unwrap();
    let channel = conduit_proxy_tls::ControlConnector::new(
        conduit_proxy_tls::TrustAnchors::from_pem(&anchors_pem).unwrap(),
        conduit_proxy_tls::SpiffeId::parse("spiffe://example.org/ns/conduit/sa/conduit-controller")
            .unwrap(),
    )
    .unwrap()
    .channel(&format!("127.0.0.1:{grpc}"))
    .unwrap();
    let mut rx = watch_destination_with(channel.clone(), "10.96.0.10:80", WatchOptions::default());
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.exists == Some(true)),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_eq!(s.name.as_deref(), Some("web.default.svc.cluster.local:80"));
    assert_eq!(
        s.endpoints[0].identity.as_deref(),
        Some("spiffe://example.org/ns/default/sa/web")
    );

    // Certify, and check the leaf against the trust anchors the binary wrote.
    let id = "spiffe://example.org/ns/default/sa/web";
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let resp = IdentityClient::new(channel)
        .certify(CertifyRequest {
            identity: id.into(),
            token: "web-token-0123456789".into(),
            certificate_signing_request: csr,
        })
        .await
        .unwrap()
        .into_inner();
    let pem = std::fs::read(&anchors).unwrap();
    let (_, anchor) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let anchor = anchor.parse_x509().unwrap();
    let (_, leaf) = X509Certificate::from_der(&resp.leaf_certificate).unwrap();
    leaf.verify_signature(Some(anchor.public_key()))
        .expect("leaf signed by the written trust anchor");
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        (3600..=3660).contains(&lifetime),
        "--leaf-lifetime=1h (+1 min backdating): {lifetime}"
    );

    let metrics = http_get(admin, "/metrics").await.unwrap();
    assert_sample(
        &metrics,
        "conduit_controller_identity_certify_total",
        &["result=\"ok\""],
        1.0,
    );
    assert_sample(&metrics, "conduit_controller_destination_streams", &[], 1.0);

    // SIGTERM: open streams end, the process exits 0.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_until_async(
        "the controller's exit on SIGTERM",
        Duration::from_secs(10),
        || {
            let exited = child.0.try_wait();
            async move { exited?.ok_or_else(|| anyhow::anyhow!("still running")) }
        },
    )
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    let mut log = String::new();
    use std::io::Read;
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("generated a throwaway issuer"),
        "the generated issuer is announced:\n{log}"
    );
}

/// Plaintext gRPC only behind the loudly named flag, announced as insecure;
/// the old `--grpc-tls` is accepted (TLS is the default) and contradicts it.
#[tokio::test]
async fn plaintext_grpc_needs_the_insecure_flag_and_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let discovery = dir.path().join("d.yaml");
    std::fs::write(&discovery, "services: []\n").unwrap();
    let (grpc, admin) = (free_port(), free_port());
    let mut child = Proc(
        Command::new(BIN)
            .arg(format!("--discovery=file:{}", discovery.display()))
            .arg(format!("--grpc-addr=127.0.0.1:{grpc}"))
            .arg(format!("--admin-addr=127.0.0.1:{admin}"))
            .arg("--insecure-plaintext-grpc")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect_lazy();
    let mut rx = watch_destination_with(channel, "10.96.0.10:80", WatchOptions::default());
    tokio::time::timeout(
        Duration::from_secs(20),
        rx.wait_for(|s| s.exists == Some(false)),
    )
    .await
    .expect("a plaintext answer under --insecure-plaintext-grpc")
    .unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let _ = child.0.wait();
    let mut out = String::new();
    use std::io::Read;
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(
        out.contains("INSECURE") && out.contains("plaintext"),
        "the plaintext port is announced as insecure:\n{out}"
    );

    let out = Command::new(BIN)
        .arg(format!("--discovery=file:{}", discovery.display()))
        .args(["--grpc-tls", "--insecure-plaintext-grpc"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn inject_subcommand_reads_stdin_and_writes_stdout() {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["inject", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default}\nspec:\n  containers: [{name: app, image: x}]\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains("conduit-proxy"),
        "the proxy is added:\n{yaml}"
    );
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("inject"));
}
