//! Header rules between hops (RFC 9110 section 7.6.1, RFC 9113 section
//! 8.2.2): connection-specific fields are removed, so are fields named in
//! `Connection`; `TE: trailers` survives (gRPC needs it). For requests that
//! are being upgraded (`Upgrade`, `CONNECT`) `Connection` and `Upgrade` are
//! kept, since the proxy forwards the upgrade itself. Converting between
//! HTTP/1 and HTTP/2 moves the authority between `Host` and the URI.

use super::Proto;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri, Version};

/// Connection-specific fields, as names (no parsing per request).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

/// Removes hop-by-hop fields. `keep_upgrade` keeps `Connection`/`Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages carry none of them: one pass over the names instead of
    // a hashed removal per field.
    if !keep_upgrade && !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    for name in named {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(&name);
    }
    for name in &HOP_BY_HOP {
        if keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// An HTTP/1 request asking to switch protocols, or a CONNECT.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    if req.version() != Version::HTTP_11 && req.version() != Version::HTTP_10 {
        return false;
    }
    if req.method() == Method::CONNECT {
        return true;
    }
    let conn_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    conn_upgrade && req.headers().contains_key(header::UPGRADE)
}

/// The request's authority: URI first, then `Host`.
pub fn authority<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

/// Shapes the request for the next hop's HTTP version: for HTTP/2 an absolute
/// URI (scheme and authority from `Host`) and no `Host`; for HTTP/1 an
/// origin-form URI (authority-form for CONNECT) and a `Host`. The authority
/// is the URI's, else `Host`, else `fallback_authority` (formatted only
/// when needed). The URI's parts are moved, not printed and parsed again.
pub fn for_version<B>(
    req: &mut Request<B>,
    proto: Proto,
    fallback_authority: &dyn std::fmt::Display,
) -> Result<(), http::Error> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    let authority = |parts: &uri::Parts, headers: &HeaderMap| -> Result<Authority, http::Error> {
        if let Some(a) = &parts.authority {
            return Ok(a.clone());
        }
        match headers.get(header::HOST) {
            Some(h) if h.to_str().is_ok() => Ok(Authority::try_from(h.as_bytes())?),
            _ => Ok(Authority::try_from(fallback_authority.to_string())?),
        }
    };
    match proto {
        Proto::Http2 => {
            parts.authority = Some(authority(&parts, req.headers())?);
            if parts.scheme.is_none() {
                parts.scheme = Some(Scheme::HTTP);
            }
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(PathAndQuery::from_static("/"));
            }
            *req.uri_mut() = Uri::from_parts(parts)?;
            req.headers_mut().remove(header::HOST);
            *req.version_mut() = Version::HTTP_2;
        }
        Proto::Http1 => {
            let auth = if req.headers().contains_key(header::HOST) {
                None
            } else {
                Some(authority(&parts, req.headers())?)
            };
            let mut p = uri::Parts::default();
            if req.method() == Method::CONNECT {
                p.authority = Some(authority(&parts, req.headers())?);
            } else {
                p.path_and_query = Some(
                    parts
                        .path_and_query
                        .take()
                        .unwrap_or_else(|| PathAndQuery::from_static("/")),
                );
            }
            *req.uri_mut() = Uri::from_parts(p)?;
            if let Some(auth) = auth {
                req.headers_mut()
                    .insert(header::HOST, HeaderValue::from_str(auth.as_str())?);
            }
            *req.version_mut() = Version::HTTP_11;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_named() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert!(
            h.get("connection").is_none()
                && h.get("keep-alive").is_none()
                && h.get("x-secret").is_none()
        );
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-app").unwrap(), "kept");
    }

    #[test]
    fn keeps_upgrade_when_asked() {
        let req = Request::builder()
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(is_upgrade(&req));
        let mut h = req.headers().clone();
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn converts_between_versions() {
        let mut req = Request::builder()
            .uri("/a?b=1")
            .header("host", "web:80")
            .body(())
            .unwrap();
        for_version(&mut req, Proto::Http2, &"x").unwrap();
        assert_eq!(req.uri(), "http://web:80/a?b=1");
        assert!(req.headers().get("host").is_none());
        for_version(&mut req, Proto::Http1, &"x").unwrap();
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers().get("host").unwrap(), "web:80");
    }

    /// (method, URI, Host, next hop) -> (URI, Host) after the conversion;
    /// the fallback authority is `10.0.0.1:80` (the original destination).
    #[test]
    fn version_conversion_table() {
        let fallback: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            Proto,
            &'a str,
            Option<&'a str>,
        );
        let cases: &[Case<'_>] = &[
            (
                "GET",
                "/a?b=1",
                Some("web:80"),
                Proto::Http2,
                "http://web:80/a?b=1",
                None,
            ),
            ("GET", "/", None, Proto::Http2, "http://10.0.0.1:80/", None),
            (
                "GET",
                "https://api:443/x",
                Some("other"),
                Proto::Http2,
                "https://api:443/x",
                None,
            ),
            (
                "GET",
                "http://api:8080",
                None,
                Proto::Http2,
                "http://api:8080/",
                None,
            ),
            (
                "GET",
                "http://web:80/a?b=1",
                None,
                Proto::Http1,
                "/a?b=1",
                Some("web:80"),
            ),
            (
                "GET",
                "http://web:80/a",
                Some("keep"),
                Proto::Http1,
                "/a",
                Some("keep"),
            ),
            ("GET", "/p", None, Proto::Http1, "/p", Some("10.0.0.1:80")),
            (
                "CONNECT",
                "db:5432",
                None,
                Proto::Http1,
                "db:5432",
                Some("db:5432"),
            ),
            (
                "CONNECT",
                "/",
                Some("db:5432"),
                Proto::Http1,
                "db:5432",
                Some("db:5432"),
            ),
        ];
        for (method, uri, host, proto, want_uri, want_host) in cases {
            let mut b = Request::builder().method(*method).uri(*uri);
            if let Some(h) = host {
                b = b.header("host", *h);
            }
            let mut req = b.body(()).unwrap();
            for_version(&mut req, *proto, &fallback).unwrap();
            let case = format!("{method} {uri} host={host:?} -> {proto:?}");
            assert_eq!(req.uri().to_string(), *want_uri, "{case}");
            assert_eq!(
                req.headers().get("host").map(|h| h.to_str().unwrap()),
                *want_host,
                "{case}"
            );
        }
    }

    #[test]
    fn bad_authorities_are_errors() {
        let mut req = Request::builder()
            .uri("/")
            .header("host", "a b")
            .body(())
            .unwrap();
        assert!(for_version(&mut req, Proto::Http2, &"x").is_err());
    }

    #[test]
    fn messages_without_hop_by_hop_fields_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert("x-app", HeaderValue::from_static("kept"));
        h.insert("content-length", HeaderValue::from_static("3"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        // Each hop-by-hop field alone is removed.
        for name in HOP_BY_HOP.iter().filter(|n| *n != header::TE) {
            let mut h = before.clone();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h, false);
            assert_eq!(h, before, "{name}");
        }
    }
}
