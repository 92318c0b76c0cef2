//! Steady load from the client pod with every request accounted for: the
//! fault-injection suite (`tests/tests/faults.rs`) runs
//! `conduit-mesh-app load` (see [`super::load_run`]) in the client pod, a
//! few workers per protocol each making one idempotent request at a time
//! (HTTP/1.1 `GET` over a kept-alive connection, gRPC unary), and asks it
//! for a [`LoadReport`] per phase: requests sent, succeeded, failed, and the
//! longest time without a successful answer.
//!
//! A request is "sent" when a worker starts it and ends as a success or a
//! failure, never both and never neither: [`LoadLoop::report`] pauses the
//! workers and waits for the requests in flight before counting. A worker
//! retries the *connection* (not the request) while the connect itself is
//! refused or unreachable, which is what a client does when nothing was
//! sent; once a request's bytes are written, whatever goes wrong is a
//! failure. Every request has a deadline ([`LoadSpec::deadline`]): a
//! request that hangs is a failure after it, so a black hole shows.

use crate::env::Env;
use crate::process::Process;
use crate::wait::{fatal, wait_until};
use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What the load loop sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    /// HTTP/1.1 URL (`http://name:port/path`), if any.
    pub http: Option<String>,
    /// gRPC target (`http://name:port`), if any.
    pub grpc: Option<String>,
    /// Concurrent workers per protocol: at most this many requests of the
    /// protocol are in flight at once.
    pub workers: usize,
    /// Pause between a worker's requests.
    pub pause: Duration,
    /// Bound on one request, connection retries included.
    pub deadline: Duration,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            http: None,
            grpc: None,
            workers: 2,
            pause: Duration::from_millis(10),
            deadline: Duration::from_secs(5),
        }
    }
}

/// One finished request, in milliseconds since the load loop started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Record {
    /// When it started.
    pub start_ms: f64,
    /// When it ended.
    pub end_ms: f64,
    /// Whether it succeeded.
    pub ok: bool,
}

/// The figures of one protocol (or of all) over one phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Requests started (= succeeded + failed).
    pub sent: u64,
    /// Requests answered correctly.
    pub succeeded: u64,
    /// Requests that failed or ran past their deadline.
    pub failed: u64,
    /// Longest time without a successful answer, in milliseconds (from the
    /// phase's start, between answers, to its end).
    pub longest_gap_ms: f64,
    /// Slowest request, in milliseconds.
    pub max_latency_ms: f64,
    /// Connections retried because the connect was refused or unreachable
    /// (nothing sent yet).
    pub connect_retries: u64,
    /// Failures by error text (first 100 characters).
    pub errors: BTreeMap<String, u64>,
}

/// A phase's report: per protocol, and all together.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadReport {
    /// Length of the phase, in milliseconds.
    pub window_ms: f64,
    /// `http1`, `grpc`.
    pub by_protocol: BTreeMap<String, Figures>,
    /// All protocols.
    pub total: Figures,
}

/// Sent, succeeded, failed, slowest, and the longest stretch of the window
/// `[from_ms, to_ms]` without a success ending in it.
pub fn figures(records: &[Record], from_ms: f64, to_ms: f64) -> Figures {
    let mut ends: Vec<f64> = records
        .iter()
        .filter(|r| r.ok)
        .map(|r| r.end_ms.clamp(from_ms, to_ms))
        .collect();
    ends.sort_by(f64::total_cmp);
    let mut gap: f64 = 0.0;
    let mut last = from_ms;
    for e in ends.iter().copied().chain([to_ms]) {
        gap = gap.max(e - last);
        last = e;
    }
    let succeeded = ends.len() as u64;
    Figures {
        sent: records.len() as u64,
        succeeded,
        failed: records.len() as u64 - succeeded,
        longest_gap_ms: gap,
        max_latency_ms: records
            .iter()
            .map(|r| r.end_ms - r.start_ms)
            .fold(0.0, f64::max),
        connect_retries: 0,
        errors: BTreeMap::new(),
    }
}

/// The target when one endpoint (or its proxy) dies under load, with at
/// most `in_flight` gRPC calls outstanding to it:
///
/// * no HTTP/1.1 request fails: the load's are `GET`s, idempotent, which
///   the client's proxy retries on the other endpoint;
/// * at most `in_flight` gRPC calls fail: a call already sent to the dead
///   endpoint is a `POST`, not known to be idempotent, and is not replayed
///   (replaying it could run it twice); calls not yet sent are tried on
///   the other endpoint;
/// * a gRPC call that fails gets a gRPC status, `UNAVAILABLE`, from the
///   client's proxy: never a protocol error (before, the proxy answered
///   with an HTTP 502 and a text body, which tonic read as gRPC framing:
///   `invalid compression flag: 117`).
pub fn endpoint_lost(r: &LoadReport, in_flight: u64) -> bool {
    let failed = |p: &str| r.by_protocol.get(p).map_or(0, |f| f.failed);
    let clean = r.total.errors.keys().all(|e| {
        !e.contains("protocol error")
            && !e.contains("compression flag")
            && (!e.starts_with("grpc:") || e.starts_with("grpc: gRPC Unavailable"))
    });
    failed("http1") == 0 && failed("grpc") <= in_flight && clean && r.total.succeeded > 0
}

