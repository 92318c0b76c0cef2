//! Seeing the mesh: `conduit-ebpf stat`, `tap`, `top` and `dashboard` on
//! the local mesh, the proxies' access log, trace context through both
//! proxies, and who may tap (the node operator only). Real agent, real
//! proxies with mTLS, real curl; the dashboard in a real headless chromium.

use anyhow::{Context, Result, anyhow, bail, ensure};
use conduit_tests::agent::agent_bin;
use conduit_tests::mesh::Mesh;
use conduit_tests::mesh::app::in_pod;
use conduit_tests::mesh::spec::{GRPC_PORT, MeshSpec};
use conduit_tests::process::{Process, Spawn};
use conduit_tests::wait_until;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const CONTROL_PORT: u16 = 4190;
const T: Duration = Duration::from_secs(20);

/// `conduit-ebpf <args> --pin-dir <the mesh's>`.
fn cli(mesh: &Mesh, label: &str, args: &[&str]) -> Result<Spawn> {
    Ok(Spawn::new(label, agent_bin()?)
        .args(args.iter().copied())
        .args([
            "--pin-dir".to_owned(),
            mesh.agent.config.pin_dir.to_string_lossy().into_owned(),
        ]))
}

/// `n` GETs of `path` on service web from the client pod, one curl each.
fn requests(mesh: &Mesh, path: &str, n: usize) -> Result<()> {
    for _ in 0..n {
        mesh.curl(&mesh.url_by_name("web", 80, path))?;
    }
    Ok(())
}

/// A metric of `pod`'s proxy, summed over its series.
fn metric(mesh: &Mesh, pod: &str, name: &str) -> Result<f64> {
    Ok(mesh.proxy(pod).metrics()?.sum(name, &[]))
}

fn wait_listeners(mesh: &Mesh, pod: &str, n: f64) -> Result<()> {
    wait_until(&format!("{n} tap listeners on {pod}'s proxy"), T, || {
        let got = metric(mesh, pod, "conduit_tap_listeners")?;
        ensure!(got == n, "{got} listening");
        Ok(())
    })
}

fn json_lines(p: &Process) -> Vec<Value> {
    p.stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn route<'a>(report: &'a Value, pod: &str, direction: &str) -> Vec<&'a Value> {
    report["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["pod"] == pod && r["direction"] == direction)
        .collect()
}

/// The latest `stat --json` report, and its `default/client` outbound row
/// for `dst`.
fn client_row(stat: &Process, dst: &str) -> Result<(Value, Value)> {
    let last = json_lines(stat).pop().ok_or_else(|| anyhow!("no report"))?;
    let row = route(&last, "default/client", "outbound")
        .into_iter()
        .find(|r| r["dst"] == dst)
        .cloned()
        .ok_or_else(|| anyhow!("no row for {dst}: {last}"))?;
    Ok((last, row))
}

