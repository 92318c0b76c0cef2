//! The node agent's check that a discovered proxy is the pod's
//! `conduit-proxy` container (not an application container of the same pod,
//! which shares the pod's network namespace and so its registration socket),
//! against the fake API server with a real `kube::Client`.

use conduit_controller::kubernetes::fake::FakeApiServer;
use conduit_kube::proxy_container::{PROXY_CONTAINER, ProxyContainerError, check};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const PROXY_ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const APP_ID: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const POD_CGROUP: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podabc.slice";

fn status(name: &str, id: Option<&str>) -> ContainerStatus {
    ContainerStatus {
        name: name.into(),
        container_id: id.map(|i| format!("containerd://{i}")),
        ..Default::default()
    }
}

fn pod(name: &str, proxy_id: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some("shop".into()),
            name: Some(name.into()),
            ..Default::default()
        },
        status: Some(PodStatus {
            init_container_statuses: Some(vec![status(PROXY_CONTAINER, proxy_id)]),
            container_statuses: Some(vec![status("app", Some(APP_ID))]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn cgroup(id: &str) -> String {
    format!("{POD_CGROUP}/cri-containerd-{id}.scope")
}

#[tokio::test]
async fn only_the_proxy_container_passes() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply(&pod("web-0", Some(PROXY_ID)));
    fake.apply(&pod("web-1", None));
    let c = fake.client();

    check(&c, "shop", "web-0", &cgroup(PROXY_ID)).await.unwrap();

    // The application container binding the pod's registration socket.
    let err = check(&c, "shop", "web-0", &cgroup(APP_ID))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProxyContainerError::OtherContainer { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("is not pod shop/web-0's conduit-proxy container"),
        "{err}"
    );
    // The pod's status does not name the proxy's container yet.
    let err = check(&c, "shop", "web-1", &cgroup(PROXY_ID))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProxyContainerError::NoContainerYet { .. }),
        "{err}"
    );
    // Another pod's proxy id does not make a process of this pod a proxy.
    let err = check(&c, "shop", "ghost", &cgroup(PROXY_ID))
        .await
        .unwrap_err();
    assert!(matches!(err, ProxyContainerError::NotFound { .. }), "{err}");
}
