//! Validation of an [`InboundSpec`] and its compilation into a [`Policy`]:
//! every name parsed, every string turned into the type it is compared as,
//! so that evaluation ([`crate::eval`]) only compares.

use crate::cidr::Cidr;
use crate::matcher::{ClientMatch, HttpMatch, IdMatch, PathMatch};
use crate::spec::{
    Action, AuthorizationSpec, ClientsSpec, DefaultPolicy, HttpMatchSpec, InboundSpec,
    ServerProtocol,
};
use conduit_identity::{SpiffeId, TrustDomain};
use http::{HeaderName, HeaderValue, Method};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Bounds on a policy's size (memory, evaluation time, metric labels).
pub const MAX_SERVERS: usize = 256;
pub const MAX_AUTHORIZATIONS: usize = 1024;
/// Entries of one list in one rule (identities, networks, matches ...).
pub const MAX_LIST: usize = 256;
/// Rules counted once per server they apply to.
pub const MAX_COMPILED_RULES: usize = 8192;

/// Where a policy is compiled: what names without a namespace or trust
/// domain mean, and what the defaults are.
#[derive(Debug, Clone)]
pub struct Context {
    /// The workload's namespace (for `serviceAccounts: [name]`).
    pub namespace: String,
    /// The mesh's trust domain; `None` matches service accounts and
    /// namespaces in any trust domain.
    pub trust_domain: Option<TrustDomain>,
    /// The proxy's configured default, used when the spec sets none.
    pub default_policy: DefaultPolicy,
    /// For `cluster-authenticated`.
    pub cluster_networks: Vec<Cidr>,
}

/// Why a policy was refused: where (`authorizations[2] (web).from.networks[0]`) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct CompileError {
    pub at: String,
    pub message: String,
}

fn err(at: impl Into<String>, message: impl Into<String>) -> CompileError {
    CompileError {
        at: at.into(),
        message: message.into(),
    }
}

/// A compiled rule, shared by every server it applies to.
#[derive(Debug)]
pub(crate) struct RuleBody {
    pub clients: ClientMatch,
    /// Empty: any request (a connection-level rule).
    pub http: Vec<HttpMatch>,
    /// Index in [`Policy::plugins`] of the plugin that decides.
    pub plugin: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct Rule {
    pub slot: usize,
    pub body: Arc<RuleBody>,
}

/// One port's rules and default. Ports without a server share one.
#[derive(Debug)]
pub struct Server {
    pub(crate) name: Arc<str>,
    pub(crate) protocol: ServerProtocol,
    pub(crate) default: DefaultPolicy,
    pub(crate) denies: Vec<Rule>,
    pub(crate) allows: Vec<Rule>,
    /// Some rule looks at the path: unnormalized paths are refused.
    pub(crate) path_rules: bool,
    pub(crate) default_slot: usize,
    pub(crate) path_slot: usize,
    pub(crate) cluster_networks: Arc<[Cidr]>,
}

impl Server {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn protocol(&self) -> ServerProtocol {
        self.protocol
    }
    pub fn default_policy(&self) -> DefaultPolicy {
        self.default
    }
}

/// What a decision is attributed to, for metrics: one per (server, rule),
/// plus each server's `default` and `unnormalized_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub server: Arc<str>,
    pub rule: Arc<str>,
}

/// A compiled inbound policy.
#[derive(Debug)]
pub struct Policy {
    servers: Vec<Server>,
    by_port: HashMap<u16, usize>,
    /// Index in `servers` of the one for ports without a server.
    fallback: usize,
    slots: Vec<Slot>,
    plugins: Vec<Plugin>,
}

/// A compiled plugin reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    pub name: Arc<str>,
    pub address: std::net::SocketAddr,
    pub timeout: std::time::Duration,
    pub failure: crate::spec::FailureMode,
    pub headers: Vec<HeaderName>,
    pub max_in_flight: usize,
    /// Meshed plugin: reached over mTLS, this identity required.
    pub identity: Option<SpiffeId>,
}

/// Most plugins in one policy.
pub const MAX_PLUGINS: usize = 16;

/// The metric label of a server-less port's decisions.
pub const FALLBACK_SERVER: &str = "default";
/// The rule label of decisions made by a default policy.
pub const DEFAULT_RULE: &str = "default";
/// The rule label of refusals of paths that are not in normal form.
pub const PATH_RULE: &str = "unnormalized_path";

