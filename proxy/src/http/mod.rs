//! HTTP proxying shared by the inbound and outbound paths: serving a
//! detected connection ([`server`]), forwarding each request ([`forward`]),
//! pooled upstream connections ([`client`]), header rules ([`headers`]),
//! slow request bodies ([`body_timeout`]), bad ones ([`client_body`]),
//! conflicting framing ([`smuggling`]), HTTP/2 rapid reset ([`resets`]),
//! byte-stream tunnels for `Upgrade` and `CONNECT` ([`tunnel`]), what the
//! proxy knows of gRPC ([`grpc`]) and the gRPC-aware response count
//! ([`classify`]). The proxy's own answers (a request it could not forward
//! or refused) are built in one place, [`error_response`]: plain HTTP, or
//! for a gRPC request a gRPC error.

pub mod body_timeout;
pub mod classify;
pub mod client;
pub mod client_body;
pub mod flag;
pub mod forward;
pub mod grpc;
pub mod grpc_web;
pub mod head_timer;
pub mod headers;
pub mod replay;
pub mod resets;
pub mod server;
pub mod smuggling;
pub mod tunnel;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type used on both sides of the proxy.
pub type Body = BoxBody<Bytes, BoxError>;

/// The HTTP version spoken on one hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Http1,
    Http2,
}

pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

pub fn empty() -> Body {
    boxed(Empty::<Bytes>::new().map_err(|never| match never {}))
}

pub fn full(text: impl Into<Bytes>) -> Body {
    boxed(Full::new(text.into()).map_err(|never| match never {}))
}

/// Spawns the futures hyper's HTTP/2 client and server hand over (one per
/// stream or request) as boxed tasks: hyper passes each by value, and
/// tokio's spawn moves its argument through several frames before it lands
/// in the task, a copy of the whole future each time; boxed first, the
/// future is copied once and only a pointer moves after that
/// (docs/benchmarks.md). Shared by the client and the server side.
#[derive(Clone, Copy, Debug, Default)]
pub struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Box::pin(fut));
    }
}

/// Header on responses the proxy itself generated, saying why.
pub const ERROR_HEADER: &str = "conduit-proxy-error";
/// Header a proxy adds when it carries an HTTP/1 request over the HTTP/2
/// connection between proxies; the receiving proxy removes it and speaks
/// HTTP/1.1 to the application.
pub const ORIG_PROTO_HEADER: &str = "conduit-orig-proto";
/// [`ORIG_PROTO_HEADER`] as a header name (not parsed per request).
pub const ORIG_PROTO: http::HeaderName = http::HeaderName::from_static(ORIG_PROTO_HEADER);

/// Why the proxy answered a request itself instead of forwarding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The destination has no endpoint.
    NoEndpoints,
    /// The route's request timeout fired.
    RequestTimeout,
    /// The upstream connection timed out.
    ConnectTimeout,
    /// The upstream connection failed (refused, unreachable, TLS).
    ConnectFailed,
    /// The request was sent and its answer failed (reset, connection lost).
    UpstreamFailed,
    /// The request cannot be forwarded as it is.
    BadRequest,
    /// The client stalled while sending its request body.
    BodyTimeout,
    /// The client's request body is malformed or was cut off.
    MalformedBody,
    /// The inbound policy refused the request.
    Forbidden,
    /// An HTTP/2 connection closing for rapid reset takes no more streams.
    TooManyResets,
    /// An HTTP/1 request with both `Content-Length` and `Transfer-Encoding`.
    AmbiguousFraming,
}

impl ProxyError {
    /// Every variant (for tests and docs).
    pub const ALL: [ProxyError; 11] = [
        ProxyError::NoEndpoints,
        ProxyError::RequestTimeout,
        ProxyError::ConnectTimeout,
        ProxyError::ConnectFailed,
        ProxyError::UpstreamFailed,
        ProxyError::BadRequest,
        ProxyError::BodyTimeout,
        ProxyError::MalformedBody,
        ProxyError::Forbidden,
        ProxyError::TooManyResets,
        ProxyError::AmbiguousFraming,
    ];

