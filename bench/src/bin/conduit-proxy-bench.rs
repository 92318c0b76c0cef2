//! `conduit-proxy-bench` (`cargo xtask bench proxy`): latency at fixed
//! request rates (open loop) and the maximum rate (closed loop), HTTP/1.1
//! and HTTP/2, through one real `conduit-proxy` process and directly to the
//! same hyper server; prints p50/p99/p99.9, throughput, the proxy's RSS and
//! the ratio to direct.

#[path = "proxy/proxy.rs"]
mod proxy;

use anyhow::{Context, Result, bail};
use clap::Parser;
use conduit_bench::loadgen::{self, Load, Protocol, Sample, Target};
use conduit_bench::procstat::Sampler;
use conduit_bench::report::{self, Row};
use conduit_bench::server;
use proxy::{Proxy, Route};
use std::path::PathBuf;
use std::time::Duration;

/// Benchmarks one conduit-proxy against direct connections.
#[derive(Parser, Debug)]
#[command(name = "conduit-proxy-bench")]
struct Args {
    /// Length of each measured run.
    #[arg(long, value_parser = conduit_bench::args::parse_duration, default_value = "5s")]
    duration: Duration,
    /// Slices each measurement is cut into, alternating direct and proxy.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Unmeasured run before each measured one (connections, caches, EWMA).
    #[arg(long, value_parser = conduit_bench::args::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Fixed request rates (requests per second, open loop).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<u32>,
    /// Concurrent requests of the maximum-rate run (closed loop); 0 skips it.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Protocols to measure: http1, http2.
    #[arg(long, value_delimiter = ',', default_value = "http1,http2")]
    protocols: Vec<String>,
    /// How client connections reach the proxy: `redirect` (iptables REDIRECT
    /// and SO_ORIGINAL_DST, as in a pod; needs root), `fixed` (the proxy's
    /// --outbound-fixed-dst) or `auto` (redirect when root).
    #[arg(long, default_value = "auto")]
    route: String,
    /// The conduit-proxy binary (default: the one next to this program,
    /// rebuilt first).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Do not rebuild conduit-proxy before running.
    #[arg(long)]
    no_build: bool,
    /// Idle time after the runs before RSS is read once more (the proxy
    /// returns freed heap memory on its 10 s sweep); 0 skips it.
    #[arg(long, value_parser = conduit_bench::args::parse_duration, default_value = "12s")]
    settle: Duration,
}

