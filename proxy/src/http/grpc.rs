//! What the proxy needs to know of gRPC: whether a request is gRPC, the
//! `grpc-status` of a header map (trailers-only response headers or
//! trailers), the status codes the proxy itself answers with, and how a
//! response is classified as a success or a failure for the metrics.
//!
//! References: the gRPC over HTTP/2 protocol (`doc/PROTOCOL-HTTP2.md` in
//! grpc/grpc), the status codes (`doc/statuscodes.md`) and the HTTP to gRPC
//! status mapping (`doc/http-grpc-status-mapping.md`).

use http::HeaderMap;

/// The `grpc-status` header (response headers of a trailers-only response,
/// or trailers; gRPC-Web: a line of the trailers frame).
pub const STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// The `grpc-message` header.
pub const MESSAGE: http::HeaderName = http::HeaderName::from_static("grpc-message");

/// How a gRPC request's response travels: which content type the proxy's
/// own answer carries, and where the response's status is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// gRPC over HTTP/2 (`application/grpc`, `application/grpc+proto`...):
    /// the status is in the trailers, or in the headers of a trailers-only
    /// response.
    Grpc,
    /// gRPC-Web (`application/grpc-web`, `application/grpc-web+proto`...,
    /// `doc/PROTOCOL-WEB.md`): the trailers travel in the body, as the last
    /// length-prefixed frame, its flag's high bit set
    /// ([`super::grpc_web::WebScan`]).
    Web,
    /// gRPC-Web, base64 text (`application/grpc-web-text`...): the same
    /// frames, base64-encoded.
    WebText,
}

/// The gRPC wire of a request, by its content type; `None`: not gRPC.
pub fn wire(headers: &HeaderMap) -> Option<Wire> {
    let ct = headers.get(http::header::CONTENT_TYPE)?.as_bytes();
    let rest = ct.strip_prefix(b"application/grpc")?;
    // The type ends here or goes on with a `+suffix`, `-web...` or
    // parameters; `application/grpcfoo` is another type.
    let ends = |r: &[u8]| matches!(r.first(), None | Some(b'+' | b';' | b' '));
    if let Some(r) = rest.strip_prefix(b"-web-text") {
        return ends(r).then_some(Wire::WebText);
    }
    if let Some(r) = rest.strip_prefix(b"-web") {
        return ends(r).then_some(Wire::Web);
    }
    ends(rest).then_some(Wire::Grpc)
}

impl Wire {
    /// The content type of the proxy's own answer to a request of this wire.
    pub fn content_type(self) -> http::HeaderValue {
        http::HeaderValue::from_static(match self {
            Wire::Grpc => "application/grpc",
            Wire::Web => "application/grpc-web+proto",
            Wire::WebText => "application/grpc-web-text+proto",
        })
    }
}

/// `grpc-status` of a header map, if present and numeric.
pub fn status(h: &HeaderMap) -> Option<i32> {
    h.get(STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// The gRPC status codes the proxy answers with itself (a subset of
/// `doc/statuscodes.md`; the value is the wire code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    Internal = 13,
    Unavailable = 14,
}

impl Code {
    /// The `grpc-status` header value.
    pub fn header_value(self) -> http::HeaderValue {
        http::HeaderValue::from_static(match self {
            Code::DeadlineExceeded => "4",
            Code::PermissionDenied => "7",
            Code::Internal => "13",
            Code::Unavailable => "14",
        })
    }
}

/// A `grpc-message` value needs no percent-encoding when it is printable
/// ASCII without `%` (the spec's Percent-Byte-Unencoded set, 0x20..=0x7E
/// minus `%`): then the text is its own encoding. The proxy's own messages
/// are fixed strings of that set (asserted by the tests of
/// [`super::ProxyError`]), so they are sent as they are.
pub fn message_needs_no_encoding(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'%')
}

/// Whether a response counts as a success or a failure (the
/// `classification` label of `conduit_response_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Success,
    Failure,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::Failure => "failure",
        }
    }
}

/// What a response's head says about its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtHead {
    /// Known now: the response is counted when its headers are sent.
    Known(Class),
    /// A gRPC response whose status comes in its trailers: counted when
    /// its body ends.
    AtEnd,
}

/// Classifies a response from its head: HTTP 5xx is a failure; a non-gRPC
/// request's other answers are successes; for a gRPC request a
/// `grpc-status` in the headers (a trailers-only response) decides (0 is
/// the only success), and without one a status other than 200 is a failure
/// (the client maps it to a gRPC error) while a 200 waits for the trailers.
pub fn classify_head(grpc: bool, http_status: u16, grpc_status: Option<i32>) -> AtHead {
    if http_status >= 500 {
        return AtHead::Known(Class::Failure);
    }
    if !grpc {
        return AtHead::Known(Class::Success);
    }
    match (grpc_status, http_status) {
        (Some(0), _) => AtHead::Known(Class::Success),
        (Some(_), _) => AtHead::Known(Class::Failure),
        (None, 200) => AtHead::AtEnd,
        (None, _) => AtHead::Known(Class::Failure),
    }
}

