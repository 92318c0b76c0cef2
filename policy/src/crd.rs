//! The Kubernetes custom resources of API group `policy.conduit.io`
//! (version `v1alpha1`): `Server`, `AuthorizationPolicy` and
//! `InboundDefault`, namespaced, with the fields of [`crate::resources`]
//! (the name and namespace come from the object's metadata). The CRD
//! manifests in manifests/ are generated from these types and checked by
//! a test (controller/tests/policy_backends.rs).

use crate::resources::{
    AuthorizationResource, InboundDefaultResource, PluginResource, PodSelector, Resources,
    ServerResource,
};
use crate::spec::*;
use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "policy.conduit.io";
pub const VERSION: &str = "v1alpha1";

/// A port of the pods `podSelector` picks.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.conduit.io",
    version = "v1alpha1",
    kind = "Server",
    namespaced,
    shortname = "srv",
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.port"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    #[serde(default)]
    pub pod_selector: PodSelector,
    pub port: u16,
    #[serde(default)]
    pub protocol: ServerProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_policy: Option<DefaultPolicy>,
}

/// A rule: who (`from`) may or may not (`action`) call what (`http`) on
/// which servers of the namespace (`servers`, empty: every port).
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.conduit.io",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    shortname = "authz"
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub from: ClientsSpec,
    #[serde(default)]
    pub http: Vec<HttpMatchSpec>,
    /// An `AuthorizationPlugin` of the namespace that decides matching requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

/// An external authorization service rules of the namespace can delegate
/// to (docs/plugins.md).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.conduit.io",
    version = "v1alpha1",
    kind = "AuthorizationPlugin",
    namespaced
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPluginSpec {
    pub address: String,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u32,
    #[serde(default)]
    pub failure: FailureMode,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    /// The plugin is meshed: its SPIFFE ID (reached over mTLS, this
    /// identity required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

fn default_timeout() -> u32 {
    250
}

fn default_in_flight() -> u32 {
    256
}

/// The default policy of the namespace, or of the pods `podSelector` picks.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.conduit.io",
    version = "v1alpha1",
    kind = "InboundDefault",
    namespaced
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundDefaultSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<PodSelector>,
    pub default_policy: DefaultPolicy,
}

fn meta(m: &kube::api::ObjectMeta) -> Option<(String, String)> {
    Some((m.name.clone()?, m.namespace.clone()?))
}

/// The resources these objects describe (objects without a name or
/// namespace are skipped).
pub fn resources(
    servers: &[Server],
    authorizations: &[AuthorizationPolicy],
    defaults: &[InboundDefault],
    plugins: &[AuthorizationPlugin],
) -> Resources {
    Resources {
        plugins: plugins
            .iter()
            .filter_map(|p| {
                let (name, namespace) = meta(&p.metadata)?;
                Some(PluginResource {
                    namespace,
                    plugin: PluginSpec {
                        name,
                        address: p.spec.address.clone(),
                        timeout_ms: p.spec.timeout_ms,
                        failure: p.spec.failure,
                        headers: p.spec.headers.clone(),
                        max_in_flight: p.spec.max_in_flight,
                        identity: p.spec.identity.clone(),
                    },
                })
            })
            .collect(),
        servers: servers
            .iter()
            .filter_map(|s| {
                let (name, namespace) = meta(&s.metadata)?;
                Some(ServerResource {
                    name,
                    namespace,
                    pod_selector: s.spec.pod_selector.clone(),
                    port: s.spec.port,
                    protocol: s.spec.protocol,
                    default_policy: s.spec.default_policy,
                })
            })
            .collect(),
        authorizations: authorizations
            .iter()
            .filter_map(|a| {
                let (name, namespace) = meta(&a.metadata)?;
                Some(AuthorizationResource {
                    namespace,
                    rule: AuthorizationSpec {
                        name,
                        servers: a.spec.servers.clone(),
                        action: a.spec.action,
                        from: a.spec.from.clone(),
                        http: a.spec.http.clone(),
                        plugin: a.spec.plugin.clone(),
                    },
                })
            })
            .collect(),
        defaults: defaults
            .iter()
            .filter_map(|d| {
                let (name, namespace) = meta(&d.metadata)?;
                Some(InboundDefaultResource {
                    name,
                    namespace,
                    pod_selector: d.spec.pod_selector.clone(),
                    default_policy: d.spec.default_policy,
                })
            })
            .collect(),
    }
}

/// The three CRDs as one YAML document stream (what manifests/ holds).
pub fn crd_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::from(
        "# Generated from policy/src/crd.rs; do not edit. Regenerate with\n\
         # CONDUIT_UPDATE_CRDS=1 cargo test --workspace --test it crd_manifests\n",
    );
    for crd in [
        Server::crd(),
        AuthorizationPolicy::crd(),
        InboundDefault::crd(),
        AuthorizationPlugin::crd(),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}