#[test]
fn stat_counts_known_traffic() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    // Discovery has answered once: every request below is labelled by name.
    requests(&mesh, "/warm-up", 1)?;
    let mut stat = cli(
        &mesh,
        "stat",
        &[
            "stat",
            "--json",
            "--watch",
            "--interval",
            "500ms",
            "--window",
            "60s",
        ],
    )?
    .start()?;
    stat.wait_for_line("its first report", T, |l| l.starts_with('{'))?;
    requests(&mesh, "/hello", 10)?;
    requests(&mesh, "/status/500", 5)?;
    requests(&mesh, "/delay/200", 10)?;
    let svc = format!("{}:80", mesh.spec.fqdn("web"));
    let report = wait_until("stat to count the 25 requests", T, || {
        let (last, r) = client_row(&stat, &svc)?;
        ensure!(r["requests"] == 25, "{r}");
        Ok(last)
    })?;
    let out = route(&report, "default/client", "outbound");
    ensure!(out.len() == 1, "only service web was called: {report}");
    let r = out[0];
    let num = |k: &str| r[k].as_f64().ok_or_else(|| anyhow!("{k} missing in {r}"));
    ensure!(
        (num("success")? - 0.8).abs() < 1e-9,
        "20 of 25 succeeded: {r}"
    );
    ensure!(num("mtls")? == 1.0, "every request over mTLS: {r}");
    ensure!(
        r["peers"] == serde_json::json!([mesh.identity("web-1")]),
        "{r}"
    );
    // 15 fast answers and 10 after 200 ms: p50 is fast, p95 near 200 ms
    // (within its histogram bucket, 102..205 ms, and slack for a busy machine).
    let (p50, p95) = (num("p50_ms")?, num("p95_ms")?);
    ensure!(p50 > 0.0 && p50 < 100.0, "p50 {p50} ms");
    ensure!((100.0..=1000.0).contains(&p95), "p95 {p95} ms");
    ensure!(num("rps")? > 0.0, "{r}");
    // The servers saw them all (and the retried 500s again), from the client.
    let inbound: Vec<&Value> = ["default/web-1", "default/web-2"]
        .iter()
        .flat_map(|p| route(&report, p, "inbound"))
        .collect();
    let total: u64 = inbound.iter().filter_map(|r| r["requests"].as_u64()).sum();
    ensure!(total >= 25, "inbound {total}: {report}");
    for r in &inbound {
        ensure!(
            r["peers"] == serde_json::json!([mesh.identity("client")]),
            "{r}"
        );
        ensure!(r["mtls"] == 1.0, "{r}");
    }
    let tcp = report["tcp"].as_array().context("tcp")?;
    ensure!(
        tcp.iter().any(|t| t["pod"] == "default/client"
            && t["direction"] == "outbound"
            && t["opened_per_s"].as_f64() > Some(0.0)),
        "{report}"
    );

    // gRPC errors travel in HTTP 200 responses: stat counts them as
    // failures by their grpc-status (before, by status class, 2xx: 100%).
    let grpc = format!("http://{}:{GRPC_PORT}", mesh.spec.fqdn("web"));
    let ok = mesh.grpc(&grpc, 2, 0, "fine")?;
    ensure!(ok.ok, "{ok:?}");
    // More stream messages than the application sends: INVALID_ARGUMENT.
    let refused = mesh.grpc(&grpc, 0, 10_001, "too many")?;
    ensure!(
        !refused.ok
            && refused
                .error
                .as_deref()
                .is_some_and(|e| e.contains("invalid argument")),
        "{refused:?}"
    );
    let grpc_dst = format!("{}:{GRPC_PORT}", mesh.spec.fqdn("web"));
    wait_until("stat to count the 3 gRPC calls", T, || {
        let (_, r) = client_row(&stat, &grpc_dst)?;
        ensure!(r["requests"] == 3, "{r}");
        let success = r["success"].as_f64().context("success")?;
        ensure!(
            (success - 2.0 / 3.0).abs() < 1e-9,
            "2 of 3 gRPC calls succeeded: {r}"
        );
        Ok(())
    })?;
    drop(stat);

    // The table, for a person, with filters, refreshed in place.
    let mut table = cli(
        &mesh,
        "stat-table",
        &[
            "stat",
            "--watch",
            "--interval",
            "500ms",
            "--pod",
            "client",
            "--to",
            "web",
        ],
    )?
    .start()?;
    table.wait_for_line("its first table", T, |l| l.contains("window"))?;
    requests(&mesh, "/hello", 2)?;
    let row = table.wait_for_line("a row for service web", T, |l| {
        l.starts_with("default/client") && l.contains(&svc)
    })?;
    ensure!(
        row.contains("100.00%") && row.contains("default/web"),
        "{row}"
    );
    let text = table.output_text();
    ensure!(
        text.lines()
            .any(|l| l.contains("POD") && l.contains("SUCCESS") && l.contains("P99")),
        "{text}"
    );
    ensure!(
        !text.contains("default/web-1"),
        "--pod client shows only the client: {text}"
    );
    ensure!(text.contains("\x1b[H\x1b[2J"), "refreshes in place");
    Ok(())
}

