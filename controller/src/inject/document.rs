//! Walking YAML documents: finding the pod template of each workload kind,
//! checking it parses as its k8s-openapi type, and adding the sidecar to it.
//! The documents stay `serde_norway::Value`s so that every field the user
//! wrote (including ones newer than our k8s-openapi) is kept, in order.

use super::sidecar::{self, Options, PodSettings};
use crate::kubernetes::mesh;
use serde_norway::{Mapping, Value};
use std::collections::BTreeMap;

/// `conduit.io/inbound-policy` of the Namespaces in the input, by name.
pub type NamespacePolicies = BTreeMap<String, String>;

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Injected,
    AlreadyInjected,
    OptedOut,
    /// Pods on the host network share the node's network namespace; the
    /// mesh cannot capture them.
    HostNetwork,
    /// Not a kind that has pods (Service, ConfigMap, ...): left unchanged.
    NotAWorkload,
}

/// One object's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kind: String,
    pub name: String,
    pub action: Action,
}

/// Why an object could not be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {message}")]
pub struct ObjectError {
    pub kind: String,
    pub name: String,
    pub message: String,
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn get_mut<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(*k))
}

/// Checks that an object parses as its k8s-openapi type.
type Check = fn(&Value) -> Result<(), String>;

/// Where a kind keeps its pod template (metadata + spec), and a check that
/// the object parses as its type.
fn template_path(kind: &str) -> Option<(&'static [&'static str], Check)> {
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
    fn check<T: serde::de::DeserializeOwned>(v: &Value) -> Result<(), String> {
        serde_path_to_error::deserialize::<_, T>(v.clone())
            .map(drop)
            .map_err(|e| match e.path().to_string().as_str() {
                "." => e.inner().to_string(),
                p => format!("{p}: {}", e.inner()),
            })
    }
    Some(match kind {
        "Pod" => (&[], check::<core::Pod>),
        "Deployment" => (&["spec", "template"], check::<apps::Deployment>),
        "StatefulSet" => (&["spec", "template"], check::<apps::StatefulSet>),
        "DaemonSet" => (&["spec", "template"], check::<apps::DaemonSet>),
        "ReplicaSet" => (&["spec", "template"], check::<apps::ReplicaSet>),
        "Job" => (&["spec", "template"], check::<batch::Job>),
        "CronJob" => (
            &["spec", "jobTemplate", "spec", "template"],
            check::<batch::CronJob>,
        ),
        _ => return None,
    })
}

/// The value of annotation `key` in `obj`'s `metadata`, if a string.
fn annotation<'a>(obj: &'a Value, key: &str) -> Result<Option<&'a str>, String> {
    match get(obj, &["metadata", "annotations", key]) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| format!("annotation {key} must be a string")),
    }
}

/// Checks an inbound policy annotation's value.
pub fn inbound_policy(value: &str) -> Result<String, String> {
    let v = value.trim();
    if sidecar::INBOUND_POLICIES.contains(&v) {
        Ok(v.to_string())
    } else {
        Err(format!(
            "annotation {}: {value:?} is not a policy (one of {})",
            sidecar::INBOUND_POLICY_ANNOTATION,
            sidecar::INBOUND_POLICIES.join(", ")
        ))
    }
}

/// Collects the inbound policy annotations of the Namespace objects in
/// `obj` (recursing into `List` items).
pub fn namespace_policies(obj: &Value, into: &mut NamespacePolicies) -> Result<(), ObjectError> {
    if let Some(items) = obj.get("items").and_then(Value::as_sequence) {
        for item in items {
            namespace_policies(item, into)?;
        }
        return Ok(());
    }
    if obj.get("kind").and_then(Value::as_str) != Some("Namespace") {
        return Ok(());
    }
    let name = get(obj, &["metadata", "name"])
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let err = |message| ObjectError {
        kind: "Namespace".into(),
        name: name.clone(),
        message,
    };
    if let Some(v) = annotation(obj, sidecar::INBOUND_POLICY_ANNOTATION).map_err(err)? {
        into.insert(name.clone(), inbound_policy(v).map_err(err)?);
    }
    Ok(())
}

