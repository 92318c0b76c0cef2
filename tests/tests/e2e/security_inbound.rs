//! Attacks on a pod's inbound side, in the local mesh (real agent, real
//! controller, real proxies as uid 1337, real kernel capture):
//!
//! * a meshed pod tries to shut down another pod's proxy through the mesh
//!   (its transport header names the admin or the operator port);
//! * a meshed and a non-meshed client try to reach a service the server pod
//!   bound to loopback only;
//! * the documented opt-in (`--inbound-loopback-ports`) does serve such a
//!   service, and only on the ports named.
//!
//! Each failed on the code where the inbound proxy forwarded to loopback and
//! the admin server authorized `POST /shutdown` by a loopback source.

use anyhow::{Result, anyhow, ensure};
use conduit_tests::bins;
use conduit_tests::mesh::Mesh;
use conduit_tests::mesh::app::{CurlResult, HttpAnswer, MESH_APP, in_pod};
use conduit_tests::mesh::scrape;
use conduit_tests::mesh::spec::{ADMIN_PORT, MeshSpec};
use conduit_tests::process::Process;
use conduit_tests::status::StatusExt as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The operator listener's default port (loopback only).
const CONTROL_PORT: u16 = 4190;
/// Where the server pod runs a loopback-only service.
const PRIVATE_PORT: u16 = 7777;

/// `curl -X POST` from the client pod (an ordinary meshed application).
fn curl_post(mesh: &Mesh, url: &str) -> Result<CurlResult> {
    let done = in_pod(&mesh.env, &mesh.spec.client, "curl")?
        .args(["--http1.1", "-sS", "--max-time", "5", "-X", "POST"])
        .args(["-w", "\n@@%{http_code}", url])
        .run(Duration::from_secs(10))?;
    let out: Vec<&str> = done.stdout().collect();
    let status = out
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("@@"))
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0);
    Ok(CurlResult {
        exit: done.status.code().unwrap_or(-1),
        status,
        body: out.join("\n"),
        stderr: done.stderr(),
        seconds: 0.0,
    })
}