impl Policy {
    /// The policy of a proxy that has heard nothing from the controller:
    /// its configured default on every port.
    pub fn defaults_only(ctx: &Context) -> Policy {
        Policy::compile(&InboundSpec::default(), ctx).expect("an empty policy compiles")
    }

    pub fn compile(spec: &InboundSpec, ctx: &Context) -> Result<Policy, CompileError> {
        if spec.servers.len() > MAX_SERVERS {
            return Err(err("servers", format!("at most {MAX_SERVERS} servers")));
        }
        if spec.authorizations.len() > MAX_AUTHORIZATIONS {
            return Err(err(
                "authorizations",
                format!("at most {MAX_AUTHORIZATIONS} authorizations"),
            ));
        }
        let default = spec.default_policy.unwrap_or(ctx.default_policy);
        let nets: Arc<[Cidr]> = ctx.cluster_networks.clone().into();
        let mut slots = Vec::new();
        let mut new_server = |name: &str, protocol, default| {
            let name: Arc<str> = name.into();
            slots.push(Slot {
                server: name.clone(),
                rule: DEFAULT_RULE.into(),
            });
            slots.push(Slot {
                server: name.clone(),
                rule: PATH_RULE.into(),
            });
            Server {
                name,
                protocol,
                default,
                denies: Vec::new(),
                allows: Vec::new(),
                path_rules: false,
                default_slot: slots.len() - 2,
                path_slot: slots.len() - 1,
                cluster_networks: nets.clone(),
            }
        };
        let mut servers = Vec::new();
        let mut by_port: HashMap<u16, usize> = HashMap::new();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (i, s) in spec.servers.iter().enumerate() {
            let at = format!("servers[{i}] ({})", s.name);
            check_name(&s.name).map_err(|m| err(format!("{at}.name"), m))?;
            if s.name == FALLBACK_SERVER {
                return Err(err(
                    format!("{at}.name"),
                    format!("{FALLBACK_SERVER:?} is reserved for ports without a server"),
                ));
            }
            if s.port == 0 {
                return Err(err(format!("{at}.port"), "ports are 1-65535"));
            }
            if by_name.insert(s.name.as_str(), servers.len()).is_some() {
                return Err(err(at, "a second server with this name"));
            }
            if let Some(&other) = by_port.get(&s.port) {
                return Err(err(
                    format!("{at}.port"),
                    format!(
                        "port {} is already served by {}",
                        s.port, spec.servers[other].name
                    ),
                ));
            }
            by_port.insert(s.port, servers.len());
            servers.push(new_server(
                &s.name,
                s.protocol,
                s.default_policy.unwrap_or(default),
            ));
        }
        let fallback = servers.len();
        servers.push(new_server(FALLBACK_SERVER, ServerProtocol::Detect, default));

        if spec.plugins.len() > MAX_PLUGINS {
            return Err(err("plugins", format!("at most {MAX_PLUGINS} plugins")));
        }
        let mut plugins: Vec<Plugin> = Vec::new();
        for (i, p) in spec.plugins.iter().enumerate() {
            let at = format!("plugins[{i}] ({})", p.name);
            check_name(&p.name).map_err(|m| err(format!("{at}.name"), m))?;
            if plugins.iter().any(|q| *q.name == *p.name) {
                return Err(err(at, "a second plugin with this name"));
            }
            let address = p.address.parse().map_err(|_| {
                err(
                    format!("{at}.address"),
                    format!("{:?} is not ip:port", p.address),
                )
            })?;
            if p.timeout_ms == 0 || p.timeout_ms > 60_000 {
                return Err(err(format!("{at}.timeoutMs"), "between 1 and 60000"));
            }
            if p.max_in_flight == 0 || p.max_in_flight > 100_000 {
                return Err(err(format!("{at}.maxInFlight"), "between 1 and 100000"));
            }
            bounded(&p.headers, &format!("{at}.headers"))?;
            let mut headers = Vec::new();
            for (j, h) in p.headers.iter().enumerate() {
                headers.push(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                    err(
                        format!("{at}.headers[{j}]"),
                        format!("{h:?} is not a header name"),
                    )
                })?);
            }
            let identity = match &p.identity {
                None => None,
                Some(id) => Some(
                    SpiffeId::parse(id)
                        .map_err(|e| err(format!("{at}.identity"), e.to_string()))?,
                ),
            };
            plugins.push(Plugin {
                name: p.name.as_str().into(),
                address,
                identity,
                timeout: std::time::Duration::from_millis(p.timeout_ms.into()),
                failure: p.failure,
                headers,
                max_in_flight: p.max_in_flight as usize,
            });
        }
        let mut rule_names = HashSet::new();
        let mut compiled_rules = 0usize;
        for (i, a) in spec.authorizations.iter().enumerate() {
            let at = format!("authorizations[{i}] ({})", a.name);
            check_name(&a.name).map_err(|m| err(format!("{at}.name"), m))?;
            if !rule_names.insert(a.name.as_str()) {
                return Err(err(at, "a second authorization with this name"));
            }
            let mut body = compile_rule(a, ctx, &at)?;
            if let Some(name) = &a.plugin {
                if a.action == Action::Deny {
                    return Err(err(
                        format!("{at}.plugin"),
                        "only allow rules can delegate to a plugin",
                    ));
                }
                body.plugin = Some(plugins.iter().position(|p| *p.name == **name).ok_or_else(
                    || err(format!("{at}.plugin"), format!("no plugin named {name:?}")),
                )?);
            }
            let body = Arc::new(body);
            let targets: Vec<usize> = if a.servers.is_empty() {
                (0..servers.len()).collect()
            } else {
                let mut t = Vec::new();
                for (j, name) in a.servers.iter().enumerate() {
                    match by_name.get(name.as_str()) {
                        Some(&s) => t.push(s),
                        None => {
                            return Err(err(
                                format!("{at}.servers[{j}]"),
                                format!("no server named {name:?}"),
                            ));
                        }
                    }
                }
                t
            };
            compiled_rules += targets.len();
            if compiled_rules > MAX_COMPILED_RULES {
                return Err(err(
                    at,
                    format!("more than {MAX_COMPILED_RULES} (authorization, server) pairs"),
                ));
            }
            let looks_at_path = body.http.iter().any(|m| !m.paths.is_empty());
            for s in targets {
                let server = &mut servers[s];
                slots.push(Slot {
                    server: server.name.clone(),
                    rule: a.name.as_str().into(),
                });
                let rule = Rule {
                    slot: slots.len() - 1,
                    body: body.clone(),
                };
                server.path_rules |= looks_at_path;
                match a.action {
                    Action::Allow => server.allows.push(rule),
                    Action::Deny => server.denies.push(rule),
                }
            }
        }
        Ok(Policy {
            servers,
            by_port,
            fallback,
            slots,
            plugins,
        })
    }

    /// The server for an application port.
    pub fn server(&self, port: u16) -> &Server {
        let i = self.by_port.get(&port).copied().unwrap_or(self.fallback);
        &self.servers[i]
    }

    /// Every metric slot; a decision's `slot` indexes this.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The plugins; a decision's `plugin` indexes this.
    pub fn plugins(&self) -> &[Plugin] {
        &self.plugins
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253)"
        ))
    }
}

