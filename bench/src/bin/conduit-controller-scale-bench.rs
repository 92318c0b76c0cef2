//! `conduit-controller-scale-bench` (`cargo xtask bench controller-scale`):
//! the real `conduit-controller` against the fake Kubernetes API server at
//! cluster scale (by default 10,000 pods, 1,000 services with one
//! EndpointSlice each, 1,000 watching proxies).
//!
//! For each update mode (`incremental`, the default, and `full`, the old
//! full rebuild on every change, through the controller's hidden
//! `--kubernetes-full-rebuilds`) it starts a fresh controller process,
//! measures the time until it is ready (lists done, /ready 200) and its RSS,
//! connects the watchers (each its own HTTP/2 connection, using the proxies'
//! client library, watching the changing service `svc-0` and one other
//! service of its own), then changes `svc-0`'s EndpointSlice one change at a
//! time: each change replaces one "marker" endpoint whose address encodes
//! the change number. A change's latency for a watcher runs from just
//! before the fake server accepts it to the moment that watcher publishes
//! it. Prints a Markdown table.

use anyhow::{Context, Result, bail};
use clap::Parser;
use conduit_bench::procstat;
use conduit_bench::propagation::{collect, ms, percentile};
use conduit_controller_api::client::{WatchOptions, watch_destination_with};
use conduit_kube::fake::FakeApiServer;
use conduit_tests::bins;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ObjectReference, Pod, PodIP, PodSpec, PodStatus, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Endpoint as GrpcEndpoint;

#[derive(Debug, Parser)]
#[command(
    name = "conduit-controller-scale-bench",
    about = "conduit-controller with the fake API server at cluster scale"
)]
struct Cli {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    /// Watching proxies (one HTTP/2 connection each, two watched services).
    #[arg(long, default_value_t = 1_000)]
    watchers: usize,
    /// Endpoint changes per mode.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Update modes to measure, comma separated: incremental, full.
    #[arg(long, value_delimiter = ',', default_value = "incremental,full")]
    modes: Vec<String>,
    /// Give up on a change when not every watcher has it after this long.
    #[arg(long, default_value = "60s", value_parser = conduit_bench::args::parse_duration)]
    timeout: Duration,
}

const NS: &str = "bench";

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(NS.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn pod_ip(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 1, 0, 0)) + i)
}

/// The marker endpoint of change `g` (not a pod: 10.255.0.0/16).
fn marker_ip(g: usize) -> Ipv4Addr {
    let g = u32::try_from(g).unwrap_or(0) & 0xffff;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 255, 0, 0)) + g)
}

fn marker_of(ip: std::net::IpAddr) -> Option<usize> {
    match ip {
        std::net::IpAddr::V4(v4) if v4.octets()[..2] == [10, 255] => {
            Some((u32::from(v4) - u32::from(Ipv4Addr::new(10, 255, 0, 0))) as usize)
        }
        _ => None,
    }
}

fn service(i: usize) -> Service {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32);
    Service {
        metadata: meta(&format!("svc-{i}")),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.to_string()),
            cluster_ips: Some(vec![ip.to_string()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A running meshed pod (the proxy as a native sidecar, by its container
/// and port names).
fn pod(i: usize) -> Pod {
    let proxy = Container {
        name: "conduit-proxy".into(),
        restart_policy: Some("Always".into()),
        ports: Some(vec![ContainerPort {
            name: Some("conduit-inbound".into()),
            container_port: 4143,
            ..Default::default()
        }]),
        ..Default::default()
    };
    let ip = pod_ip(i).to_string();
    Pod {
        metadata: meta(&format!("pod-{i}")),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            init_containers: Some(vec![proxy]),
            service_account_name: Some(format!("sa-{}", i % 100)),
            node_name: Some(format!("node-{}", i % 50)),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.clone()),
            pod_ips: Some(vec![PodIP { ip }]),
            ..Default::default()
        }),
    }
}

