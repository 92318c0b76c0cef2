//! Walking YAML documents: finding the pod template of each workload kind,
//! checking it parses as its k8s-openapi type, and adding the sidecar to it.
//! The documents stay `serde_yaml::Value`s so that every field the user
//! wrote (including ones newer than our k8s-openapi) is kept, in order.

use super::sidecar::{self, Options, PodSettings};
use crate::kubernetes::mesh;
use serde_yaml::{Mapping, Value};

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

/// Injects into `obj` (recursing into `List` items), appending outcomes.
pub fn inject(obj: &mut Value, o: &Options, out: &mut Vec<Outcome>) -> Result<(), ObjectError> {
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
            inject(item, o, out)?;
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
        let template = get_mut(obj, path)
            .ok_or_else(|| err(format!("has no pod template at {}", path.join("."))))?;
        inject_template(template, o).map_err(err)?
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

/// Adds the sidecar to a pod template (`metadata` + `spec`).
fn inject_template(template: &mut Value, o: &Options) -> Result<Action, String> {
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
    let settings = PodSettings {
        skip_inbound_ports: ports_annotation(template, mesh::SKIP_INBOUND_PORTS_ANNOTATION)?,
        skip_outbound_ports: ports_annotation(template, mesh::SKIP_OUTBOUND_PORTS_ANNOTATION)?,
        access_log: access_log_annotation(template)?,
    };
    let container =
        serde_yaml::to_value(sidecar::proxy_container(o, &settings)).map_err(|e| e.to_string())?;
    let volumes: Vec<Value> = sidecar::volumes(o)
        .iter()
        .map(serde_yaml::to_value)
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
    if let Some(clash) = [sidecar::TOKEN_VOLUME, sidecar::AGENT_SOCKET_VOLUME]
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
