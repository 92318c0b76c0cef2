//! `conduit-mesh-bench` (`cargo xtask bench mesh`): the same HTTP load, in
//! one run, through the paths of docs/benchmarks.md's "Mesh" section:
//! direct, eBPF capture with two proxies and mTLS, iptables REDIRECT with
//! the same two proxies, and eBPF with the sockmap fast path; at fixed rates
//! (open loop) and at the maximum rate (closed loop), HTTP/1.1 and HTTP/2.
//! Prints p50/p99/p99.9, throughput, each proxy's RSS and CPU and the
//! ratios to direct as a Markdown table, draws a PNG latency plot, and
//! writes both into docs/. Needs root (network namespaces, the agent).
//!
//! `--callgrind DIR` (`cargo xtask bench mesh-cost`) runs the proxies of the
//! proxied paths under valgrind's callgrind and adds a table of each proxy's
//! instructions per request, counted over the measured slices only
//! (`mesh/callgrind.rs`); its latencies are then valgrind's, not the proxy's,
//! and nothing is written into docs/.

#![allow(missing_docs)]

#[path = "mesh/callgrind.rs"]
mod callgrind;
#[path = "mesh/cpu.rs"]
mod cpu;
#[path = "mesh/instructions.rs"]
mod instructions;
#[path = "mesh/paths.rs"]
mod paths;
#[path = "mesh/pod.rs"]
mod pod;
#[path = "mesh/policy.rs"]
mod policy;
#[path = "mesh/results.rs"]
mod results;

use anyhow::{Context, Result, bail};
use callgrind::Callgrind;
use clap::{Parser, Subcommand};
use conduit_bench::loadgen::{Load, Protocol};
use conduit_bench::procstat::Sampler;
use conduit_bench::report::{fmt_opt, load_average};
use instructions::Counted;
use paths::{Kind, Path};
use results::Cell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Benchmarks the mesh: direct vs eBPF capture vs iptables REDIRECT.
#[derive(Parser, Debug)]
#[command(name = "conduit-mesh-bench")]
struct Args {
    #[command(subcommand)]
    inner: Option<Inner>,
    /// Measured time per (protocol, load, path).
    #[arg(long, value_parser = conduit_bench::args::parse_duration, default_value = "4s")]
    duration: Duration,
    /// Slices each measurement is cut into; the paths take turns slice by
    /// slice, so all see the same background load.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Unmeasured run through each path before each (protocol, load).
    #[arg(long, value_parser = conduit_bench::args::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Fixed request rates (requests per second, open loop).
    #[arg(long, value_delimiter = ',', default_value = "1000,3000")]
    rates: Vec<u32>,
    /// Concurrent requests of the maximum-rate run (closed loop); 0 skips it.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Protocols: http1, http2.
    #[arg(long, value_delimiter = ',', default_value = "http1,http2")]
    protocols: Vec<String>,
    /// Paths: direct, ebpf, iptables, sockmap (eBPF with --sockmap-fastpath).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,ebpf,iptables,sockmap"
    )]
    paths: Vec<String>,
    /// Where docs/benchmarks.md and docs/benchmarks-mesh.png are written.
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Print only; do not write into docs/.
    #[arg(long)]
    no_write: bool,
    /// Run the proxies of the paths other than direct under valgrind's
    /// callgrind, writing their profiles into DIR, and count each proxy's
    /// instructions per request over the measured slices. Implies
    /// --no-write (the timings are valgrind's).
    #[arg(long, value_name = "DIR")]
    callgrind: Option<PathBuf>,
}

impl Args {
    /// Whether the results go into docs/.
    fn writes_docs(&self) -> bool {
        !self.no_write && self.callgrind.is_none()
    }
}