    /// The HTTP status of the plain answer.
    pub fn http_status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ProxyError::NoEndpoints | ProxyError::TooManyResets => S::SERVICE_UNAVAILABLE,
            ProxyError::RequestTimeout | ProxyError::ConnectTimeout => S::GATEWAY_TIMEOUT,
            ProxyError::ConnectFailed | ProxyError::UpstreamFailed => S::BAD_GATEWAY,
            ProxyError::BadRequest | ProxyError::MalformedBody | ProxyError::AmbiguousFraming => {
                S::BAD_REQUEST
            }
            ProxyError::BodyTimeout => S::REQUEST_TIMEOUT,
            ProxyError::Forbidden => S::FORBIDDEN,
        }
    }

    /// The gRPC status of the answer to a gRPC request. Following the
    /// spec's HTTP to gRPC mapping (`doc/http-grpc-status-mapping.md`:
    /// 502, 503, 504 are UNAVAILABLE, 400 is INTERNAL, 403 is
    /// PERMISSION_DENIED) except where the proxy knows more:
    ///
    /// * nothing reachable (no endpoints, connect failed, the answer lost):
    ///   UNAVAILABLE, "most likely a transient condition", which gRPC
    ///   clients may retry;
    /// * a timeout of the proxy's (request or connect): DEADLINE_EXCEEDED,
    ///   what a gRPC library reports when a deadline expires (the mapping
    ///   says UNAVAILABLE for 504, which hides that time ran out);
    /// * a request the proxy cannot forward (bad request, malformed body,
    ///   ambiguous framing): INTERNAL, the mapping's code for 400; not
    ///   INVALID_ARGUMENT, which `doc/statuscodes.md` reserves for the
    ///   application ("never generated by the gRPC library": the
    ///   arguments themselves are not what is wrong);
    /// * a stalled request body (HTTP 408, only on HTTP/1, so gRPC-Web):
    ///   DEADLINE_EXCEEDED, a time limit in the path expired before the
    ///   call completed (the mapping has no entry for 408, UNKNOWN, which
    ///   tells the client nothing).
    pub fn grpc_code(self) -> grpc::Code {
        use grpc::Code;
        match self {
            ProxyError::NoEndpoints
            | ProxyError::ConnectFailed
            | ProxyError::UpstreamFailed
            | ProxyError::TooManyResets => Code::Unavailable,
            ProxyError::RequestTimeout | ProxyError::ConnectTimeout | ProxyError::BodyTimeout => {
                Code::DeadlineExceeded
            }
            ProxyError::Forbidden => Code::PermissionDenied,
            ProxyError::BadRequest | ProxyError::MalformedBody | ProxyError::AmbiguousFraming => {
                Code::Internal
            }
        }
    }

    /// Why, in words: the [`ERROR_HEADER`], the plain body and the
    /// `grpc-message` (printable ASCII, no `%`: no percent-encoding needed).
    pub fn text(self) -> &'static str {
        match self {
            ProxyError::NoEndpoints => "no endpoints",
            ProxyError::RequestTimeout => "request timeout",
            ProxyError::ConnectTimeout => "upstream connect timeout",
            ProxyError::ConnectFailed => "upstream connect failed",
            ProxyError::UpstreamFailed => "upstream request failed",
            ProxyError::BadRequest => "bad request",
            ProxyError::BodyTimeout => "request body timeout",
            ProxyError::MalformedBody => "malformed request body",
            ProxyError::Forbidden => "forbidden by inbound policy",
            ProxyError::TooManyResets => "too many streams reset",
            ProxyError::AmbiguousFraming => "both content-length and transfer-encoding",
        }
    }
}

/// How the proxy's own answer to a request is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status with a `text/plain` body.
    Http,
    /// A gRPC error: HTTP 200, trailers-only (`grpc-status`,
    /// `grpc-message` in the headers, no body), which a gRPC client reads
    /// as the call's status. An HTTP error status with a text body is read
    /// as gRPC framing first (tonic: `invalid compression flag: 117`, the
    /// `u` of `upstream ...`).
    /// The content type follows the request's wire: `application/grpc`,
    /// or gRPC-Web's, whose clients read a trailers-only status from the
    /// headers too.
    Grpc(grpc::Wire),
}

impl Answer {
    /// The shape for a request with these headers.
    pub fn for_request(headers: &http::HeaderMap) -> Answer {
        grpc::wire(headers).map_or(Answer::Http, Answer::Grpc)
    }

    /// Whether the request is gRPC (of any wire).
    pub fn is_grpc(self) -> bool {
        matches!(self, Answer::Grpc(_))
    }
}

