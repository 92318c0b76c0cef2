//! The dashboard's drawings, rendered on the server as SVG: the node's
//! service graph (pods that call -> services -> pods that serve) and, per
//! service, latency over the last minutes. Pure functions of the figures.
//!
//! A service is linked to a pod that serves it ([`serving_links`]) when the
//! pod's proxy identity (`conduit_proxy_identity_info`) is among the peers
//! its callers' proxies saw for that service and, when the caller's own
//! identity is known, the pod's inbound traffic came from that caller. The
//! link is labelled with the pod's inbound figures (requests/s, success,
//! p99, mTLS). Pods without an identity (no mTLS) cannot be linked.

use crate::stat::Report;
use crate::stat::table::{ms, short_identity};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Escapes text for SVG/HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Services drawn at most (the rest are summed up in a note).
pub const MAX_NODES: usize = 40;

struct Edge {
    from: usize,
    to: usize,
    label: String,
    mtls: bool,
    healthy: bool,
}

/// A service -> serving pod link, with the pod's inbound figures for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub service: String,
    pub pod: String,
    pub rps: f64,
    /// Weighted by requests.
    pub success: Option<f64>,
    /// The worst of the pod's matching inbound routes.
    pub p99_ms: Option<f64>,
    /// Every matching inbound route was all mTLS.
    pub mtls: bool,
}

