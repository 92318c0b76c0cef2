//! Which process of a pod is its proxy: the node agent, finding a process
//! that listens on a pod's registration socket (discovery), checks that the
//! process runs in the pod's `conduit-proxy` container and not in one of
//! the application's containers, which share the pod's network namespace.
//! A container's cgroup path on the node names its container id
//! (`.../cri-containerd-<id>.scope`, `.../crio-<id>.scope`,
//! `.../docker-<id>.scope`, or `.../pod<uid>/<id>` with the cgroupfs
//! driver), and the API server reports each container's id in the pod's
//! status (`containerd://<id>`).

use k8s_openapi::api::core::v1::Pod;
use kube::Api;

/// Name of the proxy container (a native sidecar) in injected pods.
pub const PROXY_CONTAINER: &str = "conduit-proxy";

/// Shortest container id accepted (runtimes use 64 hex digits).
const MIN_ID_LEN: usize = 12;

/// The ids of `pod`'s containers named `name` (init, sidecar or main), as
/// the runtime names them (the `<runtime>://` prefix removed).
pub fn container_ids(pod: &Pod, name: &str) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .filter(|s| s.name == name)
        .filter_map(|s| s.container_id.as_deref())
        .map(|id| id.rsplit_once("://").map_or(id, |(_, id)| id).to_string())
        .filter(|id| id.len() >= MIN_ID_LEN && id.chars().all(|c| c.is_ascii_alphanumeric()))
        .collect()
}

/// Whether the cgroup `path` (as `/proc/<pid>/cgroup` gives it) is the
/// cgroup of container `id`: its last component names the id whole.
pub fn cgroup_is_container(path: &str, id: &str) -> bool {
    if id.len() < MIN_ID_LEN {
        return false;
    }
    let Some(last) = path.trim_end_matches('/').rsplit('/').next() else {
        return false;
    };
    let last = last.strip_suffix(".scope").unwrap_or(last);
    last == id || last.rsplit_once('-').is_some_and(|(_, tail)| tail == id)
}

/// Why a process was not taken for the pod's proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyContainerError {
    #[error("pod {namespace}/{name} does not exist")]
    NotFound { namespace: String, name: String },
    #[error("pod {namespace}/{name} reports no {PROXY_CONTAINER} container id yet")]
    NoContainerYet { namespace: String, name: String },
    #[error(
        "the process listening on the registration socket is not pod {namespace}/{name}'s {PROXY_CONTAINER} container (its cgroup {cgroup} is none of {ids:?})"
    )]
    OtherContainer {
        namespace: String,
        name: String,
        cgroup: String,
        ids: Vec<String>,
    },
    #[error("cannot ask the API server about pod {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Checks that a process with cgroup `cgroup` is pod `namespace/name`'s
/// proxy container, asking the API server for the pod's container ids.
pub async fn check(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    cgroup: &str,
) -> Result<(), ProxyContainerError> {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod = match pods.get_opt(&name).await {
        Ok(Some(p)) => p,
        Ok(None) => return Err(ProxyContainerError::NotFound { namespace, name }),
        Err(source) => {
            return Err(ProxyContainerError::Api {
                namespace,
                name,
                source,
            });
        }
    };
    let ids = container_ids(&pod, PROXY_CONTAINER);
    if ids.is_empty() {
        return Err(ProxyContainerError::NoContainerYet { namespace, name });
    }
    if ids.iter().any(|id| cgroup_is_container(cgroup, id)) {
        Ok(())
    } else {
        Err(ProxyContainerError::OtherContainer {
            namespace,
            name,
            cgroup: cgroup.into(),
            ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus};

    const ID: &str = "4f2a9c0b7e1d3a5b6c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";

    fn status(name: &str, id: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            container_id: id.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn ids_come_from_init_and_main_statuses_without_the_runtime() {
        let pod = Pod {
            status: Some(PodStatus {
                init_container_statuses: Some(vec![
                    status(PROXY_CONTAINER, Some(&format!("containerd://{ID}"))),
                    status("migrate", Some("containerd://aaaaaaaaaaaaaaaa")),
                ]),
                container_statuses: Some(vec![
                    status("app", Some("containerd://bbbbbbbbbbbbbbbb")),
                    status(PROXY_CONTAINER, None),
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(container_ids(&pod, PROXY_CONTAINER), [ID]);
        assert_eq!(container_ids(&pod, "app"), ["bbbbbbbbbbbbbbbb"]);
        assert!(container_ids(&Pod::default(), PROXY_CONTAINER).is_empty());
        // Junk ids are dropped rather than matched loosely.
        let junk = Pod {
            status: Some(PodStatus {
                container_statuses: Some(vec![status(PROXY_CONTAINER, Some("docker://x/../y"))]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(container_ids(&junk, PROXY_CONTAINER).is_empty());
    }

    #[test]
    fn cgroup_paths_of_each_driver_name_their_container() {
        let pod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice";
        for (path, is) in [
            (format!("{pod}/cri-containerd-{ID}.scope"), true),
            (format!("{pod}/crio-{ID}.scope"), true),
            (format!("{pod}/docker-{ID}.scope"), true),
            (format!("/kubepods/burstable/pod1234/{ID}"), true),
            (format!("/../../kubepods/burstable/pod1234/{ID}/"), true),
            // Another container of the same pod.
            (
                format!("{pod}/cri-containerd-{}.scope", "c".repeat(64)),
                false,
            ),
            // The id only as a prefix, or in a parent directory.
            (format!("{pod}/cri-containerd-{ID}x.scope"), false),
            (format!("/kubepods/{ID}/other"), false),
            ("/".into(), false),
        ] {
            assert_eq!(cgroup_is_container(&path, ID), is, "{path}");
        }
        assert!(!cgroup_is_container("/a/b", ""));
        assert!(!cgroup_is_container("/a/abc", "abc"));
    }
}
