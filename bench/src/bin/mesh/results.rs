//! What the mesh benchmark measured, and how it is shown: a Markdown table
//! (latency percentiles, throughput, the proxies' RSS and CPU, differences
//! and ratios to direct), summary lines, a PNG latency plot, and the
//! generated section of docs/benchmarks.md.

use crate::paths::Kind;
use anyhow::{Context, Result, bail};
use conduit_bench::loadgen::{Load, Protocol, Sample};
use conduit_bench::plot::{self, Panel, Series};
use conduit_bench::procstat::{Machine, Sampled, Usage};
use conduit_bench::report::{added, fmt_dur, fmt_mb, fmt_opt};
use conduit_bench::stats::ratio;
use conduit_bench::table::{Align, Table};
use std::path::Path;
use std::time::Duration;

/// One proxy's memory once its mesh is up and ready, before any request.
#[derive(Debug, Clone, PartialEq)]
pub struct Idle {
    pub path: Kind,
    pub proxy: &'static str,
    pub rss: u64,
    pub anon: u64,
}

/// The summary line of the idle proxies' memory (issue 12's "6 MB idle"),
/// or `None` when no path has a proxy.
pub fn idle_line(idle: &[Idle]) -> Option<String> {
    let largest = idle.iter().max_by_key(|i| i.rss)?;
    let each: Vec<String> = idle
        .iter()
        .map(|i| {
            format!(
                "{} {} {} ({})",
                i.path.label(),
                i.proxy,
                fmt_mb(i.rss),
                fmt_mb(i.anon)
            )
        })
        .collect();
    Some(format!(
        "idle proxy RSS (anonymous), each mesh up and ready with its certificates, before any request: largest {} ({}); {}",
        fmt_mb(largest.rss),
        fmt_mb(largest.anon),
        each.join(", ")
    ))
}

