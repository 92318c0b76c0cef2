//! `conduit-controller-bench`: propagation latency of endpoint changes from
//! the discovery file to N watching gRPC clients, and the controller's RSS.
//!
//! For each client count it starts a fresh controller (this binary re-run
//! as `serve-controller`, a separate process so its RSS is its own), connects
//! N clients (each its own HTTP/2 connection, using the proxies' client
//! library), then makes M changes to the discovery file one at a time: each
//! replaces one "marker" endpoint. The latency of a change for a client is
//! from just before the file is renamed into place to the moment that client
//! publishes the new state. Prints a markdown table.

use anyhow::{Context, bail};
use clap::Parser;
use conduit_bench::propagation::{collect, ms, percentile};
use conduit_controller_api::client::{WatchOptions, watch_destination_with};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

#[derive(Debug, Parser)]
#[command(
    name = "conduit-controller-bench",
    about = "Propagation latency and RSS of conduit-controller with N watching clients"
)]
struct Cli {
    #[command(subcommand)]
    serve: Option<Serve>,
    /// Client counts to measure, comma separated (up to a few thousand).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    clients: Vec<usize>,
    /// Endpoint changes per client count.
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Endpoints of the watched service besides the changing marker.
    #[arg(long, default_value_t = 20)]
    endpoints: usize,
    /// Give up on a change when not every client has seen it after this long.
    #[arg(long, default_value = "30s", value_parser = conduit_controller::cli::parse_duration)]
    change_timeout: Duration,
}

#[derive(Debug, clap::Subcommand)]
enum Serve {
    /// Internal: run the controller (the benchmark's child process).
    #[command(hide = true)]
    ServeController(conduit_controller::cli::ServeArgs),
}

const TARGET: &str = "bench.default.svc.cluster.local:80";

struct Row {
    clients: usize,
    changes: usize,
    samples: Vec<Duration>,
    /// Per change: when the last client saw it.
    all_seen: Vec<Duration>,
    connect_time: Duration,
    rss_base_kib: u64,
    rss_connected_kib: u64,
    rss_end_kib: u64,
    /// Controller CPU time per change.
    cpu_per_change: Duration,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Serve::ServeController(args)) = cli.serve {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        return tokio::runtime::Runtime::new()?.block_on(conduit_controller::cli::run(args));
    }
    conduit_controller::cli::raise_fd_limit();
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    for &n in &cli.clients {
        rows.push(rt.block_on(measure(n, &cli))?);
    }
    print_table(&rows, &cli);
    Ok(())
}

