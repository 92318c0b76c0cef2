//! SPIFFE identities of Kubernetes service accounts:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing is strict and every refusal says what is wrong:
//!
//! * the trust domain follows the SPIFFE spec (lowercase letters, digits,
//!   `.`, `-`, `_`; at most 255 bytes);
//! * the namespace is a Kubernetes namespace name, an RFC 1123 DNS label
//!   (lowercase letters, digits and `-`, starting and ending with a letter or
//!   digit, at most 63 bytes);
//! * the service account is a Kubernetes DNS subdomain name (DNS labels
//!   joined by `.`, at most 253 bytes);
//! * the whole ID is at most 2048 bytes, and the path is exactly
//!   `/ns/<namespace>/sa/<service-account>`.
//!
//! Formatting ([`SpiffeId`]'s `Display`) is the inverse of parsing.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

const SCHEME: &str = "spiffe://";
/// The SPIFFE spec's limit on a whole ID.
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_NAMESPACE_LEN: usize = 63;
const MAX_SERVICE_ACCOUNT_LEN: usize = 253;

/// Why a string is not a SPIFFE ID (or trust domain) of this mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong { len: usize },
    #[error("{id:?} does not start with \"spiffe://\"")]
    NotSpiffe { id: String },
    #[error("{id:?} has an empty trust domain")]
    EmptyTrustDomain { id: String },
    #[error(
        "trust domain {trust_domain:?} is {len} bytes long; at most {MAX_TRUST_DOMAIN_LEN} are allowed"
    )]
    TrustDomainTooLong { trust_domain: String, len: usize },
    #[error(
        "trust domain {trust_domain:?} contains {ch:?}: only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    TrustDomainChar { trust_domain: String, ch: char },
    #[error("{id:?} has path {path:?}; the path must be /ns/<namespace>/sa/<service-account>")]
    BadPath { id: String, path: String },
    #[error("namespace {namespace:?} is not a Kubernetes namespace name: {reason}")]
    BadNamespace {
        namespace: String,
        reason: NameError,
    },
    #[error(
        "service account {service_account:?} is not a Kubernetes service account name: {reason}"
    )]
    BadServiceAccount {
        service_account: String,
        reason: NameError,
    },
    #[error("{id:?} is in trust domain {found:?}, not in {expected:?}")]
    WrongTrustDomain {
        id: String,
        found: String,
        expected: String,
    },
}

/// What is wrong with a Kubernetes name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("it is empty")]
    Empty,
    #[error("it is {len} bytes long; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error(
        "it contains {0:?}; only lowercase letters, digits and '-' (and '.' in service accounts) are allowed"
    )]
    Char(char),
    #[error("it (and each part between dots) must start and end with a lowercase letter or digit")]
    Edge,
}

/// A SPIFFE trust domain, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Checks `name` against the SPIFFE spec's trust domain rules.
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if name.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain {
                id: format!("{SCHEME}{name}"),
            });
        }
        if name.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong {
                trust_domain: name.into(),
                len: name.len(),
            });
        }
        if let Some(ch) = name.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(SpiffeIdError::TrustDomainChar {
                trust_domain: name.into(),
                ch,
            });
        }
        Ok(TrustDomain(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustDomain::new(s)
    }
}

/// The identity of a Kubernetes service account in a trust domain. Cheap
/// to clone (shared). `Debug` shows the ID as text.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(Arc<Parts>);

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpiffeId").field(&self.as_str()).finish()
    }
}