/// Injects into `obj` (recursing into `List` items), appending outcomes.
/// `namespaces` are the Namespaces' inbound policies (from the same input).
pub fn inject(
    obj: &mut Value,
    o: &Options,
    namespaces: &NamespacePolicies,
    out: &mut Vec<Outcome>,
) -> Result<(), ObjectError> {
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = get(obj, &["metadata", "name"])
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let err = |message: String| ObjectError {
        kind: if kind.is_empty() {
            "object".into()
        } else {
            kind.clone()
        },
        name: name.clone(),
        message,
    };
    if kind.is_empty() {
        return Err(err("has no `kind` (not a Kubernetes object)".into()));
    }
    if kind == "List" || (kind.ends_with("List") && obj.get("items").is_some()) {
        let Some(items) = obj.get_mut("items").and_then(Value::as_sequence_mut) else {
            return Err(err("`items` must be a list".into()));
        };
        for item in items {
            inject(item, o, namespaces, out)?;
        }
        return Ok(());
    }
    let Some((path, check)) = template_path(&kind) else {
        out.push(Outcome {
            kind,
            name,
            action: Action::NotAWorkload,
        });
        return Ok(());
    };
    check(obj).map_err(err)?;
    let opted_out = |v: &Value| {
        get(v, &["metadata", "annotations", mesh::INJECT_ANNOTATION]).and_then(Value::as_str)
            == Some(mesh::INJECT_DISABLED)
    };
    let template_opted_out = get(obj, path).is_some_and(opted_out);
    let action = if opted_out(obj) || template_opted_out {
        Action::OptedOut
    } else {
        // Inbound policy: the pod template's annotation, else the
        // workload's, else its Namespace's (when in the input).
        let workload_policy = annotation(obj, sidecar::INBOUND_POLICY_ANNOTATION)
            .map_err(err)?
            .map(inbound_policy)
            .transpose()
            .map_err(err)?;
        let namespace_policy = get(obj, &["metadata", "namespace"])
            .and_then(Value::as_str)
            .and_then(|ns| namespaces.get(ns).cloned());
        let template = get_mut(obj, path)
            .ok_or_else(|| err(format!("has no pod template at {}", path.join("."))))?;
        inject_template(template, o, workload_policy.or(namespace_policy)).map_err(err)?
    };
    out.push(Outcome { kind, name, action });
    Ok(())
}

fn ports_annotation(template: &Value, key: &str) -> Result<Option<String>, String> {
    let Some(v) = get(template, &["metadata", "annotations", key]) else {
        return Ok(None);
    };
    let text = v
        .as_str()
        .ok_or_else(|| format!("annotation {key} must be a string"))?;
    let ports: Result<Vec<u16>, _> = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(p))
        .collect();
    match ports {
        Ok(ps) if ps.is_empty() => Ok(None),
        Ok(ps) => Ok(Some(
            ps.iter().map(u16::to_string).collect::<Vec<_>>().join(","),
        )),
        Err(bad) => Err(format!(
            "annotation {key}: {bad:?} is not a port (expected comma-separated numbers 1-65535)"
        )),
    }
}

/// Where the pod spec `spec` runs something as `uid` (pod or container
/// `securityContext.runAsUser`), as a path for the error message.
pub fn runs_as(spec: &Value, uid: i64) -> Option<String> {
    let is = |sc: Option<&Value>| {
        sc.and_then(|sc| sc.get("runAsUser"))
            .and_then(Value::as_i64)
            == Some(uid)
    };
    if is(spec.get("securityContext")) {
        return Some("spec.securityContext.runAsUser".into());
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        let containers = spec.get(list).and_then(Value::as_sequence);
        for (i, c) in containers.into_iter().flatten().enumerate() {
            if c.get("name").and_then(Value::as_str) == Some(mesh::PROXY_CONTAINER) {
                continue;
            }
            if is(c.get("securityContext")) {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                return Some(format!(
                    "spec.{list}[{i}] ({name}) securityContext.runAsUser"
                ));
            }
        }
    }
    None
}

