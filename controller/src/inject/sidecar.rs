//! The proxy sidecar and the volumes it needs, as k8s-openapi types.
//!
//! The proxy is a native sidecar: an init container with
//! `restartPolicy: Always`. The kubelet starts it before the application
//! containers (and waits for its startup probe), keeps it running beside
//! them, and stops it once the main containers have exited, so a Job still
//! completes. No init container with NET_ADMIN is needed: the node agent's
//! eBPF programs capture the pod's traffic once the agent has found the
//! proxy. The proxy runs in discovery mode (it listens on an abstract unix
//! socket in the pod's network namespace and the agent connects to it), so
//! the pod needs no hostPath, no host namespace and no capability: it meets
//! Pod Security `baseline` (checked by [`super::podsec`]).

use crate::kubernetes::mesh;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Volume holding the projected identity token.
pub const TOKEN_VOLUME: &str = "conduit-identity-token";
/// How the injected proxy meets the node agent (`CONDUIT_PROXY_AGENT_DISCOVERY`).
pub const AGENT_DISCOVERY: &str = "abstract";
/// Values of [`INBOUND_POLICY_ANNOTATION`] (the proxy's
/// `CONDUIT_PROXY_INBOUND_POLICY`).
pub const INBOUND_POLICIES: [&str; 5] = [
    "all-unauthenticated",
    "all-authenticated",
    "cluster-authenticated",
    "deny",
    "audit",
];
/// Annotation (pod template, workload or Namespace) choosing the proxy's
/// default inbound policy; `all-authenticated` is inbound strict mode.
pub const INBOUND_POLICY_ANNOTATION: &str = "conduit.io/inbound-policy";
/// Where the proxy finds its identity token.
pub const TOKEN_DIR: &str = "/var/run/secrets/conduit.io/identity";
/// Lifetime asked for the projected token; the kubelet refreshes it at 80%.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 86_400;

/// Everything that varies between injections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub proxy_image: String,
    pub image_pull_policy: String,
    /// `host:port` of the controller's gRPC (Destination and Identity).
    pub controller_addr: String,
    /// The SPIFFE identity the controller's TLS gRPC port must present.
    pub controller_identity: String,
    pub trust_domain: String,
    /// PEM of the issuer certificate(s) the proxies trust.
    pub trust_anchors_pem: Option<String>,
    pub identity_audience: String,
    /// The proxy's uid: the agent never captures this uid's sockets.
    pub proxy_uid: i64,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub log_level: String,
}

/// Per-pod settings read from the pod template's annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSettings {
    pub skip_inbound_ports: Option<String>,
    pub skip_outbound_ports: Option<String>,
    /// One of [`INBOUND_POLICIES`].
    pub inbound_policy: Option<String>,
    /// `json` or `common` (CONDUIT_PROXY_ACCESS_LOG).
    pub access_log: Option<String>,
    /// The proxy's runtime threads, 1 to 256 (CONDUIT_PROXY_WORKERS).
    pub workers: Option<String>,
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(mesh::ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(number),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// The proxy container.
pub fn proxy_container(o: &Options, pod: &PodSettings) -> Container {
    let mut envs = vec![
        field_env("CONDUIT_PROXY_POD_NAME", "metadata.name"),
        field_env("CONDUIT_PROXY_POD_NAMESPACE", "metadata.namespace"),
        field_env("CONDUIT_PROXY_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env("CONDUIT_PROXY_AGENT_DISCOVERY", AGENT_DISCOVERY),
        env("CONDUIT_PROXY_CONTROLLER_ADDR", &o.controller_addr),
        env("CONDUIT_PROXY_CONTROLLER_IDENTITY", &o.controller_identity),
        env("CONDUIT_PROXY_TRUST_DOMAIN", &o.trust_domain),
        env(
            "CONDUIT_PROXY_IDENTITY",
            &format!(
                "spiffe://{}/ns/$(CONDUIT_PROXY_POD_NAMESPACE)/sa/$(CONDUIT_PROXY_SERVICE_ACCOUNT)",
                o.trust_domain
            ),
        ),
        env(
            "CONDUIT_PROXY_IDENTITY_TOKEN_FILE",
            &format!("{TOKEN_DIR}/token"),
        ),
        env("CONDUIT_PROXY_LOG", &o.log_level),
        env(
            conduit_base::malloc::TUNABLES_VAR,
            conduit_base::malloc::PROXY_TUNABLES,
        ),
    ];
    if let Some(pem) = &o.trust_anchors_pem {
        envs.push(env("CONDUIT_PROXY_TRUST_ANCHORS_PEM", pem));
    }
    if let Some(p) = &pod.skip_inbound_ports {
        envs.push(env("CONDUIT_PROXY_SKIP_INBOUND_PORTS", p));
    }
    if let Some(p) = &pod.skip_outbound_ports {
        envs.push(env("CONDUIT_PROXY_SKIP_OUTBOUND_PORTS", p));
    }
    if let Some(p) = &pod.inbound_policy {
        envs.push(env("CONDUIT_PROXY_INBOUND_POLICY", p));
    }
    if let Some(f) = &pod.access_log {
        envs.push(env("CONDUIT_PROXY_ACCESS_LOG", f));
    }
    if let Some(n) = &pod.workers {
        envs.push(env("CONDUIT_PROXY_WORKERS", n));
    }
    let quantities = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect(),
        )
    };
    Container {
        name: mesh::PROXY_CONTAINER.into(),
        image: Some(o.proxy_image.clone()),
        image_pull_policy: Some(o.image_pull_policy.clone()),
        // A native sidecar: runs beside the app, stops after it (Jobs end).
        restart_policy: Some("Always".into()),
        env: Some(envs),
        ports: Some(vec![
            port(mesh::INBOUND_PORT_NAME, mesh::DEFAULT_INBOUND_PORT),
            port(mesh::ADMIN_PORT_NAME, mesh::DEFAULT_ADMIN_PORT),
        ]),
        // The application starts once the proxy holds its certificate.
        startup_probe: Some(probe("/ready", 1, 120)),
        readiness_probe: Some(probe("/ready", 5, 3)),
        liveness_probe: Some(probe("/live", 10, 3)),
        resources: Some(ResourceRequirements {
            requests: quantities(&[("cpu", &o.cpu_request), ("memory", &o.memory_request)]),
            limits: quantities(&[("memory", &o.memory_limit)]),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(o.proxy_uid),
            run_as_group: Some(o.proxy_uid),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The volumes the proxy mounts (no hostPath: the agent finds the proxy).
pub fn volumes(o: &Options) -> Vec<Volume> {
    vec![Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(o.identity_audience.clone()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: "token".into(),
                    user: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }]
}