#[test]
fn tap_and_top_stream_filtered_requests() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    requests(&mesh, "/warm-up", 1)?;
    let all = cli(&mesh, "tap-client", &["tap", "--pod", "client", "--json"])?.start()?;
    let errors = cli(
        &mesh,
        "tap-errors",
        &["tap", "--direction", "inbound", "--status", "5xx", "--json"],
    )?
    .start()?;
    let hello = cli(
        &mesh,
        "tap-hello",
        &[
            "tap",
            "--path",
            "/hello",
            "--json",
            "--namespace",
            "default",
        ],
    )?
    .start()?;
    wait_listeners(&mesh, "client", 3.0)?;
    wait_listeners(&mesh, "web-1", 2.0)?;
    requests(&mesh, "/hello", 3)?;
    requests(&mesh, "/status/500", 2)?;
    requests(&mesh, "/other", 1)?;

    let web = mesh.spec.fqdn("web");
    let events = wait_until("tap --pod client to show the 6 requests", T, || {
        let e = json_lines(&all);
        ensure!(e.len() >= 6, "{} so far", e.len());
        Ok(e)
    })?;
    for e in &events {
        ensure!(
            e["pod"] == "default/client" && e["direction"] == "outbound",
            "{e}"
        );
        ensure!(
            e["authority"] == web.as_str() && e["method"] == "GET",
            "{e}"
        );
        ensure!(e["peer_identity"] == mesh.identity("web-1").as_str(), "{e}");
        ensure!(e["latency_us"].as_u64() > Some(0), "{e}");
    }
    let paths: Vec<(&str, u64)> = events
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap_or(""),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ensure!(
        paths
            == [
                ("/hello", 200),
                ("/hello", 200),
                ("/hello", 200),
                ("/status/500", 500),
                ("/status/500", 500),
                ("/other", 200)
            ],
        "{paths:?}"
    );
    ensure!(events[0]["rsp_bytes"].as_u64() > Some(0), "{}", events[0]);

    let errs = wait_until("the 5xx filter to see the failures", T, || {
        let e = json_lines(&errors);
        ensure!(e.len() >= 2, "{} so far", e.len());
        Ok(e)
    })?;
    for e in &errs {
        ensure!(e["direction"] == "inbound" && e["status"] == 500, "{e}");
        ensure!(e["path"] == "/status/500", "{e}");
        ensure!(
            e["peer_identity"] == mesh.identity("client").as_str(),
            "{e}"
        );
        ensure!(
            e["pod"]
                .as_str()
                .is_some_and(|p| p.starts_with("default/web-")),
            "{e}"
        );
    }
    let hellos = wait_until("the path filter to see both sides", T, || {
        let e = json_lines(&hello);
        ensure!(e.len() >= 6, "{} so far", e.len());
        Ok(e)
    })?;
    ensure!(hellos.iter().all(|e| e["path"] == "/hello"), "{hellos:?}");
    ensure!(
        hellos
            .iter()
            .filter(|e| e["direction"] == "inbound")
            .count()
            == 3,
        "{hellos:?}"
    );
    drop((all, errors, hello));
    wait_listeners(&mesh, "client", 0.0).or_else(|_| {
        // A listener that went away is noticed on the stream's next write.
        requests(&mesh, "/nudge", 1)?;
        wait_listeners(&mesh, "client", 0.0)
    })?;

    // top: the busiest paths, from the same streams.
    let mut top = cli(
        &mesh,
        "top",
        &[
            "top",
            "--pod",
            "client",
            "--json",
            "--duration",
            "4s",
            "--interval",
            "1s",
        ],
    )?
    .start()?;
    wait_listeners(&mesh, "client", 1.0)?;
    requests(&mesh, "/busy", 4)?;
    requests(&mesh, "/status/500", 1)?;
    top.wait_exit(T)?;
    let last = json_lines(&top)
        .pop()
        .ok_or_else(|| anyhow!("top printed no table: {}", top.output_text()))?;
    let rows = last.as_array().context("a table")?;
    ensure!(
        rows[0]["path"] == "/busy" && rows[0]["count"] == 4 && rows[0]["success"] == 1.0,
        "{last}"
    );
    ensure!(
        rows[1]["path"] == "/status/500" && rows[1]["success"] == 0.0,
        "{last}"
    );
    Ok(())
}

/// Connects to `127.0.0.1:port` in `pod`'s network namespace with a tiny
/// receive buffer (the test process is root, as the node operator is).
fn connect_in_pod(mesh: &Mesh, pod: &str, port: u16) -> Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, connect, setsockopt, socket, sockopt,
    };
    let ns = mesh.env.pod(pod).netns().open()?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<TcpStream> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            setsockopt(&fd, sockopt::RcvBuf, &4096)?;
            connect(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrIn::new(127, 0, 0, 1, port),
            )?;
            Ok(TcpStream::from(fd))
        })
        .join()
        .map_err(|_| anyhow!("thread panicked"))?
    })
}