fn main() -> Result<()> {
    proxy::cleanup_on_interrupt()?;
    let args = Args::parse();
    let protocols = conduit_bench::args::protocols(&args.protocols).map_err(anyhow::Error::msg)?;
    let loads = conduit_bench::args::loads(&args.rates, args.concurrency);

    let bin = proxy::locate(
        args.proxy_bin.clone(),
        !args.no_build && args.proxy_bin.is_none(),
    )?;
    let route = match args.route.as_str() {
        "redirect" => Route::Redirect,
        "fixed" => Route::Fixed,
        "auto" if proxy::can_redirect() => Route::Redirect,
        "auto" if proxy::supports_fixed(&bin) => Route::Fixed,
        "auto" => bail!(
            "cannot route traffic into the proxy: not root (needed for the iptables REDIRECT) and \
             {} has no --outbound-fixed-dst; run as root",
            bin.display()
        ),
        other => bail!("unknown --route {other:?} (redirect, fixed, auto)"),
    };

    let load_before = report::load_average();
    if let Some((load, cpus)) = load_before
        && load > cpus as f64 / 2.0
    {
        eprintln!(
            "[bench] warning: load average {load:.2} on {cpus} CPUs before starting: other processes \
             compete for the CPU and the numbers will be noisy"
        );
    }
    let server = server::Server::start()?;
    eprintln!("[bench] hyper server on {}", server.addr);
    let proxy = Proxy::start(&bin, server.addr, route)?;
    let through = proxy.client_addr(route);
    eprintln!(
        "[bench] conduit-proxy pid {} (outbound {}, route {route:?}: clients dial {through})",
        proxy.pid(),
        proxy.outbound
    );
    let idle_rss = proxy.rss_bytes()?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("client runtime")?;
    let runs = protocols.len() * loads.len();
    let per_run = (args.duration + args.warmup) * 2;
    eprintln!(
        "[bench] {runs} measurements of {:?} direct + {:?} through the proxy (+{:?} warm-up each): about {:.0} s",
        args.duration,
        args.duration,
        args.warmup,
        (per_run * runs as u32).as_secs_f64()
    );

    let mut rows = Vec::new();
    let mut n = 0;
    for &protocol in &protocols {
        let direct_t = rt.block_on(async { Target::new(server.addr, protocol) });
        let proxy_t = rt.block_on(async { Target::new(through, protocol) });
        // A request through the proxy first: fail early and clearly.
        check(&rt, &proxy_t, &proxy, protocol)?;
        for &load in &loads {
            n += 1;
            eprint!(
                "[bench] {n:>2}/{runs} {} {}: warm-up",
                protocol.label(),
                load
            );
            run(&rt, &direct_t, load, args.warmup);
            run(&rt, &proxy_t, load, args.warmup);
            // Direct and proxy alternate in `rounds` slices, so both see the
            // same background load on a shared machine.
            let slice = args.duration / args.rounds;
            let (mut direct, mut through) = (Sample::default(), Sample::default());
            let sampler = Sampler::start(&[proxy.pid()]);
            for round in 1..=args.rounds {
                eprint!(", round {round}/{}", args.rounds);
                direct.merge(run(&rt, &direct_t, load, slice));
                through.merge(run(&rt, &proxy_t, load, slice));
            }
            let rss = sampler.stop().usage[0];
            eprintln!(
                "\n[bench]       direct {:.0} req/s p50 {} p99 {} ({} errors); proxy {:.0} req/s p50 {} p99 {} ({} errors)",
                direct.throughput(),
                report::fmt_opt(direct.quantile(0.5)),
                report::fmt_opt(direct.quantile(0.99)),
                direct.errors,
                through.throughput(),
                report::fmt_opt(through.quantile(0.5)),
                report::fmt_opt(through.quantile(0.99)),
                through.errors,
            );
            rows.push(Row {
                protocol,
                load,
                path: "direct",
                sample: direct,
                rss: None,
            });
            rows.push(Row {
                protocol,
                load,
                path: "proxy",
                sample: through,
                rss: Some(rss),
            });
        }
    }
    let peak_rss = proxy.peak_rss_bytes()?;
    let idle_after = proxy.rss_bytes()?;
    let settled = if args.settle.is_zero() {
        None
    } else {
        eprintln!("[bench] idle for {:?}, then RSS once more", args.settle);
        std::thread::sleep(args.settle);
        Some((proxy.rss_bytes()?, args.settle))
    };
    drop(proxy);
    drop(server);

    let summary = report::Summary {
        idle_rss,
        idle_after,
        settled,
        peak_rss,
        load_before,
        load_after: report::load_average(),
    };
    println!();
    report::print(
        &rows,
        &summary,
        &conduit_bench::args::command_line("conduit-proxy-bench"),
    );
    Ok(())
}

fn run(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    load: Load,
    duration: Duration,
) -> loadgen::Sample {
    loadgen::run(rt.handle(), target, load, duration)
}

fn check(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    proxy: &Proxy,
    protocol: Protocol,
) -> Result<()> {
    let s = loadgen::closed_loop(rt.handle(), target, 1, Duration::from_millis(200));
    if s.latencies.is_empty() {
        bail!(
            "no {} request succeeded through the proxy ({} errors); its log:\n{}",
            protocol.label(),
            s.errors,
            proxy.log_tail()
        );
    }
    Ok(())
}