/// A response generated by the proxy (upstream unreachable, bad request,
/// refused ...), shaped for the request; both shapes carry the
/// [`ERROR_HEADER`].
pub fn error_response(e: ProxyError, answer: Answer) -> http::Response<Body> {
    let text = http::HeaderValue::from_static(e.text());
    let mut rsp = match answer {
        Answer::Http => {
            let mut rsp = http::Response::new(full(format!("{}\n", e.text())));
            *rsp.status_mut() = e.http_status();
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            rsp
        }
        Answer::Grpc(wire) => {
            let mut rsp = http::Response::new(empty());
            let h = rsp.headers_mut();
            h.insert(http::header::CONTENT_TYPE, wire.content_type());
            h.insert(grpc::STATUS, e.grpc_code().header_value());
            h.insert(grpc::MESSAGE, text.clone());
            rsp
        }
    };
    rsp.headers_mut().insert(ERROR_HEADER, text);
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn grpc_codes_of_the_proxy_errors() {
        use ProxyError::*;
        use grpc::Code::*;
        let cases = [
            (NoEndpoints, Unavailable),
            (ConnectFailed, Unavailable),
            (UpstreamFailed, Unavailable),
            (TooManyResets, Unavailable),
            (RequestTimeout, DeadlineExceeded),
            (ConnectTimeout, DeadlineExceeded),
            (BodyTimeout, DeadlineExceeded),
            (Forbidden, PermissionDenied),
            (BadRequest, Internal),
            (MalformedBody, Internal),
            (AmbiguousFraming, Internal),
        ];
        assert_eq!(cases.len(), ProxyError::ALL.len(), "every error has a case");
        for (e, code) in cases {
            assert_eq!(e.grpc_code(), code, "{e:?}");
        }
    }

    #[test]
    fn http_answers_are_unchanged() {
        use ProxyError::*;
        let cases = [
            (NoEndpoints, 503, "no endpoints"),
            (RequestTimeout, 504, "request timeout"),
            (ConnectTimeout, 504, "upstream connect timeout"),
            (ConnectFailed, 502, "upstream connect failed"),
            (UpstreamFailed, 502, "upstream request failed"),
            (BadRequest, 400, "bad request"),
            (BodyTimeout, 408, "request body timeout"),
            (MalformedBody, 400, "malformed request body"),
            (Forbidden, 403, "forbidden by inbound policy"),
            (TooManyResets, 503, "too many streams reset"),
            (
                AmbiguousFraming,
                400,
                "both content-length and transfer-encoding",
            ),
        ];
        assert_eq!(cases.len(), ProxyError::ALL.len(), "every error has a case");
        for (e, status, text) in cases {
            assert_eq!(e.http_status().as_u16(), status, "{e:?}");
            assert_eq!(e.text(), text, "{e:?}");
        }
    }

    /// grpc-message is percent-encoded text (PROTOCOL-HTTP2.md); the
    /// proxy's messages are fixed strings that are their own encoding.
    #[test]
    fn grpc_messages_need_no_percent_encoding() {
        for e in ProxyError::ALL {
            assert!(
                grpc::message_needs_no_encoding(e.text()),
                "{e:?}: {:?} would need percent-encoding",
                e.text()
            );
        }
    }

    fn body_text(rsp: http::Response<Body>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(rsp.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn both_shapes() {
        for e in ProxyError::ALL {
            let plain = error_response(e, Answer::Http);
            assert_eq!(plain.status(), e.http_status(), "{e:?}");
            assert_eq!(plain.headers()[ERROR_HEADER], e.text());
            assert_eq!(plain.headers()[http::header::CONTENT_TYPE], "text/plain");
            assert!(plain.headers().get(grpc::STATUS).is_none());
            assert_eq!(body_text(plain), format!("{}\n", e.text()));

            for (wire, content_type) in [
                (grpc::Wire::Grpc, "application/grpc"),
                (grpc::Wire::Web, "application/grpc-web+proto"),
                (grpc::Wire::WebText, "application/grpc-web-text+proto"),
            ] {
                let g = error_response(e, Answer::Grpc(wire));
                assert_eq!(g.status(), 200, "{e:?}");
                assert_eq!(g.headers()[ERROR_HEADER], e.text());
                assert_eq!(g.headers()[http::header::CONTENT_TYPE], content_type);
                assert_eq!(grpc::status(g.headers()), Some(e.grpc_code() as i32));
                assert_eq!(g.headers()[grpc::MESSAGE], e.text());
                assert_eq!(body_text(g), "", "trailers-only: no body");
            }
        }
    }

    #[test]
    fn the_answer_follows_the_request_content_type() {
        use grpc::Wire::*;
        let cases = [
            (None, Answer::Http),
            (Some("text/plain"), Answer::Http),
            (Some("application/grpc"), Answer::Grpc(Grpc)),
            (Some("application/grpc-web+proto"), Answer::Grpc(Web)),
            (Some("application/grpc-web-text"), Answer::Grpc(WebText)),
        ];
        for (ct, want) in cases {
            let mut h = http::HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
            }
            assert_eq!(Answer::for_request(&h), want, "{ct:?}");
        }
    }
}