#[test]
fn a_slow_tap_listener_loses_events_not_memory() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::with_servers(1))?
    else {
        return Ok(());
    };
    requests(&mesh, "/warm-up", 1)?;
    let mut tap = connect_in_pod(&mesh, "client", CONTROL_PORT)?;
    write!(tap, "GET /tap?buffer=1 HTTP/1.1\r\nHost: tap\r\n\r\n")?;
    wait_listeners(&mesh, "client", 1.0)?;
    // Never read: 600 requests on one keep-alive connection (curl's URL
    // globbing) fill the queue and the socket and the rest is dropped.
    let n = 600;
    let url = format!("{}?n=[1-{n}]", mesh.url_by_name("web", 80, "/many"));
    let done = in_pod(&mesh.env, "client", "curl")?
        .args([
            "--http1.1",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            &url,
        ])
        .run(Duration::from_secs(120))?;
    let codes: Vec<&str> = done.stdout().collect();
    ensure!(
        codes.len() == n && codes.iter().all(|c| *c == "200"),
        "every request answered while the listener stalled: {} lines, {:?}",
        codes.len(),
        codes.iter().find(|c| **c != "200")
    );
    let dropped = metric(&mesh, "client", "conduit_tap_dropped_total")?;
    let queued = metric(&mesh, "client", "conduit_tap_events_total")?;
    ensure!(
        dropped > 0.0 && dropped + queued == n as f64,
        "dropped {dropped}, queued {queued}"
    );
    eprintln!("stalled tap listener: {queued} events queued, {dropped} dropped of {n}");
    // Reading again: the stream says how many were lost.
    tap.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut seen = Vec::new();
    let total = wait_until("the stream to report the drops", T, || {
        let mut buf = [0u8; 65536];
        match tap.read(&mut buf) {
            Ok(0) => bail!("stream closed"),
            Ok(k) => seen.extend_from_slice(&buf[..k]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
        let text = String::from_utf8_lossy(&seen);
        let at = text
            .rfind("{\"dropped\":{\"total\":")
            .ok_or_else(|| anyhow!("no drop report yet"))?;
        let digits: String = text[at + 20..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Ok(digits.parse::<f64>()?)
    })?;
    ensure!(
        total > 0.0 && total <= dropped,
        "reported {total}, counted {dropped}"
    );
    Ok(())
}

#[test]
fn access_log_lines_parse_back() -> Result<()> {
    let mut spec = MeshSpec::with_servers(1);
    spec.proxy_args = vec!["--access-log".into(), "json".into()];
    let Some(mut mesh) = Mesh::privileged(conduit_tests::test_name!(), spec)? else {
        return Ok(());
    };
    requests(&mesh, "/logged", 2)?;
    let json = |pod: &str, direction: &str| -> Vec<Value> {
        mesh.proxy(pod)
            .process
            .lines()
            .into_iter()
            .filter_map(|(_, l)| serde_json::from_str::<Value>(&l).ok())
            .filter(|v| v["path"] == "/logged" && v["direction"] == direction)
            .collect()
    };
    let client = wait_until("the client's access log", T, || {
        let l = json("client", "outbound");
        ensure!(l.len() == 2, "{l:?}");
        Ok(l)
    })?;
    let server = wait_until("the server's access log", T, || {
        let l = json("web-1", "inbound");
        ensure!(l.len() == 2, "{l:?}");
        Ok(l)
    })?;
    for (l, peer) in [
        (&client[0], mesh.identity("web-1")),
        (&server[0], mesh.identity("client")),
    ] {
        ensure!(l["method"] == "GET" && l["status"] == 200, "{l}");
        ensure!(l["peer_identity"] == peer.as_str(), "{l}");
        ensure!(
            l["latency_us"].as_u64() > Some(0) && l["rsp_bytes"].as_u64() > Some(0),
            "{l}"
        );
        ensure!(
            l["time"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 27),
            "{l}"
        );
    }

    // The common log format, on a restarted proxy.
    mesh.spec.proxy_args = vec!["--access-log".into(), "common".into()];
    mesh.kill_proxy("web-1")?;
    mesh.start_proxy("web-1")?;
    requests(&mesh, "/common", 1)?;
    let line = wait_until("a common log line", T, || {
        mesh.proxy("web-1")
            .process
            .lines()
            .into_iter()
            .map(|(_, l)| l)
            .find(|l| l.contains("\"GET /common HTTP/"))
            .ok_or_else(|| anyhow!("not yet"))
    })?;
    // host - identity [date] "request" status bytes direction k=v...
    let f: Vec<&str> = line.split(' ').collect();
    ensure!(f[1] == "-" && f[2] == mesh.identity("client"), "{line}");
    ensure!(f[3].starts_with('[') && f[4] == "+0000]", "{line}");
    ensure!(
        f[5] == "\"GET" && f[6] == "/common" && f[8] == "200",
        "{line}"
    );
    ensure!(
        f[10] == "inbound" && line.contains(" latency_ms="),
        "{line}"
    );
    // Off by default: the client's (json) log has no line of it... and a
    // proxy without the flag writes none (the other mesh tests' proxies).
    Ok(())
}

#[test]
fn trace_headers_pass_through_both_proxies() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::with_servers(1))?
    else {
        return Ok(());
    };
    let headers = [
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        (
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        ),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
        ("x-b3-sampled", "1"),
    ];
    let mut curl = in_pod(&mesh.env, "client", "curl")?.args([
        "--http1.1",
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
    ]);
    for (k, v) in headers {
        curl = curl.args(["-H".to_owned(), format!("{k}: {v}")]);
    }
    let done = curl.arg(mesh.url_by_name("web", 80, "/traced")).run(T)?;
    let echoed: Vec<String> = done
        .stdout()
        .map(|l| l.trim().to_ascii_lowercase())
        .collect();
    ensure!(
        echoed.first().is_some_and(|l| l.contains(" 200")),
        "{echoed:?}"
    );
    for (k, v) in headers {
        let want = format!("echo-{k}: {}", v.to_ascii_lowercase());
        ensure!(
            echoed.contains(&want),
            "{k} did not reach the application unchanged: {echoed:?}"
        );
    }
    // And the application saw it through both proxies (over mTLS).
    let a = mesh.app("web-1").http_requests();
    ensure!(a.iter().any(|a| a.path == "/traced"), "{a:?}");
    Ok(())
}

