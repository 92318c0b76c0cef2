//! `stat`'s table, for a person: one line per pod, direction and
//! destination, then the pods' TCP figures.

use super::window::{RouteStat, TcpStat};
use std::fmt::Write;

/// `spiffe://td/ns/default/sa/web` -> `default/web`; `none` -> `-`. A label
/// that is not a mesh SPIFFE ID (the mesh's one grammar,
/// `conduit_identity::SpiffeId`) is shown as it is.
pub fn short_identity(id: &str) -> String {
    if id == "none" {
        return "-".into();
    }
    match conduit_identity::SpiffeId::parse(id) {
        Ok(id) => format!("{}/{}", id.namespace(), id.service_account()),
        Err(_) => id.to_owned(),
    }
}

pub fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.2}ms"),
        Some(v) if v < 1000.0 => format!("{v:.0}ms"),
        Some(v) => format!("{:.1}s", v / 1000.0),
    }
}

pub fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.2}%", v * 100.0))
}

pub fn bytes_rate(v: f64) -> String {
    match v {
        v if v < 1024.0 => format!("{v:.0}B/s"),
        v if v < 1024.0 * 1024.0 => format!("{:.1}KiB/s", v / 1024.0),
        v => format!("{:.1}MiB/s", v / 1024.0 / 1024.0),
    }
}

pub fn render(routes: &[RouteStat], tcp: &[TcpStat], window_s: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "window {window_s:.0}s");
    if routes.is_empty() {
        out.push_str("no HTTP requests in the window\n");
    } else {
        let pw = routes.iter().map(|r| r.pod.len()).max().unwrap_or(3).max(3);
        let dw = routes
            .iter()
            .map(|r| r.dst.len())
            .max()
            .unwrap_or(11)
            .max(11);
        let _ = writeln!(
            out,
            "{:<pw$}  {:<8}  {:<dw$}  {:>6}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>5}  PEERS",
            "POD", "DIR", "DESTINATION", "REQS", "RPS", "SUCCESS", "P50", "P95", "P99", "MTLS"
        );
        for r in routes {
            let peers: Vec<String> = r.peers.iter().map(|p| short_identity(p)).collect();
            let _ = writeln!(
                out,
                "{:<pw$}  {:<8}  {:<dw$}  {:>6}  {:>8.2}  {:>8}  {:>8}  {:>8}  {:>8}  {:>5}  {}",
                r.pod,
                r.direction,
                r.dst,
                r.requests,
                r.rps,
                pct(r.success),
                ms(r.p50_ms),
                ms(r.p95_ms),
                ms(r.p99_ms),
                r.mtls
                    .map_or_else(|| "-".into(), |m| format!("{:.0}%", m * 100.0)),
                peers.join(",")
            );
        }
    }
    if !tcp.is_empty() {
        let pw = tcp.iter().map(|r| r.pod.len()).max().unwrap_or(3).max(3);
        let _ = writeln!(
            out,
            "\n{:<pw$}  {:<8}  {:>5}  {:>7}  {:>11}  {:>11}",
            "POD", "TCP", "OPEN", "CONN/S", "READ", "WRITE"
        );
        for t in tcp {
            let _ = writeln!(
                out,
                "{:<pw$}  {:<8}  {:>5}  {:>7.2}  {:>11}  {:>11}",
                t.pod,
                t.direction,
                t.open,
                t.opened_per_s,
                bytes_rate(t.read_bytes_per_s),
                bytes_rate(t.write_bytes_per_s)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells() {
        assert_eq!(
            short_identity("spiffe://cluster.local/ns/default/sa/web"),
            "default/web"
        );
        assert_eq!(short_identity("none"), "-");
        assert_eq!(short_identity("spiffe://td/other"), "spiffe://td/other");
        // Not a mesh identity (a dotted namespace): shown whole, not cut up.
        assert_eq!(
            short_identity("spiffe://td/ns/a.b/sa/web"),
            "spiffe://td/ns/a.b/sa/web"
        );
        assert_eq!(ms(Some(0.4123)), "0.41ms");
        assert_eq!(ms(Some(52.4)), "52ms");
        assert_eq!(ms(Some(2500.0)), "2.5s");
        assert_eq!(ms(None), "-");
        assert_eq!(pct(Some(0.75)), "75.00%");
        assert_eq!(bytes_rate(2048.0), "2.0KiB/s");
    }

    #[test]
    fn table() {
        let r = RouteStat {
            pod: "default/client".into(),
            direction: "outbound".into(),
            dst: "web.default.svc.cluster.local:80".into(),
            requests: 40,
            rps: 4.0,
            success: Some(0.75),
            p50_ms: Some(1.0),
            p95_ms: Some(5.5),
            p99_ms: Some(9.82),
            mtls: Some(1.0),
            peers: vec!["spiffe://cluster.local/ns/default/sa/web".into()],
        };
        let t = TcpStat {
            pod: "default/client".into(),
            direction: "outbound".into(),
            open: 2,
            opened_per_s: 0.5,
            read_bytes_per_s: 100.0,
            write_bytes_per_s: 4096.0,
        };
        let out = render(&[r], &[t], 30.0);
        let want = "window 30s\n\
POD             DIR       DESTINATION                         REQS       RPS   SUCCESS       P50       P95       P99   MTLS  PEERS\n\
default/client  outbound  web.default.svc.cluster.local:80      40      4.00    75.00%    1.00ms    5.50ms    9.82ms   100%  default/web\n\
\n\
POD             TCP        OPEN   CONN/S         READ        WRITE\n\
default/client  outbound      2     0.50       100B/s     4.0KiB/s\n";
        assert_eq!(out, want, "\n{out}");
    }
}