/// The load loop running in a pod.
#[derive(Debug)]
pub struct LoadLoop {
    /// `conduit-mesh-app load`.
    pub process: Process,
    reports: usize,
    peeks: usize,
}

impl LoadLoop {
    /// Starts `conduit-mesh-app load` in `pod` and waits until each
    /// protocol has had a successful answer.
    pub fn start(env: &Env, pod: &str, spec: &LoadSpec) -> Result<Self> {
        let bin = crate::bins::find(super::app::MESH_APP)?;
        let process = super::app::in_pod(env, pod, &bin.to_string_lossy())?
            .args(["load", "--spec", &serde_json::to_string(spec)?])
            .start()?;
        let mut l = Self {
            process,
            reports: 0,
            peeks: 0,
        };
        wait_until(
            "the load loop's first answers",
            Duration::from_secs(20),
            || {
                let r = l.report()?;
                let missing: Vec<&String> = r
                    .by_protocol
                    .iter()
                    .filter(|(_, f)| f.succeeded == 0)
                    .map(|(p, _)| p)
                    .collect();
                match missing.is_empty() && !r.by_protocol.is_empty() {
                    true => Ok(()),
                    false => Err(anyhow!("no answer yet for {missing:?}: {r:?}")),
                }
            },
        )?;
        Ok(l)
    }

