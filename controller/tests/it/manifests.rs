//! Every manifest under manifests/ parses into its k8s-openapi type, and
//! nothing is lost on the way: each document is re-serialized and compared
//! with the original, so an unknown or misspelt field (which serde would
//! silently drop) fails with its path. Then the properties the issue asks
//! for: least-privilege RBAC, the agent's exact capabilities and mounts, and
//! agreement with the controller's flags and the injected sidecar.

use clap::Parser;
use conduit_controller::cli::ServeArgs;
use conduit_controller::inject;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, PodSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// All YAML files under manifests/ except kustomizations.
fn manifest_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&manifests_dir(), &mut out);
    out
}

/// Every document of every manifest: (file, document index, JSON value).
fn documents() -> Vec<(String, usize, Value)> {
    let mut docs = Vec::new();
    for file in manifest_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file
            .strip_prefix(manifests_dir())
            .unwrap()
            .display()
            .to_string();
        for (i, de) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let v =
                Value::deserialize(de).unwrap_or_else(|e| panic!("{name} document {}: {e}", i + 1));
            if !v.is_null() {
                docs.push((name.clone(), i + 1, v));
            }
        }
    }
    assert!(
        docs.len() >= 10,
        "expected the mesh's manifests, found {}",
        docs.len()
    );
    docs
}

