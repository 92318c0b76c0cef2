//! The tap stream's wire format, shared by the proxy (which serves it on its
//! operator listener, `GET /tap?<filter>`) and the node CLI (`conduit-ebpf
//! tap`/`top`, which reads it): one JSON [`TapMessage`] per line, and the
//! [`TapFilter`] both sides write as a query string.

use serde::{Deserialize, Serialize};

/// Longest `authority` and `path` carried in an event (longer ones are cut).
pub const MAX_FIELD: usize = 512;

/// One finished request as a proxy saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TapEvent {
    /// Unix time the request arrived, microseconds.
    pub ts_us: u64,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The connection's client address as the proxy saw it.
    pub client: String,
    /// The other proxy's verified identity on this hop, `None` for plaintext.
    pub peer_identity: Option<String>,
    /// The destination as labelled in the metrics (service name or address).
    pub dst: String,
    pub method: String,
    pub authority: String,
    /// Path without the query string (queries may carry secrets).
    pub path: String,
    /// `HTTP/1.1`, `HTTP/2`.
    pub version: String,
    pub status: u16,
    /// From the trailers (or a trailers-only response's headers).
    pub grpc_status: Option<i32>,
    /// Until the response headers were sent.
    pub latency_us: u64,
    /// Until the response body ended (or the client went away).
    pub duration_us: u64,
    /// The request's declared `content-length` (`None`: not declared).
    pub req_bytes: Option<u64>,
    /// Response body bytes sent.
    pub rsp_bytes: u64,
    /// The proxy's classification, as counted in
    /// `conduit_response_total{classification}`: a 5xx, a gRPC status
    /// other than 0 (headers, trailers or gRPC-Web's trailers frame) and a
    /// gRPC response that ended without one are failures. `None` from a
    /// proxy that predates the field: read `status` and `grpc_status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
}

/// One line of the stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum TapMessage {
    Request(Box<TapEvent>),
    /// Events this listener lost so far because it read too slowly.
    Dropped {
        total: u64,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TapDirection {
    Inbound,
    Outbound,
}

impl TapDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            TapDirection::Inbound => "inbound",
            TapDirection::Outbound => "outbound",
        }
    }
}

/// Query parameters `from_query` was told to pass back: (key, decoded value).
pub type Extra<'a> = Vec<(&'a str, String)>;

/// Which requests a listener wants. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapFilter {
    pub direction: Option<TapDirection>,
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    /// 1..=5 for `1xx`..`5xx`.
    pub status_class: Option<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("direction must be inbound or outbound, not {0:?}")]
    Direction(String),
    #[error("status class must be 1xx..5xx, not {0:?}")]
    StatusClass(String),
    #[error("path prefix must start with '/', not {0:?}")]
    Path(String),
    #[error("method must be an HTTP token, not {0:?}")]
    Method(String),
    #[error("unknown tap parameter {0:?}")]
    Unknown(String),
    #[error("bad percent-encoding in {0:?}")]
    Encoding(String),
}

impl TapFilter {
    pub fn matches(&self, e: &TapEvent) -> bool {
        self.direction.is_none_or(|d| d.as_str() == e.direction)
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&e.method))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| e.path.starts_with(p))
            && self
                .status_class
                .is_none_or(|c| u16::from(c) == e.status / 100)
    }

    /// `direction=inbound&method=GET&path=%2Fapi&status=5xx` (only the set fields).
    pub fn to_query(&self) -> String {
        let mut q = Vec::new();
        if let Some(d) = self.direction {
            q.push(format!("direction={}", d.as_str()));
        }
        if let Some(m) = &self.method {
            q.push(format!("method={}", encode(m)));
        }
        if let Some(p) = &self.path_prefix {
            q.push(format!("path={}", encode(p)));
        }
        if let Some(c) = self.status_class {
            q.push(format!("status={c}xx"));
        }
        q.join("&")
    }

    /// Parses one `key=value` setting (query parameter or CLI flag value).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), FilterError> {
        match key {
            "direction" => {
                self.direction = Some(match value {
                    "inbound" => TapDirection::Inbound,
                    "outbound" => TapDirection::Outbound,
                    _ => return Err(FilterError::Direction(value.into())),
                })
            }
            "method" => {
                let ok = !value.is_empty()
                    && value.len() <= 32
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !ok {
                    return Err(FilterError::Method(value.into()));
                }
                self.method = Some(value.to_ascii_uppercase());
            }
            "path" => {
                if !value.starts_with('/') || value.len() > MAX_FIELD {
                    return Err(FilterError::Path(value.into()));
                }
                self.path_prefix = Some(value.into());
            }
            "status" => self.status_class = Some(parse_status_class(value)?),
            _ => return Err(FilterError::Unknown(key.into())),
        }
        Ok(())
    }

    /// Parses a query string; `extra` keys (e.g. `buffer`) are returned
    /// rather than refused.
    pub fn from_query<'a>(
        query: &'a str,
        extra: &[&str],
    ) -> Result<(Self, Extra<'a>), FilterError> {
        let mut f = Self::default();
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v).ok_or_else(|| FilterError::Encoding(v.into()))?;
            if extra.contains(&k) {
                rest.push((k, v));
            } else {
                f.set(k, &v)?;
            }
        }
        Ok((f, rest))
    }
}

