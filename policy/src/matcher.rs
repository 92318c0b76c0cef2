//! Precompiled matchers for clients and HTTP requests. Matching borrows the
//! request and never allocates.

use crate::cidr::Cidr;
use conduit_identity::{SpiffeId, TrustDomain};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::net::IpAddr;

/// Who is calling, as known once per connection.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The verified mTLS identity of the peer proxy; `None` for plaintext.
    pub identity: Option<&'a SpiffeId>,
    pub ip: IpAddr,
}

/// The parts of an HTTP request rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    /// The URI path, without the query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone)]
pub(crate) enum IdMatch {
    Exact(SpiffeId),
    ServiceAccount {
        trust_domain: Option<TrustDomain>,
        namespace: String,
        name: String,
    },
    Namespace {
        trust_domain: Option<TrustDomain>,
        namespace: String,
    },
    Authenticated,
}

impl IdMatch {
    fn matches(&self, id: &SpiffeId) -> bool {
        let td_ok = |td: &Option<TrustDomain>| td.as_ref().is_none_or(|td| id.trust_domain() == td);
        match self {
            IdMatch::Exact(want) => want == id,
            IdMatch::ServiceAccount {
                trust_domain,
                namespace,
                name,
            } => td_ok(trust_domain) && id.namespace() == namespace && id.service_account() == name,
            IdMatch::Namespace {
                trust_domain,
                namespace,
            } => td_ok(trust_domain) && id.namespace() == namespace,
            IdMatch::Authenticated => true,
        }
    }
}

/// `None` lists put no constraint; `Some` lists need one match.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientMatch {
    pub identities: Option<Vec<IdMatch>>,
    pub networks: Option<Vec<Cidr>>,
}

impl ClientMatch {
    pub fn matches(&self, c: &Client<'_>) -> bool {
        let id_ok = match &self.identities {
            None => true,
            Some(ms) => c
                .identity
                .is_some_and(|id| ms.iter().any(|m| m.matches(id))),
        };
        id_ok
            && match &self.networks {
                None => true,
                Some(nets) => nets.iter().any(|n| n.contains(c.ip)),
            }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum PathMatch {
    Exact(String),
    Prefix(String),
    /// `/<service>/` and, for one method, the full path.
    Grpc {
        service_prefix: String,
        method: Option<String>,
    },
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Grpc {
                service_prefix,
                method,
            } => path
                .strip_prefix(service_prefix.as_str())
                .is_some_and(|m| match method {
                    Some(want) => m == want,
                    None => !m.is_empty() && !m.contains('/'),
                }),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct HttpMatch {
    pub methods: Vec<Method>,
    pub paths: Vec<PathMatch>,
    pub headers: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl HttpMatch {
    pub fn matches(&self, r: &Request<'_>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == r.method))
            && self.paths.iter().all(|p| p.matches(r.path))
            && self.headers.iter().all(|(name, value)| match value {
                None => r.headers.contains_key(name),
                Some(v) => r.headers.get_all(name).iter().any(|got| got == v),
            })
    }
}

/// Whether `path` is in the form a rule can be trusted to see the way the
/// application will: absolute, no empty, `.` or `..` segments, no
/// backslashes, and no percent-encoding of `/`, `\`, `.` or of characters
/// that need none (letters, digits, `-`, `_`, `~`). A path prefix rule
/// would otherwise be bypassed by `/api/../admin` or `/%61dmin`.
pub fn is_normalized(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        // `*` (OPTIONS *) and authority-form (CONNECT) carry no path.
        return path == "*" || path.is_empty();
    }
    let mut seg_start = 1;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => return false,
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return false;
                };
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric()
                    || matches!(c, b'-' | b'.' | b'_' | b'~' | b'/' | b'\\')
                {
                    return false;
                }
                i += 3;
                continue;
            }
            b'/' if i > 0 => {
                if bad_segment(&b[seg_start..i]) {
                    return false;
                }
                seg_start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    // The last segment may be empty (a trailing slash), not `.` or `..`.
    let last = &b[seg_start.min(b.len())..];
    !(last == b"." || last == b"..")
}

fn bad_segment(seg: &[u8]) -> bool {
    seg.is_empty() || seg == b"." || seg == b".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_paths() {
        let cases: &[(&str, bool)] = &[
            ("/", true),
            ("/api/users", true),
            ("/api/users/", true),
            ("/a%20b", true),
            ("/a%3Fb", true),
            ("*", true),
            ("//api", false),
            ("/api//x", false),
            ("/api/../admin", false),
            ("/api/./x", false),
            ("/api/..", false),
            ("/api/.", false),
            ("/%61dmin", false),
            ("/api%2F..%2Fadmin", false),
            ("/api%2e%2e", false),
            ("/a\\b", false),
            ("/a%", false),
            ("/a%4", false),
            ("/a%zz", false),
            ("relative", false),
            ("/.hidden", true),
            ("/a..b", true),
        ];
        for (p, want) in cases {
            assert_eq!(is_normalized(p), *want, "{p}");
        }
    }

    #[test]
    fn grpc_paths() {
        let svc = PathMatch::Grpc {
            service_prefix: "/pkg.Greeter/".into(),
            method: None,
        };
        assert!(svc.matches("/pkg.Greeter/Hello"));
        assert!(!svc.matches("/pkg.Greeter/"));
        assert!(!svc.matches("/pkg.Greeter/Hello/x"));
        assert!(!svc.matches("/pkg.GreeterX/Hello"));
        let m = PathMatch::Grpc {
            service_prefix: "/pkg.Greeter/".into(),
            method: Some("Hello".into()),
        };
        assert!(m.matches("/pkg.Greeter/Hello"));
        assert!(!m.matches("/pkg.Greeter/Bye"));
        assert!(!m.matches("/pkg.Greeter/HelloX"));
    }
}