/// The first path where `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                match (x.get(k), y.get(k)) {
                    (Some(xv), Some(yv)) => {
                        if let Some(d) = first_difference(xv, yv, &format!("{path}.{k}")) {
                            return Some(d);
                        }
                    }
                    (Some(_), None) => {
                        return Some(format!(
                            "{path}.{k}: unknown field (dropped by the typed parse)"
                        ));
                    }
                    (None, Some(_)) => {
                        return Some(format!("{path}.{k}: added by the typed round trip"));
                    }
                    (None, None) => {}
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (xv, yv))| first_difference(xv, yv, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

/// Parses `v` as `T` strictly: type errors name their path, and the
/// re-serialized value must equal the original (no unknown fields).
fn strict<T: DeserializeOwned + serde::Serialize>(v: &Value) -> Result<T, String> {
    let typed: T = serde_path_to_error::deserialize(v.clone())
        .map_err(|e| format!("{}: {}", e.path(), e.inner()))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference(v, &back, "") {
        None => Ok(typed),
        Some(d) => Err(d),
    }
}

fn check_typed(kind: &str, v: &Value) -> Result<(), String> {
    match kind {
        "Namespace" => strict::<Namespace>(v).map(drop),
        "ServiceAccount" => strict::<ServiceAccount>(v).map(drop),
        "ClusterRole" => strict::<ClusterRole>(v).map(drop),
        "ClusterRoleBinding" => strict::<ClusterRoleBinding>(v).map(drop),
        "Deployment" => strict::<Deployment>(v).map(drop),
        "DaemonSet" => strict::<DaemonSet>(v).map(drop),
        "Service" => strict::<Service>(v).map(drop),
        "Secret" => strict::<Secret>(v).map(drop),
        "CustomResourceDefinition" => strict::<CustomResourceDefinition>(v).map(drop),
        other => Err(format!("kind {other:?} has no check here: add it")),
    }
}

#[test]
fn every_manifest_parses_strictly_into_k8s_openapi_types() {
    let mut failures = Vec::new();
    for (file, i, v) in documents() {
        let kind = v["kind"].as_str().unwrap_or("<no kind>").to_string();
        if let Err(e) = check_typed(&kind, &v) {
            failures.push(format!("{file} document {i} ({kind}): {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_strict_check_catches_unknown_and_mistyped_fields() {
    let ok: Value = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "a"}});
    check_typed("ServiceAccount", &ok).unwrap();
    let mut typo = ok.clone();
    typo["metadata"]["lables"] = serde_json::json!({"a": "b"});
    let err = check_typed("ServiceAccount", &typo).unwrap_err();
    assert!(
        err.contains(".metadata.lables") && err.contains("unknown field"),
        "{err}"
    );
    let mut deep = documents()
        .into_iter()
        .find(|(_, _, v)| v["kind"] == "DaemonSet")
        .unwrap()
        .2;
    deep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] =
        serde_json::json!({});
    assert!(
        check_typed("DaemonSet", &deep)
            .unwrap_err()
            .contains("capabilites")
    );
    let mut wrong = ok;
    wrong["automountServiceAccountToken"] = serde_json::json!("yes");
    assert!(
        check_typed("ServiceAccount", &wrong)
            .unwrap_err()
            .contains("automountServiceAccountToken")
    );
}

fn find<T: DeserializeOwned>(kind: &str, name: &str) -> T {
    let v = documents()
        .into_iter()
        .find(|(_, _, v)| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .2;
    serde_json::from_value(v).unwrap()
}

fn rules(role: &ClusterRole) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for PolicyRule {
        api_groups,
        resources,
        verbs,
        resource_names,
        non_resource_urls,
    } in role.rules.iter().flatten()
    {
        assert!(resource_names.is_none() && non_resource_urls.is_none());
        for g in api_groups.iter().flatten() {
            for r in resources.iter().flatten() {
                let mut v = verbs.clone();
                v.sort();
                out.push((g.clone(), r.clone(), v));
            }
        }
    }
    out.sort();
    out
}

fn rule(group: &str, resource: &str, verbs: &[&str]) -> (String, String, Vec<String>) {
    (
        group.into(),
        resource.into(),
        verbs.iter().map(|v| v.to_string()).collect(),
    )
}

#[test]
fn rbac_is_least_privilege() {
    let controller: ClusterRole = find("ClusterRole", "conduit-controller");
    assert_eq!(
        rules(&controller),
        [
            rule("", "pods", &["get", "list", "watch"]),
            rule("", "services", &["list", "watch"]),
            rule("authentication.k8s.io", "tokenreviews", &["create"]),
            rule("discovery.k8s.io", "endpointslices", &["list", "watch"]),
            rule(
                "policy.conduit.io",
                "authorizationplugins",
                &["list", "watch"]
            ),
            rule(
                "policy.conduit.io",
                "authorizationpolicies",
                &["list", "watch"]
            ),
            rule("policy.conduit.io", "inbounddefaults", &["list", "watch"]),
            rule("policy.conduit.io", "servers", &["list", "watch"]),
        ]
    );
    let agent: ClusterRole = find("ClusterRole", "conduit-agent");
    assert_eq!(rules(&agent), [rule("", "pods", &["get", "list"])]);
    for name in ["conduit-controller", "conduit-agent"] {
        let b: ClusterRoleBinding = find("ClusterRoleBinding", name);
        assert_eq!(b.role_ref.name, name);
        let s = &b.subjects.unwrap()[0];
        assert_eq!(
            (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
            ("ServiceAccount", name, Some("conduit-system"))
        );
    }
}

fn pod_spec_of_deployment(name: &str) -> PodSpec {
    find::<Deployment>("Deployment", name)
        .spec
        .template
        .spec
        .unwrap()
}

#[test]
fn controller_flags_parse_and_match_the_service_and_the_issuer_secret() {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let spec = pod_spec_of_deployment("conduit-controller");
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("conduit-controller")
    );
    let c = &spec.containers[0];
    let args = std::iter::once("conduit-controller".to_string()).chain(c.args.clone().unwrap());
    let serve = Cli::try_parse_from(args)
        .unwrap_or_else(|e| panic!("controller args: {e}"))
        .serve;
    assert_eq!(serve.grpc_addr.port(), 8086);
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert!(limits.contains_key("memory"));
    // The issuer files are where the flags say, from the Secret the
    // kustomization generates.
    let issuer_dir = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "issuer")
        .unwrap();
    assert!(
        serve
            .issuer_cert
            .unwrap()
            .starts_with(&issuer_dir.mount_path)
    );
    let secret = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "issuer")
        .unwrap()
        .secret
        .unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("conduit-issuer"));
    // Proxies are injected with the controller's Service address.
    let svc: Service = find("Service", "conduit-controller");
    let port = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .unwrap();
    let default_addr = format!(
        "conduit-controller.{}.svc.cluster.local:{}",
        svc.metadata.namespace.unwrap(),
        port.port
    );
    #[derive(Parser)]
    struct Inject {
        #[command(flatten)]
        args: inject::Args,
    }
    assert_eq!(
        Inject::parse_from(["inject"]).args.controller_addr,
        default_addr
    );
    // The gRPC port is TLS as the controller's own identity, made from its
    // namespace and service account; injected proxies require exactly that.
    assert!(
        !serve.insecure_plaintext_grpc,
        "the controller's gRPC port must be TLS"
    );
    let env = c.env.clone().unwrap_or_default();
    let field = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(
        field("CONDUIT_CONTROLLER_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(
        field("CONDUIT_CONTROLLER_SERVICE_ACCOUNT").as_deref(),
        Some("spec.serviceAccountName")
    );
    let deployment_ns = find::<Deployment>("Deployment", "conduit-controller")
        .metadata
        .namespace
        .unwrap();
    let injected = Inject::parse_from(["inject"]).args.options().unwrap();
    assert_eq!(
        injected.controller_identity,
        format!(
            "spiffe://{}/ns/{deployment_ns}/sa/{}",
            serve.trust_domain,
            spec.service_account_name.as_deref().unwrap()
        )
    );
}