    /// The figures since the previous report (or the start): pauses the
    /// workers, waits for the requests in flight, counts, resumes.
    pub fn report(&mut self) -> Result<LoadReport> {
        if let Some(s) = self.process.exited() {
            return Err(fatal(format!(
                "the load loop exited ({s}):\n{}",
                self.process.output_text()
            )));
        }
        self.process.send_line("report")?;
        self.reports += 1;
        let want = self.reports;
        let line = wait_until("the load loop's report", Duration::from_secs(30), || {
            let lines = self.process.stdout_lines();
            let reports: Vec<&String> = lines
                .iter()
                .filter(|l| l.contains(r#""event":"report""#))
                .collect();
            reports
                .get(want - 1)
                .map(|l| (*l).clone())
                .ok_or_else(|| anyhow!("{} reports, want {want}", reports.len()))
        })?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        serde_json::from_value(v["report"].clone())
            .with_context(|| format!("load loop report: {line}"))
    }
}

impl LoadLoop {
    /// Waits until at least `n` requests of the current phase succeeded
    /// (a fault lasts "for `n` answers", not for a fixed time).
    pub fn wait_successes(&mut self, n: usize, timeout: Duration) -> Result<()> {
        let mut peeks = 0usize;
        let r = wait_until(
            &format!("{n} successful requests under load"),
            timeout,
            || {
                self.process.send_line("peek")?;
                peeks += 1;
                let want = peeks;
                let line = wait_until("a peek", Duration::from_secs(5), || {
                    let lines = self.process.stdout_lines();
                    let seen: Vec<&String> = lines
                        .iter()
                        .filter(|l| l.contains(r#""event":"peek""#))
                        .collect();
                    seen.get(self.peeks + want - 1)
                        .map(|l| (*l).clone())
                        .ok_or_else(|| anyhow!("no peek answer yet"))
                })?;
                let v: serde_json::Value = serde_json::from_str(&line)?;
                let ok = v["ok"].as_u64().unwrap_or(0) as usize;
                match ok >= n {
                    true => Ok(()),
                    false => Err(anyhow!("{ok} of {n} so far ({} finished)", v["done"])),
                }
            },
        );
        self.peeks += peeks;
        r
    }
}

/// One row of the fault table.
#[derive(Debug, Clone)]
pub struct FaultRow {
    /// The fault.
    pub fault: String,
    /// What was measured.
    pub report: LoadReport,
    /// The target, in words.
    pub target: String,
    /// Whether the target was met.
    pub met: bool,
}

/// The fault table (Markdown).
pub fn table(rows: &[FaultRow]) -> String {
    let mut s = String::from(
        "| fault | phase | sent | succeeded | failed | longest gap | slowest | connect retries | target | met |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        let t = &r.report.total;
        s.push_str(&format!(
            "| {} | {:.1} s | {} | {} | {} | {:.0} ms | {:.0} ms | {} | {} | {} |\n",
            r.fault,
            r.report.window_ms / 1e3,
            t.sent,
            t.succeeded,
            t.failed,
            t.longest_gap_ms,
            t.max_latency_ms,
            t.connect_retries,
            r.target,
            if r.met { "yes" } else { "**no**" }
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start_ms: f64, end_ms: f64, ok: bool) -> Record {
        Record {
            start_ms,
            end_ms,
            ok,
        }
    }

    #[test]
    fn figures_count_every_request_once() {
        #[allow(clippy::type_complexity)] // a table of test cases
        let cases: &[(&[Record], f64, f64, (u64, u64, u64), f64, f64)] = &[
            // (records, from, to, (sent, ok, failed), longest gap, slowest)
            (&[], 0.0, 100.0, (0, 0, 0), 100.0, 0.0),
            (
                &[r(0.0, 10.0, true), r(10.0, 20.0, true)],
                0.0,
                30.0,
                (2, 2, 0),
                10.0,
                10.0,
            ),
            // A failure does not end a gap.
            (
                &[
                    r(0.0, 10.0, true),
                    r(10.0, 60.0, false),
                    r(60.0, 70.0, true),
                ],
                0.0,
                80.0,
                (3, 2, 1),
                60.0,
                50.0,
            ),
            // The window's edges count: nothing until 40, nothing after 50.
            (
                &[r(30.0, 40.0, true), r(40.0, 50.0, true)],
                0.0,
                100.0,
                (2, 2, 0),
                50.0,
                10.0,
            ),
            // A request that started before the window is clamped into it.
            (&[r(-5.0, 5.0, true)], 0.0, 10.0, (1, 1, 0), 5.0, 10.0),
        ];
        for (i, (recs, from, to, (sent, ok, failed), gap, slow)) in cases.iter().enumerate() {
            let f = figures(recs, *from, *to);
            assert_eq!(
                (f.sent, f.succeeded, f.failed),
                (*sent, *ok, *failed),
                "case {i}"
            );
            assert_eq!(f.longest_gap_ms, *gap, "case {i}");
            assert_eq!(f.max_latency_ms, *slow, "case {i}");
        }
    }

    #[test]
    fn the_target_when_an_endpoint_is_lost() {
        let report = |http_failed: u64, grpc_failed: u64, errors: &[&str]| {
            let fig = |failed| Figures {
                sent: 100,
                succeeded: 100 - failed,
                failed,
                ..Figures::default()
            };
            let mut total = fig(http_failed + grpc_failed);
            total.errors = errors.iter().map(|e| (e.to_string(), 1)).collect();
            LoadReport {
                window_ms: 1.0,
                by_protocol: [
                    ("http1".to_owned(), fig(http_failed)),
                    ("grpc".to_owned(), fig(grpc_failed)),
                ]
                .into(),
                total,
            }
        };
        let unavailable = "grpc: gRPC Unavailable: upstream request failed";
        let cases: &[(u64, u64, &[&str], bool)] = &[
            // (HTTP failed, gRPC failed, error texts, met)
            (0, 0, &[], true),
            (0, 1, &[unavailable], true),
            (0, 2, &[unavailable], true),
            // More gRPC calls than were in flight.
            (0, 3, &[unavailable], false),
            // An idempotent GET lost.
            (1, 0, &["http1: connection reset"], false),
            // The old answer: an HTTP 502 read as gRPC framing.
            (
                0,
                1,
                &[
                    "grpc: gRPC Internal: protocol error: received message with invalid compression flag: 117",
                ],
                false,
            ),
            // Any other gRPC failure (a hang, a reset) is not the clean answer.
            (0, 1, &["grpc: gRPC Cancelled: Timeout expired"], false),
        ];
        for (i, (http, grpc, errors, met)) in cases.iter().enumerate() {
            assert_eq!(
                endpoint_lost(&report(*http, *grpc, errors), 2),
                *met,
                "case {i}"
            );
        }
    }

    #[test]
    #[allow(clippy::field_reassign_with_default)] // the one field the test is about
    fn the_table_flags_a_missed_target() {
        let mut report = LoadReport::default();
        report.total = Figures {
            sent: 10,
            succeeded: 9,
            failed: 1,
            ..Figures::default()
        };
        let rows = [FaultRow {
            fault: "x".into(),
            report,
            target: "0 failed".into(),
            met: false,
        }];
        let t = table(&rows);
        assert!(t.contains("| x | 0.0 s | 10 | 9 | 1 |"), "{t}");
        assert!(t.contains("**no**"), "{t}");
    }
}
