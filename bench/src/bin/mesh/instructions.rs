//! What `--callgrind` counted: per (protocol, load, path), the requests of
//! the measured slices and the instructions each proxy executed for them,
//! shown as instructions per request in a Markdown table.

use crate::paths::Kind;
use conduit_bench::loadgen::{Load, Protocol, Sample};
use conduit_bench::table::{Align, Table};
use std::path::Path;

/// Printed above the mesh table of a `--callgrind` run.
pub const TIMINGS_WARNING: &str = "**Under callgrind: the latency, throughput, CPU and memory \
figures below are not to be read.** The proxies of every path but direct ran under valgrind, \
some 50 times slower: those figures are valgrind's, not the proxy's. The instruction counts \
(the last table) are the proxies' own.";

/// One (protocol, load, path): its measured slices added up.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub protocol: Protocol,
    pub load: Load,
    pub kind: Kind,
    /// Requests that completed (2xx with the whole body) in the slices.
    pub requests: u64,
    /// Requests that failed in the slices.
    pub errors: u64,
    /// Per proxy on the path, in the path's order: label and instructions.
    pub proxies: Vec<(&'static str, u64)>,
}

impl Counted {
    pub fn new(protocol: Protocol, load: Load, kind: Kind, labels: &[&'static str]) -> Counted {
        Counted {
            protocol,
            load,
            kind,
            requests: 0,
            errors: 0,
            proxies: labels.iter().map(|l| (*l, 0)).collect(),
        }
    }

    /// Adds one slice: its sample and each proxy's instructions (in the
    /// order of the labels).
    pub fn add(&mut self, sample: &Sample, instructions: &[u64]) {
        self.requests += sample.latencies.len() as u64;
        self.errors += sample.errors as u64;
        for ((_, total), n) in self.proxies.iter_mut().zip(instructions) {
            *total += n;
        }
    }

    /// Instructions per completed request of proxy `i`.
    pub fn per_request(&self, i: usize) -> Option<f64> {
        let (_, n) = self.proxies.get(i)?;
        per_request(*n, self.requests)
    }

    /// Instructions per completed request of all the path's proxies.
    pub fn both(&self) -> Option<f64> {
        if self.proxies.is_empty() {
            return None;
        }
        per_request(self.proxies.iter().map(|(_, n)| n).sum(), self.requests)
    }
}

/// `instructions / requests`, none without requests.
pub fn per_request(instructions: u64, requests: u64) -> Option<f64> {
    (requests > 0).then(|| instructions as f64 / requests as f64)
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

/// The table: one row per (protocol, load, path).
pub fn table(counted: &[Counted]) -> String {
    use Align::{Left, Right};
    let mut t = Table::new(&[
        ("protocol", Left),
        ("load", Left),
        ("path", Left),
        ("requests counted", Right),
        ("client proxy instructions/request", Right),
        ("server proxy instructions/request", Right),
        ("both proxies", Right),
    ]);
    for c in counted {
        t.row([
            c.protocol.label().to_string(),
            c.load.to_string(),
            c.kind.label().to_string(),
            c.requests.to_string(),
            fmt(c.per_request(0)),
            fmt(c.per_request(1)),
            fmt(c.both()),
        ]);
    }
    t.to_markdown()
}

/// The line for progress output: `eBPF: client proxy 48213, server proxy
/// 40120 instructions/request (2000 requests)`.
pub fn progress_line(c: &Counted) -> String {
    let each: Vec<String> = c
        .proxies
        .iter()
        .enumerate()
        .map(|(i, (l, _))| format!("{l} {}", fmt(c.per_request(i))))
        .collect();
    format!(
        "{}: {} instructions/request ({} requests)",
        c.kind.label(),
        each.join(", "),
        c.requests
    )
}

/// Lines under the table: what was counted, failed requests, where the
/// profiles are.
pub fn notes(counted: &[Counted], dir: &Path) -> Vec<String> {
    let mut out = vec![
        "instructions counted by callgrind in each proxy's user space (its threads, libc included; \
         not the kernel), from just before each measured slice to just after it (warm-up excluded), \
         over the requests that completed in it"
            .to_owned(),
    ];
    for c in counted.iter().filter(|c| c.errors > 0) {
        out.push(format!(
            "{} {} {}: {} requests failed (their instructions are counted, they are not)",
            c.protocol.label(),
            c.load,
            c.kind.label(),
            c.errors
        ));
    }
    out.push(format!(
        "profiles in {}: `<path>-<pod>.<pid>.<n>` is the n-th measured slice of that proxy \
         (`callgrind_annotate <file>`), `<path>-<pod>.<pid>` the rest of its life, written when it exits",
        dir.display()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(ok: usize, errors: usize) -> Sample {
        Sample {
            latencies: vec![1_000; ok],
            errors,
            elapsed: Duration::from_secs(1),
            ..Sample::default()
        }
    }

    fn counted() -> Counted {
        let mut c = Counted::new(
            Protocol::Http1,
            Load::Rate(100),
            Kind::Ebpf,
            &["client proxy", "server proxy"],
        );
        c.add(&sample(1000, 0), &[48_000_000, 40_000_000]);
        c.add(&sample(1000, 2), &[50_000_000, 42_000_000]);
        c
    }

    #[test]
    fn slices_add_up_and_divide_by_completed_requests() {
        let c = counted();
        assert_eq!(c.requests, 2000);
        assert_eq!(c.errors, 2);
        assert_eq!(c.per_request(0), Some(49_000.0));
        assert_eq!(c.per_request(1), Some(41_000.0));
        assert_eq!(c.per_request(2), None);
        assert_eq!(c.both(), Some(90_000.0));
        assert_eq!(per_request(5, 0), None);
        let none = Counted::new(Protocol::Http2, Load::Max(32), Kind::Direct, &[]);
        assert_eq!(none.both(), None);
    }

    #[test]
    fn table_and_lines() {
        let mut other = Counted::new(
            Protocol::Http2,
            Load::Max(32),
            Kind::Ebpf,
            &["client proxy", "server proxy"],
        );
        other.add(&sample(0, 3), &[10, 10]);
        let t = table(&[counted(), other.clone()]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(
            lines[0].starts_with("| protocol | load | path | requests counted |"),
            "{t}"
        );
        assert_eq!(
            lines[2],
            "| HTTP/1.1 | 100 req/s | eBPF | 2000 | 49000 | 41000 | 90000 |"
        );
        assert!(lines[3].ends_with("| 0 | - | - | - |"), "{t}");
        assert_eq!(
            progress_line(&counted()),
            "eBPF: client proxy 49000, server proxy 41000 instructions/request (2000 requests)"
        );
        let n = notes(&[counted(), other], Path::new("/tmp/cg"));
        assert_eq!(n.len(), 4, "{n:?}");
        assert!(n[1].contains("2 requests failed"), "{n:?}");
        assert!(n[3].starts_with("profiles in /tmp/cg:"), "{n:?}");
    }
}