#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parts {
    /// The whole ID, formatted once (it is a metric label, a log field and a
    /// wire string many times over).
    id: String,
    trust_domain: TrustDomain,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an ID from its parts, checking each.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let trust_domain = TrustDomain::new(trust_domain)?;
        check_name(namespace, MAX_NAMESPACE_LEN, false).map_err(|reason| {
            SpiffeIdError::BadNamespace {
                namespace: namespace.into(),
                reason,
            }
        })?;
        check_name(service_account, MAX_SERVICE_ACCOUNT_LEN, true).map_err(|reason| {
            SpiffeIdError::BadServiceAccount {
                service_account: service_account.into(),
                reason,
            }
        })?;
        Ok(SpiffeId(Arc::new(Parts {
            id: format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"),
            trust_domain,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })))
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        if id.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: id.len() });
        }
        let rest = id
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::NotSpiffe { id: id.into() })?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain { id: id.into() });
        }
        TrustDomain::new(td)?;
        let bad_path = || SpiffeIdError::BadPath {
            id: id.into(),
            path: path.into(),
        };
        let parts: Vec<&str> = path.splitn(6, '/').collect();
        let ["", "ns", ns, "sa", sa] = parts.as_slice() else {
            return Err(bad_path());
        };
        SpiffeId::new(td, ns, sa)
    }

    /// Parses `id` and requires it to be in `trust_domain`.
    pub fn parse_in(id: &str, trust_domain: &TrustDomain) -> Result<Self, SpiffeIdError> {
        let parsed = SpiffeId::parse(id)?;
        parsed.check_trust_domain(trust_domain)?;
        Ok(parsed)
    }

    /// Fails unless this ID is in `trust_domain`.
    pub fn check_trust_domain(&self, trust_domain: &TrustDomain) -> Result<(), SpiffeIdError> {
        if &self.0.trust_domain == trust_domain {
            Ok(())
        } else {
            Err(SpiffeIdError::WrongTrustDomain {
                id: self.to_string(),
                found: self.0.trust_domain.to_string(),
                expected: trust_domain.to_string(),
            })
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.0.trust_domain
    }

    /// The ID as text, `spiffe://<td>/ns/<ns>/sa/<sa>` (as `Display`).
    pub fn as_str(&self) -> &str {
        &self.0.id
    }

    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.0.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.id)
    }
}

/// A SPIFFE ID reads as its canonical text (`id.as_deref()` on an
/// `Option<SpiffeId>`, `&*id` where a `&str` label or field is wanted).
/// Read-only: the only way to make one is to parse or build it.
impl std::ops::Deref for SpiffeId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

