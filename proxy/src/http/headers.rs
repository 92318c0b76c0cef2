//! Header rules between hops (RFC 9110 section 7.6.1, RFC 9113 section
//! 8.2.2): connection-specific fields are removed, so are fields named in
//! `Connection`; `TE: trailers` survives (gRPC needs it). For requests that
//! are being upgraded (`Upgrade`, `CONNECT`) `Connection` and `Upgrade` are
//! kept, since the proxy forwards the upgrade itself. Converting between
//! HTTP/1 and HTTP/2 moves the authority between `Host` and the URI.

use super::Proto;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

/// Removes hop-by-hop fields. `keep_upgrade` keeps `Connection`/`Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
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
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == "connection" || name == "upgrade") {
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
/// origin-form URI (authority-form for CONNECT) and a `Host`.
pub fn for_version<B>(
    req: &mut Request<B>,
    proto: Proto,
    fallback_authority: &str,
) -> Result<(), http::Error> {
    let auth = authority(req).unwrap_or_else(|| fallback_authority.to_string());
    match proto {
        Proto::Http2 => {
            let pq = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string();
            let scheme = req.uri().scheme_str().unwrap_or("http").to_string();
            *req.uri_mut() = Uri::builder()
                .scheme(scheme.as_str())
                .authority(auth.as_str())
                .path_and_query(pq)
                .build()?;
            req.headers_mut().remove(header::HOST);
            *req.version_mut() = Version::HTTP_2;
        }
        Proto::Http1 => {
            if req.method() == Method::CONNECT {
                *req.uri_mut() = Uri::builder().authority(auth.as_str()).build()?;
            } else {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                *req.uri_mut() = Uri::builder().path_and_query(pq).build()?;
            }
            if !req.headers().contains_key(header::HOST) {
                req.headers_mut()
                    .insert(header::HOST, HeaderValue::from_str(&auth)?);
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
        for_version(&mut req, Proto::Http2, "x").unwrap();
        assert_eq!(req.uri(), "http://web:80/a?b=1");
        assert!(req.headers().get("host").is_none());
        for_version(&mut req, Proto::Http1, "x").unwrap();
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers().get("host").unwrap(), "web:80");
    }
}
