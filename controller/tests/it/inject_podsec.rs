//! Injected workloads meet Pod Security `baseline` (checked with
//! `inject::podsec`, whose rules have unit tests of their own): every golden
//! case and the example app in manifests/examples/, while the sidecar that
//! mounted the agent's socket through a hostPath (kept as a fixture) fails.
//! Also: workloads running as the proxy's uid are refused, and the
//! `conduit.io/inbound-policy` annotation reaches the proxy's environment.

use clap::Parser;
use conduit_controller::inject::podsec::{self, Rule};
use conduit_controller::inject::{Args, Options, inject_yaml};
use conduit_controller::kubernetes::mesh;
use k8s_openapi::api::core::v1::{Namespace, PodTemplateSpec};
use serde::Deserialize;
use serde_norway::Value;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    args: Args,
}

fn options_with(extra: &[&str]) -> Options {
    let mut argv = vec!["inject", "--proxy-image", "conduit-proxy:test"];
    argv.extend(extra);
    TestCli::parse_from(argv).args.options().unwrap()
}

fn options() -> Options {
    options_with(&[])
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|de| Value::deserialize(de).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Every pod template in `yaml`: (kind/name, template).
fn templates(yaml: &str) -> Vec<(String, PodTemplateSpec)> {
    fn collect(v: &Value, out: &mut Vec<(String, PodTemplateSpec)>) {
        let kind = v["kind"].as_str().unwrap_or("");
        let name = format!("{kind}/{}", v["metadata"]["name"].as_str().unwrap_or(""));
        let t = match kind {
            "List" => {
                for item in v["items"].as_sequence().unwrap() {
                    collect(item, out);
                }
                return;
            }
            "Pod" => {
                let mut m = serde_norway::Mapping::new();
                m.insert("metadata".into(), v["metadata"].clone());
                m.insert("spec".into(), v["spec"].clone());
                Value::Mapping(m)
            }
            "CronJob" => v["spec"]["jobTemplate"]["spec"]["template"].clone(),
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                v["spec"]["template"].clone()
            }
            _ => return,
        };
        out.push((name, serde_norway::from_value(t).unwrap()));
    }
    let mut out = Vec::new();
    for v in docs(yaml) {
        collect(&v, &mut out);
    }
    out
}

fn has_proxy(t: &PodTemplateSpec) -> bool {
    let spec = t.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .any(|c| c.name == mesh::PROXY_CONTAINER)
}

fn golden_inputs() -> Vec<(String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read(p),
            )
        })
        .collect();
    out.sort();
    out
}

fn example() -> String {
    read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/shop.yaml"))
}

#[test]
fn injected_workloads_meet_pod_security_baseline() {
    let mut inputs = golden_inputs();
    assert!(inputs.len() >= 9, "{inputs:?}");
    inputs.push(("manifests/examples/shop.yaml".into(), example()));
    let mut checked = 0;
    for (file, input) in inputs {
        let out = inject_yaml(&input, &options()).unwrap_or_else(|e| panic!("{file}: {e}"));
        for (name, t) in templates(&out.yaml)
            .into_iter()
            .filter(|(_, t)| has_proxy(t))
        {
            let v = podsec::baseline_template(&t);
            assert!(v.is_empty(), "{file} {name}: {v:#?}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} injected templates checked");
}

#[test]
fn the_example_namespace_enforces_baseline_and_strict_inbound() {
    let docs = docs(&example());
    let ns: Namespace = serde_norway::from_value(docs[0].clone()).unwrap();
    let meta = ns.metadata;
    assert_eq!(
        meta.labels.unwrap()["pod-security.kubernetes.io/enforce"],
        "baseline"
    );
    let out = inject_yaml(&example(), &options()).unwrap();
    for (name, t) in templates(&out.yaml) {
        let proxy = &t.spec.unwrap().init_containers.unwrap()[0];
        let env = proxy.env.as_ref().unwrap();
        assert!(
            env.iter().any(|e| e.name == "CONDUIT_PROXY_INBOUND_POLICY"
                && e.value.as_deref() == Some("all-authenticated")),
            "{name}: {env:?}"
        );
    }
}

/// The sidecar as injected before discovery (a hostPath to the agent's
/// socket) is exactly what baseline refuses.
#[test]
fn the_old_hostpath_sidecar_fails_baseline() {
    let old = read(golden_dir().join("old-hostpath-sidecar.yaml"));
    let ts = templates(&old);
    assert_eq!(ts.len(), 1);
    let v = podsec::baseline_template(&ts[0].1);
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].rule, Rule::HostPathVolumes);
    assert!(v[0].field.contains("conduit-agent-socket"), "{}", v[0]);
    assert_eq!(
        v[0].to_string(),
        "HostPathVolumes: spec.volumes[2] (conduit-agent-socket).hostPath = /run/conduit"
    );
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: app, namespace: shop}
spec:
  SECURITY
  initContainers:
  - name: setup
    image: setup
    INIT
  containers:
  - name: app
    image: app
    APP
