//! What makes a pod "meshed", shared by discovery (which recognises it) and
//! injection (which creates it): the pod runs a container named
//! [`PROXY_CONTAINER`] — normally a native sidecar, i.e. an init container
//! with `restartPolicy: Always` — and its inbound port is the container port
//! named [`INBOUND_PORT_NAME`] (default [`DEFAULT_INBOUND_PORT`]).

use k8s_openapi::api::core::v1::{Container, Pod};

/// Name of the proxy container that injection adds.
pub const PROXY_CONTAINER: &str = "conduit-proxy";
/// Name of the proxy's inbound container port.
pub const INBOUND_PORT_NAME: &str = "conduit-inbound";
/// Name of the proxy's admin container port (/metrics, /ready, /live).
pub const ADMIN_PORT_NAME: &str = "conduit-admin";
pub const DEFAULT_INBOUND_PORT: u16 = 4143;
pub const DEFAULT_ADMIN_PORT: u16 = 4191;
pub const DEFAULT_OUTBOUND_PORT: u16 = 4140;
/// Audience of the projected service-account token a proxy presents to
/// `Identity.Certify`; the controller's TokenReview asks for it, so a
/// token minted for anything else (e.g. the API server) is refused.
pub const IDENTITY_AUDIENCE: &str = "identity.conduit.io";
/// Pod annotation: `disabled` opts a pod (or workload template) out of
/// injection.
pub const INJECT_ANNOTATION: &str = "conduit.io/inject";
pub const INJECT_DISABLED: &str = "disabled";
/// Pod annotations with comma-separated ports the capture leaves alone.
pub const SKIP_INBOUND_PORTS_ANNOTATION: &str = "conduit.io/skip-inbound-ports";
pub const SKIP_OUTBOUND_PORTS_ANNOTATION: &str = "conduit.io/skip-outbound-ports";
/// Pod annotation: `json` or `common` turns on the proxy's access log.
pub const ACCESS_LOG_ANNOTATION: &str = "conduit.io/access-log";
/// Pod annotation: the proxy's runtime threads, 1 (its default) to 256.
pub const PROXY_WORKERS_ANNOTATION: &str = "conduit.io/proxy-workers";

/// The proxy container of a pod spec's containers or init containers.
pub fn proxy_container(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == PROXY_CONTAINER)
}

/// The inbound port of a meshed pod, `None` when the pod is not meshed.
pub fn meshed_inbound_port(pod: &Pod) -> Option<u16> {
    let proxy = proxy_container(pod)?;
    let named = proxy
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(INBOUND_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .filter(|p| *p != 0);
    Some(named.unwrap_or(DEFAULT_INBOUND_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, PodSpec};

    fn pod(init: Vec<Container>, containers: Vec<Container>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                init_containers: Some(init),
                containers,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(name: &str, ports: Vec<(&str, i32)>) -> Container {
        Container {
            name: name.into(),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(n, p)| ContainerPort {
                        name: Some(n.into()),
                        container_port: p,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn recognises_the_proxy() {
        let app = container("app", vec![("http", 8080)]);
        assert_eq!(meshed_inbound_port(&pod(vec![], vec![app.clone()])), None);
        let sidecar = container(PROXY_CONTAINER, vec![(INBOUND_PORT_NAME, 5143)]);
        assert_eq!(
            meshed_inbound_port(&pod(vec![sidecar], vec![app.clone()])),
            Some(5143)
        );
        let plain = container(PROXY_CONTAINER, vec![]);
        assert_eq!(
            meshed_inbound_port(&pod(vec![], vec![app, plain])),
            Some(DEFAULT_INBOUND_PORT)
        );
        assert_eq!(meshed_inbound_port(&Pod::default()), None);
    }
}
