//! The access log: off by default; with `--access-log json|common`
//! (`CONDUIT_PROXY_ACCESS_LOG`, the `conduit.io/access-log` annotation when
//! injected) one line per finished request on stderr, written when the
//! response body ends. Fed by the same per-request observation as tap
//! ([`crate::tap`]); when off it costs the request path one branch.
//!
//! `common` is the Common Log Format with the peer's mTLS identity as the
//! user and extra fields after it:
//!
//! ```text
//! 10.77.0.3 - spiffe://cluster.local/ns/default/sa/client [03/Dec/2026:06:40:00 +0000] "GET /hello HTTP/1.1" 200 152 inbound dst=app:8080 authority=web latency_ms=0.412 duration_ms=0.450 grpc_status=-
//! ```

use conduit_register::tap::TapEvent;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogFormat {
    Json,
    Common,
}

#[derive(Debug, Clone)]
pub struct AccessLog {
    pub format: AccessLogFormat,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a TapEvent,
}

impl AccessLog {
    pub fn new(format: AccessLogFormat) -> Self {
        Self { format }
    }

    /// Writes one line to stderr (a failed write is ignored: logging must
    /// not fail a request).
    pub fn write(&self, e: &TapEvent) {
        let mut line = format_line(self.format, e);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// One access log line, without the newline.
pub fn format_line(format: AccessLogFormat, e: &TapEvent) -> String {
    match format {
        AccessLogFormat::Json => serde_json::to_string(&JsonLine {
            time: rfc3339(e.ts_us),
            event: e,
        })
        .unwrap_or_default(),
        AccessLogFormat::Common => {
            let host = e
                .client
                .rsplit_once(':')
                .map_or(e.client.as_str(), |(h, _)| h)
                .trim_matches(['[', ']']);
            format!(
                "{host} - {} [{}] \"{} {} {}\" {} {} {} dst={} authority={} latency_ms={:.3} duration_ms={:.3} grpc_status={}",
                e.peer_identity.as_deref().unwrap_or("-"),
                clf_time(e.ts_us),
                e.method,
                escape(&e.path),
                e.version,
                e.status,
                e.rsp_bytes,
                e.direction,
                escape(&e.dst),
                escape(&e.authority),
                e.latency_us as f64 / 1000.0,
                e.duration_us as f64 / 1000.0,
                e.grpc_status
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            )
        }
    }
}

/// Keeps a field on one line and free of quotes.
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || c == '"' || c == ' ' {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// (year, month 1..=12, day) of a day count since 1970-01-01 (Howard
/// Hinnant's civil_from_days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

struct Parts {
    y: i64,
    mo: u32,
    d: u32,
    h: u64,
    mi: u64,
    s: u64,
    us: u64,
}

fn parts(ts_us: u64) -> Parts {
    let secs = ts_us / 1_000_000;
    let (y, mo, d) = civil((secs / 86_400) as i64);
    let t = secs % 86_400;
    Parts {
        y,
        mo,
        d,
        h: t / 3600,
        mi: t % 3600 / 60,
        s: t % 60,
        us: ts_us % 1_000_000,
    }
}

/// `2026-12-03T06:40:00.123456Z`.
pub fn rfc3339(ts_us: u64) -> String {
    let p = parts(ts_us);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        p.y, p.mo, p.d, p.h, p.mi, p.s, p.us
    )
}

/// `03/Dec/2026:06:40:00 +0000`.
pub fn clf_time(ts_us: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p = parts(ts_us);
    format!(
        "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
        p.d,
        MONTHS[(p.mo as usize).clamp(1, 12) - 1],
        p.y,
        p.h,
        p.mi,
        p.s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> TapEvent {
        TapEvent {
            // 2026-12-03T06:40:00.5Z
            ts_us: 1_796_280_000_500_000,
            direction: "inbound".into(),
            client: "10.77.0.3:41270".into(),
            peer_identity: Some("spiffe://cluster.local/ns/default/sa/client".into()),
            dst: "app:8080".into(),
            method: "GET".into(),
            authority: "web".into(),
            path: "/hello world".into(),
            version: "HTTP/1.1".into(),
            status: 200,
            grpc_status: None,
            latency_us: 412,
            duration_us: 450,
            req_bytes: None,
            rsp_bytes: 152,
            success: None,
        }
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            rfc3339(1_796_280_000_500_000),
            "2026-12-03T06:40:00.500000Z"
        );
        assert_eq!(
            clf_time(1_796_280_000_500_000),
            "03/Dec/2026:06:40:00 +0000"
        );
    }

    #[test]
    fn common_line() {
        assert_eq!(
            format_line(AccessLogFormat::Common, &event()),
            "10.77.0.3 - spiffe://cluster.local/ns/default/sa/client [03/Dec/2026:06:40:00 +0000] \
             \"GET /hello_world HTTP/1.1\" 200 152 inbound dst=app:8080 authority=web \
             latency_ms=0.412 duration_ms=0.450 grpc_status=-"
        );
        let mut e = event();
        e.client = "[fd77::3]:5".into();
        e.peer_identity = None;
        e.grpc_status = Some(14);
        let l = format_line(AccessLogFormat::Common, &e);
        assert!(l.starts_with("fd77::3 - - ["), "{l}");
        assert!(l.ends_with("grpc_status=14"), "{l}");
    }

    #[test]
    fn json_line_parses_back() {
        let l = format_line(AccessLogFormat::Json, &event());
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["time"], "2026-12-03T06:40:00.500000Z");
        assert_eq!(v["status"], 200);
        assert_eq!(
            v["peer_identity"],
            "spiffe://cluster.local/ns/default/sa/client"
        );
        let back: TapEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, event());
    }
}