/// How a gRPC response body whose class waited for its end ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Trailers came, with this `grpc-status` (`None`: missing or not a
    /// number).
    Trailers(Option<i32>),
    /// The body ended without trailers: no status, which a gRPC client
    /// reports as an error.
    NoTrailers,
    /// The body failed (the upstream reset the stream, the connection broke).
    Error,
    /// The body was dropped before its end (the client went away).
    Dropped,
}

/// The class of a gRPC response at its end: only trailers saying
/// `grpc-status: 0` are a success.
pub fn classify_end(end: End) -> Class {
    match end {
        End::Trailers(Some(0)) => Class::Success,
        End::Trailers(_) | End::NoTrailers | End::Error | End::Dropped => Class::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_wires_by_content_type() {
        use Wire::*;
        let cases: &[(Option<&str>, Option<Wire>)] = &[
            (Some("application/grpc"), Some(Grpc)),
            (Some("application/grpc+proto"), Some(Grpc)),
            (Some("application/grpc+json"), Some(Grpc)),
            (Some("application/grpc; charset=utf-8"), Some(Grpc)),
            (Some("application/grpc-web"), Some(Web)),
            (Some("application/grpc-web+proto"), Some(Web)),
            (Some("application/grpc-web-text"), Some(WebText)),
            (Some("application/grpc-web-text+proto"), Some(WebText)),
            (Some("application/grpcfoo"), None),
            (Some("application/grpc-webby"), None),
            (Some("application/json"), None),
            (Some("text/plain"), None),
            (None, None),
        ];
        for (ct, want) in cases {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            }
            assert_eq!(wire(&h), *want, "{ct:?}");
        }
    }

    #[test]
    fn grpc_status_is_read_when_numeric() {
        let cases: &[(Option<&str>, Option<i32>)] = &[
            (Some("0"), Some(0)),
            (Some("14"), Some(14)),
            (Some(" 7 "), Some(7)),
            (Some("fourteen"), None),
            (Some(""), None),
            (None, None),
        ];
        for (v, want) in cases {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(STATUS, v.parse().unwrap());
            }
            assert_eq!(status(&h), *want, "{v:?}");
        }
    }

    #[test]
    fn code_header_values_are_the_wire_codes() {
        for c in [
            Code::DeadlineExceeded,
            Code::PermissionDenied,
            Code::Internal,
            Code::Unavailable,
        ] {
            assert_eq!(c.header_value(), (c as i32).to_string().as_str());
        }
    }

    #[test]
    fn messages_that_need_percent_encoding_are_told_apart() {
        let cases = [
            ("upstream request failed", true),
            ("no endpoints", true),
            ("50% done", false),
            ("caf\u{e9}", false),
            ("line\nbreak", false),
            ("", true),
        ];
        for (text, want) in cases {
            assert_eq!(message_needs_no_encoding(text), want, "{text:?}");
        }
    }

    #[test]
    fn classification_at_the_head() {
        use AtHead::*;
        use Class::*;
        // (gRPC request, HTTP status, grpc-status in the headers, class)
        let cases: &[(bool, u16, Option<i32>, AtHead)] = &[
            (false, 200, None, Known(Success)),
            (false, 302, None, Known(Success)),
            (false, 404, None, Known(Success)),
            (false, 500, None, Known(Failure)),
            (false, 503, None, Known(Failure)),
            // A grpc-status on a non-gRPC request is not looked at.
            (false, 200, Some(14), Known(Success)),
            // gRPC: trailers-only responses are decided by their status.
            (true, 200, Some(0), Known(Success)),
            (true, 200, Some(14), Known(Failure)),
            (true, 200, Some(7), Known(Failure)),
            (true, 200, Some(5), Known(Failure)),
            // A stream: its trailers will say.
            (true, 200, None, AtEnd),
            // Not 200 and no grpc-status: the client maps the HTTP status
            // to an error (404 is UNIMPLEMENTED, 429 UNAVAILABLE).
            (true, 404, None, Known(Failure)),
            (true, 429, None, Known(Failure)),
            (true, 502, None, Known(Failure)),
            // 5xx is a failure whatever the grpc-status says.
            (true, 503, Some(0), Known(Failure)),
        ];
        for (grpc, http, gs, want) in cases {
            assert_eq!(
                classify_head(*grpc, *http, *gs),
                *want,
                "grpc {grpc}, HTTP {http}, grpc-status {gs:?}"
            );
        }
    }

    #[test]
    fn classification_at_the_end() {
        use Class::*;
        let cases = [
            (End::Trailers(Some(0)), Success),
            (End::Trailers(Some(14)), Failure),
            (End::Trailers(Some(2)), Failure),
            (End::Trailers(None), Failure),
            (End::NoTrailers, Failure),
            (End::Error, Failure),
            (End::Dropped, Failure),
        ];
        for (end, want) in cases {
            assert_eq!(classify_end(end), want, "{end:?}");
        }
    }
}