#[test]
fn agent_has_only_the_named_capabilities_and_mounts() {
    let ds: DaemonSet = find("DaemonSet", "conduit-agent");
    let spec = ds.spec.template.spec.unwrap();
    assert_eq!(
        spec.host_pid,
        Some(true),
        "SO_PEERCRED pids must be visible in /proc"
    );
    assert_ne!(spec.host_network, Some(true));
    let c = &spec.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let mut added = caps.add.clone().unwrap();
    added.sort();
    assert_eq!(
        added,
        ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"]
    );
    // Each capability is explained in the manifest.
    let text = std::fs::read_to_string(manifests_dir().join("conduit/21-agent.yaml")).unwrap();
    for cap in &added {
        assert!(
            text.contains(&format!("#   {cap} ")),
            "capability {cap} is not explained"
        );
    }
    let volumes: BTreeMap<String, String> = spec
        .volumes
        .unwrap()
        .into_iter()
        .map(|v| {
            (
                v.name,
                v.host_path.expect("agent volumes are hostPaths").path,
            )
        })
        .collect();
    assert_eq!(volumes["bpffs"], "/sys/fs/bpf");
    assert_eq!(volumes["cgroup"], "/sys/fs/cgroup");
    // Injected sidecars mount nothing of the node: the agent finds them
    // (--discover); its own socket stays for node-local use and the probes.
    assert_eq!(volumes["agent-socket"], "/run/conduit");
    let args = c.args.clone().unwrap();
    assert!(args.contains(&"--discover".to_string()), "{args:?}");
    assert!(
        args.contains(&"--socket=/run/conduit/agent.sock".to_string()),
        "{args:?}"
    );
    let mounts = c.volume_mounts.as_ref().unwrap();
    let cgroup = mounts.iter().find(|m| m.name == "cgroup").unwrap();
    assert_eq!(cgroup.read_only, Some(true));
    assert!(args.contains(&format!("--cgroup={}", cgroup.mount_path)));
    assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
    assert!(
        c.resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap()
            .contains_key("memory")
    );
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
    #[serde(default)]
    secret_generator: Vec<SecretGenerator>,
    #[serde(default)]
    generator_options: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct SecretGenerator {
    name: String,
    namespace: String,
    #[serde(rename = "type")]
    type_: String,
    files: Vec<String>,
}

#[test]
fn kustomizations_list_every_manifest() {
    let main: Kustomization = serde_norway::from_str(
        &std::fs::read_to_string(manifests_dir().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let mut listed = main.resources.clone();
    listed.sort();
    let mut files: Vec<String> = std::fs::read_dir(manifests_dir().join("conduit"))
        .unwrap()
        .map(|e| format!("conduit/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    files.sort();
    assert_eq!(listed, files);
    let gen_ = &main.secret_generator[0];
    assert_eq!(
        (gen_.name.as_str(), gen_.type_.as_str()),
        ("conduit-issuer", "kubernetes.io/tls")
    );
    let cleanup: Kustomization = serde_norway::from_str(
        &std::fs::read_to_string(manifests_dir().join("cleanup/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    for r in cleanup.resources {
        assert!(manifests_dir().join("cleanup").join(&r).exists(), "{r}");
    }
}

#[test]
fn documented_issuer_script_makes_an_issuer_the_controller_loads() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: openssl is not installed (manifests/make-issuer.sh needs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("sh")
        .arg(manifests_dir().join("make-issuer.sh"))
        .args(["mesh.example", "30"])
        .env("ISSUER_DIR", dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = std::fs::read_to_string(dir.path().join("tls.crt")).unwrap();
    let key = std::fs::read_to_string(dir.path().join("tls.key")).unwrap();
    let issuer = conduit_controller::identity::Issuer::from_pem(&cert, &key)
        .unwrap_or_else(|e| panic!("the controller refuses the script's issuer: {e}"));
    assert!(
        issuer.not_after()
            > std::time::SystemTime::now() + std::time::Duration::from_secs(29 * 86400)
    );
}