/// `5xx`, `5` -> 5.
pub fn parse_status_class(s: &str) -> Result<u8, FilterError> {
    let digits = s.strip_suffix("xx").unwrap_or(s);
    match digits.parse::<u8>() {
        Ok(c @ 1..=5) => Ok(c),
        _ => Err(FilterError::StatusClass(s.into())),
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Cuts `s` to at most [`MAX_FIELD`] bytes on a character boundary.
pub fn bounded(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_owned();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(direction: &str, method: &str, path: &str, status: u16) -> TapEvent {
        TapEvent {
            ts_us: 1,
            direction: direction.into(),
            client: "10.0.0.1:1".into(),
            peer_identity: None,
            dst: "web:80".into(),
            method: method.into(),
            authority: "web".into(),
            path: path.into(),
            version: "HTTP/1.1".into(),
            status,
            grpc_status: None,
            latency_us: 1,
            duration_us: 1,
            req_bytes: None,
            rsp_bytes: 0,
            success: None,
        }
    }

    /// Events of a proxy from before `success` still read, and `success`
    /// is only written when known.
    #[test]
    fn success_is_optional_on_the_wire() {
        let mut e = event("inbound", "GET", "/", 200);
        let old = serde_json::to_string(&e).unwrap();
        assert!(!old.contains("success"), "{old}");
        assert_eq!(serde_json::from_str::<TapEvent>(&old).unwrap(), e);
        e.success = Some(false);
        let new = serde_json::to_string(&e).unwrap();
        assert!(new.contains(r#""success":false"#), "{new}");
        assert_eq!(serde_json::from_str::<TapEvent>(&new).unwrap(), e);
    }

    #[test]
    fn filters_match_each_field() {
        let e = event("inbound", "GET", "/api/users", 503);
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("direction=inbound", true),
            ("direction=outbound", false),
            ("method=get", true),
            ("method=POST", false),
            ("path=%2Fapi", true),
            ("path=/api/users/1", false),
            ("status=5xx", true),
            ("status=2xx", false),
            ("direction=inbound&method=GET&path=/api&status=5", true),
            ("direction=inbound&status=4xx", false),
        ];
        for (q, want) in cases {
            let (f, _) = TapFilter::from_query(q, &[]).unwrap();
            assert_eq!(f.matches(&e), *want, "{q}");
        }
    }

    #[test]
    fn query_round_trips() {
        let mut f = TapFilter::default();
        f.set("direction", "outbound").unwrap();
        f.set("method", "post").unwrap();
        f.set("path", "/a b&c").unwrap();
        f.set("status", "2xx").unwrap();
        let q = f.to_query();
        assert_eq!(
            q,
            "direction=outbound&method=POST&path=/a%20b%26c&status=2xx"
        );
        assert_eq!(TapFilter::from_query(&q, &[]).unwrap().0, f);
    }

    #[test]
    fn bad_filters_are_refused() {
        let cases: &[(&str, FilterError)] = &[
            ("direction=up", FilterError::Direction("up".into())),
            ("status=6xx", FilterError::StatusClass("6xx".into())),
            ("status=", FilterError::StatusClass("".into())),
            ("path=api", FilterError::Path("api".into())),
            ("method=G%20T", FilterError::Method("G T".into())),
            ("color=red", FilterError::Unknown("color".into())),
            ("path=%zz", FilterError::Encoding("%zz".into())),
        ];
        for (q, want) in cases {
            assert_eq!(TapFilter::from_query(q, &[]).unwrap_err(), *want, "{q}");
        }
    }

    #[test]
    fn extra_keys_are_returned() {
        let (f, rest) = TapFilter::from_query("buffer=16&status=2xx", &["buffer"]).unwrap();
        assert_eq!(f.status_class, Some(2));
        assert_eq!(rest, vec![("buffer", "16".to_owned())]);
    }

    #[test]
    fn messages_are_json_lines() {
        let m = TapMessage::Dropped { total: 3 };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"dropped":{"total":3}}"#
        );
        let e = TapMessage::Request(Box::new(event("outbound", "GET", "/", 200)));
        let back: TapMessage = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn fields_are_bounded() {
        assert_eq!(bounded("abc"), "abc");
        let long = "é".repeat(MAX_FIELD);
        let b = bounded(&long);
        assert!(b.len() <= MAX_FIELD && b.len() >= MAX_FIELD - 1);
    }
}
