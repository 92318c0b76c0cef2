//! The protocols a connection carries, mapped in one place:
//!
//! * [`MeshProto`]: what a connection to a peer proxy (or a next hop in
//!   general, see [`NextHop`](crate::transport::NextHop)) carries: HTTP/2,
//!   one HTTP/1.1 connection, or opaque bytes;
//! * its wire name in the transport header (`h2`, `http1`, `tcp`) and its
//!   ALPN name under mTLS (`conduit/h2`, ...);
//! * the HTTP version it stands for, and what the proxy serves a connection
//!   as ([`Serve`]) once its protocol is known, from the peer's transport
//!   header (inbound) or from detection ([`Detected`], both directions).
//!
//! Everything here is a pure mapping; the tests below pin each one.

use crate::detect::Detected;
use crate::http::Proto;
use conduit_proxy_tls::Alpn;

/// What a connection to a next hop carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeshProto {
    /// HTTP/2 (towards a peer proxy: one multiplexed connection that carries
    /// HTTP/1 and HTTP/2 requests alike).
    H2,
    /// One HTTP/1.1 connection (towards a peer proxy: requests that turn
    /// into byte streams, `Upgrade` and `CONNECT`).
    Http1,
    /// Opaque bytes.
    Tcp,
}

/// What the proxy serves an accepted connection as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// HTTP, the client speaking this version.
    Http(Proto),
    /// Opaque TCP.
    Opaque,
}

impl MeshProto {
    /// The name in the transport header.
    pub fn as_str(self) -> &'static str {
        match self {
            MeshProto::H2 => "h2",
            MeshProto::Http1 => "http1",
            MeshProto::Tcp => "tcp",
        }
    }

    /// The protocol a transport header names, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [MeshProto::H2, MeshProto::Http1, MeshProto::Tcp]
            .into_iter()
            .find(|p| p.as_str() == name)
    }

    /// The ALPN name offered for it under mTLS.
    pub fn alpn(self) -> Alpn {
        match self {
            MeshProto::H2 => Alpn::H2,
            MeshProto::Http1 => Alpn::Http1,
            MeshProto::Tcp => Alpn::Opaque,
        }
    }

    /// The protocol an ALPN name stands for.
    pub fn from_alpn(alpn: Alpn) -> Self {
        match alpn {
            Alpn::H2 => MeshProto::H2,
            Alpn::Http1 => MeshProto::Http1,
            Alpn::Opaque => MeshProto::Tcp,
        }
    }

    /// An HTTP connection of this version.
    pub fn http(version: Proto) -> Self {
        match version {
            Proto::Http1 => MeshProto::Http1,
            Proto::Http2 => MeshProto::H2,
        }
    }

    /// What a connection carrying this is served as (inbound, from the
    /// peer's transport header).
    pub fn serve(self) -> Serve {
        match self {
            MeshProto::H2 => Serve::Http(Proto::Http2),
            MeshProto::Http1 => Serve::Http(Proto::Http1),
            MeshProto::Tcp => Serve::Opaque,
        }
    }

    /// The HTTP version, `None` for opaque bytes.
    pub fn http_version(self) -> Option<Proto> {
        match self.serve() {
            Serve::Http(v) => Some(v),
            Serve::Opaque => None,
        }
    }

    /// The `protocol` label of `conduit_protocol_detect_total` for a peer
    /// connection (its protocol is named, not detected).
    pub fn detect_label(self) -> &'static str {
        match self {
            MeshProto::H2 => "peer_h2",
            MeshProto::Http1 => "peer_http1",
            MeshProto::Tcp => "peer_tcp",
        }
    }
}

/// What a detected connection is served as; `None` when it is not served
/// at all (the client closed, or was too slow with an HTTP request line).
pub fn for_detected(detected: Detected) -> Option<Serve> {
    match detected {
        Detected::Http1 => Some(Serve::Http(Proto::Http1)),
        Detected::Http2 => Some(Serve::Http(Proto::Http2)),
        Detected::Tls | Detected::Opaque | Detected::Timeout => Some(Serve::Opaque),
        Detected::Closed | Detected::SlowHttp => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [MeshProto; 3] = [MeshProto::H2, MeshProto::Http1, MeshProto::Tcp];

    #[test]
    fn mesh_protocols() {
        // proto, header name, ALPN, served as, detect label
        let table = [
            (
                MeshProto::H2,
                "h2",
                &b"conduit/h2"[..],
                Serve::Http(Proto::Http2),
                "peer_h2",
            ),
            (
                MeshProto::Http1,
                "http1",
                b"conduit/http1",
                Serve::Http(Proto::Http1),
                "peer_http1",
            ),
            (
                MeshProto::Tcp,
                "tcp",
                b"conduit/opaque",
                Serve::Opaque,
                "peer_tcp",
            ),
        ];
        for (proto, name, alpn, serve, label) in table {
            assert_eq!(proto.as_str(), name);
            assert_eq!(MeshProto::from_name(name), Some(proto));
            assert_eq!(proto.alpn().as_bytes(), alpn, "{proto:?}");
            assert_eq!(MeshProto::from_alpn(proto.alpn()), proto);
            assert_eq!(proto.serve(), serve);
            assert_eq!(proto.detect_label(), label);
        }
        for bad in ["", "H2", "h3", "opaque", "http2"] {
            assert_eq!(MeshProto::from_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn http_versions_round_trip() {
        for v in [Proto::Http1, Proto::Http2] {
            assert_eq!(MeshProto::http(v).http_version(), Some(v));
        }
        assert_eq!(MeshProto::Tcp.http_version(), None);
        let http: Vec<_> = ALL.iter().filter_map(|p| p.http_version()).collect();
        assert_eq!(http, [Proto::Http2, Proto::Http1]);
    }

    #[test]
    fn detected_protocols() {
        let table = [
            (Detected::Http1, Some(Serve::Http(Proto::Http1))),
            (Detected::Http2, Some(Serve::Http(Proto::Http2))),
            (Detected::Tls, Some(Serve::Opaque)),
            (Detected::Opaque, Some(Serve::Opaque)),
            // Server speaks first: forwarded as opaque.
            (Detected::Timeout, Some(Serve::Opaque)),
            (Detected::Closed, None),
            (Detected::SlowHttp, None),
        ];
        for (detected, want) in table {
            assert_eq!(for_detected(detected), want, "{detected:?}");
        }
    }
}
