//! `cargo xtask demo`: the local mesh on one machine. The controller, the
//! node agent, a client pod and two server pods (network namespaces), each
//! with an application and a real conduit-proxy registered with the agent;
//! the client calls service `web` by name and by service IP over HTTP/1.1
//! (curl) and gRPC (tonic); then what the proxies saw (mTLS identities,
//! success rate, latency), `conduit-ebpf status`, and last `conduit-ebpf
//! stat` and `tap` over fresh traffic. Builds nothing (xtask
//! did); cleans up on exit and on Ctrl-C. See docs/demo.md.

use anyhow::{Result, bail};
use clap::Parser;
use conduit_tests::demo::{Steps, check_machine};
use conduit_tests::mesh::scrape::Metrics;
use conduit_tests::mesh::spec::{GRPC_PORT, MeshSpec};
use conduit_tests::mesh::{Mesh, report};
use conduit_tests::names::Names;
use conduit_tests::wire::{PacketCapture, contains, count_tls_client_hellos};
use conduit_tests::{signals, wait_until};
use std::time::Duration;

#[derive(Parser)]
#[command(about = "conduit-ebpf local mesh demo (needs root)")]
struct Cli {
    /// Keep everything running until Ctrl-C (to look around with
    /// `conduit-ebpf status`, `ip netns exec conduit-demo-client curl ...`).
    #[arg(long)]
    keep: bool,
    /// HTTP/1.1 requests per address (by name, by service IP).
    #[arg(long, default_value_t = 10)]
    requests: u32,
    /// Server pods.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=50))]
    servers: u8,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = signals::install() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    conduit_tests::process::set_echo(false);
    println!("conduit-ebpf local mesh demo\n");
    let mut steps = Steps::new(14);
    let machine = steps.run("checking the machine", || {
        println!("      {}", check_machine()?);
        Ok(())
    });
    if machine.is_err() {
        std::process::exit(1);
    }
    let result = run(&cli, &mut steps);
    println!(
        "\ncleaned up: proxies, applications, controller, agent and its pinned BPF state, pods, bridge, cgroups"
    );
    if let Err(e) = result {
        if conduit_tests::wait::interrupted() {
            eprintln!("interrupted");
            std::process::exit(130);
        }
        eprintln!("the demo failed (see above)");
        tracing::debug!("{e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli, steps: &mut Steps) -> Result<()> {
    let mesh = Mesh::up(
        Names::demo(),
        MeshSpec::with_servers(cli.servers.into()),
        steps,
    )?;
    let n = cli.requests.max(1);
    let capture = steps.run(
        "watching the client pod's veth with tcpdump (everything between pods but the controller's connection, so the TLS counted is proxy to proxy)",
        || {
            let controller = mesh.env.pod("controller").ipv4;
            PacketCapture::start(
                mesh.env.pod("client").host_veth(),
                mesh.env.run_dir().join("client-veth.pcap"),
                &format!("tcp and not host {controller}"),
            )
        },
    )?;
    let fqdn = mesh.spec.fqdn("web");
    let vip = mesh.service_ip("web");
    steps.run(
        &format!("HTTP/1.1 with curl from pod client: {n} requests to http://{fqdn}/ and {n} to http://{vip}/"),
        || {
            for url in [mesh.url_by_name("web", 80, "/hello"), mesh.url_by_ip("web", 80, "/hello")] {
                let mut by = std::collections::BTreeMap::<String, u32>::new();
                let mut first = None;
                for _ in 0..n {
                    let r = mesh.curl(&url)?;
                    let a = r.answer()?;
                    first.get_or_insert((a.clone(), r.seconds));
                    *by.entry(a.server).or_default() += 1;
                }
                let (a, secs) = first.unwrap_or_else(|| unreachable!());
                println!("      curl {url}");
                println!(
                    "        -> 200 from {} ({}, Host {}, app saw peer {}: its own proxy), {:.1} ms",
                    a.server,
                    a.version,
                    a.host,
                    a.peer,
                    secs * 1000.0
                );
                println!("        answers by server: {}", spread(&by));
            }
            Ok(())
        },
    )?;
    steps.run(
        &format!("gRPC with a tonic client from pod client: 5 unary calls + a server stream of 5, to {fqdn}:{GRPC_PORT} and {vip}:{GRPC_PORT}"),
        || {
            for target in [
                format!("http://{fqdn}:{GRPC_PORT}"),
                format!("http://{vip}:{GRPC_PORT}"),
            ] {
                let r = mesh.grpc(&target, 5, 5, "hello over gRPC")?;
                if !r.ok {
                    bail!("gRPC to {target} failed: {}", r.error.unwrap_or_default());
                }
                let mut by = std::collections::BTreeMap::<String, u32>::new();
                for s in r.unary.iter().chain(&r.stream) {
                    *by.entry(s.clone()).or_default() += 1;
                }
                println!("      {target}: OK in {} ms; answers by server: {}", r.millis, spread(&by));
            }
            Ok(())
        },
    )?;
    steps.run("what crossed the wire between the pods (tcpdump on the client's veth)", || {
        let bytes = wait_until("the handshakes to reach the capture file", Duration::from_secs(5), || {
            let b = capture.bytes()?;
            if count_tls_client_hellos(&b) > 0 {
                Ok(b)
            } else {
                bail!("no TLS ClientHello in {} bytes yet", b.len())
            }
        })?;
        let hellos = count_tls_client_hellos(&bytes);
        let alpn: Vec<&str> = ["conduit/h2", "conduit/http1", "conduit/opaque"]
            .into_iter()
            .filter(|a| contains(&bytes, a.as_bytes()))
            .collect();
        println!(
            "      {} bytes captured: {hellos} TLS ClientHello(s) (client proxy -> server proxies on :4143, ALPN {})",
            bytes.len(),
            alpn.join(", ")
        );
        for plain in ["GET /hello", "hello over gRPC"] {
            let seen = contains(&bytes, plain.as_bytes());
            println!("      plaintext {plain:?} on the wire: {}", if seen { "YES (not encrypted!)" } else { "no" });
            if seen {
                bail!("plaintext application data crossed the wire between pods");
            }
        }
        Ok(())
    })?;
    drop(capture);
    steps.run(
        "what the proxies saw (their /metrics on :4191): mTLS identities, success rate, latency",
        || {
            for pod in mesh.meshed_pods() {
                let m: Metrics = mesh.proxy(&pod).metrics()?;
                println!("{}", report::proxy_summary(&pod, &mesh.identity(&pod), &m));
            }
            Ok(())
        },
    )?;
    let status = steps.run(
        &format!(
            "conduit-ebpf status --pin-dir {}",
            mesh.agent.config.pin_dir.display()
        ),
        || mesh.agent.config.status_text(),
    )?;
    println!("{status}");
    let (table, tap) = steps.run(
        "what an operator sees: conduit-ebpf stat (per pod and destination, over the window) while tap --pod client streams; traffic: curl (every 5th request to /status/500) and gRPC",
        || conduit_tests::demo::stat_and_tap(&mesh, n),
    )?;
    println!("$ conduit-ebpf tap --pod client --max 6");
    for l in &tap {
        println!("{l}");
    }
    println!("\n$ conduit-ebpf stat --watch");
    println!("{table}\n");
    if cli.keep {
        println!(
            "everything keeps running; try (the client's cgroup matters: capture acts on the demo's cgroup tree):"
        );
        let cg = mesh.env.pod_cgroup("client", "app")?;
        println!(
            "  sh -c 'echo $$ > {}/cgroup.procs && exec ip netns exec {} curl -s http://{fqdn}/'",
            cg.path().display(),
            mesh.env.pod("client").netns().name()
        );
        println!(
            "  curl -s http://{}:4191/metrics | grep conduit_request",
            mesh.env.pod("client").ipv4
        );
        println!(
            "  conduit-ebpf status --pin-dir {}",
            mesh.agent.config.pin_dir.display()
        );
        for cmd in [
            "stat --watch",
            "tap --pod client",
            "top",
            "dashboard --listen 127.0.0.1:8084",
        ] {
            println!(
                "  conduit-ebpf {cmd} --pin-dir {}",
                mesh.agent.config.pin_dir.display()
            );
        }
        println!("press Ctrl-C to stop and clean up");
        let _ = wait_until("Ctrl-C", Duration::MAX, || -> Result<()> {
            bail!("running")
        });
    }
    Ok(())
}

fn spread(by: &std::collections::BTreeMap<String, u32>) -> String {
    by.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
