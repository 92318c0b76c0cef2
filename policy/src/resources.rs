//! The policy as the user writes it, namespace by namespace (the file
//! backend's YAML and the Kubernetes custom resources carry the same
//! fields), and its resolution into one workload's [`InboundSpec`].
//!
//! * `InboundDefault`: the default policy of a namespace (no selector) or
//!   of the pods a selector picks (a workload default wins over the
//!   namespace's).
//! * `Server`: a port of the pods a selector picks, with its protocol and
//!   optionally its own default.
//! * `Authorization`: a rule for named servers of its namespace, or for
//!   every port of the namespace's pods.

use crate::compile::{CompileError, Context, Policy};
use crate::spec::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Pods by labels; empty selects every pod of the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl PodSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundDefaultResource {
    pub name: String,
    pub namespace: String,
    /// Unset: the whole namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<PodSelector>,
    pub default_policy: DefaultPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerResource {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub pod_selector: PodSelector,
    pub port: u16,
    #[serde(default)]
    pub protocol: ServerProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_policy: Option<DefaultPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationResource {
    pub namespace: String,
    #[serde(flatten)]
    pub rule: AuthorizationSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginResource {
    pub namespace: String,
    #[serde(flatten)]
    pub plugin: PluginSpec,
}

/// Everything the user wrote, all namespaces.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    #[serde(default)]
    pub defaults: Vec<InboundDefaultResource>,
    #[serde(default)]
    pub servers: Vec<ServerResource>,
    #[serde(default)]
    pub authorizations: Vec<AuthorizationResource>,
    #[serde(default)]
    pub plugins: Vec<PluginResource>,
}

/// A problem found while resolving one workload's policy (the rest still applies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict(pub String);

impl Resources {
    /// The policy of a pod in `namespace` with `labels`. Where resources
    /// conflict (two servers on one port, two defaults for one pod) the
    /// one with the first name wins and the conflict is reported.
    pub fn resolve(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> (InboundSpec, Vec<Conflict>) {
        let mut conflicts = Vec::new();
        let mut defaults: Vec<&InboundDefaultResource> = self
            .defaults
            .iter()
            .filter(|d| d.namespace == namespace)
            .filter(|d| d.pod_selector.as_ref().is_none_or(|s| s.matches(labels)))
            .collect();
        // Workload defaults first, then by name.
        defaults.sort_by(|a, b| {
            (a.pod_selector.is_none(), &a.name).cmp(&(b.pod_selector.is_none(), &b.name))
        });
        if defaults.len() > 1
            && defaults[0].pod_selector.is_some() == defaults[1].pod_selector.is_some()
        {
            conflicts.push(Conflict(format!(
                "inbound defaults {} and {} both apply; {} wins",
                defaults[0].name, defaults[1].name, defaults[0].name
            )));
        }
        let mut servers: Vec<&ServerResource> = self
            .servers
            .iter()
            .filter(|s| s.namespace == namespace && s.pod_selector.matches(labels))
            .collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut kept: Vec<ServerSpec> = Vec::new();
        for s in servers {
            if let Some(first) = kept.iter().find(|k| k.port == s.port) {
                conflicts.push(Conflict(format!(
                    "servers {} and {} both take port {}; {} wins",
                    first.name, s.name, s.port, first.name
                )));
                continue;
            }
            kept.push(ServerSpec {
                name: s.name.clone(),
                port: s.port,
                protocol: s.protocol,
                default_policy: s.default_policy,
            });
        }
        let mut authorizations: Vec<AuthorizationSpec> = Vec::new();
        let mut rules: Vec<&AuthorizationResource> = self
            .authorizations
            .iter()
            .filter(|a| a.namespace == namespace)
            .collect();
        rules.sort_by(|a, b| a.rule.name.cmp(&b.rule.name));
        for a in rules {
            let mut rule = a.rule.clone();
            if !rule.servers.is_empty() {
                rule.servers.retain(|n| kept.iter().any(|s| &s.name == n));
                if rule.servers.is_empty() {
                    continue; // none of its servers is on this pod
                }
            }
            // Service accounts named without a namespace are this one's.
            for sa in &mut rule.from.service_accounts {
                if !sa.contains('/') {
                    *sa = format!("{namespace}/{sa}");
                }
            }
            authorizations.push(rule);
        }
        // The plugins its rules name.
        let mut plugins: Vec<PluginSpec> = self
            .plugins
            .iter()
            .filter(|p| p.namespace == namespace)
            .filter(|p| {
                authorizations
                    .iter()
                    .any(|a| a.plugin.as_deref() == Some(p.plugin.name.as_str()))
            })
            .map(|p| p.plugin.clone())
            .collect();
        plugins.sort_by(|a, b| a.name.cmp(&b.name));
        (
            InboundSpec {
                default_policy: defaults.first().map(|d| d.default_policy),
                servers: kept,
                authorizations,
                plugins,
            },
            conflicts,
        )
    }

    /// Checks every resource on its own (names, ports, rules, references
    /// to servers of the same namespace). Errors say which resource
    /// (`servers[2] (web)`).
    pub fn validate(&self, ctx: &Context) -> Result<(), CompileError> {
        let err = |at: String, message: String| CompileError { at, message };
        let check_ns = |at: &str, ns: &str| {
            conduit_identity::SpiffeId::new("td", ns, "x")
                .map(|_| ())
                .map_err(|e| err(format!("{at}.namespace"), e.to_string()))
        };
        let relabel = |at: &str, e: CompileError, inner: &str| CompileError {
            at: e.at.replacen(inner, at, 1),
            message: e.message,
        };
        for (i, d) in self.defaults.iter().enumerate() {
            let at = format!("defaults[{i}] ({})", d.name);
            check_ns(&at, &d.namespace)?;
            check_resource_name(&at, &d.name)?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let at = format!("servers[{i}] ({})", s.name);
            check_ns(&at, &s.namespace)?;
            if !seen.insert((&s.namespace, &s.name)) {
                return Err(err(
                    at,
                    "a second server with this name in its namespace".into(),
                ));
            }
            let spec = InboundSpec {
                servers: vec![ServerSpec {
                    name: s.name.clone(),
                    port: s.port,
                    protocol: s.protocol,
                    default_policy: s.default_policy,
                }],
                ..Default::default()
            };
            Policy::compile(&spec, ctx)
                .map_err(|e| relabel(&at, e, &format!("servers[0] ({})", s.name)))?;
        }
        for (i, p) in self.plugins.iter().enumerate() {
            let at = format!("plugins[{i}] ({})", p.plugin.name);
            check_ns(&at, &p.namespace)?;
            let spec = InboundSpec {
                plugins: vec![p.plugin.clone()],
                ..Default::default()
            };
            Policy::compile(&spec, ctx)
                .map_err(|e| relabel(&at, e, &format!("plugins[0] ({})", p.plugin.name)))?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, a) in self.authorizations.iter().enumerate() {
            let at = format!("authorizations[{i}] ({})", a.rule.name);
            check_ns(&at, &a.namespace)?;
            if !seen.insert((&a.namespace, &a.rule.name)) {
                return Err(err(
                    at,
                    "a second authorization with this name in its namespace".into(),
                ));
            }
            for (j, name) in a.rule.servers.iter().enumerate() {
                if !self
                    .servers
                    .iter()
                    .any(|s| s.namespace == a.namespace && &s.name == name)
                {
                    return Err(err(
                        format!("{at}.servers[{j}]"),
                        format!("no server {name:?} in namespace {}", a.namespace),
                    ));
                }
            }
            let mut rule = a.rule.clone();
            rule.servers.clear();
            let ctx = Context {
                namespace: a.namespace.clone(),
                ..ctx.clone()
            };
            let plugins = match &a.rule.plugin {
                None => vec![],
                Some(name) => match self
                    .plugins
                    .iter()
                    .find(|p| p.namespace == a.namespace && &p.plugin.name == name)
                {
                    Some(p) => vec![p.plugin.clone()],
                    None => {
                        return Err(err(
                            format!("{at}.plugin"),
                            format!("no plugin {name:?} in namespace {}", a.namespace),
                        ));
                    }
                },
            };
            let spec = InboundSpec {
                authorizations: vec![rule],
                plugins,
                ..Default::default()
            };
            Policy::compile(&spec, &ctx)
                .map_err(|e| relabel(&at, e, &format!("authorizations[0] ({})", a.rule.name)))?;
        }
        Ok(())
    }
}

fn check_resource_name(at: &str, name: &str) -> Result<(), CompileError> {
    let spec = InboundSpec {
        authorizations: vec![AuthorizationSpec {
            name: name.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let ctx = Context {
        namespace: "x".into(),
        trust_domain: None,
        default_policy: DefaultPolicy::Deny,
        cluster_networks: vec![],
    };
    Policy::compile(&spec, &ctx)
        .map(|_| ())
        .map_err(|e| CompileError {
            at: format!("{at}.name"),
            message: e.message,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"
defaults:
  - {name: shop-deny, namespace: shop, defaultPolicy: deny}
  - {name: web-audit, namespace: shop, podSelector: {matchLabels: {app: web}}, defaultPolicy: audit}
servers:
  - {name: web-http, namespace: shop, podSelector: {matchLabels: {app: web}}, port: 8080, protocol: http}
  - {name: web-http2, namespace: shop, podSelector: {matchLabels: {app: web}}, port: 8080}
  - {name: db, namespace: shop, podSelector: {matchLabels: {app: db}}, port: 5432}
  - {name: web-http, namespace: other, port: 8080}
authorizations:
  - name: frontend-get-api
    namespace: shop
    servers: [web-http]
    from: {serviceAccounts: [frontend]}
    http: [{methods: [GET], path: {prefix: /api/}}]
  - {name: db-only, namespace: shop, servers: [db]}
  - {name: everywhere, namespace: shop, from: {namespaces: [ops]}}
  - {name: elsewhere, namespace: other}
"#;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn resolves_per_workload() {
        let r: Resources = crate::yaml::from_str(SHOP).unwrap();
        let (web, conflicts) = r.resolve("shop", &labels(&[("app", "web")]));
        assert_eq!(web.default_policy, Some(DefaultPolicy::Audit));
        assert_eq!(web.servers.len(), 1);
        assert_eq!(web.servers[0].name, "web-http");
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert!(conflicts[0].0.contains("port 8080"));
        let names: Vec<_> = web.authorizations.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["everywhere", "frontend-get-api"]);
        assert_eq!(
            web.authorizations[1].from.service_accounts,
            ["shop/frontend"]
        );

        let (db, _) = r.resolve("shop", &labels(&[("app", "db")]));
        assert_eq!(db.default_policy, Some(DefaultPolicy::Deny));
        let names: Vec<_> = db.authorizations.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["db-only", "everywhere"]);

        let (none, _) = r.resolve("empty", &labels(&[]));
        assert_eq!(none, InboundSpec::default());
        // Every resolved policy compiles.
        let ctx = Context {
            namespace: "shop".into(),
            trust_domain: None,
            default_policy: DefaultPolicy::AllUnauthenticated,
            cluster_networks: vec![],
        };
        Policy::compile(&web, &ctx).unwrap();
        Policy::compile(&db, &ctx).unwrap();
        r.validate(&ctx).unwrap();
    }

    #[test]
    fn validation_names_the_resource() {
        let ctx = Context {
            namespace: "x".into(),
            trust_domain: None,
            default_policy: DefaultPolicy::Deny,
            cluster_networks: vec![],
        };
        let cases: &[(&str, &str)] = &[
            (
                "servers: [{name: a, namespace: s, port: 0}]",
                "servers[0] (a).port",
            ),
            (
                "servers: [{name: a, namespace: S, port: 1}]",
                "servers[0] (a).namespace",
            ),
            (
                "authorizations: [{name: a, namespace: s, servers: [nope]}]",
                "authorizations[0] (a).servers[0]",
            ),
            (
                "authorizations: [{name: a, namespace: s, from: {networks: [bad]}}]",
                "authorizations[0] (a).from.networks[0]",
            ),
            (
                "defaults: [{name: A, namespace: s, defaultPolicy: deny}]",
                "defaults[0] (A).name",
            ),
        ];
        for (yaml, at) in cases {
            let r: Resources = crate::yaml::from_str(yaml).unwrap();
            let e = r.validate(&ctx).unwrap_err();
            assert_eq!(e.at, *at, "{yaml}: {e}");
        }
    }
}