#[derive(Subcommand, Debug)]
enum Inner {
    /// (internal) the HTTP server, run in the server pod.
    #[command(hide = true)]
    Serve {
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// (internal) the load generator, run in the client pod.
    #[command(hide = true)]
    Client,
}

fn main() {
    let args = Args::parse();
    let r = match &args.inner {
        Some(Inner::Serve { listen }) => pod::serve(listen),
        Some(Inner::Client) => pod::client(),
        None => bench(&args),
    };
    if let Err(e) = r {
        if conduit_tests::wait::interrupted() {
            eprintln!("[mesh-bench] interrupted; cleaned up");
            std::process::exit(130);
        }
        eprintln!("[mesh-bench] error: {e:#}");
        std::process::exit(1);
    }
}

fn progress(line: &str) {
    eprintln!("[mesh-bench] {line}");
}

fn bench(args: &Args) -> Result<()> {
    conduit_tests::signals::install()?;
    conduit_tests::process::set_echo(false);
    if let Some(reason) = conduit_tests::privilege::missing() {
        bail!(
            "{reason}: the mesh benchmark needs root, cgroup v2 and the bpf syscall \
             (run `sudo -E cargo xtask bench mesh`)"
        );
    }
    let protocols = conduit_bench::args::protocols(&args.protocols).map_err(anyhow::Error::msg)?;
    let mut kinds: Vec<Kind> = args
        .paths
        .iter()
        .map(|p| Kind::parse(p))
        .collect::<Result<_>>()?;
    kinds.sort_by_key(|k| *k as u8);
    kinds.dedup();
    if !kinds.contains(&Kind::Direct) {
        bail!("--paths must include direct (everything is compared with it)");
    }
    let loads = conduit_bench::args::loads(&args.rates, args.concurrency);
    if loads.is_empty() || protocols.is_empty() {
        bail!("nothing to measure: give --rates and/or --concurrency, and --protocols");
    }
    let callgrind = match &args.callgrind {
        None => None,
        Some(_) if kinds.len() < 2 => bail!(
            "--callgrind counts the proxies of the paths other than direct: add one to --paths \
             (e.g. --paths direct,ebpf)"
        ),
        Some(dir) => Some(Callgrind::prepare(dir)?),
    };
    if let Some(cg) = &callgrind {
        progress(&format!(
            "the proxies of every path but direct run under callgrind (profiles in {}): \
             their latencies and throughput are valgrind's, only the instruction counts are to be read",
            cg.dir().display()
        ));
    }
    let started = Instant::now();
    let load_before = load_average();
    if let Some((l, cpus)) = load_before
        && l > cpus as f64 / 2.0
    {
        progress(&format!(
            "warning: load average {l:.2} on {cpus} CPUs before starting: the numbers will be noisy"
        ));
    }
    let cells_n = protocols.len() * loads.len() * kinds.len();
    progress(&format!(
        "{} paths × {} protocols × {} loads: {cells_n} measurements of {:?} (+{:?} warm-up), in {} rounds; about {:.0} s after setup",
        kinds.len(),
        protocols.len(),
        loads.len(),
        args.duration,
        args.warmup,
        args.rounds,
        (args.duration + args.warmup).as_secs_f64() * cells_n as f64
    ));

    let mut paths = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    for (i, &k) in kinds.iter().enumerate() {
        progress(&format!(
            "path {}/{}: bringing up a mesh for {}",
            i + 1,
            kinds.len(),
            k.describe()
        ));
        let t = Instant::now();
        let path = match Path::up(k, &protocols, callgrind.as_ref()) {
            Ok(p) => p,
            Err(e) if k != Kind::Direct && !conduit_tests::wait::interrupted() => {
                // One broken path must not cost the others' numbers.
                progress(&format!(
                    "path {}: FAILED, left out of the results: {e:#}",
                    k.label()
                ));
                let first = format!("{e:#}");
                let first = first.lines().next().unwrap_or_default().to_owned();
                failed.push(format!("{} could not be measured: {first}", k.label()));
                continue;
            }
            Err(e) => return Err(e),
        };
        progress(&format!(
            "path {}: ready in {:.1} s (target {}{})",
            k.label(),
            t.elapsed().as_secs_f64(),
            path.target,
            path.proxies
                .iter()
                .map(|(l, pid)| format!(", {l} pid {pid}"))
                .collect::<String>()
        ));
        paths.push(path);
    }

    // Memory of each proxy up and ready, before the first request.
    let idle: Vec<results::Idle> = paths
        .iter()
        .flat_map(|p| {
            p.proxies.iter().filter_map(|&(proxy, pid)| {
                Some(results::Idle {
                    path: p.kind,
                    proxy,
                    rss: conduit_bench::procstat::rss_bytes(pid).ok()?,
                    anon: conduit_bench::procstat::rss_anon_bytes(pid).ok()?,
                })
            })
        })
        .collect();
    let (cells, counted) = measure(args, &mut paths, &protocols, &loads)?;
    let elapsed = started.elapsed();
    let mut checked = Vec::new();
    for p in &paths {
        let line = p.verify()?;
        progress(&format!("checked {line}"));
        checked.push(line);
    }
    progress("stopping the meshes");
    drop(paths);

    let table = results::table(&cells);
    let mut summary = results::summary(&cells);
    summary.extend(cpu::lines(&cells));
    summary.extend(results::idle_line(&idle));
    summary.extend(failed);
    summary.push(format!(
        "checked in the proxies' metrics: {}",
        checked.join("; ")
    ));
    let command = command_line();
    if callgrind.is_some() {
        println!("\n{}", instructions::TIMINGS_WARNING);
    }
    println!("\n{table}");
    for l in &summary {
        println!("- {l}");
    }
    let load_after = load_average();
    let machine = machine_line(load_before, load_after);
    println!("- {machine}");
    println!("- command: {command}");
    if let Some(cg) = &callgrind {
        println!(
            "\nInstructions per request, each proxy under callgrind:\n\n{}",
            instructions::table(&counted)
        );
        for l in instructions::notes(&counted, cg.dir()) {
            println!("- {l}");
        }
    }

    if !args.writes_docs() {
        return Ok(());
    }
    let docs = match &args.docs {
        Some(d) => d.clone(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the bench crate has no parent directory")?
            .join("docs"),
    };
    let png = docs.join("benchmarks-mesh.png");
    let plotted = match results::plot(
        &cells,
        &png,
        "conduit mesh: latency by percentile (log scales)",
    ) {
        Ok(()) => {
            progress(&format!("latency plot written to {}", png.display()));
            true
        }
        Err(e) => {
            progress(&format!("warning: no plot: {e:#}"));
            false
        }
    };
    let generated = generated_section(&table, &summary, &machine, &command, plotted, elapsed);
    let doc = docs.join("benchmarks.md");
    results::write_doc(&doc, &generated)?;
    progress(&format!("results written to {}", doc.display()));
    Ok(())
}

/// Every (protocol, load, path): the cells of the table and, for the paths
/// under callgrind, what their proxies executed.
fn measure(
    args: &Args,
    paths: &mut [Path],
    protocols: &[Protocol],
    loads: &[Load],
) -> Result<(Vec<Cell>, Vec<Counted>)> {
    let mut cells = Vec::new();
    let mut all_counted = Vec::new();
    let groups = protocols.len() * loads.len();
    let slice = args.duration / args.rounds;
    let mut n = 0;
    for &protocol in protocols {
        for &load in loads {
            n += 1;
            let t = Instant::now();
            let mut group: Vec<Cell> = paths
                .iter()
                .map(|p| Cell::new(protocol, load, p.kind, &p.proxies, &p.apps))
                .collect();
            let mut counted: Vec<Option<Counted>> = paths
                .iter()
                .map(|p| {
                    let labels: Vec<&'static str> = p.profiled.iter().map(|x| x.label).collect();
                    (!labels.is_empty()).then(|| Counted::new(protocol, load, p.kind, &labels))
                })
                .collect();
            for p in paths.iter_mut() {
                check_interrupted()?;
                p.measure(protocol, load, args.warmup)
                    .with_context(|| format!("warm-up through {}", p.kind.label()))?;
            }
            for _ in 0..args.rounds {
                for ((p, cell), count) in paths.iter_mut().zip(group.iter_mut()).zip(&mut counted) {
                    check_interrupted()?;
                    let pids: Vec<u32> = p
                        .proxies
                        .iter()
                        .chain(&p.apps)
                        .map(|(_, pid)| *pid)
                        .collect();
                    let profiled = p.profiled.clone();
                    let ((sample, usage), executed) = callgrind::counted(&profiled, || {
                        let sampler = Sampler::start(&pids);
                        let sample = p.measure(protocol, load, slice).with_context(|| {
                            format!(
                                "measuring {} {load} through {}",
                                protocol.label(),
                                p.kind.label()
                            )
                        })?;
                        Ok((sample, sampler.stop()))
                    })?;
                    if let Some(c) = count {
                        c.add(&sample, &executed);
                    }
                    cell.add(sample, usage);
                }
            }
            let line: Vec<String> = group
                .iter()
                .map(|c| {
                    format!(
                        "{} p50 {} p99 {} {:.0} req/s{}",
                        c.kind.label(),
                        fmt_opt(c.sample.quantile(0.5)),
                        fmt_opt(c.sample.quantile(0.99)),
                        c.sample.throughput(),
                        if c.sample.errors > 0 {
                            format!(" ({} errors)", c.sample.errors)
                        } else {
                            String::new()
                        }
                    )
                })
                .collect();
            progress(&format!(
                "{n:>2}/{groups} {} {load} ({:.1} s): {}",
                protocol.label(),
                t.elapsed().as_secs_f64(),
                line.join("; ")
            ));
            for c in counted.iter().flatten() {
                progress(&format!(
                    "{n:>2}/{groups} {} {load} under callgrind: {}",
                    protocol.label(),
                    instructions::progress_line(c)
                ));
            }
            cells.extend(group);
            all_counted.extend(counted.into_iter().flatten());
        }
    }
    Ok((cells, all_counted))
}

fn check_interrupted() -> Result<()> {
    if conduit_tests::wait::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        "cargo xtask bench mesh".into()
    } else {
        format!("cargo xtask bench mesh -- {}", args.join(" "))
    }
}

fn machine_line(before: Option<(f64, usize)>, after: Option<(f64, usize)>) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = match (before, after) {
        (Some((b, _)), Some((a, _))) => format!(", load average {b:.2} before, {a:.2} after"),
        _ => String::new(),
    };
    format!("machine: {cpus} CPUs, kernel {}{load}", kernel.trim())
}

