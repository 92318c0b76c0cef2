//! Where the machine's CPUs went at the maximum rate: each followed
//! process (the proxies, the load generator, the server), the machine's
//! idle and stolen time, and the rest (kernel threads, the harness, other
//! processes); then the CPU time of one request in each. On a machine whose
//! cores are shared by all four processes this says whether a path was
//! short of CPU (no idle left) or of something else (idle time while
//! requests wait for wake-ups), which the throughput alone cannot.

use crate::paths::Kind;
use crate::results::Cell;
use conduit_bench::loadgen::Load;
use conduit_bench::procstat::Usage;

/// Two summary lines per protocol with a maximum-rate measurement.
pub fn lines(cells: &[Cell]) -> Vec<String> {
    let mut out = Vec::new();
    for direct in cells
        .iter()
        .filter(|c| c.kind == Kind::Direct && matches!(c.load, Load::Max(_)))
    {
        let group: Vec<&Cell> = cells
            .iter()
            .filter(|c| c.protocol == direct.protocol && c.load == direct.load)
            .collect();
        let cpus = group.iter().map(|c| c.machine.cpus).max().unwrap_or(0);
        if cpus == 0 {
            continue;
        }
        let head = format!("{} maximum rate", direct.protocol.label());
        let shares: Vec<String> = group.iter().map(|c| shares(c)).collect();
        out.push(format!(
            "{head}, CPU in use (100% = one core of {cpus}; in brackets, time runnable but waiting for a CPU): {}",
            shares.join("; ")
        ));
        let each: Vec<String> = group.iter().filter_map(|c| per_request(c)).collect();
        out.push(format!(
            "{head}, CPU time per request (in brackets, the part in the kernel): {}",
            each.join("; ")
        ));
    }
    out
}

fn pct(cores: f64) -> String {
    format!("{:.0}%", cores * 100.0)
}

fn followed(c: &Cell) -> impl Iterator<Item = &(&'static str, Usage)> {
    c.proxies.iter().chain(&c.apps)
}

/// `eBPF: client proxy 53% (26%), …, idle 20%, rest 9%`.
fn shares(c: &Cell) -> String {
    let m = c.machine;
    let mut parts: Vec<String> = followed(c)
        .map(|(l, u)| format!("{l} {} ({})", pct(u.cpu), pct(u.wait)))
        .collect();
    parts.push(format!("idle {}", pct(m.idle)));
    if m.steal >= 0.005 {
        parts.push(format!("stolen {}", pct(m.steal)));
    }
    let used: f64 = followed(c).map(|(_, u)| u.cpu).sum();
    let rest = f64::from(m.cpus) - m.idle - m.steal - used;
    parts.push(format!("rest {}", pct(rest.max(0.0))));
    format!("{}: {}", c.kind.label(), parts.join(", "))
}

/// `eBPF: both proxies 48.0 µs (24.0), load generator 16.0 µs (8.0), …`.
fn per_request(c: &Cell) -> Option<String> {
    let rate = c.sample.throughput();
    if rate <= 0.0 {
        return None;
    }
    let cost = |label: &str, u: &[&Usage]| {
        let us = |cores: f64| cores / rate * 1e6;
        let cpu: f64 = u.iter().map(|u| u.cpu).sum();
        let kernel: f64 = u.iter().map(|u| u.kernel).sum();
        format!("{label} {:.1} µs ({:.1})", us(cpu), us(kernel))
    };
    let mut parts = Vec::new();
    if !c.proxies.is_empty() {
        let label = if c.proxies.len() == 2 {
            "both proxies"
        } else {
            "proxies"
        };
        let proxies: Vec<&Usage> = c.proxies.iter().map(|(_, u)| u).collect();
        parts.push(cost(label, &proxies));
    }
    parts.extend(c.apps.iter().map(|(l, u)| cost(l, &[u])));
    Some(format!("{}: {}", c.kind.label(), parts.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use conduit_bench::loadgen::{Protocol, Sample};
    use conduit_bench::procstat::{Machine, Sampled};
    use std::time::Duration;

    /// One slice of `requests` in one second, with these CPU shares (each
    /// process waited for a CPU half as long as it ran, and spent a fifth of
    /// its CPU in the kernel).
    fn cell(kind: Kind, load: Load, requests: u64, cpu: &[f64], machine: Machine) -> Cell {
        let proxies: &[(&'static str, u32)] = if kind == Kind::Direct {
            &[]
        } else {
            &[("client proxy", 1), ("server proxy", 2)]
        };
        let apps = [("load generator", 3), ("server", 4)];
        let mut c = Cell::new(Protocol::Http1, load, kind, proxies, &apps);
        let usage = cpu
            .iter()
            .map(|&cpu| Usage {
                cpu,
                kernel: cpu / 5.0,
                wait: cpu / 2.0,
                ..Usage::default()
            })
            .collect();
        c.add(
            Sample {
                latencies: vec![100_000; requests as usize],
                elapsed: Duration::from_secs(1),
                ..Sample::default()
            },
            Sampled { usage, machine },
        );
        c
    }

    fn machine(idle: f64, steal: f64) -> Machine {
        Machine {
            cpus: 2,
            idle,
            steal,
        }
    }

    #[test]
    fn shares_and_cost_per_request_of_each_path() {
        let max = Load::Max(32);
        let cells = vec![
            cell(
                Kind::Direct,
                Load::Rate(1000),
                1000,
                &[0.1, 0.1],
                machine(1.8, 0.0),
            ),
            cell(Kind::Direct, max, 50_000, &[1.0, 0.8], machine(0.1, 0.0)),
            cell(
                Kind::Ebpf,
                max,
                20_000,
                &[0.5, 0.5, 0.3, 0.2],
                machine(0.4, 0.02),
            ),
        ];
        let l = lines(&cells);
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(
            l[0],
            "HTTP/1.1 maximum rate, CPU in use (100% = one core of 2; \
             in brackets, time runnable but waiting for a CPU): \
             direct: load generator 100% (50%), server 80% (40%), idle 10%, rest 10%; \
             eBPF: client proxy 50% (25%), server proxy 50% (25%), load generator 30% (15%), \
             server 20% (10%), idle 40%, stolen 2%, rest 8%"
        );
        assert_eq!(
            l[1],
            "HTTP/1.1 maximum rate, CPU time per request \
             (in brackets, the part in the kernel): \
             direct: load generator 20.0 µs (4.0), server 16.0 µs (3.2); \
             eBPF: both proxies 50.0 µs (10.0), load generator 15.0 µs (3.0), \
             server 10.0 µs (2.0)"
        );
    }

    #[test]
    fn nothing_without_a_maximum_rate_or_a_machine_reading() {
        let m = machine(1.0, 0.0);
        assert!(lines(&[cell(Kind::Direct, Load::Rate(1000), 1000, &[0.1, 0.1], m)]).is_empty());
        let unread = Machine::default();
        assert!(lines(&[cell(Kind::Direct, Load::Max(32), 1000, &[0.1, 0.1], unread)]).is_empty());
        // More used than the machine has (ticks are coarse): the rest is 0, not negative.
        let c = cell(
            Kind::Direct,
            Load::Max(32),
            1000,
            &[1.5, 0.6],
            machine(0.0, 0.0),
        );
        assert!(lines(&[c])[0].ends_with("idle 0%, rest 0%"));
    }
}