fn access_log_annotation(template: &Value) -> Result<Option<String>, String> {
    let key = mesh::ACCESS_LOG_ANNOTATION;
    match get(template, &["metadata", "annotations", key]).map(Value::as_str) {
        None => Ok(None),
        Some(Some(f @ ("json" | "common"))) => Ok(Some(f.to_owned())),
        Some(v) => Err(format!(
            "annotation {key} must be json or common, not {v:?}"
        )),
    }
}

/// The proxy's runtime threads (`CONDUIT_PROXY_WORKERS`), checked here so
/// a bad value fails the injection instead of the pod's proxy at start.
fn workers_annotation(template: &Value) -> Result<Option<String>, String> {
    let key = mesh::PROXY_WORKERS_ANNOTATION;
    let Some(v) = annotation(template, key)? else {
        return Ok(None);
    };
    match v.trim().parse::<u16>() {
        Ok(n @ 1..=256) => Ok(Some(n.to_string())),
        _ => Err(format!(
            "annotation {key}: {v:?} is not a number of threads from 1 to 256"
        )),
    }
}

/// Adds the sidecar to a pod template (`metadata` + `spec`).
fn inject_template(
    template: &mut Value,
    o: &Options,
    default_policy: Option<String>,
) -> Result<Action, String> {
    let spec = template.get("spec").ok_or("pod template has no spec")?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Action::HostNetwork);
    }
    let has_proxy = ["initContainers", "containers"].iter().any(|list| {
        spec.get(*list)
            .and_then(Value::as_sequence)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.get("name").and_then(Value::as_str) == Some(mesh::PROXY_CONTAINER))
            })
    });
    if has_proxy {
        return Ok(Action::AlreadyInjected);
    }
    if let Some(at) = runs_as(spec, o.proxy_uid) {
        return Err(format!(
            "{at} is {uid}, the conduit proxy's uid: an application must not run as the proxy \
             (its traffic would be taken for the proxy's). Run it as another uid, or inject \
             with another --proxy-uid",
            uid = o.proxy_uid
        ));
    }
    let template_policy = annotation(template, sidecar::INBOUND_POLICY_ANNOTATION)?
        .map(inbound_policy)
        .transpose()?;
    let settings = PodSettings {
        skip_inbound_ports: ports_annotation(template, mesh::SKIP_INBOUND_PORTS_ANNOTATION)?,
        skip_outbound_ports: ports_annotation(template, mesh::SKIP_OUTBOUND_PORTS_ANNOTATION)?,
        inbound_policy: template_policy.or(default_policy),
        access_log: access_log_annotation(template)?,
        workers: workers_annotation(template)?,
    };
    let container = serde_norway::to_value(sidecar::proxy_container(o, &settings))
        .map_err(|e| e.to_string())?;
    let volumes: Vec<Value> = sidecar::volumes(o)
        .iter()
        .map(serde_norway::to_value)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let spec = template
        .get_mut("spec")
        .and_then(Value::as_mapping_mut)
        .ok_or("pod template spec must be a mapping")?;
    let existing: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    if let Some(clash) = [sidecar::TOKEN_VOLUME]
        .iter()
        .find(|n| existing.iter().any(|e| e == *n))
    {
        return Err(format!(
            "already has a volume named {clash} (reserved for the conduit proxy)"
        ));
    }
    // First among init containers: later init containers already have a
    // proxy (the kubelet waits for its startup probe before going on).
    seq_entry(spec, "initContainers")?.insert(0, container);
    seq_entry(spec, "volumes")?.extend(volumes);
    Ok(Action::Injected)
}

fn seq_entry<'a>(map: &'a mut Mapping, key: &str) -> Result<&'a mut Vec<Value>, String> {
    let entry = map
        .entry(s(key))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if entry.is_null() {
        *entry = Value::Sequence(Vec::new());
    }
    entry
        .as_sequence_mut()
        .ok_or_else(|| format!("spec.{key} must be a list"))
}