#[test]
fn only_the_node_operator_may_tap() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::with_servers(1))?
    else {
        return Ok(());
    };
    let web = mesh.env.pod("web-1").ipv4;
    // Through the mesh: the client pod's request goes through both proxies.
    for port in [CONTROL_PORT, spec_admin()] {
        let r = mesh.curl(&format!("http://{web}:{port}/tap"))?;
        ensure!(
            r.status != 200,
            "tap through the mesh on :{port} answered: {r:?}"
        );
    }
    // Directly to the pod's IP from a pod without a proxy (the controller's).
    let direct = in_pod(&mesh.env, "controller", "curl")?
        .args([
            "-sS",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{web}:{CONTROL_PORT}/tap"))
        .run(T)?;
    let code: String = done_text(&direct);
    ensure!(code != "200", "tap from another pod answered: {code}");
    // Inside the pod, a connection made by the proxy's own user (what any
    // forwarded connection is) is refused.
    let as_proxy = Spawn::new("curl-as-proxy", "curl")
        .netns(mesh.env.pod("web-1").netns())?
        .user(conduit_tests::env::PROXY_UID, conduit_tests::env::PROXY_UID)
        .quiet()
        .args(["-sS", "--max-time", "3", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{CONTROL_PORT}/tap"))
        .run(T)?;
    let out: Vec<&str> = as_proxy.stdout().collect();
    ensure!(out.last() == Some(&"403"), "{out:?}");
    ensure!(
        out.iter().any(|l| l.contains("made by the proxy itself")),
        "{out:?}"
    );
    ensure!(
        metric(&mesh, "web-1", "conduit_tap_listeners")? == 0.0,
        "nobody is tapping"
    );
    // The operator on the node can.
    let mut tap = cli(
        &mesh,
        "tap",
        &["tap", "--pod", "web-1", "--json", "--max", "1"],
    )?
    .start()?;
    wait_listeners(&mesh, "web-1", 1.0)?;
    requests(&mesh, "/by-operator", 1)?;
    tap.wait_exit(T)?;
    ensure!(
        json_lines(&tap)
            .first()
            .is_some_and(|e| e["path"] == "/by-operator"),
        "{}",
        tap.output_text()
    );
    Ok(())
}

fn spec_admin() -> u16 {
    conduit_tests::mesh::spec::ADMIN_PORT
}

fn done_text(f: &conduit_tests::process::Finished) -> String {
    f.stdout().collect::<Vec<_>>().join("").trim().to_owned()
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[test]
fn dashboard_draws_the_mesh_in_a_browser() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    let chromium = which("chromium").context("chromium is missing: run `cargo xtask setup`")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let listen = addr.to_string();
    let mut dash = cli(
        &mesh,
        "dashboard",
        &[
            "dashboard",
            "--listen",
            &listen,
            "--interval",
            "1s",
            "--window",
            "5s",
        ],
    )?
    .start()?;
    dash.wait_for_line("it serves", T, |l| l.starts_with("dashboard on"))?;
    requests(&mesh, "/hello", 10)?;
    let svc = format!("{}:80", mesh.spec.fqdn("web"));
    wait_until("the dashboard to see the requests", T, || {
        let (code, body) = conduit_tests::mesh::scrape::get(addr, "/api/stat")?;
        ensure!(
            code == 200 && body.contains(&svc) && body.contains("default/web-2"),
            "{body}"
        );
        Ok(())
    })?;
    let png = mesh.env.run_dir().join("dashboard.png");
    let args = |extra: &str| -> Vec<String> {
        vec![
            "--headless".into(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--hide-scrollbars".into(),
            "--window-size=1280,1000".into(),
            extra.into(),
            format!("http://{addr}/"),
        ]
    };
    let dom = Spawn::new("chromium", &chromium)
        .args(args("--dump-dom"))
        .quiet()
        .run(Duration::from_secs(60))?;
    let dom = dom.stdout().collect::<Vec<_>>().join("\n");
    for want in [
        svc.as_str(),
        "default/client",
        "default/web-1",
        "default/web-2",
        "class=\"edge\"",
        // The service is linked to the pods that serve it.
        "class=\"edge serves\"",
        "mTLS",
    ] {
        ensure!(dom.contains(want), "the page lacks {want:?}:\n{dom}");
    }
    Spawn::new("chromium", &chromium)
        .args(args(&format!("--screenshot={}", png.display())))
        .quiet()
        .run(Duration::from_secs(60))?;
    let decoder =
        png::Decoder::new(std::fs::File::open(&png).with_context(|| format!("{}", png.display()))?);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf)?;
    let px = info.color_type.samples();
    let pixels = buf[..info.buffer_size()].chunks(px);
    let (mut ink, mut edge_green) = (0usize, 0usize);
    for p in pixels {
        if p[..3] != [255, 255, 255] {
            ink += 1;
        }
        // The mTLS edge colour, #2b8a3e.
        if p[0].abs_diff(0x2b) < 24 && p[1].abs_diff(0x8a) < 24 && p[2].abs_diff(0x3e) < 24 {
            edge_green += 1;
        }
    }
    let total = (info.width * info.height) as usize;
    ensure!(
        ink > total / 50,
        "the screenshot is nearly blank: {ink} of {total} pixels drawn"
    );
    ensure!(
        edge_green > 200,
        "no healthy mTLS edge drawn ({edge_green} pixels)"
    );
    eprintln!(
        "dashboard screenshot: {} ({}x{}, {ink} pixels drawn)",
        png.display(),
        info.width,
        info.height
    );
    if let Ok(keep) = std::env::var("CONDUIT_KEEP_SCREENSHOT") {
        std::fs::copy(&png, keep)?;
    }
    Ok(())
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.is_file())
}

#[test]
fn the_demo_ends_with_stat_and_tap() -> Result<()> {
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), MeshSpec::demo())? else {
        return Ok(());
    };
    let (table, tap) = conduit_tests::demo::stat_and_tap(&mesh, 10)?;
    eprintln!("tap:\n{}\nstat:\n{table}", tap.join("\n"));
    let svc = mesh.spec.fqdn("web");
    let row = |dst: &str| {
        table
            .lines()
            .find(|l| l.starts_with("default/client") && l.contains(dst))
            .ok_or_else(|| anyhow!("no row for {dst}:\n{table}"))
    };
    // 10 curl requests, 2 of them to /status/500.
    let http = row(&format!("{svc}:80"))?;
    ensure!(
        http.split_whitespace().nth(3) == Some("10") && http.contains("80.00%"),
        "{http}"
    );
    ensure!(row(&format!("{svc}:9090"))?.contains("100.00%"), "{table}");
    ensure!(
        table.contains("default/web-1") && table.contains("TCP"),
        "{table}"
    );
    ensure!(tap.len() == 6, "{tap:?}");
    ensure!(
        tap.iter().all(|l| l.contains(" default/client outbound ")),
        "{tap:?}"
    );
    Ok(())
}
