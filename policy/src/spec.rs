//! The policy as written (YAML, Kubernetes resources, the gRPC stream):
//! plain data, validated and turned into matchers by [`crate::compile`].
//!
//! An [`InboundSpec`] is the resolved policy of one workload: its default,
//! its servers (ports) and the authorizations that apply to them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What happens to a connection or request that no authorization matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    /// Every client, meshed or not.
    AllUnauthenticated,
    /// Clients that proved a mesh identity over mTLS (issue 10's strict mode).
    AllAuthenticated,
    /// Clients with a mesh identity whose address is in the cluster's networks.
    ClusterAuthenticated,
    /// Nobody.
    Deny,
    /// Everybody, but whatever a deny rule or the lack of an allow rule would
    /// have refused is logged and counted as `audit`.
    Audit,
}

impl DefaultPolicy {
    pub const ALL: [DefaultPolicy; 5] = [
        DefaultPolicy::AllUnauthenticated,
        DefaultPolicy::AllAuthenticated,
        DefaultPolicy::ClusterAuthenticated,
        DefaultPolicy::Deny,
        DefaultPolicy::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::ClusterAuthenticated => "cluster-authenticated",
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Audit => "audit",
        }
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown inbound policy {0:?}: use all-unauthenticated, all-authenticated, cluster-authenticated, deny or audit"
)]
pub struct UnknownDefaultPolicy(pub String);

impl FromStr for DefaultPolicy {
    type Err = UnknownDefaultPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DefaultPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownDefaultPolicy(s.into()))
    }
}

/// How the proxy reads a server's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ServerProtocol {
    /// Detected per connection (HTTP is checked per request, the rest per connection).
    #[default]
    Detect,
    Http,
    Grpc,
    /// Opaque TCP: only connection-level rules apply.
    Opaque,
}

/// Allow or deny what a rule matches. Deny wins over allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

/// The resolved inbound policy of one workload.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundSpec {
    /// Overrides the proxy's configured default (`--inbound-policy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_policy: Option<DefaultPolicy>,
    #[serde(default)]
    pub servers: Vec<ServerSpec>,
    #[serde(default)]
    pub authorizations: Vec<AuthorizationSpec>,
    /// External authorization services rules can delegate to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginSpec>,
}

/// What a plugin's failure (unreachable, too slow, overloaded) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Refuse the request (403 / PERMISSION_DENIED).
    #[default]
    Closed,
    /// Let the request through undecorated.
    Open,
}

/// An external authorization and request-decoration service
/// (`conduit.authz.v1.AuthorizationPlugin`, docs/plugins.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginSpec {
    pub name: String,
    /// `ip:port` of the plugin's gRPC server.
    pub address: String,
    /// Per call, in milliseconds.
    #[serde(default = "default_plugin_timeout")]
    pub timeout_ms: u32,
    #[serde(default)]
    pub failure: FailureMode,
    /// Request headers sent to the plugin (lowercase names); others are not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// Calls in flight at most; beyond, the failure mode applies.
    #[serde(default = "default_plugin_in_flight")]
    pub max_in_flight: u32,
    /// The plugin is meshed: its SPIFFE ID. The proxy then reaches it over
    /// mTLS, presenting its own certificate and requiring exactly this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

fn default_plugin_timeout() -> u32 {
    250
}

fn default_plugin_in_flight() -> u32 {
    256
}

/// One port of the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    pub name: String,
    pub port: u16,
    #[serde(default)]
    pub protocol: ServerProtocol,
    /// Overrides the workload's default for this port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_policy: Option<DefaultPolicy>,
}

/// One authorization rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationSpec {
    pub name: String,
    /// Server names it applies to; empty: every port of the workload.
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub action: Action,
    /// Who: empty means any client.
    #[serde(default)]
    pub from: ClientsSpec,
    /// What (HTTP/gRPC): any one of these matches; empty means any request
    /// and makes this a connection-level rule that also covers opaque TCP.
    #[serde(default)]
    pub http: Vec<HttpMatchSpec>,
    /// With `action: allow`: the named plugin decides each matching HTTP
    /// request (and may add or remove headers); opaque connections it
    /// would see are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

/// Clients. Identity entries (`identities`, `serviceAccounts`,
/// `namespaces`, `authenticated`) are alternatives, and so are networks;
/// when both kinds are given a client must satisfy both.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientsSpec {
    /// Exact SPIFFE IDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// `name` (in the policy's namespace) or `namespace/name`, in the mesh's
    /// trust domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Every service account of these namespaces, in the mesh's trust domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Any client with a verified mesh identity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub authenticated: bool,
    /// Source networks (CIDRs); the way to name non-meshed clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
}

/// One HTTP request shape; every given field must match.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatchSpec {
    /// Any of these methods; empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatchSpec>,
    /// Every one of these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatchSpec>,
    /// A gRPC service, and optionally one method of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMatchSpec>,
}

/// Exactly one of `exact` and `prefix`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A header by name; with `value`, equal to it (exactly); without, present.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatchSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `service` is the fully qualified name (`pkg.Service`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMatchSpec {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}
