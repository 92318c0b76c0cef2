//! Unit tests of the view rules (no server): address families, protocols,
//! ExternalName, host-network pods, duplicates across slices.

use super::*;
use k8s_openapi::api::core::v1::{PodSpec, PodStatus, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub(super) fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some("ns".into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

pub(super) fn svc(
    name: &str,
    ips: &[&str],
    ports: &[(i32, &str)],
    type_: Option<&str>,
) -> Arc<Service> {
    Arc::new(Service {
        metadata: meta(name),
        spec: Some(ServiceSpec {
            cluster_ip: ips.first().map(|s| s.to_string()),
            cluster_ips: Some(ips.iter().map(|s| s.to_string()).collect()),
            ip_families: Some(
                ips.iter()
                    .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" }.to_string())
                    .collect(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|(p, proto)| ServicePort {
                        port: *p,
                        protocol: Some(proto.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            type_: type_.map(str::to_string),
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub(super) fn slice(
    name: &str,
    svc: &str,
    family: &str,
    port: i32,
    ips: &[&str],
) -> Arc<EndpointSlice> {
    let mut m = meta(name);
    m.labels = Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into());
    Arc::new(EndpointSlice {
        metadata: m,
        address_type: family.into(),
        ports: Some(vec![EndpointPort {
            port: Some(port),
            ..Default::default()
        }]),
        endpoints: Some(
            ips.iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions::default()),
                    ..Default::default()
                })
                .collect(),
        ),
    })
}

pub(super) fn pod(name: &str, ip: &str, host_network: bool) -> Arc<Pod> {
    Arc::new(Pod {
        metadata: meta(name),
        spec: Some(PodSpec {
            host_network: Some(host_network),
            service_account_name: Some("sa".into()),
            ..Default::default()
        }),
        status: Some(PodStatus {
            pod_ip: Some(ip.into()),
            phase: Some("Running".into()),
            ..Default::default()
        }),
    })
}

pub(super) fn view(snap: &Arc<Snapshot>, t: &str) -> DestinationView {
    Snapshot::view(snap, &Target::parse(t, "cluster.local").unwrap())
}

pub(super) fn addrs(v: &DestinationView) -> Vec<String> {
    v.endpoints.iter().map(|e| e.addr.to_string()).collect()
}

#[test]
fn dual_stack_uses_the_family_asked_for() {
    let snap = Arc::new(Snapshot::build(
        "td",
        "cluster.local",
        &[svc("web", &["10.96.0.1", "fd00::1"], &[(80, "TCP")], None)],
        &[
            slice("web-v4", "web", "IPv4", 8080, &["10.1.0.1"]),
            slice("web-v6", "web", "IPv6", 8080, &["fd01::1"]),
        ],
        &[],
    ));
    assert_eq!(
        addrs(&view(&snap, "web.ns.svc.cluster.local:80")),
        ["10.1.0.1:8080"]
    );
    assert_eq!(addrs(&view(&snap, "10.96.0.1:80")), ["10.1.0.1:8080"]);
    assert_eq!(addrs(&view(&snap, "[fd00::1]:80")), ["[fd01::1]:8080"]);
}

#[test]
fn udp_ports_external_names_and_host_network_pods_do_not_resolve() {
    let snap = Arc::new(Snapshot::build(
        "td",
        "cluster.local",
        &[
            svc("dns", &["10.96.0.10"], &[(53, "UDP")], None),
            svc("ext", &[], &[(443, "TCP")], Some("ExternalName")),
        ],
        &[],
        &[
            pod("node-exporter", "192.168.1.5", true),
            pod("app", "10.1.0.7", false),
        ],
    ));
    assert!(!view(&snap, "dns.ns.svc:53").exists);
    assert!(!view(&snap, "10.96.0.10:53").exists);
    assert!(!view(&snap, "ext.ns.svc:443").exists);
    assert!(
        !view(&snap, "192.168.1.5:9100").exists,
        "host-network pod IP is the node's"
    );
    let v = view(&snap, "10.1.0.7:80");
    assert!(v.exists);
    assert_eq!(v.endpoints[0].identity, None, "not meshed: no identity");
    assert_eq!(v.endpoints[0].labels["serviceaccount"], "sa");
}

#[test]
fn endpoints_in_two_slices_count_once_and_find_their_pod_by_ip() {
    let snap = Arc::new(Snapshot::build(
        "td",
        "cluster.local",
        &[svc("web", &["10.96.0.1"], &[(80, "TCP")], None)],
        &[
            slice("a", "web", "IPv4", 8080, &["10.1.0.1", "10.1.0.2"]),
            slice("b", "web", "IPv4", 8080, &["10.1.0.2"]),
        ],
        &[pod("web-1", "10.1.0.1", false)],
    ));
    let v = view(&snap, "web.ns.svc:80");
    assert_eq!(addrs(&v), ["10.1.0.1:8080", "10.1.0.2:8080"]);
    assert_eq!(v.endpoints[0].labels["pod"], "web-1");
    assert!(!v.endpoints[1].labels.contains_key("pod"));
}