/// Service `s`'s slice: its share of the pods, plus the marker of change
/// `generation` (for service 0).
fn slice(s: usize, pods_per_service: usize, generation: Option<usize>) -> EndpointSlice {
    let mut m = meta(&format!("svc-{s}-abcde"));
    m.labels = Some([("kubernetes.io/service-name".to_string(), format!("svc-{s}"))].into());
    let endpoint = |ip: String, pod: Option<String>| Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        target_ref: pod.map(|name| ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(NS.into()),
            name: Some(name),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut endpoints: Vec<Endpoint> = (0..pods_per_service)
        .map(|j| s * pods_per_service + j)
        .map(|p| endpoint(pod_ip(p).to_string(), Some(format!("pod-{p}"))))
        .collect();
    if let Some(g) = generation {
        endpoints.push(endpoint(marker_ip(g).to_string(), None));
    }
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: Some(endpoints),
    }
}

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Row {
    mode: String,
    ready: Duration,
    rss_ready: u64,
    connect: Duration,
    rss_watched: u64,
    /// Per change: every watcher's latency.
    samples: Vec<Duration>,
    /// Per change: when the last watcher had it.
    all_seen: Vec<Duration>,
    cpu_per_change: Duration,
    rss_end: u64,
}

async fn measure(cli: &Cli, fake: &FakeApiServer, mode: &str) -> Result<Row> {
    let per = (cli.pods / cli.services.max(1)).max(1);
    fake.apply(&slice(0, per, Some(0)));
    let dir = tempfile_dir()?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, conduit_kube::fake::kubeconfig(&fake.url()))?;
    let (grpc, admin) = (free_port()?, free_port()?);
    let mut cmd = Command::new(bins::find("conduit-controller")?);
    cmd.arg("--discovery=kubernetes")
        .arg(format!("--grpc-addr=127.0.0.1:{grpc}"))
        .arg(format!("--admin-addr=127.0.0.1:{admin}"))
        .arg("--insecure-plaintext-grpc")
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("controller.log"))?);
    match mode {
        "incremental" => {}
        "full" => {
            cmd.arg("--kubernetes-full-rebuilds");
        }
        other => bail!("unknown mode {other:?} (incremental, full)"),
    }
    let started = Instant::now();
    let mut child = Controller(cmd.spawn().context("starting conduit-controller")?);
    let pid = child.0.id();
    while !conduit_test_support::http::ready(admin).await {
        if let Some(status) = child.0.try_wait()? {
            let log = std::fs::read_to_string(dir.join("controller.log")).unwrap_or_default();
            bail!("controller exited ({status}):\n{log}");
        }
        if started.elapsed() > cli.timeout {
            bail!("controller not ready after {:?}", cli.timeout);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = started.elapsed();
    let rss_ready = procstat::rss_bytes(pid)?;
    eprintln!(
        "[{mode}] ready after {ready:.2?}; connecting {} watchers",
        cli.watchers
    );

    let started = Instant::now();
    let (tx, mut seen) = mpsc::channel::<(usize, Instant)>(cli.watchers.max(1) * 4);
    let mut tasks = Vec::with_capacity(cli.watchers);
    let (others_tx, mut others) = mpsc::channel::<()>(cli.watchers.max(1));
    for w in 0..cli.watchers {
        let channel = GrpcEndpoint::from_shared(format!("http://127.0.0.1:{grpc}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        let other = format!(
            "svc-{}.{NS}.svc.cluster.local:80",
            1 + w % (cli.services - 1).max(1)
        );
        let mut orx = watch_destination_with(channel.clone(), &other, WatchOptions::default());
        let others_tx = others_tx.clone();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            // The other service: only its first state is awaited (it keeps
            // the watch open, as a proxy following two services does).
            let _ = orx.wait_for(|s| !s.endpoints.is_empty()).await;
            let _ = others_tx.send(()).await;
            let target = format!("svc-0.{NS}.svc.cluster.local:80");
            let mut rx = watch_destination_with(channel, &target, WatchOptions::default());
            let mut last = None;
            loop {
                let marker = rx
                    .borrow_and_update()
                    .endpoints
                    .iter()
                    .find_map(|e| marker_of(e.addr.ip()));
                let now = Instant::now();
                if marker.is_some() && marker != last {
                    last = marker;
                    if tx.send((marker.unwrap_or(0), now)).await.is_err() {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }));
    }
    drop((tx, others_tx));
    for _ in 0..cli.watchers {
        tokio::time::timeout(cli.timeout, others.recv())
            .await
            .context("watchers' other services")?;
    }
    collect(&mut seen, 0, cli.watchers, cli.timeout, None)
        .await
        .context("initial state")?;
    let connect = started.elapsed();
    let rss_watched = procstat::rss_bytes(pid)?;
    eprintln!("[{mode}] all watchers have their state after {connect:.2?}");

    let cpu_before = procstat::cpu_time(pid)?;
    let mut samples = Vec::new();
    let mut all_seen = Vec::new();
    for g in 1..=cli.changes {
        let s = slice(0, per, Some(g));
        let t0 = Instant::now();
        fake.apply(&s);
        let lat = collect(&mut seen, g, cli.watchers, cli.timeout, Some(t0))
            .await
            .with_context(|| format!("change {g}"))?;
        all_seen.push(lat.iter().copied().max().unwrap_or_default());
        samples.extend(lat);
    }
    let cpu_per_change =
        (procstat::cpu_time(pid)? - cpu_before) / u32::try_from(cli.changes.max(1))?;
    let rss_end = procstat::rss_bytes(pid)?;
    for t in tasks {
        t.abort();
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Row {
        mode: mode.into(),
        ready,
        rss_ready,
        connect,
        rss_watched,
        samples,
        all_seen,
        cpu_per_change,
        rss_end,
    })
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("conduit-controller-scale-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.services < 2 || cli.watchers == 0 {
        bail!("--services must be at least 2 and --watchers at least 1");
    }
    conduit_kube::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new()?;
    let rows = rt.block_on(async {
        let fake = FakeApiServer::start().await?;
        let per = (cli.pods / cli.services).max(1);
        for i in 0..cli.pods {
            fake.apply(&pod(i));
        }
        for s in 0..cli.services {
            fake.apply(&service(s));
            fake.apply(&slice(s, per, (s == 0).then_some(0)));
        }
        let mut rows = Vec::new();
        for mode in &cli.modes {
            rows.push(measure(&cli, &fake, mode).await?);
        }
        anyhow::Ok(rows)
    })?;
    let load = conduit_bench::report::load_average()
        .map(|(l, n)| format!("load average {l:.2} on {n} cores"))
        .unwrap_or_default();
    println!();
    println!(
        "conduit-controller at cluster scale: {} pods, {} services (one slice each), {} watchers \
         (each its own connection, watching svc-0 and one other service), {} changes of svc-0's \
         slice one at a time; {load}",
        cli.pods, cli.services, cli.watchers, cli.changes
    );
    println!();
    println!(
        "| updates | time to ready | RSS ready | all watchers served | RSS with watchers | change -> watcher p50 | p99 | change -> every watcher p50 | p99 | controller CPU per change | RSS after changes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    for r in &rows {
        let mut s = r.samples.clone();
        s.sort();
        let mut a = r.all_seen.clone();
        a.sort();
        println!(
            "| {} | {:.2?} | {} | {:.2?} | {} | {} | {} | {} | {} | {} | {} |",
            r.mode,
            r.ready,
            mib(r.rss_ready),
            r.connect,
            mib(r.rss_watched),
            ms(percentile(&s, 0.5)),
            ms(percentile(&s, 0.99)),
            ms(percentile(&a, 0.5)),
            ms(percentile(&a, 0.99)),
            ms(r.cpu_per_change),
            mib(r.rss_end),
        );
    }
    Ok(())
}