fn generated_section(
    table: &str,
    summary: &[String],
    machine: &str,
    command: &str,
    plotted: bool,
    elapsed: Duration,
) -> String {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = std::process::Command::new("git")
        // The files this program writes itself do not count.
        .args(["status", "--porcelain", "--untracked-files=no", "--"])
        .args([
            ":(top)",
            ":(top,exclude)docs/benchmarks.md",
            ":(top,exclude)docs/benchmarks-mesh.png",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    let at = if dirty {
        format!("commit `{commit}` plus uncommitted changes in the working tree")
    } else {
        format!("commit `{commit}`")
    };
    let mut s = format!(
        "Generated by `{command}` at {at} in {:.0} s.\n\n{table}\n",
        elapsed.as_secs_f64()
    );
    for l in summary {
        s.push_str(&format!("- {l}\n"));
    }
    s.push_str(&format!("- {machine}\n"));
    if plotted {
        s.push_str("\n![latency by percentile, per path](benchmarks-mesh.png)\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("conduit-mesh-bench").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn callgrind_implies_no_write() {
        assert!(parse(&[]).writes_docs());
        assert!(!parse(&["--no-write"]).writes_docs());
        let a = parse(&["--callgrind", "/tmp/cg", "--paths", "direct,ebpf"]);
        assert_eq!(
            a.callgrind.as_deref(),
            Some(std::path::Path::new("/tmp/cg"))
        );
        assert!(!a.writes_docs());
        assert!(Args::try_parse_from(["conduit-mesh-bench", "--callgrind"]).is_err());
    }
}