/// `POST /shutdown` from the host; returns the raw answer.
fn post_shutdown_from_host(addr: SocketAddr) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(
        b"POST /shutdown HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// An HTTP server in `pod` bound to 127.0.0.1:[`PRIVATE_PORT`] only.
fn loopback_only_app(mesh: &Mesh, pod: &str) -> Result<Process> {
    let mut p = mesh
        .env
        .spawn(pod, "private", bins::find(MESH_APP)?)?
        .args(["serve", "--name", &format!("{pod}-private")])
        .args(["--http", &format!("127.0.0.1:{PRIVATE_PORT}")])
        .start()?;
    p.wait_for_line("listening", Duration::from_secs(20), |l| {
        l.contains(r#""event":"listening""#)
    })?;
    Ok(p)
}

fn private_requests(p: &Process) -> usize {
    p.stdout_lines()
        .iter()
        .filter(|l| l.contains(r#""event":"http""#))
        .count()
}

fn refused(mesh: &Mesh, pod: &str, reason: &str) -> Result<f64> {
    Ok(mesh.proxy(pod).metrics()?.sum(
        "conduit_connections_refused_total",
        &[("direction", "inbound"), ("reason", reason)],
    ))
}

#[test]
fn meshed_pod_cannot_shut_down_another_pods_proxy() -> Result<()> {
    let Some(mut mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    let web1 = mesh.env.pod("web-1").ipv4;
    // The path works: the client's application reaches web-1.
    let a = mesh.curl(&format!("http://{web1}:8080/first"))?.answer()?;
    ensure!(a.server == "web-1", "{a:?}");

    // Through the mesh, to the admin port (read-only now, and a proxy port)
    // and to the operator port (loopback only, and a proxy port).
    for port in [ADMIN_PORT, CONTROL_PORT] {
        let url = format!("http://{web1}:{port}/shutdown");
        let r = curl_post(&mesh, &url)?;
        ensure!(
            r.status != 202 && !r.body.contains("draining"),
            "POST {url} from a meshed pod was accepted: {r:?}"
        );
    }
    ensure!(
        refused(&mesh, "web-1", "proxy_port")? >= 2.0,
        "web-1's proxy did not count the refusals"
    );
    // From outside the mesh (the host): the admin port answers, read-only;
    // the operator port is not reachable at all (loopback only, and the
    // agent's sk_lookup leaves it alone).
    let admin = SocketAddr::new(IpAddr::V4(web1), ADMIN_PORT);
    let out = post_shutdown_from_host(admin)?;
    ensure!(out.starts_with("HTTP/1.1 404"), "{admin}: {out}");
    let control = SocketAddr::new(IpAddr::V4(web1), CONTROL_PORT);
    ensure!(
        std::net::TcpStream::connect_timeout(&control, Duration::from_secs(2)).is_err(),
        "the operator port {control} accepted a connection from the host"
    );
    // web-1's proxy is alive, ready, not draining, and still serves.
    let proxy = mesh
        .proxies
        .get_mut("web-1")
        .ok_or_else(|| anyhow!("no web-1 proxy"))?;
    ensure!(proxy.process.exited().is_none(), "web-1's proxy exited");
    let (code, body) = scrape::get(proxy.admin, "/ready")?;
    ensure!(code == 200, "web-1 /ready: {code} {body}");
    let a = mesh.curl(&format!("http://{web1}:8080/after"))?.answer()?;
    ensure!(a.server == "web-1" && mesh.via_own_proxy(&a), "{a:?}");

    // The operator listener works from inside the pod itself (its own
    // network namespace), as the operator's tooling would use it.
    let done = in_pod(&mesh.env, "web-1", "curl")?
        .args(["-sS", "--max-time", "5", "-X", "POST"])
        .arg(format!("http://127.0.0.1:{CONTROL_PORT}/shutdown"))
        .run(Duration::from_secs(10))?;
    let out: String = done.stdout().collect();
    ensure!(
        out.contains("draining"),
        "operator shutdown: {out} {}",
        done.stderr()
    );
    Ok(())
}

#[test]
fn loopback_only_service_unreachable_from_meshed_client() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    let private = loopback_only_app(&mesh, "web-1")?;
    let web1 = mesh.env.pod("web-1").ipv4;
    // Control: the pod's public service is served.
    mesh.curl(&format!("http://{web1}:8080/public"))?.answer()?;
    let url = format!("http://{web1}:{PRIVATE_PORT}/secret");
    let r = mesh.curl(&url)?;
    ensure!(
        r.status != 200,
        "the loopback-only service answered a meshed client: {r:?}"
    );
    ensure!(private_requests(&private) == 0, "a request reached it");
    Ok(())
}

#[test]
fn loopback_only_service_unreachable_from_unmeshed_client() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    let private = loopback_only_app(&mesh, "web-1")?;
    let pod = mesh.env.pod("web-1");
    // The host is outside the mesh (another network namespace): its
    // connection to the pod's address is steered to web-1's proxy by
    // sk_lookup, which must not hand it to loopback.
    for ip in [IpAddr::V4(pod.ipv4), IpAddr::V6(pod.ipv6)] {
        let addr = SocketAddr::new(ip, PRIVATE_PORT);
        // A refused connection, a closed one or an error status are all
        // fine; only an answer from the private service is not.
        if let Ok((200, body)) = scrape::get(addr, "/secret") {
            return Err(anyhow!(
                "the loopback-only service answered an unmeshed client at {addr}: {body}"
            ));
        }
    }
    ensure!(private_requests(&private) == 0, "a request reached it");
    // Control: the pod's public service is served, through its proxy.
    let public = SocketAddr::new(IpAddr::V4(pod.ipv4), 8080);
    let (code, body) = scrape::get(public, "/public")?;
    ensure!(code == 200, "control: {public}: {code} {body}");
    let a: HttpAnswer = serde_json::from_str(body.trim())?;
    ensure!(mesh.via_own_proxy(&a), "not through web-1's proxy: {a:?}");
    // No forwarding loop: the proxy's own connection to pod-ip:8080 comes
    // from the pod's address, and sk_lookup leaves it to the application.
    let status = mesh.agent.config.status()?;
    ensure!(
        status.counter("sk_lookup", "skipped_from_pod") >= 1,
        "{:?}",
        status.counters
    );
    Ok(())
}

/// The documented opt-in: `--inbound-loopback-ports 7777` on web-1's proxy
/// serves its loopback-only service, to meshed and unmeshed clients, and
/// only that port (the proxy's own ports stay refused).
#[test]
fn loopback_opt_in_serves_the_named_port_only() -> Result<()> {
    let Some(mut mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    let private = loopback_only_app(&mesh, "web-1")?;
    mesh.kill_proxy("web-1")?;
    mesh.spec.proxy_args = vec!["--inbound-loopback-ports".into(), PRIVATE_PORT.to_string()];
    mesh.start_proxy("web-1")?;
    let web1 = mesh.env.pod("web-1").ipv4;
    let a = mesh
        .curl(&format!("http://{web1}:{PRIVATE_PORT}/opted-in"))?
        .answer()?;
    ensure!(a.server == "web-1-private", "{a:?}");
    ensure!(a.peer.ip().is_loopback(), "reached on loopback: {a:?}");
    let (code, body) = scrape::get(SocketAddr::new(IpAddr::V4(web1), PRIVATE_PORT), "/host")?;
    ensure!(code == 200, "from the host: {code} {body}");
    // The application logs each request as it answers it: wait for its line.
    conduit_tests::wait::wait_until(
        "both requests in the app's log",
        Duration::from_secs(5),
        || {
            ensure!(
                private_requests(&private) == 2,
                "{:?}",
                private.stdout_lines()
            );
            Ok(())
        },
    )?;
    // The ordinary application is still reached at the pod's address.
    let a = mesh.curl(&format!("http://{web1}:8080/public"))?.answer()?;
    ensure!(mesh.via_own_proxy(&a), "{a:?}");
    let r = curl_post(&mesh, &format!("http://{web1}:{CONTROL_PORT}/shutdown"))?;
    ensure!(r.status != 202, "{r:?}");
    Ok(())
}
