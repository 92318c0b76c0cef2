//! `conduit-soak` (`cargo xtask bench soak --duration 30m`): the demo's
//! mesh (controller, agent, client, `web-1`, `web-2`) under steady mixed
//! load for a long time, sampling every proxy's resident memory and open
//! file descriptors and the eBPF maps' entry counts; prints them as a
//! table with each series' slope after warm-up (a leak shows as a slope
//! that is not flat) and draws them into a PNG. Needs root.
//!
//! The load, all at once for the whole run, from the client pod:
//! * HTTP/1.1 GETs over kept-alive connections and gRPC unary calls
//!   (HTTP/2), two workers each (`conduit-mesh-app load`, every request
//!   counted);
//! * one long-lived gRPC bidirectional stream, a message per sample;
//! * connection churn: a loop of curl (a new HTTP/1.1 connection each), a
//!   new gRPC connection with a server stream of 5 messages, and an opaque
//!   TCP connection (a line and its answer) to a plain TCP server in web-1.

#![allow(missing_docs)]

use anyhow::{Context, Result, bail};
use clap::Parser;
use conduit_bench::soak::{Chart, TimeSeries, png, summary};
use conduit_tests::apps::{TestServer, client};
use conduit_tests::demo::Steps;
use conduit_tests::mesh::Mesh;
use conduit_tests::mesh::load::{LoadLoop, LoadSpec};
use conduit_tests::mesh::spec::{GRPC_PORT, MeshSpec};
use conduit_tests::names::Names;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The opaque TCP server's port in web-1.
const TCP_PORT: u16 = 7070;

#[derive(Parser, Debug)]
#[command(
    name = "conduit-soak",
    about = "the mesh under steady mixed load for a long time"
)]
struct Args {
    /// How long the load runs.
    #[arg(long, value_parser = conduit_bench::args::parse_duration, default_value = "30m")]
    duration: Duration,
    /// Time between two samples.
    #[arg(long, value_parser = conduit_bench::args::parse_duration, default_value = "10s")]
    interval: Duration,
    /// Samples before this are left out of the slopes (warm-up: pools,
    /// allocator arenas and maps fill to their working size).
    #[arg(long, value_parser = conduit_bench::args::parse_duration, default_value = "2m")]
    warmup: Duration,
    /// The PNG to write (default: docs/reliability-soak.png).
    #[arg(long)]
    png: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("[soak] error: {e:#}");
        std::process::exit(1);
    }
}

fn progress(line: &str) {
    eprintln!("[soak] {line}");
}

#[derive(Default)]
struct Churn {
    ok: AtomicU64,
    failed: AtomicU64,
}