/// The discovery file for change number `generation`.
fn discovery(endpoints: usize, generation: usize) -> String {
    let mut s = String::from(
        "services:\n  - name: bench\n    namespace: default\n    clusterIP: 10.96.0.100\n    ports: [{port: 80, targetPort: 8080}]\n    endpoints:\n",
    );
    for i in 0..endpoints {
        s.push_str(&format!(
            "      - {{ip: 10.1.{}.{}, serviceAccount: bench, meshed: true, labels: {{pod: bench-{i}}}}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    s.push_str(&format!(
        "      - {{ip: 10.2.{}.{}, serviceAccount: bench, meshed: true, labels: {{marker: \"{generation}\"}}}}\n",
        generation / 250,
        generation % 250 + 1
    ));
    s
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    fn start(dir: &Path, discovery: &Path, grpc: u16, admin: u16) -> anyhow::Result<Controller> {
        let log = dir.join("controller.log");
        let child = Command::new(std::env::current_exe()?)
            .arg("serve-controller")
            .arg(format!("--discovery=file:{}", discovery.display()))
            .arg(format!("--grpc-addr=127.0.0.1:{grpc}"))
            .arg(format!("--admin-addr=127.0.0.1:{admin}"))
            // The benchmark's watchers speak plaintext on loopback: it
            // measures discovery propagation, not TLS.
            .arg("--insecure-plaintext-grpc")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the controller")?;
        Ok(Controller { child, log })
    }

    /// User plus system CPU time used so far.
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name (which is in parentheses).
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as u64;
        Ok(Duration::from_micros(ticks * 1_000_000 / hz.max(1)))
    }

    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS missing")
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_ready(controller: &mut Controller, admin: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = controller.child.try_wait()? {
            let log = std::fs::read_to_string(&controller.log).unwrap_or_default();
            bail!("controller exited ({status}):\n{log}");
        }
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            let mut out = String::new();
            s.read_to_string(&mut out).await?;
            if out.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "controller not ready after 30 s (log: {})",
                controller.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn measure(n: usize, cli: &Cli) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("discovery.yaml");
    write_atomic(&path, &discovery(cli.endpoints, 0))?;
    let (grpc, admin) = (free_port()?, free_port()?);
    let mut controller = Controller::start(dir.path(), &path, grpc, admin)?;
    wait_ready(&mut controller, admin).await?;
    let rss_base_kib = controller.rss_kib()?;

    eprintln!("[{n} clients] connecting...");
    let started = Instant::now();
    let (tx, mut seen) = mpsc::channel::<(usize, Instant)>(n.max(1) * 2);
    let url = format!("http://127.0.0.1:{grpc}");
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = Endpoint::from_shared(url.clone())?
            .tcp_nodelay(true)
            .connect_lazy();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut rx = watch_destination_with(channel, TARGET, WatchOptions::default());
            let mut last = None;
            loop {
                let generation = rx
                    .borrow_and_update()
                    .endpoints
                    .iter()
                    .find_map(|e| e.labels.get("marker").and_then(|m| m.parse::<usize>().ok()));
                let now = Instant::now();
                if generation.is_some() && generation != last {
                    last = generation;
                    if tx.send((generation.unwrap_or(0), now)).await.is_err() {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    collect(&mut seen, 0, n, cli.change_timeout, None)
        .await
        .context("initial state")?;
    let connect_time = started.elapsed();
    eprintln!(
        "[{n} clients] all have the initial state after {:.2?}",
        connect_time
    );
    let rss_connected_kib = controller.rss_kib()?;

    let cpu_before = controller.cpu()?;
    let mut samples = Vec::with_capacity(n * cli.changes);
    let mut all_seen = Vec::with_capacity(cli.changes);
    for g in 1..=cli.changes {
        let text = discovery(cli.endpoints, g);
        let t0 = Instant::now();
        write_atomic(&path, &text)?;
        let lat = collect(&mut seen, g, n, cli.change_timeout, Some(t0))
            .await
            .with_context(|| {
                format!("change {g} (controller log: {})", controller.log.display())
            })?;
        all_seen.push(lat.iter().copied().max().unwrap_or_default());
        samples.extend(lat);
        if g % 10 == 0 || g == cli.changes {
            eprintln!("[{n} clients] change {g}/{}", cli.changes);
        }
    }
    let rss_end_kib = controller.rss_kib()?;
    let cpu_per_change = (controller.cpu()? - cpu_before) / u32::try_from(cli.changes.max(1))?;
    drop(controller);
    for t in tasks {
        t.abort();
    }
    Ok(Row {
        clients: n,
        changes: cli.changes,
        samples,
        all_seen,
        connect_time,
        rss_base_kib,
        rss_connected_kib,
        rss_end_kib,
        cpu_per_change,
    })
}

/// CPU time comes in clock ticks (usually 10 ms): say so when below one.
fn cpu(per_change: Duration, changes: usize) -> String {
    if per_change.is_zero() {
        let tick = Duration::from_millis(10) / u32::try_from(changes.max(1)).unwrap_or(u32::MAX);
        format!("< {}", ms(tick))
    } else {
        ms(per_change)
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn print_table(rows: &[Row], cli: &Cli) {
    println!();
    println!(
        "conduit-controller propagation: file change -> client state ({} endpoints + 1 changing, {} changes per row, one change at a time)",
        cli.endpoints, cli.changes
    );
    println!();
    println!(
        "| clients | changes | p50 | p99 | max | last client p50 | last client p99 | connect all | controller CPU per change | RSS idle | RSS with clients | RSS after changes |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let mut s = r.samples.clone();
        s.sort();
        let mut a = r.all_seen.clone();
        a.sort();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2?} | {} | {} | {} | {} |",
            r.clients,
            r.changes,
            ms(percentile(&s, 0.5)),
            ms(percentile(&s, 0.99)),
            ms(s.last().copied().unwrap_or_default()),
            ms(percentile(&a, 0.5)),
            ms(percentile(&a, 0.99)),
            r.connect_time,
            cpu(r.cpu_per_change, r.changes),
            mib(r.rss_base_kib),
            mib(r.rss_connected_kib),
            mib(r.rss_end_kib),
        );
    }
}
