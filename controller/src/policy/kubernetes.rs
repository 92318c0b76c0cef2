//! The Kubernetes backend of the policy: reflectors over the custom
//! resources of `policy.conduit.io` (`Server`, `AuthorizationPolicy`,
//! `InboundDefault`, `AuthorizationPlugin`, all namespaces) feed one task that rebuilds the
//! [`Resources`] on every change. Objects that do not validate are left
//! out, one by one, with a log line naming them (the rest applies).

use conduit_policy::crd::{AuthorizationPlugin, AuthorizationPolicy, InboundDefault, Server};
use conduit_policy::resources::Resources;
use conduit_policy::{Context, DefaultPolicy};
use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use std::fmt::Debug;
use std::sync::Arc;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// Follows the three kinds; dropping it stops the tasks.
pub struct KubernetesPolicy {
    rx: watch::Receiver<Arc<Resources>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubernetesPolicy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn reflect<K>(api: Api<K>, changed: Arc<Notify>) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None);
    let stream = reflector::reflector(writer, events);
    let kind = K::kind(&()).into_owned();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(%kind, "policy watch failed (retrying): {e}"),
            }
        }
    });
    (reader, task)
}

/// Keeps only the objects that validate on their own, logging the others.
fn valid(all: Resources, ctx: &Context) -> Resources {
    let mut out = Resources::default();
    for d in all.defaults {
        let one = Resources {
            defaults: vec![d.clone()],
            ..Default::default()
        };
        match one.validate(ctx) {
            Ok(()) => out.defaults.push(d),
            Err(e) => {
                tracing::error!(namespace = %d.namespace, name = %d.name, "InboundDefault ignored: {e}")
            }
        }
    }
    for s in all.servers {
        let one = Resources {
            servers: vec![s.clone()],
            ..Default::default()
        };
        match one.validate(ctx) {
            Ok(()) => out.servers.push(s),
            Err(e) => {
                tracing::error!(namespace = %s.namespace, name = %s.name, "Server ignored: {e}")
            }
        }
    }
    for p in all.plugins {
        let one = Resources {
            plugins: vec![p.clone()],
            ..Default::default()
        };
        match one.validate(ctx) {
            Ok(()) => out.plugins.push(p),
            Err(e) => {
                tracing::error!(namespace = %p.namespace, name = %p.plugin.name, "AuthorizationPlugin ignored: {e}")
            }
        }
    }
    for a in all.authorizations {
        // Checked with the servers and plugins of its namespace (references must exist).
        let one = Resources {
            plugins: out
                .plugins
                .iter()
                .filter(|p| p.namespace == a.namespace)
                .cloned()
                .collect(),
            servers: out
                .servers
                .iter()
                .filter(|s| s.namespace == a.namespace)
                .cloned()
                .collect(),
            authorizations: vec![a.clone()],
            ..Default::default()
        };
        match one.validate(ctx) {
            Ok(()) => out.authorizations.push(a),
            Err(e) => {
                tracing::error!(namespace = %a.namespace, name = %a.rule.name, "AuthorizationPolicy ignored: {e}")
            }
        }
    }
    out
}

/// The store's objects in a stable order (the same objects give the same policy).
fn sorted<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<K> {
    let mut v: Vec<K> = store.state().iter().map(|o| (**o).clone()).collect();
    v.sort_by(|x, y| {
        (&x.meta().namespace, &x.meta().name).cmp(&(&y.meta().namespace, &y.meta().name))
    });
    v
}

impl KubernetesPolicy {
    /// Starts the reflectors; must run within Tokio.
    pub fn start(
        client: Client,
        trust_domain: Option<conduit_identity::TrustDomain>,
    ) -> KubernetesPolicy {
        let changed = Arc::new(Notify::new());
        let (servers, t1) = reflect(Api::<Server>::all(client.clone()), changed.clone());
        let (authz, t2) = reflect(
            Api::<AuthorizationPolicy>::all(client.clone()),
            changed.clone(),
        );
        let (defaults, t3) = reflect(Api::<InboundDefault>::all(client.clone()), changed.clone());
        let (plugins, t4) = reflect(Api::<AuthorizationPlugin>::all(client), changed.clone());
        let (tx, rx) = watch::channel(Arc::new(Resources::default()));
        let ctx = Context {
            namespace: "default".into(),
            trust_domain,
            default_policy: DefaultPolicy::Deny,
            cluster_networks: vec![],
        };
        let rebuild = tokio::spawn(async move {
            loop {
                changed.notified().await;
                let s: Vec<Server> = sorted(&servers);
                let a: Vec<AuthorizationPolicy> = sorted(&authz);
                let d: Vec<InboundDefault> = sorted(&defaults);
                let p: Vec<AuthorizationPlugin> = sorted(&plugins);
                let r = valid(conduit_policy::crd::resources(&s, &a, &d, &p), &ctx);
                tracing::debug!(
                    servers = r.servers.len(),
                    authorizations = r.authorizations.len(),
                    defaults = r.defaults.len(),
                    "policy resources rebuilt"
                );
                tx.send_if_modified(|cur| {
                    if **cur == r {
                        false
                    } else {
                        *cur = Arc::new(r);
                        true
                    }
                });
            }
        });
        KubernetesPolicy {
            rx,
            tasks: vec![t1, t2, t3, t4, rebuild],
        }
    }

    pub fn resources(&self) -> watch::Receiver<Arc<Resources>> {
        self.rx.clone()
    }
}
