//! [`KubernetesBackend`]: three kube-rs reflectors (Services,
//! EndpointSlices, Pods, all namespaces) feed one update task. Once all
//! three are listed it indexes their stores into a [`Snapshot`]; after that
//! each added, changed or deleted object changes the snapshot in place and
//! only the watched targets that object touches are recomputed (and
//! notified when their view differs), so a change costs what it touches. A
//! relist (a watch expired: 410 Gone) rebuilds the whole snapshot. Bursts of
//! events coalesce into one update (at most [`MAX_BATCH`] events).

use super::snapshot::{Snapshot, Touched};
use crate::model::{DestinationView, DiscoveryBackend, Target};
use crate::store::ViewStore;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, watch};
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
    /// How a change reaches the views.
    pub updates: Updates,
}

/// How a change of one object reaches the views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Updates {
    /// Change the snapshot in place; recompute only the touched targets.
    #[default]
    Incremental,
    /// Rebuild the whole snapshot and recompute every watched target on
    /// every change (the old way; kept so the benchmark can compare).
    FullRebuild,
}

/// Events of the reflectors queued for the update task (bounded: a slow
/// update task slows the watches down instead of buffering without end).
const QUEUE: usize = 4096;
/// Most events applied in one update.
pub const MAX_BATCH: usize = 1024;

/// One object's change, as the update task applies it.
enum Change<K> {
    Apply(Arc<K>),
    Delete((String, String)),
}

/// What the reflectors tell the update task.
enum Event {
    Service(Change<Service>),
    Slice(Change<EndpointSlice>),
    Pod(Change<Pod>),
    /// A kind was (re)listed: its store was replaced as a whole.
    Listed(Kind),
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Service = 0,
    Slice = 1,
    Pod = 2,
}

impl Event {
    /// Applies one change to the snapshot; `None` for [`Event::Listed`]
    /// (which needs a full rebuild).
    fn apply(self, snap: &mut Snapshot) -> Option<Touched> {
        Some(match self {
            Event::Service(Change::Apply(o)) => snap.upsert_service(&o),
            Event::Service(Change::Delete(k)) => snap.remove_service(&k),
            Event::Slice(Change::Apply(o)) => snap.upsert_slice(o),
            Event::Slice(Change::Delete(k)) => snap.remove_slice(&k),
            Event::Pod(Change::Apply(o)) => snap.upsert_pod(&o),
            Event::Pod(Change::Delete(k)) => snap.remove_pod(&k),
            Event::Listed(_) => return None,
        })
    }
}

pub struct KubernetesBackend {
    store: Arc<ViewStore<Snapshot>>,
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

/// Runs one reflector forever (the watcher retries with backoff) and sends
/// every change of its store to the update task (`wrap` makes the event).
fn reflect<K>(
    api: Api<K>,
    page_size: u32,
    events_tx: mpsc::Sender<Event>,
    (tag, wrap): (Kind, fn(Change<K>) -> Event),
) -> (Store<K>, JoinHandle<()>)
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
    let store = reader.clone();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let send = match event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => None,
                Ok(watcher::Event::InitDone) => {
                    tracing::debug!(%kind, "listed");
                    Some(Event::Listed(tag))
                }
                Ok(watcher::Event::Apply(obj)) => {
                    // The store already holds it: share its copy.
                    let shared = store.get(&ObjectRef::from_obj(&obj));
                    Some(wrap(Change::Apply(shared.unwrap_or_else(|| Arc::new(obj)))))
                }
                Ok(watcher::Event::Delete(obj)) => {
                    let meta = obj.meta();
                    meta.namespace
                        .clone()
                        .zip(meta.name.clone())
                        .map(|k| wrap(Change::Delete(k)))
                }
                Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                    tracing::info!(%kind, "watch expired (410 Gone): relisting");
                    None
                }
                Err(e) => {
                    tracing::warn!(%kind, error = %e, "watch failed; retrying with backoff");
                    None
                }
            };
            if let Some(e) = send
                && events_tx.send(e).await.is_err()
            {
                return;
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
                updates: Updates::Incremental,
            },
        )
    }

    pub fn start_with(
        client: kube::Client,
        opts: Options,
    ) -> Result<KubernetesBackend, KubernetesError> {
        tokio::runtime::Handle::try_current().map_err(|_| KubernetesError::NoRuntime)?;
        let (events_tx, events) = mpsc::channel(QUEUE);
        let (services, t1) = reflect(
            Api::<Service>::all(client.clone()),
            opts.page_size,
            events_tx.clone(),
            (Kind::Service, Event::Service),
        );
        let (slices, t2) = reflect(
            Api::<EndpointSlice>::all(client.clone()),
            opts.page_size,
            events_tx.clone(),
            (Kind::Slice, Event::Slice),
        );
        let (pods, t3) = reflect(
            Api::<Pod>::all(client),
            opts.page_size,
            events_tx,
            (Kind::Pod, Event::Pod),
        );
        let store = Arc::new(ViewStore::new(
            Snapshot::empty(&opts.trust_domain, &opts.cluster_domain),
            Snapshot::view,
        ));
        let ready = Arc::new(AtomicBool::new(false));
        let (rebuilt_tx, rebuilds) = watch::channel(0u64);
        let kube = Reflected {
            services,
            slices,
            pods,
        };
        let update = tokio::spawn(update_task(
            opts,
            kube,
            events,
            store.clone(),
            ready.clone(),
            rebuilt_tx,
        ));
        Ok(KubernetesBackend {
            store,
            ready,
            rebuilds,
            tasks: vec![t1, t2, t3, update],
        })
    }

    /// Counts state updates (full rebuilds and incremental updates; each
    /// publishes the changed views); tests wait on it instead of sleeping.
    pub fn rebuilds(&self) -> watch::Receiver<u64> {
        self.rebuilds.clone()
    }

    /// Number of targets with live subscribers or cached views.
    pub fn watched_targets(&self) -> usize {
        self.store.targets()
    }
}

