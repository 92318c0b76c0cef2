//! Builders of Kubernetes objects (k8s-openapi types) and waiting helpers
//! for the tests that drive the Kubernetes code through the fake API server.
#![allow(dead_code)]

use conduit_controller::kubernetes::mesh;
use conduit_controller::model::DestinationView;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ObjectReference, Pod, PodIP, PodSpec, PodStatus, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;
use tokio::sync::watch;

pub const TD: &str = "td.test";
pub const WAIT: Duration = Duration::from_secs(15);

pub fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// A ClusterIP service; `ports` are `(name, port, target port)`.
pub fn service(ns: &str, name: &str, ip: &str, ports: &[(&str, i32, IntOrString)]) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some(ip.into()),
            cluster_ips: Some(vec![ip.into()]),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, t)| ServicePort {
                        name: (!n.is_empty()).then(|| n.to_string()),
                        port: *p,
                        target_port: Some(t.clone()),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn headless(ns: &str, name: &str) -> Service {
    Service {
        metadata: meta(ns, name),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            cluster_ips: Some(vec!["None".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One endpoint: `(ip, pod name, ready, serving, terminating)`.
pub type Ep<'a> = (&'a str, &'a str, bool, bool, bool);

pub fn ready(ip: &'static str, pod: &'static str) -> Ep<'static> {
    (ip, pod, true, true, false)
}

/// An IPv4 EndpointSlice of `svc`; `ports` are `(name, port)`.
pub fn slice(
    ns: &str,
    name: &str,
    svc: &str,
    ports: &[(&str, Option<i32>)],
    eps: &[Ep<'_>],
) -> EndpointSlice {
    let mut m = meta(ns, name);
    m.labels = Some([("kubernetes.io/service-name".to_string(), svc.to_string())].into());
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| EndpointPort {
                    name: Some(n.to_string()),
                    port: *p,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        endpoints: Some(
            eps.iter()
                .map(|(ip, pod, r, s, t)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*r),
                        serving: Some(*s),
                        terminating: Some(*t),
                    }),
                    target_ref: (!pod.is_empty()).then(|| ObjectReference {
                        kind: Some("Pod".into()),
                        namespace: Some(ns.into()),
                        name: Some(pod.to_string()),
                        ..Default::default()
                    }),
                    node_name: Some("node-a".into()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// A running pod on `node` with IP `ip`, service account `sa`; meshed adds
/// the proxy as a native sidecar; `named` are the app's named ports.
pub fn pod(
    ns: &str,
    name: &str,
    ip: &str,
    sa: &str,
    node: &str,
    meshed: bool,
    named: &[(&str, i32)],
) -> Pod {
    let app = Container {
        name: "app".into(),
        image: Some("app:1".into()),
        ports: Some(
            named
                .iter()
                .map(|(n, p)| ContainerPort {
                    name: Some(n.to_string()),
                    container_port: *p,
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    };
    let proxy = Container {
        name: mesh::PROXY_CONTAINER.into(),
        image: Some("conduit-proxy:test".into()),
        restart_policy: Some("Always".into()),
        ports: Some(vec![ContainerPort {
            name: Some(mesh::INBOUND_PORT_NAME.into()),
            container_port: 4143,
            ..Default::default()
        }]),
        ..Default::default()
    };
    Pod {
        metadata: meta(ns, name),
        spec: Some(PodSpec {
            containers: vec![app],
            init_containers: meshed.then(|| vec![proxy]),
            service_account_name: Some(sa.into()),
            node_name: Some(node.into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: (!ip.is_empty()).then(|| ip.to_string()),
            pod_ips: (!ip.is_empty()).then(|| vec![PodIP { ip: ip.into() }]),
            ..Default::default()
        }),
    }
}

/// Waits until the view satisfies `pred`; panics with the last view after
/// [`WAIT`].
pub async fn wait_view(
    rx: &mut watch::Receiver<DestinationView>,
    what: &str,
    pred: impl Fn(&DestinationView) -> bool,
) -> DestinationView {
    let res = tokio::time::timeout(WAIT, rx.wait_for(|v| pred(v)))
        .await
        .map(|r| r.map(|v| v.clone()));
    match res {
        Ok(Ok(v)) => v,
        _ => panic!(
            "timed out waiting for {what}; last view: {:#?}",
            *rx.borrow()
        ),
    }
}

/// Sorted `ip:port` strings of a view's endpoints.
pub fn addrs(v: &DestinationView) -> Vec<String> {
    let mut a: Vec<String> = v.endpoints.iter().map(|e| e.addr.to_string()).collect();
    a.sort();
    a
}

/// Waits for a condition checked by polling a cheap function (for counters
/// of the fake server), without fixed sleeps between unrelated steps.
pub async fn wait_until(what: &str, f: impl Fn() -> bool) {
    conduit_test_support::wait_until_async(what, WAIT, || {
        let now = f();
        async move {
            anyhow::ensure!(now, "not yet");
            Ok(())
        }
    })
    .await
    .unwrap();
}