/// One (protocol, load, path) measurement, all its rounds merged.
pub struct Cell {
    pub protocol: Protocol,
    pub load: Load,
    pub kind: Kind,
    pub sample: Sample,
    /// Per proxy on the path: label and usage (largest RSS, mean CPU).
    pub proxies: Vec<(&'static str, Usage)>,
    /// The load generator and the server, the same way.
    pub apps: Vec<(&'static str, Usage)>,
    /// The machine's idle and stolen CPU over the slices (mean).
    pub machine: Machine,
    rounds: u32,
}

impl Cell {
    pub fn new(
        protocol: Protocol,
        load: Load,
        kind: Kind,
        proxies: &[(&'static str, u32)],
        apps: &[(&'static str, u32)],
    ) -> Cell {
        let unused =
            |v: &[(&'static str, u32)]| v.iter().map(|(l, _)| (*l, Usage::default())).collect();
        Cell {
            protocol,
            load,
            kind,
            sample: Sample::default(),
            proxies: unused(proxies),
            apps: unused(apps),
            machine: Machine::default(),
            rounds: 0,
        }
    }

    /// Adds one round: `sampled` follows the proxies, then the apps, in the
    /// order given to [`Cell::new`]. Slices are of equal length, so CPU is
    /// averaged.
    pub fn add(&mut self, sample: Sample, sampled: Sampled) {
        self.sample.merge(sample);
        let n = f64::from(self.rounds);
        let mean = |total: f64, x: f64| (total * n + x) / (n + 1.0);
        let followed = self.proxies.iter_mut().chain(self.apps.iter_mut());
        for ((_, total), u) in followed.zip(&sampled.usage) {
            total.max_rss = total.max_rss.max(u.max_rss);
            total.max_anon = total.max_anon.max(u.max_anon);
            total.cpu = mean(total.cpu, u.cpu);
            total.kernel = mean(total.kernel, u.kernel);
            total.wait = mean(total.wait, u.wait);
        }
        let m = sampled.machine;
        self.machine = Machine {
            cpus: m.cpus,
            idle: mean(self.machine.idle, m.idle),
            steal: mean(self.machine.steal, m.steal),
        };
        self.rounds += 1;
    }

    fn q(&self, q: f64) -> Option<Duration> {
        self.sample.quantile(q)
    }
}

fn direct_of<'a>(cells: &'a [Cell], c: &Cell) -> Option<&'a Cell> {
    cells
        .iter()
        .find(|d| d.kind == Kind::Direct && d.protocol == c.protocol && d.load == c.load)
}

fn times(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => ratio(a.as_secs_f64(), b.as_secs_f64())
            .map_or_else(|| "-".into(), |r| format!("{r:.2}×")),
        _ => "-".into(),
    }
}

fn cpu(u: &Usage) -> String {
    format!("{:.0}%", u.cpu * 100.0)
}

/// `RSS (anonymous)`.
fn memory(u: &Usage) -> String {
    format!("{} ({})", fmt_mb(u.max_rss), fmt_mb(u.max_anon))
}

/// The results table.
pub fn table(cells: &[Cell]) -> String {
    use Align::{Left, Right};
    let mut t = Table::new(&[
        ("protocol", Left),
        ("load", Left),
        ("path", Left),
        ("p50", Right),
        ("p99", Right),
        ("p99.9", Right),
        ("throughput", Right),
        ("errors", Right),
        ("new conns", Right),
        ("added p50", Right),
        ("added p99", Right),
        ("p50 × direct", Right),
        ("p99 × direct", Right),
        ("throughput × direct", Right),
        ("client proxy RSS (anon)", Right),
        ("client proxy CPU", Right),
        ("server proxy RSS (anon)", Right),
        ("server proxy CPU", Right),
    ]);
    for c in cells {
        let d = direct_of(cells, c).filter(|_| c.kind != Kind::Direct);
        let vs = |f: &dyn Fn(&Cell) -> String| d.map_or_else(String::new, |_| f(c));
        let proxy = |i: usize, f: fn(&Usage) -> String| {
            c.proxies.get(i).map_or_else(String::new, |(_, u)| f(u))
        };
        t.row([
            c.protocol.label().to_string(),
            c.load.to_string(),
            c.kind.label().to_string(),
            fmt_opt(c.q(0.5)),
            fmt_opt(c.q(0.99)),
            fmt_opt(c.q(0.999)),
            format!("{:.0} req/s", c.sample.throughput()),
            c.sample.errors.to_string(),
            c.sample.connections.to_string(),
            vs(&|c| added(c.q(0.5), d.and_then(|d| d.q(0.5)))),
            vs(&|c| added(c.q(0.99), d.and_then(|d| d.q(0.99)))),
            vs(&|c| times(c.q(0.5), d.and_then(|d| d.q(0.5)))),
            vs(&|c| times(c.q(0.99), d.and_then(|d| d.q(0.99)))),
            vs(&|c| {
                let tp = d.map_or(0.0, |d| d.sample.throughput());
                ratio(c.sample.throughput(), tp).map_or_else(|| "-".into(), |r| format!("{r:.2}×"))
            }),
            proxy(0, memory),
            proxy(0, cpu),
            proxy(1, memory),
            proxy(1, cpu),
        ]);
    }
    t.to_markdown()
}

/// Summary lines: added latency per path at each fixed rate, eBPF against
/// iptables, maximum rates, proxy memory.
pub fn summary(cells: &[Cell]) -> Vec<String> {
    let mut out = Vec::new();
    let find = |c: &Cell, k: Kind| {
        cells
            .iter()
            .find(|x| x.kind == k && x.protocol == c.protocol && x.load == c.load)
    };
    for c in cells.iter().filter(|c| c.kind == Kind::Direct) {
        let mut parts = Vec::new();
        for k in [
            Kind::Ebpf,
            Kind::Iptables,
            Kind::Sockmap,
            Kind::Policy,
            Kind::Plugin,
        ] {
            let Some(p) = find(c, k) else { continue };
            parts.push(match c.load {
                Load::Rate(_) => format!(
                    "{} added p50 {}, p99 {}",
                    k.label(),
                    added(p.q(0.5), c.q(0.5)),
                    added(p.q(0.99), c.q(0.99))
                ),
                Load::Max(_) => format!(
                    "{} {:.0} req/s ({:.2}× direct)",
                    k.label(),
                    p.sample.throughput(),
                    ratio(p.sample.throughput(), c.sample.throughput()).unwrap_or(0.0)
                ),
            });
        }
        let head = match c.load {
            Load::Rate(_) => format!("{} at {}", c.protocol.label(), c.load),
            Load::Max(_) => format!(
                "{} maximum rate ({}): direct {:.0} req/s",
                c.protocol.label(),
                c.load,
                c.sample.throughput()
            ),
        };
        out.push(format!("{head}: {}", parts.join("; ")));
        // What the inbound policy and a plugin call add over the same mesh without them.
        if let (Some(e), Load::Rate(_)) = (find(c, Kind::Ebpf), c.load) {
            for k in [Kind::Policy, Kind::Plugin] {
                if let Some(p) = find(c, k) {
                    out.push(format!(
                        "{} at {}: {} − eBPF: p50 {}, p99 {}",
                        c.protocol.label(),
                        c.load,
                        k.label(),
                        added(p.q(0.5), e.q(0.5)),
                        added(p.q(0.99), e.q(0.99))
                    ));
                }
            }
        }
        if let (Some(e), Some(i)) = (find(c, Kind::Ebpf), find(c, Kind::Iptables)) {
            out.push(match c.load {
                Load::Rate(_) => format!(
                    "{} at {}: eBPF − iptables: p50 {}, p99 {}",
                    c.protocol.label(),
                    c.load,
                    added(e.q(0.5), i.q(0.5)),
                    added(e.q(0.99), i.q(0.99))
                ),
                Load::Max(_) => format!(
                    "{} maximum rate: eBPF / iptables {:.2}×",
                    c.protocol.label(),
                    ratio(e.sample.throughput(), i.sample.throughput()).unwrap_or(0.0)
                ),
            });
        }
    }
    let largest = |f: fn(&Usage) -> u64| {
        cells
            .iter()
            .flat_map(|c| c.proxies.iter().map(move |(_, u)| f(u)))
            .max()
            .unwrap_or(0)
    };
    let rss = largest(|u| u.max_rss);
    if rss > 0 {
        out.push(format!(
            "largest proxy RSS under load: {}, of which anonymous (heap, stacks; code pages are shared by every proxy on a node): {}",
            fmt_mb(rss),
            fmt_mb(largest(|u| u.max_anon))
        ));
    }
    let lag = cells
        .iter()
        .map(|c| c.sample.max_send_lag)
        .max()
        .unwrap_or_default();
    out.push(format!(
        "open-loop latencies are measured from each request's scheduled send time (worst pacer lag {}); max rows are closed loop",
        fmt_dur(lag)
    ));
    out
}

/// The latency plot: one panel per protocol and fixed rate (plus maximum
/// rate), one line per path.
pub fn plot(cells: &[Cell], path: &Path, title: &str) -> Result<()> {
    let mut groups: Vec<(Protocol, Load)> = Vec::new();
    for c in cells {
        if !groups.contains(&(c.protocol, c.load)) {
            groups.push((c.protocol, c.load));
        }
    }
    let panels: Vec<Panel<'_>> = groups
        .iter()
        .map(|&(p, l)| Panel {
            title: format!("{} at {l}", p.label()),
            series: cells
                .iter()
                .filter(|c| c.protocol == p && c.load == l && !c.sample.latencies.is_empty())
                .map(|c| Series {
                    label: c.kind.label().into(),
                    sample: &c.sample,
                })
                .collect(),
        })
        .collect();
    let loads = groups.iter().filter(|g| g.0 == groups[0].0).count();
    plot::latency_png(path, title, &panels, loads.max(1))
}

/// Markers around the generated part of docs/benchmarks.md.
pub const BEGIN: &str = "<!-- conduit-mesh-bench: begin (generated, do not edit by hand) -->";
pub const END: &str = "<!-- conduit-mesh-bench: end -->";

/// Replaces the text between the markers in `doc` by `generated` (the
/// markers are appended at the end when missing).
pub fn splice(doc: &str, generated: &str) -> Result<String> {
    let block = format!("{BEGIN}\n{}\n{END}", generated.trim_end());
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => Ok(format!("{}{block}{}", &doc[..b], &doc[e + END.len()..])),
        (None, None) => Ok(format!("{}\n\n{block}\n", doc.trim_end())),
        _ => {
            bail!("the markers in docs/benchmarks.md are broken: expected {BEGIN:?} before {END:?}")
        }
    }
}

/// Writes `generated` into `doc_path` between the markers.
pub fn write_doc(doc_path: &Path, generated: &str) -> Result<()> {
    let doc = std::fs::read_to_string(doc_path)
        .with_context(|| format!("reading {}", doc_path.display()))?;
    let new = splice(&doc, generated)?;
    std::fs::write(doc_path, new).with_context(|| format!("writing {}", doc_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(kind: Kind, load: Load, ms: u64) -> Cell {
        let mut c = Cell::new(
            Protocol::Http1,
            load,
            kind,
            &[("client proxy", 1), ("server proxy", 2)][..if kind == Kind::Direct { 0 } else { 2 }],
            &[("load generator", 3), ("server", 4)],
        );
        let sampled = |usage: Vec<Usage>| Sampled {
            usage,
            machine: Machine::default(),
        };
        let lat: Vec<u64> = (1..=1000).map(|i| i * ms * 1000).collect();
        let u = Usage {
            max_rss: 5_000_000,
            max_anon: 1_000_000,
            cpu: 0.2,
            kernel: 0.1,
            wait: 0.0,
        };
        c.add(
            Sample {
                latencies: lat.clone(),
                elapsed: Duration::from_secs(1),
                ..Sample::default()
            },
            sampled(vec![u, u]),
        );
        c.add(
            Sample {
                latencies: lat,
                elapsed: Duration::from_secs(1),
                ..Sample::default()
            },
            sampled(vec![
                Usage {
                    max_rss: 7_000_000,
                    max_anon: 2_000_000,
                    cpu: 0.4,
                    kernel: 0.1,
                    wait: 0.0,
                },
                u,
            ]),
        );
        c
    }

    #[test]
    fn table_and_summary() {
        let cells = vec![
            cell(Kind::Direct, Load::Rate(1000), 1),
            cell(Kind::Ebpf, Load::Rate(1000), 2),
            cell(Kind::Iptables, Load::Rate(1000), 3),
        ];
        let (_, u) = cells[1].proxies[0];
        assert_eq!(u.max_rss, 7_000_000);
        assert!((u.cpu - 0.3).abs() < 1e-9);
        assert!((u.kernel - 0.1).abs() < 1e-9);
        let t = table(&cells);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        // eBPF: p50 1 ms vs 500 µs direct.
        assert!(lines[3].contains("| eBPF | 1.00 ms |"), "{t}");
        assert!(lines[3].contains("| 1000 req/s | 0 | 0 |"), "{t}");
        assert!(lines[3].contains("| +500 µs |"), "{t}");
        assert!(lines[3].contains("| 2.00× |"), "{t}");
        assert!(lines[3].contains("| 7.0 MB (2.0 MB) | 30% |"), "{t}");
        let s = summary(&cells);
        assert!(
            s[0].starts_with("HTTP/1.1 at 1000 req/s: eBPF added p50 +500 µs"),
            "{s:?}"
        );
        assert!(s[1].contains("eBPF − iptables: p50 -500 µs"), "{s:?}");
    }

    #[test]
    fn splicing() {
        let doc = format!("# B\n\ntext\n{BEGIN}\nold\n{END}\nafter\n");
        assert_eq!(
            splice(&doc, "new\n").unwrap(),
            format!("# B\n\ntext\n{BEGIN}\nnew\n{END}\nafter\n")
        );
        assert_eq!(
            splice("# B\n", "x").unwrap(),
            format!("# B\n\n{BEGIN}\nx\n{END}\n")
        );
        assert!(splice(&format!("{END}{BEGIN}"), "x").is_err());
    }

    #[test]
    fn the_idle_line_names_the_largest_and_every_proxy() {
        assert_eq!(idle_line(&[]), None);
        let idle = [
            Idle {
                path: Kind::Ebpf,
                proxy: "client",
                rss: 6_000_000,
                anon: 800_000,
            },
            Idle {
                path: Kind::Ebpf,
                proxy: "server",
                rss: 7_000_000,
                anon: 900_000,
            },
        ];
        let line = idle_line(&idle).unwrap();
        assert!(line.contains("largest 7.0 MB (0.9 MB)"), "{line}");
        assert!(line.contains("eBPF client 6.0 MB (0.8 MB)"), "{line}");
    }
}