/// The reflectors' stores.
struct Reflected {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
}

impl Reflected {
    fn build(&self, opts: &Options) -> Snapshot {
        Snapshot::build(
            &opts.trust_domain,
            &opts.cluster_domain,
            &self.services.state(),
            &self.slices.state(),
            &self.pods.state(),
        )
    }
}

/// Waits until the three kinds are listed, builds the snapshot, then
/// applies the reflectors' events as they come.
async fn update_task(
    opts: Options,
    kube: Reflected,
    mut events: mpsc::Receiver<Event>,
    store: Arc<ViewStore<Snapshot>>,
    ready: Arc<AtomicBool>,
    generations: watch::Sender<u64>,
) {
    let synced = futures::future::join3(
        kube.services.wait_until_ready(),
        kube.slices.wait_until_ready(),
        kube.pods.wait_until_ready(),
    )
    .await;
    if !matches!(synced, (Ok(()), Ok(()), Ok(()))) {
        return;
    }
    tracing::info!("Kubernetes state listed: serving discovery");
    // Everything queued so far is in the stores already (a reflector
    // updates its store before it passes the event on); events queued
    // after this are applied again on top, which changes nothing.
    // The first list of each kind (the first `Listed` its reflector sends,
    // now or later) is in the snapshot built first; a later one is a relist
    // (the store was replaced): rebuild.
    let mut listed = [false; 3];
    while let Ok(e) = events.try_recv() {
        if let Event::Listed(kind) = e {
            listed[kind as usize] = true;
        }
    }
    let mut generation = 0u64;
    let mut batch: Vec<Event> = Vec::with_capacity(MAX_BATCH);
    let mut full = true;
    loop {
        if full || opts.updates == Updates::FullRebuild {
            let snap = kube.build(&opts);
            let count = snap.services();
            let changed_targets = store.replace(snap);
            tracing::debug!(services = count, changed_targets, "discovery state rebuilt");
        } else {
            let u = store.update(
                |snap| {
                    let mut touched = Touched::default();
                    for e in batch.drain(..) {
                        touched.extend(e.apply(snap).unwrap_or_default());
                    }
                    touched
                },
                Snapshot::affects,
            );
            tracing::debug!(
                recomputed = u.recomputed,
                changed = u.changed,
                "discovery state updated"
            );
        }
        batch.clear();
        ready.store(true, Ordering::Release);
        generation += 1;
        generations.send_replace(generation);
        if events.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        full = false;
        for e in &batch {
            if let Event::Listed(kind) = e {
                full |= std::mem::replace(&mut listed[*kind as usize], true);
            }
        }
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