fn bounded<T>(list: &[T], at: &str) -> Result<(), CompileError> {
    if list.len() > MAX_LIST {
        Err(err(at, format!("at most {MAX_LIST} entries")))
    } else {
        Ok(())
    }
}

fn compile_rule(a: &AuthorizationSpec, ctx: &Context, at: &str) -> Result<RuleBody, CompileError> {
    let clients = compile_clients(&a.from, ctx, &format!("{at}.from"))?;
    bounded(&a.http, &format!("{at}.http"))?;
    let http = a
        .http
        .iter()
        .enumerate()
        .map(|(i, m)| compile_http(m, &format!("{at}.http[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(RuleBody {
        clients,
        http,
        plugin: None,
    })
}

fn compile_clients(c: &ClientsSpec, ctx: &Context, at: &str) -> Result<ClientMatch, CompileError> {
    bounded(&c.identities, &format!("{at}.identities"))?;
    bounded(&c.service_accounts, &format!("{at}.serviceAccounts"))?;
    bounded(&c.namespaces, &format!("{at}.namespaces"))?;
    bounded(&c.networks, &format!("{at}.networks"))?;
    let mut ids = Vec::new();
    for (i, s) in c.identities.iter().enumerate() {
        let id =
            SpiffeId::parse(s).map_err(|e| err(format!("{at}.identities[{i}]"), e.to_string()))?;
        ids.push(IdMatch::Exact(id));
    }
    let td = ctx.trust_domain.clone();
    let probe_td = td
        .as_ref()
        .map_or("cluster.local", |t| t.as_str())
        .to_owned();
    for (i, s) in c.service_accounts.iter().enumerate() {
        let (ns, name) = s.split_once('/').unwrap_or((&ctx.namespace, s));
        // Checks both names the way identities are checked.
        SpiffeId::new(&probe_td, ns, name)
            .map_err(|e| err(format!("{at}.serviceAccounts[{i}]"), e.to_string()))?;
        ids.push(IdMatch::ServiceAccount {
            trust_domain: td.clone(),
            namespace: ns.into(),
            name: name.into(),
        });
    }
    for (i, ns) in c.namespaces.iter().enumerate() {
        SpiffeId::new(&probe_td, ns, "x")
            .map_err(|e| err(format!("{at}.namespaces[{i}]"), e.to_string()))?;
        ids.push(IdMatch::Namespace {
            trust_domain: td.clone(),
            namespace: ns.clone(),
        });
    }
    if c.authenticated {
        ids.push(IdMatch::Authenticated);
    }
    let mut nets = Vec::new();
    for (i, n) in c.networks.iter().enumerate() {
        nets.push(
            n.parse::<Cidr>()
                .map_err(|e| err(format!("{at}.networks[{i}]"), e.to_string()))?,
        );
    }
    Ok(ClientMatch {
        identities: (!ids.is_empty()).then_some(ids),
        networks: (!nets.is_empty()).then_some(nets),
    })
}

fn compile_http(m: &HttpMatchSpec, at: &str) -> Result<HttpMatch, CompileError> {
    bounded(&m.methods, &format!("{at}.methods"))?;
    bounded(&m.headers, &format!("{at}.headers"))?;
    let mut methods = Vec::new();
    for (i, s) in m.methods.iter().enumerate() {
        let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase());
        let method = Method::from_bytes(s.as_bytes())
            .ok()
            .filter(|_| ok)
            .ok_or_else(|| {
                err(
                    format!("{at}.methods[{i}]"),
                    format!("{s:?} is not an HTTP method (uppercase, e.g. GET)"),
                )
            })?;
        methods.push(method);
    }
    let mut paths = Vec::new();
    if let Some(p) = &m.path {
        let at = format!("{at}.path");
        let (value, exact) = match (&p.exact, &p.prefix) {
            (Some(e), None) => (e, true),
            (None, Some(p)) => (p, false),
            _ => return Err(err(at, "give exactly one of exact and prefix")),
        };
        if !value.starts_with('/') || !crate::matcher::is_normalized(value) {
            return Err(err(
                at,
                format!(
                    "{value:?} must be an absolute path in normal form (no //, . or .. segments, no needless %-escapes)"
                ),
            ));
        }
        paths.push(if exact {
            PathMatch::Exact(value.clone())
        } else {
            PathMatch::Prefix(value.clone())
        });
    }
    if let Some(g) = &m.grpc {
        let at = format!("{at}.grpc");
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'))
        };
        if !name_ok(&g.service) {
            return Err(err(
                format!("{at}.service"),
                format!(
                    "{:?} is not a gRPC service name (e.g. pkg.Greeter)",
                    g.service
                ),
            ));
        }
        if let Some(method) = &g.method
            && (!name_ok(method) || method.contains('.'))
        {
            return Err(err(
                format!("{at}.method"),
                format!("{method:?} is not a gRPC method name"),
            ));
        }
        paths.push(PathMatch::Grpc {
            service_prefix: format!("/{}/", g.service),
            method: g.method.clone(),
        });
    }
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().enumerate() {
        let at = format!("{at}.headers[{i}]");
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            err(
                format!("{at}.name"),
                format!("{:?} is not a header name", h.name),
            )
        })?;
        let value = match &h.value {
            None => None,
            Some(v) => Some(HeaderValue::from_str(v).map_err(|_| {
                err(
                    format!("{at}.value"),
                    format!("{v:?} is not a header value"),
                )
            })?),
        };
        headers.push((name, value));
    }
    Ok(HttpMatch {
        methods,
        paths,
        headers,
    })
}