/// A Kubernetes DNS label (`dots == false`) or DNS subdomain name.
fn check_name(name: &str, max: usize, dots: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    if let Some(ch) = name.chars().find(|&c| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
    }) {
        return Err(NameError::Char(ch));
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    // Every DNS label (the whole name, or each part between dots) starts and
    // ends with a letter or digit: no `-a`, `a-`, `.a`, `a.`, `a..b`, `a.-b`.
    for label in name.split('.') {
        let bytes = label.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(&first), Some(&last)) if alnum(first) && alnum(last) => {}
            _ => return Err(NameError::Edge),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = "spiffe://cluster.local/ns/default/sa/web";
        let id = SpiffeId::parse(s).unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.to_string(), s);
        assert_eq!(s.parse::<SpiffeId>().unwrap(), id);
        let dotted = SpiffeId::new("td_1", "a-1", "build.bot-2").unwrap();
        assert_eq!(SpiffeId::parse(&dotted.to_string()).unwrap(), dotted);
    }

    #[test]
    fn precise_errors() {
        use SpiffeIdError::*;
        let e = |s: &str| SpiffeId::parse(s).unwrap_err();
        assert_eq!(e(""), Empty);
        assert!(matches!(
            e(&format!("spiffe://td/ns/a/sa/{}", "b".repeat(2100))),
            TooLong { .. }
        ));
        assert!(matches!(e("https://td/ns/a/sa/b"), NotSpiffe { .. }));
        assert!(matches!(e("SPIFFE://td/ns/a/sa/b"), NotSpiffe { .. }));
        assert!(matches!(e("spiffe:///ns/a/sa/b"), EmptyTrustDomain { .. }));
        assert!(matches!(
            e("spiffe://TD/ns/a/sa/b"),
            TrustDomainChar { ch: 'T', .. }
        ));
        assert!(matches!(
            e("spiffe://td:443/ns/a/sa/b"),
            TrustDomainChar { ch: ':', .. }
        ));
        assert!(matches!(
            e("spiffe://user@td/ns/a/sa/b"),
            TrustDomainChar { ch: '@', .. }
        ));
        for path in [
            "",
            "/",
            "/ns/a",
            "/ns/a/sa",
            "/ns/a/sa/b/",
            "/ns/a/sa/b/c",
            "/sa/b/ns/a",
            "/ns//sa/b/x",
        ] {
            assert!(
                matches!(e(&format!("spiffe://td{path}")), BadPath { .. }),
                "{path}"
            );
        }
        assert_eq!(
            e("spiffe://td/ns//sa/b"),
            BadNamespace {
                namespace: "".into(),
                reason: NameError::Empty
            }
        );
        assert_eq!(
            e("spiffe://td/ns/a.b/sa/b"),
            BadNamespace {
                namespace: "a.b".into(),
                reason: NameError::Char('.')
            }
        );
        assert_eq!(
            e("spiffe://td/ns/-a/sa/b"),
            BadNamespace {
                namespace: "-a".into(),
                reason: NameError::Edge
            }
        );
        assert!(matches!(
            e(&format!("spiffe://td/ns/{}/sa/b", "a".repeat(64))),
            BadNamespace {
                reason: NameError::TooLong { len: 64, max: 63 },
                ..
            }
        ));
        assert_eq!(
            e("spiffe://td/ns/a/sa/Web"),
            BadServiceAccount {
                service_account: "Web".into(),
                reason: NameError::Char('W')
            }
        );
        assert_eq!(
            e("spiffe://td/ns/a/sa/web?x=1"),
            BadServiceAccount {
                service_account: "web?x=1".into(),
                reason: NameError::Char('?')
            }
        );
        assert_eq!(
            e("spiffe://td/ns/a/sa/web."),
            BadServiceAccount {
                service_account: "web.".into(),
                reason: NameError::Edge
            }
        );
        // Messages name the offending part.
        assert!(e("spiffe://td/ns/a/sa/Web").to_string().contains("\"Web\""));
    }

    #[test]
    fn trust_domain_membership() {
        let td = TrustDomain::new("cluster.local").unwrap();
        SpiffeId::parse_in("spiffe://cluster.local/ns/a/sa/b", &td).unwrap();
        let err = SpiffeId::parse_in("spiffe://other.local/ns/a/sa/b", &td).unwrap_err();
        assert!(matches!(err, SpiffeIdError::WrongTrustDomain { .. }));
        assert!(err.to_string().contains("other.local"));
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new(&"a".repeat(256)).is_err());
    }

    /// The grammar as one table: (ID, accepted?). The rows marked
    /// "controller" are IDs the controller's own `parse_spiffe_id` accepted
    /// (any of `[a-z0-9.-]{1,253}` for both names, any trust domain) while
    /// the proxy refused them: a workload could be certified for an identity
    /// no proxy would accept or match in a policy. One grammar now: refused
    /// everywhere.
    #[test]
    fn grammar_table() {
        let ns63 = "n".repeat(63);
        let ns64 = "n".repeat(64);
        let sa253 = format!("{}.{}", "s".repeat(126), "s".repeat(126));
        let sa254 = format!("{}.{}", "s".repeat(127), "s".repeat(126));
        let td255 = "t".repeat(255);
        let td256 = "t".repeat(256);
        let rows: Vec<(String, bool, &str)> = vec![
            (
                "spiffe://cluster.local/ns/default/sa/web".into(),
                true,
                "plain",
            ),
            (
                "spiffe://td_1/ns/a-1/sa/build.bot-2".into(),
                true,
                "underscore td, dotted sa",
            ),
            ("spiffe://1td/ns/0/sa/9".into(), true, "digits"),
            (
                format!("spiffe://td/ns/{ns63}/sa/b"),
                true,
                "namespace of 63",
            ),
            (
                format!("spiffe://td/ns/a/sa/{sa253}"),
                true,
                "service account of 253",
            ),
            (
                format!("spiffe://{td255}/ns/a/sa/b"),
                true,
                "trust domain of 255",
            ),
            // The controller accepted these; the proxy did not.
            (
                "spiffe://td/ns/a.b/sa/web".into(),
                false,
                "controller: dotted namespace",
            ),
            (
                format!("spiffe://td/ns/{ns64}/sa/b"),
                false,
                "controller: namespace of 64",
            ),
            (
                "spiffe://td/ns/-a/sa/web".into(),
                false,
                "controller: namespace starts with -",
            ),
            (
                "spiffe://td/ns/a-/sa/web".into(),
                false,
                "controller: namespace ends with -",
            ),
            (
                "spiffe://td/ns/.a/sa/web".into(),
                false,
                "controller: namespace starts with .",
            ),
            (
                "spiffe://td/ns/a/sa/-web".into(),
                false,
                "controller: service account starts with -",
            ),
            (
                "spiffe://td/ns/a/sa/web.".into(),
                false,
                "controller: service account ends with .",
            ),
            (
                "spiffe://td/ns/a/sa/a..b".into(),
                false,
                "controller: empty label in service account",
            ),
            (
                "spiffe://td/ns/a/sa/a.-b".into(),
                false,
                "controller: label starts with -",
            ),
            (
                "spiffe://TD/ns/a/sa/b".into(),
                false,
                "controller: uppercase trust domain",
            ),
            (
                "spiffe://td:443/ns/a/sa/b".into(),
                false,
                "controller: port in trust domain",
            ),
            (
                "spiffe://u@td/ns/a/sa/b".into(),
                false,
                "controller: userinfo in trust domain",
            ),
            (
                format!("spiffe://{td256}/ns/a/sa/b"),
                false,
                "controller: trust domain of 256",
            ),
            (
                format!("spiffe://td/ns/a/sa/{sa254}"),
                false,
                "service account of 254",
            ),
            // Both refused these already.
            (
                "spiffe://td/ns/Default/sa/web".into(),
                false,
                "uppercase namespace",
            ),
            (
                "spiffe://td/ns/default/sa/".into(),
                false,
                "empty service account",
            ),
            (
                "spiffe://td/ns/default/sa/web/extra".into(),
                false,
                "extra path",
            ),
            (
                "spiffe://td/sa/web/ns/default".into(),
                false,
                "swapped path",
            ),
            (
                "spiffe:///ns/default/sa/web".into(),
                false,
                "empty trust domain",
            ),
            ("https://td/ns/default/sa/web".into(), false, "other scheme"),
            ("spiffe://td/ns/a/sa/b?x".into(), false, "query"),
            ("spiffe://td/ns/a/sa/b#x".into(), false, "fragment"),
            ("spiffe://td/ns/a/sa/%62".into(), false, "percent-encoding"),
            ("spiffe://td/ns/a/sa/b ".into(), false, "trailing space"),
            ("spiffe://td/ns/a/sa/\u{e9}".into(), false, "non-ASCII"),
            ("".into(), false, "empty"),
        ];
        for (id, ok, why) in &rows {
            let parsed = SpiffeId::parse(id);
            assert_eq!(parsed.is_ok(), *ok, "{why}: {id:?} -> {parsed:?}");
            if let Ok(p) = parsed {
                assert_eq!(&p.to_string(), id, "{why}: formats back");
                let rebuilt = SpiffeId::new(
                    p.trust_domain().as_str(),
                    p.namespace(),
                    p.service_account(),
                );
                assert_eq!(rebuilt.as_ref(), Ok(&p), "{why}: new agrees with parse");
            }
        }
    }
}
