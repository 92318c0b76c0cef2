//! Injection golden files (one per kind, a List, a multi-document stream,
//! opt-out), idempotence, the sidecar's shape checked through k8s-openapi
//! types, clear errors for bad input, and the `run` command on files.
//! Pod Security, the proxy's uid and the inbound policy annotation are in
//! inject_podsec.rs.
//!
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test --workspace --test it -- inject::`
//! (then review the diff).

use clap::Parser;
use conduit_controller::inject::{self, Action, Args, InjectError, Options, inject_yaml};
use conduit_controller::kubernetes::mesh;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde::Deserialize;
use std::path::{Path, PathBuf};

const CASES: &[&str] = &[
    "pod",
    "deployment",
    "statefulset",
    "daemonset",
    "job",
    "cronjob",
    "list",
    "multi",
    "optout",
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

fn options() -> Options {
    let cli = TestCli::parse_from([
        "inject",
        "--proxy-image",
        "conduit-proxy:test",
        "--trust-anchors",
        golden_dir().join("trust-anchors.pem").to_str().unwrap(),
    ]);
    cli.args.options().unwrap()
}

#[derive(Parser)]
struct TestCli {
    #[command(flatten)]
    args: Args,
}

fn read(name: &str) -> String {
    let p = golden_dir().join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatched = Vec::new();
    for case in CASES {
        let out = inject_yaml(&read(&format!("{case}.in.yaml")), &options())
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let path = golden_dir().join(format!("{case}.out.yaml"));
        if update {
            std::fs::write(&path, &out.yaml).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if want != out.yaml {
            mismatched.push(format!("{case}:\n--- want\n{want}\n--- got\n{}", out.yaml));
        }
    }
    assert!(
        mismatched.is_empty(),
        "golden mismatch (UPDATE_GOLDEN=1 to regenerate):\n{}",
        mismatched.join("\n")
    );
}

#[test]
fn injecting_twice_changes_nothing() {
    for case in CASES {
        let once = inject_yaml(&read(&format!("{case}.in.yaml")), &options()).unwrap();
        let twice = inject_yaml(&once.yaml, &options()).unwrap();
        assert_eq!(
            once.yaml, twice.yaml,
            "{case}: second injection changed the YAML"
        );
        assert!(
            twice.outcomes.iter().all(|o| o.action != Action::Injected),
            "{case}: {:?}",
            twice.outcomes
        );
    }
}

/// Every pod template of an injected stream, as typed k8s-openapi values.
fn templates(yaml: &str) -> Vec<(String, PodTemplateSpec)> {
    let mut out = Vec::new();
    for de in serde_norway::Deserializer::from_str(yaml) {
        let v = serde_norway::Value::deserialize(de).unwrap();
        collect(&v, &mut out);
    }
    out
}

fn collect(v: &serde_norway::Value, out: &mut Vec<(String, PodTemplateSpec)>) {
    let kind = v["kind"].as_str().unwrap_or("").to_string();
    let t = match kind.as_str() {
        "List" => {
            for item in v["items"].as_sequence().unwrap() {
                collect(item, out);
            }
            return;
        }
        "Pod" => serde_norway::from_value(
            serde_norway::to_value(serde_norway::Mapping::from_iter([
                ("metadata".into(), v["metadata"].clone()),
                ("spec".into(), v["spec"].clone()),
            ]))
            .unwrap(),
        ),
        "CronJob" => serde_norway::from_value(v["spec"]["jobTemplate"]["spec"]["template"].clone()),
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
            serde_norway::from_value(v["spec"]["template"].clone())
        }
        _ => return,
    };
    out.push((kind, t.unwrap()));
}

#[test]
fn sidecar_is_native_unprivileged_and_carries_identity_and_agent_discovery() {
    // The single-workload cases: all but the multi-document file and the
    // opted-out workload.
    for &case in CASES.iter().filter(|c| !matches!(**c, "multi" | "optout")) {
        let out = inject_yaml(&read(&format!("{case}.in.yaml")), &options()).unwrap();
        let ts = templates(&out.yaml);
        assert!(!ts.is_empty(), "{case}");
        for (kind, t) in ts {
            let spec = t.spec.unwrap();
            assert!(
                spec.containers
                    .iter()
                    .all(|c| c.name != mesh::PROXY_CONTAINER),
                "{case}/{kind}: the proxy must not be a main container (Jobs would never complete)"
            );
            let init = spec.init_containers.unwrap();
            let proxy = &init[0];
            assert_eq!(
                proxy.name,
                mesh::PROXY_CONTAINER,
                "{case}/{kind}: proxy first"
            );
            assert_eq!(
                proxy.restart_policy.as_deref(),
                Some("Always"),
                "{case}/{kind}: native sidecar"
            );
            for c in init.iter().chain(spec.containers.iter()) {
                let added = c
                    .security_context
                    .as_ref()
                    .and_then(|s| s.capabilities.as_ref())
                    .and_then(|c| c.add.clone())
                    .unwrap_or_default();
                assert!(
                    added.is_empty(),
                    "{case}/{kind}: {} adds capabilities {added:?}",
                    c.name
                );
            }
            let sc = proxy.security_context.as_ref().unwrap();
            assert_eq!(sc.run_as_user, Some(2102));
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
            let env: Vec<&str> = proxy
                .env
                .iter()
                .flatten()
                .map(|e| e.name.as_str())
                .collect();
            for want in [
                "CONDUIT_PROXY_POD_NAME",
                "CONDUIT_PROXY_AGENT_DISCOVERY",
                "CONDUIT_PROXY_IDENTITY_TOKEN_FILE",
                "CONDUIT_PROXY_TRUST_ANCHORS_PEM",
            ] {
                assert!(
                    env.contains(&want),
                    "{case}/{kind}: env {want} missing from {env:?}"
                );
            }
            // The allocator setting every proxy runs with (conduit_base::malloc).
            let tunables = proxy
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "GLIBC_TUNABLES");
            assert_eq!(
                tunables.and_then(|e| e.value.as_deref()),
                Some("glibc.malloc.tcache_count=32"),
                "{case}/{kind}"
            );
            assert!(proxy.readiness_probe.is_some() && proxy.liveness_probe.is_some());
            let volumes = spec.volumes.unwrap();
            let token = volumes
                .iter()
                .find(|v| v.name == inject::sidecar::TOKEN_VOLUME)
                .unwrap();
            let projection = &token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0];
            assert_eq!(
                projection
                    .service_account_token
                    .as_ref()
                    .unwrap()
                    .audience
                    .as_deref(),
                Some(mesh::IDENTITY_AUDIENCE)
            );
            // The agent finds the proxy: no hostPath to its socket.
            assert!(
                volumes.iter().all(|v| v.host_path.is_none()),
                "{case}/{kind}: hostPath volume in {volumes:?}"
            );
        }
    }
    // Jobs keep their own restart policy.
    let out = inject_yaml(&read("job.in.yaml"), &options()).unwrap();
    assert_eq!(
        templates(&out.yaml)[0]
            .1
            .spec
            .as_ref()
            .unwrap()
            .restart_policy
            .as_deref(),
        Some("Never")
    );
}

#[test]
fn opt_out_host_network_and_other_kinds_are_left_alone() {
    let input = read("optout.in.yaml");
    let out = inject_yaml(&input, &options()).unwrap();
    let actions: Vec<_> = out
        .outcomes
        .iter()
        .map(|o| (o.kind.as_str(), o.action.clone()))
        .collect();
    assert_eq!(
        actions,
        [("Deployment", Action::OptedOut), ("Pod", Action::OptedOut)]
    );
    assert!(!out.yaml.contains(mesh::PROXY_CONTAINER));

    let out = inject_yaml(&read("multi.in.yaml"), &options()).unwrap();
    let actions: Vec<_> = out
        .outcomes
        .iter()
        .map(|o| (o.name.as_str(), o.action.clone()))
        .collect();
    assert_eq!(
        actions,
        [
            ("frontend", Action::NotAWorkload),
            ("frontend", Action::Injected),
            ("node-exporter", Action::HostNetwork),
        ]
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let o = options();
    let err = inject_yaml("kind: Pod\nmetadata: {name: a\n", &o).unwrap_err();
    assert!(
        matches!(err, InjectError::Yaml { document: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("line"), "{err}");

    let two = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {}\n  template:\n    spec:\n      containers: nope\n";
    let err = inject_yaml(two, &o).unwrap_err().to_string();
    assert!(
        err.contains("document 2") && err.contains("Deployment \"web\""),
        "{err}"
    );
    assert!(err.contains("spec.template.spec.containers"), "{err}");

    let bad_ports = read("deployment.in.yaml").replace("\"9102\"", "\"http\"");
    let err = inject_yaml(&bad_ports, &o).unwrap_err().to_string();
    assert!(
        err.contains("conduit.io/skip-inbound-ports") && err.contains("\"http\""),
        "{err}"
    );

    let clash =
        read("pod.in.yaml") + "  volumes:\n  - name: conduit-identity-token\n    emptyDir: {}\n";
    let err = inject_yaml(&clash, &o).unwrap_err().to_string();
    assert!(err.contains("conduit-identity-token"), "{err}");

    let err = inject_yaml("just: a map\n", &o).unwrap_err().to_string();
    assert!(err.contains("kind"), "{err}");

    let wrong_version = read("deployment.in.yaml").replace("apps/v1", "extensions/v1beta1");
    let err = inject_yaml(&wrong_version, &o).unwrap_err().to_string();
    assert!(err.contains("apps/v1"), "{err}");
}

#[test]
fn run_reads_a_file_and_writes_the_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.yaml");
    let cli = TestCli::parse_from([
        "inject",
        golden_dir().join("multi.in.yaml").to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--proxy-image",
        "conduit-proxy:test",
        "--trust-anchors",
        golden_dir().join("trust-anchors.pem").to_str().unwrap(),
    ]);
    inject::run(cli.args).unwrap();
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        read("multi.out.yaml")
    );

    // A bad input writes nothing.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Deployment\napiVersion: apps/v1\nmetadata: {name: x}\nspec: 3\n",
    )
    .unwrap();
    let out2 = dir.path().join("out2.yaml");
    let cli = TestCli::parse_from([
        "inject",
        bad.to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
    ]);
    let err = format!("{:#}", inject::run(cli.args).unwrap_err());
    assert!(err.contains("bad.yaml") && err.contains("spec"), "{err}");
    assert!(!out2.exists());

    // Trust anchors that are not PEM are refused up front.
    let cli = TestCli::parse_from(["inject", "-", "--trust-anchors", bad.to_str().unwrap()]);
    assert!(inject::run(cli.args).is_err());
}

#[test]
fn access_log_annotation_turns_the_proxy_access_log_on() {
    let o = options();
    let with = |v: &str| deployment_with(&format!("conduit.io/access-log: {v}"));
    let out = inject_yaml(&with("json"), &o).unwrap();
    assert!(
        out.yaml.contains("name: CONDUIT_PROXY_ACCESS_LOG\n") && out.yaml.contains("value: json"),
        "{}",
        out.yaml
    );
    let plain = inject_yaml(&read("deployment.in.yaml"), &o).unwrap();
    assert!(
        !plain.yaml.contains("CONDUIT_PROXY_ACCESS_LOG"),
        "off by default"
    );
    let err = inject_yaml(&with("loud"), &o).unwrap_err().to_string();
    assert!(
        err.contains(mesh::ACCESS_LOG_ANNOTATION) && err.contains("loud"),
        "{err}"
    );
}

#[test]
fn proxy_workers_annotation_sets_the_proxys_runtime_threads() {
    let o = options();
    let with = |v: &str| deployment_with(&format!("conduit.io/proxy-workers: {v}"));
    let out = inject_yaml(&with("\"2\""), &o).unwrap();
    assert!(
        out.yaml.contains("name: CONDUIT_PROXY_WORKERS\n") && out.yaml.contains("value: '2'"),
        "{}",
        out.yaml
    );
    let plain = inject_yaml(&read("deployment.in.yaml"), &o).unwrap();
    assert!(
        !plain.yaml.contains("CONDUIT_PROXY_WORKERS"),
        "the proxy's own default (one thread) unless asked"
    );
    // The proxy would refuse these at start: refused here, before a pod runs.
    for bad in ["\"0\"", "\"257\"", "many", "\"-1\"", "\"\""] {
        let err = inject_yaml(&with(bad), &o).unwrap_err().to_string();
        assert!(
            err.contains(mesh::PROXY_WORKERS_ANNOTATION) && err.contains("1 to 256"),
            "{bad}: {err}"
        );
    }
}

/// The example deployment with one more pod template annotation line
/// (`key: value`).
fn deployment_with(annotation: &str) -> String {
    read("deployment.in.yaml").replace(
        "conduit.io/skip-inbound-ports: \"9102\"",
        &format!("conduit.io/skip-inbound-ports: \"9102\"\n        {annotation}"),
    )
}