fn run(args: &Args) -> Result<()> {
    conduit_tests::signals::install()?;
    conduit_tests::process::set_echo(false);
    if let Some(reason) = conduit_tests::privilege::missing() {
        bail!("{reason}: the soak benchmark needs root, cgroup v2 and the bpf syscall");
    }
    let mut spec = MeshSpec::demo();
    spec.quiet_apps = true;
    spec.proxy_args = vec!["--log".into(), "warn".into()];
    progress("bringing the mesh up");
    let mut mesh = Mesh::up(Names::new("soak"), spec, &mut Steps::silent())?;
    let _tcp = TestServer::start(&mesh.env, "web-1", TCP_PORT, "web-1")?;
    let grpc = format!("http://{}:{GRPC_PORT}", mesh.spec.fqdn("web"));
    let url = mesh.url_by_name("web", 80, "/soak");
    let mut load = LoadLoop::start(
        &mesh.env,
        "client",
        &LoadSpec {
            http: Some(url.clone()),
            grpc: Some(grpc.clone()),
            workers: 2,
            pause: Duration::from_millis(20),
            deadline: Duration::from_secs(5),
        },
    )?;
    let mut bidi = mesh.bidi(&grpc)?;
    let pods = mesh.meshed_pods();
    let pids: Vec<(String, u32)> = pods
        .iter()
        .map(|p| (p.clone(), mesh.proxy(p).process.pid()))
        .collect();
    let tcp_addr = mesh.env.pod("web-1").v4(TCP_PORT);
    let churn = Churn::default();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let mut series: BTreeMap<String, TimeSeries> = BTreeMap::new();
    let mut record = |name: String, unit: &str, t: f64, v: f64| {
        series
            .entry(name.clone())
            .or_insert_with(|| TimeSeries {
                name,
                unit: unit.into(),
                points: Vec::new(),
            })
            .points
            .push((t, v));
    };
    progress(&format!(
        "load running for {:?}, a sample every {:?}",
        args.duration, args.interval
    ));
    let mesh_ref = &mesh;
    let sampled: Result<()> = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let ok = [
                    mesh_ref.curl(&url).and_then(|r| r.answer().map(|_| ())),
                    mesh_ref
                        .grpc(&grpc, 1, 5, "churn")
                        .and_then(|r| r.ok.then_some(()).context("gRPC failed")),
                    client(&mesh_ref.env, "client", tcp_addr).and_then(|r| r.reply().map(|_| ())),
                ];
                for r in ok {
                    match r {
                        Ok(()) => churn.ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => churn.failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        });
        let r = (|| -> Result<()> {
            let mut next = Instant::now();
            while started.elapsed() < args.duration + args.interval / 2 {
                if conduit_tests::wait::interrupted() {
                    bail!("interrupted");
                }
                let t = started.elapsed().as_secs_f64();
                for (pod, pid) in &pids {
                    let rss = conduit_bench::procstat::rss_bytes(*pid)
                        .with_context(|| format!("the proxy of {pod} is gone"))?;
                    record(format!("{pod} proxy RSS"), "MiB", t, rss as f64 / 1048576.0);
                    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
                    record(format!("{pod} proxy fds"), "fds", t, fds as f64);
                }
                for m in mesh_ref.agent.config.status()?.maps {
                    record(m.name.clone(), "entries", t, m.entries as f64);
                }
                let answer = bidi.send(&format!("tick {t:.0}"))?;
                progress(&format!(
                    "{:>5.0} s: RSS {} | churn {} ok, {} failed | bidi from {}",
                    t,
                    pids.iter()
                        .map(|(p, pid)| format!(
                            "{p} {:.1} MiB",
                            conduit_bench::procstat::rss_bytes(*pid).unwrap_or(0) as f64
                                / 1048576.0
                        ))
                        .collect::<Vec<_>>()
                        .join(", "),
                    churn.ok.load(Ordering::Relaxed),
                    churn.failed.load(Ordering::Relaxed),
                    answer.server
                ));
                next += args.interval;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        r
    });
    sampled?;
    let report = load.report()?;
    let elapsed = started.elapsed();
    let series: Vec<TimeSeries> = series.into_values().collect();
    let warmup = args
        .warmup
        .as_secs_f64()
        .min(args.duration.as_secs_f64() / 2.0);
    let table = summary(&series, warmup);
    println!("\n{table}");
    let t = &report.total;
    println!(
        "- {:.0} s of load; steady load: {} requests sent, {} succeeded, {} failed (HTTP/1.1 {}, gRPC {}), longest gap {:.0} ms",
        elapsed.as_secs_f64(),
        t.sent,
        t.succeeded,
        t.failed,
        report.by_protocol.get("http1").map_or(0, |f| f.sent),
        report.by_protocol.get("grpc").map_or(0, |f| f.sent),
        t.longest_gap_ms
    );
    println!(
        "- churn: {} new connections answered, {} failed; the bidi stream stayed open throughout",
        churn.ok.load(Ordering::Relaxed),
        churn.failed.load(Ordering::Relaxed)
    );
    println!("- slopes over the samples after {warmup:.0} s of warm-up");
    for (k, v) in &t.errors {
        println!("- errors: {k}: {v}");
    }
    let png_path = args.png.clone().unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reliability-soak.png")
    });
    let pick =
        |unit: &str| -> Vec<&TimeSeries> { series.iter().filter(|s| s.unit == unit).collect() };
    let charts = [
        Chart {
            title: "proxy RSS".into(),
            series: pick("MiB"),
        },
        Chart {
            title: "proxy file descriptors".into(),
            series: pick("fds"),
        },
        Chart {
            title: "eBPF map entries".into(),
            series: pick("entries"),
        },
    ];
    match png(&png_path, "conduit soak: resources over time", &charts) {
        Ok(()) => progress(&format!("plot written to {}", png_path.display())),
        Err(e) => progress(&format!("warning: no plot: {e:#}")),
    }
    drop(bidi);
    drop(load);
    mesh.stop_controller()?;
    Ok(())
}
