//! [`KubernetesBackend`]: three kube-rs reflectors (Services,
//! EndpointSlices, Pods, all namespaces) feed one rebuild task, which
//! re-indexes the stores into a [`Snapshot`] and publishes the views that
//! changed. Bursts of events coalesce into one rebuild.

use super::snapshot::Snapshot;
use crate::model::{DestinationView, DiscoveryBackend, Target};
use crate::store::ViewStore;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// Why the backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("the Kubernetes backend must be started within a Tokio runtime")]
    NoRuntime,
}

/// Options of [`KubernetesBackend::start_with`].
#[derive(Debug, Clone)]
pub struct Options {
    pub trust_domain: String,
    pub cluster_domain: String,
    /// Page size of the initial lists (and relists).
    pub page_size: u32,
}

pub struct KubernetesBackend {
    store: Arc<ViewStore<Arc<Snapshot>>>,
    ready: Arc<AtomicBool>,
    rebuilds: watch::Receiver<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for KubernetesBackend {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Keeps the caches small: only what the views are computed from is kept
/// (managed fields and annotations go; of pods, only container names and
/// ports, service account, node, host network, phase and IPs stay).
trait Trim {
    fn trim(&mut self);
}

impl Trim for Service {
    fn trim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.status = None;
    }
}

impl Trim for EndpointSlice {
    fn trim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
    }
}

impl Trim for Pod {
    fn trim(&mut self) {
        use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.metadata.owner_references = None;
        let slim = |c: &Container| Container {
            name: c.name.clone(),
            ports: c.ports.clone(),
            ..Default::default()
        };
        self.spec = self.spec.take().map(|s| PodSpec {
            containers: s.containers.iter().map(slim).collect(),
            init_containers: s.init_containers.map(|cs| cs.iter().map(slim).collect()),
            service_account_name: s.service_account_name,
            node_name: s.node_name,
            host_network: s.host_network,
            ..Default::default()
        });
        self.status = self.status.take().map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            ..Default::default()
        });
    }
}

/// Runs one reflector forever (the watcher retries with backoff) and pokes
/// `changed` after every change of its store.
fn reflect<K>(api: Api<K>, page_size: u32, changed: Arc<Notify>) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Trim
        + Clone
        + Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().page_size(page_size);
    let events = watcher(api, config).default_backoff().modify(K::trim);
    let stream = reflector::reflector(writer, events);
    let kind = K::kind(&());
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::InitDone) => {
                    tracing::debug!(%kind, "listed");
                    changed.notify_one();
                }
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => changed.notify_one(),
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    tracing::info!(%kind, "watch expired (410 Gone): relisting");
                }
                Err(e) => tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff"),
            }
        }
    });
    (reader, task)
}

impl KubernetesBackend {
    /// Starts reflectors on Services, EndpointSlices and Pods of all
    /// namespaces. Views are empty until all three are listed; then
    /// [`is_ready`](DiscoveryBackend::is_ready) turns true.
    pub fn start(
        client: kube::Client,
        trust_domain: String,
        cluster_domain: String,
    ) -> Result<KubernetesBackend, KubernetesError> {
        Self::start_with(
            client,
            Options {
                trust_domain,
                cluster_domain,
                page_size: 500,
            },
        )
    }

    pub fn start_with(
        client: kube::Client,
        opts: Options,
    ) -> Result<KubernetesBackend, KubernetesError> {
        tokio::runtime::Handle::try_current().map_err(|_| KubernetesError::NoRuntime)?;
        let changed = Arc::new(Notify::new());
        let (services, t1) = reflect(
            Api::<Service>::all(client.clone()),
            opts.page_size,
            changed.clone(),
        );
        let (slices, t2) = reflect(
            Api::<EndpointSlice>::all(client.clone()),
            opts.page_size,
            changed.clone(),
        );
        let (pods, t3) = reflect(Api::<Pod>::all(client), opts.page_size, changed.clone());
        let store = Arc::new(ViewStore::new(
            Arc::new(Snapshot::empty(&opts.trust_domain, &opts.cluster_domain)),
            Snapshot::view,
        ));
        let ready = Arc::new(AtomicBool::new(false));
        let (rebuilt_tx, rebuilds) = watch::channel(0u64);
        let rebuild = {
            let (store, ready) = (store.clone(), ready.clone());
            tokio::spawn(async move {
                let synced = futures::future::join3(
                    services.wait_until_ready(),
                    slices.wait_until_ready(),
                    pods.wait_until_ready(),
                )
                .await;
                if !matches!(synced, (Ok(()), Ok(()), Ok(()))) {
                    return;
                }
                tracing::info!("Kubernetes state listed: serving discovery");
                let mut generation = 0u64;
                loop {
                    let snap = Snapshot::build(
                        &opts.trust_domain,
                        &opts.cluster_domain,
                        &services.state(),
                        &slices.state(),
                        &pods.state(),
                    );
                    let count = snap.services();
                    let changed_targets = store.replace(Arc::new(snap));
                    ready.store(true, Ordering::Release);
                    generation += 1;
                    rebuilt_tx.send_replace(generation);
                    tracing::debug!(services = count, changed_targets, "discovery state rebuilt");
                    changed.notified().await;
                }
            })
        };
        Ok(KubernetesBackend {
            store,
            ready,
            rebuilds,
            tasks: vec![t1, t2, t3, rebuild],
        })
    }

    /// Counts state rebuilds (each publishes the changed views); tests wait
    /// on it instead of sleeping.
    pub fn rebuilds(&self) -> watch::Receiver<u64> {
        self.rebuilds.clone()
    }

    /// Number of targets with live subscribers or cached views.
    pub fn watched_targets(&self) -> usize {
        self.store.targets()
    }
}

impl DiscoveryBackend for KubernetesBackend {
    fn watch(&self, target: &Target) -> watch::Receiver<DestinationView> {
        self.store.watch(target)
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