/// Which pods serve which services, from the identities (see the module
/// documentation). Sorted by (service, pod).
pub fn serving_links(r: &Report) -> Vec<Link> {
    // (service, index of a pod's inbound route): each route once per
    // service, however many callers of the service it served.
    let mut matched: BTreeSet<(&str, usize)> = BTreeSet::new();
    for out in r.routes.iter().filter(|x| x.direction == "outbound") {
        let caller = r.identities.get(&out.pod);
        for (i, inb) in r.routes.iter().enumerate() {
            let Some(server) = r.identities.get(&inb.pod) else {
                continue;
            };
            if inb.direction == "inbound"
                && out.peers.contains(server)
                && caller.is_none_or(|c| inb.peers.contains(c))
            {
                matched.insert((out.dst.as_str(), i));
            }
        }
    }
    let mut links: BTreeMap<(String, String), Link> = BTreeMap::new();
    for (service, i) in matched {
        let inb = &r.routes[i];
        let l = links
            .entry((service.to_owned(), inb.pod.clone()))
            .or_insert_with(|| Link {
                service: service.to_owned(),
                pod: inb.pod.clone(),
                rps: 0.0,
                success: None,
                p99_ms: None,
                mtls: true,
            });
        if let Some(s) = inb.success {
            let total = l.rps + inb.rps;
            let before = l.success.unwrap_or(0.0) * l.rps;
            l.success = Some(if total > 0.0 {
                (before + s * inb.rps) / total
            } else {
                s
            });
        }
        l.rps += inb.rps;
        l.p99_ms = match (l.p99_ms, inb.p99_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        l.mtls &= inb.mtls.unwrap_or(0.0) >= 0.999;
    }
    links.into_values().collect()
}

/// The service graph of one window.
pub fn graph(r: &Report) -> String {
    let mut callers: Vec<String> = Vec::new();
    let mut services: Vec<String> = Vec::new();
    let mut servers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut edges = Vec::new();
    let index = |v: &mut Vec<String>, s: &str| match v.iter().position(|x| x == s) {
        Some(i) => Some(i),
        None if v.len() < MAX_NODES => {
            v.push(s.to_owned());
            Some(v.len() - 1)
        }
        None => None,
    };
    for route in &r.routes {
        let p99 = ms(route.p99_ms);
        let success = route.success.unwrap_or(0.0);
        let mtls = route.mtls.unwrap_or(0.0) >= 0.999;
        if route.direction == "outbound" {
            let (Some(from), Some(to)) = (
                index(&mut callers, &route.pod),
                index(&mut services, &route.dst),
            ) else {
                continue;
            };
            edges.push(Edge {
                from,
                to,
                label: format!(
                    "{:.1} rps · {:.1}% · p99 {p99} · {}",
                    route.rps,
                    success * 100.0,
                    if mtls { "mTLS" } else { "plaintext" }
                ),
                mtls,
                healthy: success >= 0.95,
            });
        } else if servers.len() < MAX_NODES || servers.contains_key(&route.pod) {
            let peers: Vec<String> = route.peers.iter().map(|p| short_identity(p)).collect();
            servers.entry(route.pod.clone()).or_default().push(format!(
                "in {} {:.1} rps {:.1}% p99 {p99}{} from {}",
                route.dst,
                route.rps,
                success * 100.0,
                if mtls { " mTLS" } else { "" },
                peers.join(",")
            ));
        }
    }
    let (w, row, top) = (1200.0, 90.0, 40.0);
    let rows = callers.len().max(services.len()).max(servers.len()).max(1);
    let h = top + row * rows as f64 + 20.0;
    let (cx, sx, px, bw, bh) = (20.0, 470.0, 860.0, 260.0, 44.0);
    let y = |i: usize| top + row * i as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" id="graph" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{cx}" y="22" font-weight="bold">pods (calling)</text><text x="{sx}" y="22" font-weight="bold">services</text><text x="{px}" y="22" font-weight="bold">pods (serving)</text>
"##
    );
    for e in &edges {
        let (x1, y1) = (cx + bw, y(e.from) + bh / 2.0);
        let (x2, y2) = (sx, y(e.to) + bh / 2.0);
        let color = if e.healthy { "#2b8a3e" } else { "#c92a2a" };
        let dash = if e.mtls {
            ""
        } else {
            r#" stroke-dasharray="6,4""#
        };
        let _ = write!(
            s,
            r#"<line class="edge" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="3"{dash}/>
<text x="{:.0}" y="{:.0}" fill="{color}" font-size="11">{}</text>
"#,
            (x1 + x2) / 2.0 - 95.0,
            (y1 + y2) / 2.0 - 6.0,
            esc(&e.label)
        );
    }
    let server_index: Vec<&String> = servers.keys().collect();
    for link in serving_links(r) {
        let (Some(from), Some(to)) = (
            services.iter().position(|x| *x == link.service),
            server_index.iter().position(|p| **p == link.pod),
        ) else {
            continue;
        };
        let (x1, y1) = (sx + bw, y(from) + bh / 2.0);
        let (x2, y2) = (px, y(to) + bh / 2.0);
        let healthy = link.success.unwrap_or(0.0) >= 0.95;
        let color = if healthy { "#2b8a3e" } else { "#c92a2a" };
        let dash = if link.mtls {
            ""
        } else {
            r#" stroke-dasharray="6,4""#
        };
        let label = format!(
            "{:.1} rps · {:.1}% · p99 {} · {}",
            link.rps,
            link.success.unwrap_or(0.0) * 100.0,
            ms(link.p99_ms),
            if link.mtls { "mTLS" } else { "plaintext" }
        );
        let _ = write!(
            s,
            r#"<line class="edge serves" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{color}" stroke-width="3"{dash}/>
<text x="{:.0}" y="{:.0}" fill="{color}" font-size="11">{}</text>
"#,
            // Above the serving pod's box (the gap between the columns is
            // too narrow for the label).
            px,
            y(to) - 5.0,
            esc(&label)
        );
    }
    let node = |s: &mut String, x: f64, i: usize, fill: &str, title: &str, lines: &[String]| {
        let hh = bh.max(20.0 + 14.0 * lines.len() as f64);
        let _ = write!(
            s,
            r##"<g class="node"><rect x="{x}" y="{}" width="{bw}" height="{hh}" rx="8" fill="{fill}" stroke="#495057"/><text x="{}" y="{}" font-weight="bold">{}</text>"##,
            y(i),
            x + 10.0,
            y(i) + 18.0,
            esc(title)
        );
        for (k, l) in lines.iter().enumerate() {
            let _ = write!(
                s,
                r#"<text x="{}" y="{}" font-size="10">{}</text>"#,
                x + 10.0,
                y(i) + 32.0 + 12.0 * k as f64,
                esc(l)
            );
        }
        s.push_str("</g>\n");
    };
    for (i, c) in callers.iter().enumerate() {
        node(&mut s, cx, i, "#e7f5ff", c, &[]);
    }
    for (i, svc) in services.iter().enumerate() {
        node(&mut s, sx, i, "#fff3bf", svc, &[]);
    }
    for (i, (pod, lines)) in servers.iter().enumerate() {
        node(&mut s, px, i, "#ebfbee", pod, lines);
    }
    if edges.is_empty() && servers.is_empty() {
        let _ = write!(
            s,
            r#"<text x="{cx}" y="{}">no HTTP traffic in the window</text>"#,
            top + 20.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One point: seconds ago (positive), p50 and p99 in ms.
pub type Point = (f64, Option<f64>, Option<f64>);
/// One latency series.
pub type Series = Vec<Point>;

/// A small chart of p50 and p99 over `span_s` seconds.
pub fn latency_chart(title: &str, series: &Series, span_s: f64) -> String {
    let (w, h, l, b) = (560.0, 150.0, 50.0, 20.0);
    let max = series
        .iter()
        .flat_map(|(_, a, b)| [*a, *b])
        .flatten()
        .fold(0.0f64, f64::max)
        .max(0.1);
    let px = |ago: f64| l + (w - l - 10.0) * (1.0 - (ago / span_s).clamp(0.0, 1.0));
    let py = |v: f64| 20.0 + (h - b - 20.0) * (1.0 - v / max);
    let line = |pick: fn(&Point) -> Option<f64>| {
        series
            .iter()
            .filter_map(|p| pick(p).map(|v| format!("{:.1},{:.1}", px(p.0), py(v))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Dots too: a single point makes no line.
    let mut dots = String::new();
    for p in series {
        for (v, color) in [(p.1, "#1c7ed6"), (p.2, "#e03131")] {
            if let Some(v) = v {
                let _ = write!(
                    dots,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    px(p.0),
                    py(v)
                );
            }
        }
    }
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="latency" width="{w}" height="{h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="#f8f9fa" stroke="#dee2e6"/>
<text x="{l}" y="14" font-weight="bold">{}</text>
<text x="4" y="24">{}</text><text x="4" y="{}">0</text><text x="{l}" y="{}">-{:.0}s</text><text x="{}" y="{}">now</text>
<polyline fill="none" stroke="#1c7ed6" stroke-width="2" points="{}"/>
<polyline fill="none" stroke="#e03131" stroke-width="2" points="{}"/>
{dots}
<text x="{}" y="14" fill="#1c7ed6">p50</text><text x="{}" y="14" fill="#e03131">p99</text>
</svg>
"##,
        esc(title),
        ms(Some(max)),
        h - b,
        h - 4.0,
        span_s,
        w - 30.0,
        h - 4.0,
        line(|p| p.1),
        line(|p| p.2),
        w - 90.0,
        w - 50.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stat::window::RouteStat;

    fn route(pod: &str, dir: &str, dst: &str, success: f64, mtls: f64) -> RouteStat {
        RouteStat {
            pod: pod.into(),
            direction: dir.into(),
            dst: dst.into(),
            requests: 10,
            rps: 2.0,
            success: Some(success),
            p50_ms: Some(1.0),
            p95_ms: Some(2.0),
            p99_ms: Some(3.0),
            mtls: Some(mtls),
            peers: vec!["spiffe://cluster.local/ns/default/sa/client".into()],
        }
    }

    #[test]
    fn graph_names_pods_and_services_and_marks_edges() {
        let r = Report {
            window_s: 10.0,
            routes: vec![
                route(
                    "default/client",
                    "outbound",
                    "web.default.svc.cluster.local:80",
                    1.0,
                    1.0,
                ),
                route("default/client", "outbound", "db<1>:5432", 0.5, 0.0),
                route("default/web-1", "inbound", "app:8080", 1.0, 1.0),
            ],
            tcp: vec![],
            identities: BTreeMap::new(),
        };
        let g = graph(&r);
        assert!(g.contains(">default/client<"), "{g}");
        assert!(g.contains(">web.default.svc.cluster.local:80<"));
        assert!(g.contains(">default/web-1<"));
        assert!(g.contains("db&lt;1&gt;:5432"), "escaped");
        assert_eq!(g.matches("class=\"edge\"").count(), 2);
        assert!(g.contains("2.0 rps · 100.0% · p99 3.00ms · mTLS"));
        assert!(
            g.contains("stroke=\"#c92a2a\" stroke-width=\"3\" stroke-dasharray"),
            "unhealthy plaintext edge"
        );
        assert!(g.contains("from default/client"));
    }

    #[test]
    fn empty_graph_says_so() {
        let g = graph(&Report {
            window_s: 1.0,
            routes: vec![],
            tcp: vec![],
            identities: BTreeMap::new(),
        });
        assert!(g.contains("no HTTP traffic"));
    }

    #[test]
    fn chart_points() {
        let c = latency_chart(
            "web",
            &vec![(60.0, Some(1.0), Some(2.0)), (0.0, Some(1.0), None)],
            60.0,
        );
        assert!(c.contains("points=\"50.0,"), "{c}");
        assert!(c.contains(">2.00ms<"), "{c}");
    }

    fn with_peers(mut r: RouteStat, peers: &[&str]) -> RouteStat {
        r.peers = peers.iter().map(|p| p.to_string()).collect();
        r
    }

    const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
    const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
    const DB: &str = "spiffe://cluster.local/ns/default/sa/db";
    const WEB_SVC: &str = "web.default.svc.cluster.local:80";

    fn mesh(identities: &[(&str, &str)]) -> Report {
        Report {
            window_s: 10.0,
            routes: vec![
                with_peers(
                    route("default/client", "outbound", WEB_SVC, 1.0, 1.0),
                    &[WEB],
                ),
                with_peers(
                    route("default/client", "outbound", "db:5432", 1.0, 1.0),
                    &[DB],
                ),
                // web-1 serves two ports to the client; web-2 one, half failing.
                with_peers(
                    route("default/web-1", "inbound", "app:8080", 1.0, 1.0),
                    &[CLIENT],
                ),
                with_peers(
                    route("default/web-1", "inbound", "app:9090", 1.0, 0.0),
                    &[CLIENT],
                ),
                with_peers(
                    route("default/web-2", "inbound", "app:8080", 0.5, 1.0),
                    &[CLIENT],
                ),
                // db-0 is called by someone else only.
                with_peers(
                    route("default/db-0", "inbound", "app:5432", 1.0, 1.0),
                    &["spiffe://cluster.local/ns/other/sa/x"],
                ),
            ],
            tcp: vec![],
            identities: identities
                .iter()
                .map(|(p, i)| (p.to_string(), i.to_string()))
                .collect(),
        }
    }

    #[test]
    fn services_link_to_the_pods_that_serve_them() {
        let all = [
            ("default/client", CLIENT),
            ("default/web-1", WEB),
            ("default/web-2", WEB),
            ("default/db-0", DB),
        ];
        let links = serving_links(&mesh(&all));
        let pairs: Vec<(&str, &str)> = links
            .iter()
            .map(|l| (l.service.as_str(), l.pod.as_str()))
            .collect();
        // db-0 has db's identity but none of its traffic is the client's.
        assert_eq!(
            pairs,
            [(WEB_SVC, "default/web-1"), (WEB_SVC, "default/web-2")]
        );
        let web1 = &links[0];
        assert_eq!(web1.rps, 4.0, "both of web-1's inbound routes");
        assert_eq!(web1.success, Some(1.0));
        assert!(!web1.mtls, "one route was plaintext");
        assert_eq!(links[1].success, Some(0.5));
        assert!(links[1].mtls);

        // Without the caller's identity, the server identity alone decides.
        let links = serving_links(&mesh(&all[1..]));
        assert_eq!(links.len(), 3, "{links:?}");
        // Without the servers' identities, nothing is linked.
        assert!(serving_links(&mesh(&all[..1])).is_empty());

        let g = graph(&mesh(&all));
        assert_eq!(g.matches("class=\"edge serves\"").count(), 2, "{g}");
        assert!(
            g.contains("4.0 rps · 100.0% · p99 3.00ms · plaintext"),
            "{g}"
        );
        assert!(g.contains("2.0 rps · 50.0% · p99 3.00ms · mTLS"), "{g}");
    }
}