";

fn pod(security: &str, init: &str, app: &str) -> String {
    POD.replace("SECURITY", security)
        .replace("INIT", init)
        .replace("APP", app)
}

#[test]
fn workloads_running_as_the_proxy_uid_are_refused() {
    let cases = [
        (
            pod("securityContext: {runAsUser: 2102}", "", ""),
            "spec.securityContext.runAsUser",
        ),
        (
            pod("", "", "securityContext: {runAsUser: 2102}"),
            "spec.containers[0] (app) securityContext.runAsUser",
        ),
        (
            pod("", "securityContext: {runAsUser: 2102}", ""),
            "spec.initContainers[0] (setup) securityContext.runAsUser",
        ),
    ];
    for (input, at) in &cases {
        let err = inject_yaml(input, &options()).unwrap_err().to_string();
        assert!(
            err.contains("Pod \"app\"") && err.contains(at) && err.contains("2102"),
            "{err}"
        );
        assert!(err.contains("the conduit proxy's uid"), "{err}");
    }
    // A Deployment's template is checked the same way.
    let deploy = read(golden_dir().join("deployment.in.yaml")).replace(
        "        image: shop/web:1.4\n",
        "        image: shop/web:1.4\n        securityContext: {runAsUser: 2102}\n",
    );
    let err = inject_yaml(&deploy, &options()).unwrap_err().to_string();
    assert!(
        err.contains("Deployment \"web\"") && err.contains("(web)"),
        "{err}"
    );
    // The uid is the one the proxy gets: 1337 with --proxy-uid 1337.
    let as_1337 = pod("securityContext: {runAsUser: 1337}", "", "");
    inject_yaml(&as_1337, &options()).unwrap();
    let err = inject_yaml(&as_1337, &options_with(&["--proxy-uid", "1337"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("1337"), "{err}");
    // Other uids, and no uid at all, are fine.
    inject_yaml(
        &pod("securityContext: {runAsUser: 1000}", "", ""),
        &options(),
    )
    .unwrap();
    inject_yaml(&pod("", "", ""), &options()).unwrap();
}

fn policy_env(yaml: &str) -> Vec<Option<String>> {
    templates(yaml)
        .into_iter()
        .map(|(_, t)| {
            let init = t.spec.unwrap().init_containers.unwrap();
            init[0]
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "CONDUIT_PROXY_INBOUND_POLICY")
                .and_then(|e| e.value.clone())
        })
        .collect()
}

#[test]
fn inbound_policy_annotation_reaches_the_proxy() {
    let with = |ann: &str| {
        pod("", "", "").replace(
            "metadata: {name: app, namespace: shop}",
            &format!("metadata: {{name: app, namespace: shop, annotations: {{conduit.io/inbound-policy: {ann}}}}}"),
        )
    };
    let out = inject_yaml(&with("all-authenticated"), &options()).unwrap();
    assert_eq!(policy_env(&out.yaml), [Some("all-authenticated".into())]);
    // None by default: the proxy's own default applies.
    let out = inject_yaml(&pod("", "", ""), &options()).unwrap();
    assert_eq!(policy_env(&out.yaml), [None]);
    // A Namespace in the same input sets it for its workloads; the pod's own
    // annotation wins; workloads of other namespaces are not affected.
    let ns = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  annotations:\n    conduit.io/inbound-policy: all-authenticated\n---\n"
        )
    };
    let out = inject_yaml(&(ns("shop") + &pod("", "", "")), &options()).unwrap();
    assert_eq!(policy_env(&out.yaml), [Some("all-authenticated".into())]);
    let out = inject_yaml(&(ns("shop") + &with("audit")), &options()).unwrap();
    assert_eq!(policy_env(&out.yaml), [Some("audit".into())]);
    let out = inject_yaml(&(ns("other") + &pod("", "", "")), &options()).unwrap();
    assert_eq!(policy_env(&out.yaml), [None]);
    // A workload's own annotation applies to its pod template.
    let deploy = read(golden_dir().join("deployment.in.yaml")).replace(
        "  namespace: shop\n",
        "  namespace: shop\n  annotations: {conduit.io/inbound-policy: deny}\n",
    );
    let out = inject_yaml(&deploy, &options()).unwrap();
    assert_eq!(policy_env(&out.yaml), [Some("deny".into())]);
    // Unknown values are an error naming the allowed ones, on a pod or a
    // Namespace.
    for input in [
        with("strict"),
        ns("shop").replace("all-authenticated", "strict"),
    ] {
        let err = inject_yaml(&input, &options()).unwrap_err().to_string();
        assert!(
            err.contains("conduit.io/inbound-policy")
                && err.contains("\"strict\"")
                && err.contains("all-authenticated"),
            "{err}"
        );
    }
}
