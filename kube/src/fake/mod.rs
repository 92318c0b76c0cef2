//! A fake Kubernetes API server on loopback, for tests (feature
//! `fake-apiserver`). It speaks the real wire format to a real
//! `kube::Client`: objects are the JSON of k8s-openapi types, every change
//! gets a new resourceVersion from one counter, lists paginate (`limit`,
//! `continue`) and filter (`fieldSelector`, `labelSelector`, equality
//! forms), watches stream `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK` lines and
//! resume from a resourceVersion (or stream the initial state first, ending
//! with the `initial-events-end` bookmark, for `sendInitialEvents=true`),
//! and a compacted history answers with an
//! `ERROR` event carrying 410 Gone, after which clients must relist.
//! `POST .../tokenreviews` answers from tokens registered with
//! [`FakeApiServer::add_token`].
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use conduit_kube::fake::FakeApiServer;
//! let fake = FakeApiServer::start().await?;
//! let client = fake.client();
//! // fake.apply(&pod); fake.delete::<Pod>("default", "web-0"); fake.expire();
//! # Ok(()) }
//! ```

mod http;
mod state;

use conduit_base::sync::Unpoisoned;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use state::{CollKey, State, TokenEntry};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A TokenReview the server was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReviewSeen {
    pub token: String,
    pub audiences: Vec<String>,
}

/// Request counters, so tests can see relists and resumed watches.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Plural (`pods`) -> number of list requests.
    pub lists: BTreeMap<String, u64>,
    /// Plural -> number of watch requests.
    pub watches: BTreeMap<String, u64>,
    /// `(plural, resourceVersion)` of every watch request, in order.
    pub watch_from: Vec<(String, String)>,
    /// Plural -> list and watch requests refused by [`FakeApiServer::fail`].
    pub refused: BTreeMap<String, u64>,
    /// Single-object GETs.
    pub gets: u64,
    pub token_reviews: Vec<TokenReviewSeen>,
}

impl Stats {
    pub fn lists_of(&self, plural: &str) -> u64 {
        self.lists.get(plural).copied().unwrap_or(0)
    }
    pub fn watches_of(&self, plural: &str) -> u64 {
        self.watches.get(plural).copied().unwrap_or(0)
    }
}

/// The running fake server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn coll_of<K: Resource>() -> CollKey {
    CollKey {
        group: K::GROUP.to_string(),
        version: K::VERSION.to_string(),
        plural: K::URL_PATH_SEGMENT.to_string(),
    }
}

/// The text of a kubeconfig file pointing at the API server at `url`, with
/// no credentials: what the binaries under test are given as `KUBECONFIG`.
pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
         clusters:\n- name: fake\n  cluster:\n    server: {url}\n\
         users:\n- name: test\n  user: {{}}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: test\n"
    )
}

impl FakeApiServer {
    /// Listens on an ephemeral loopback port. Must run within Tokio.
    pub async fn start() -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) ends every connection.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "fake API server: accept failed");
                        continue;
                    }
                };
                let state = shared.clone();
                conns.spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| http::handle(state.clone(), req));
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(FakeApiServer { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A real kube client talking to this server.
    pub fn client(&self) -> kube::Client {
        crate::install_crypto_provider();
        let uri: hyper::Uri = self
            .url()
            .parse()
            .unwrap_or_else(|e| panic!("fake API server URL: {e}"));
        let config = kube::Config::new(uri);
        kube::Client::try_from(config)
            .unwrap_or_else(|e| panic!("kube client for the fake API server: {e}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    fn put<K>(&self, obj: &K, unseen: bool) -> u64
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize,
    {
        let value = serde_json::to_value(obj)
            .unwrap_or_else(|e| panic!("{} does not serialize: {e}", K::KIND));
        self.lock().put(coll_of::<K>(), K::KIND, value, unseen)
    }

    /// Creates or replaces `obj` (watchers see ADDED or MODIFIED); returns
    /// its new resourceVersion.
    pub fn apply<K>(&self, obj: &K) -> u64
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize,
    {
        self.put(obj, false)
    }

    /// Creates or replaces `obj` without telling any watch, as if the event
    /// was lost to compaction: only a relist shows it.
    pub fn apply_unseen<K>(&self, obj: &K) -> u64
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize,
    {
        self.put(obj, true)
    }

    /// Creates or replaces an object of a kind k8s-openapi does not know
    /// (a custom resource from kube's `CustomResource` derive), served at
    /// its group, version and plural like any other.
    pub fn apply_custom<K>(&self, obj: &K) -> u64
    where
        K: kube::Resource<DynamicType = ()> + Serialize,
    {
        let value = serde_json::to_value(obj)
            .unwrap_or_else(|e| panic!("{} does not serialize: {e}", K::kind(&())));
        let coll = CollKey {
            group: K::group(&()).into_owned(),
            version: K::version(&()).into_owned(),
            plural: K::plural(&()).into_owned(),
        };
        self.lock().put(coll, &K::kind(&()), value, false)
    }

    /// Deletes a custom resource (see [`apply_custom`](Self::apply_custom)).
    pub fn delete_custom<K: kube::Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        name: &str,
    ) -> bool {
        let coll = CollKey {
            group: K::group(&()).into_owned(),
            version: K::version(&()).into_owned(),
            plural: K::plural(&()).into_owned(),
        };
        self.lock().remove(coll, namespace, name, false).is_some()
    }

    /// Deletes an object (watchers see DELETED); false if it did not exist.
    /// `namespace` is "" for cluster-scoped kinds.
    pub fn delete<K: Resource>(&self, namespace: &str, name: &str) -> bool {
        self.lock()
            .remove(coll_of::<K>(), namespace, name, false)
            .is_some()
    }

    /// Deletes without telling any watch (see [`apply_unseen`](Self::apply_unseen)).
    pub fn delete_unseen<K: Resource>(&self, namespace: &str, name: &str) -> bool {
        self.lock()
            .remove(coll_of::<K>(), namespace, name, true)
            .is_some()
    }

    /// Sends a BOOKMARK (current resourceVersion) to watches that allow them.
    pub fn bookmark(&self) {
        self.lock().bookmark();
    }

    /// Compacts the history: open watches receive `ERROR` 410 Gone and are
    /// closed, and resuming from any older resourceVersion gets 410.
    pub fn expire(&self) {
        self.lock().expire();
    }

    /// Ends every open watch normally; clients resume from their last
    /// resourceVersion without relisting.
    pub fn close_watches(&self) {
        self.lock().close_watches();
    }

    /// Watches currently open.
    pub fn open_watches(&self) -> usize {
        self.lock().open_watches()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Registers a token for TokenReview: it authenticates as `username`
    /// (e.g. `system:serviceaccount:ns:sa`) for the given audiences.
    pub fn add_token(&self, token: &str, username: &str, audiences: &[&str]) {
        self.lock().tokens.insert(
            token.to_string(),
            TokenEntry {
                username: username.to_string(),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                audience_unaware: false,
                pod: None,
            },
        );
    }

    /// [`add_token`](Self::add_token) for a projected token bound to pod
    /// `pod_name` (uid `pod_uid`): the review's `user.extra` carries
    /// `authentication.kubernetes.io/pod-name` and `pod-uid`.
    pub fn add_pod_token(
        &self,
        token: &str,
        username: &str,
        audiences: &[&str],
        pod_name: &str,
        pod_uid: &str,
    ) {
        self.lock().tokens.insert(
            token.to_string(),
            TokenEntry {
                username: username.to_string(),
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                audience_unaware: false,
                pod: Some((pod_name.to_string(), pod_uid.to_string())),
            },
        );
    }

    /// Registers a token that authenticates as `username` whatever the
    /// audiences asked for, answered with an empty `status.audiences` (as an
    /// authenticator that does not check audiences answers: by the
    /// TokenReview API, valid for the API server's own audience only).
    pub fn add_token_audience_unaware(&self, token: &str, username: &str) {
        self.lock().tokens.insert(
            token.to_string(),
            TokenEntry {
                username: username.to_string(),
                audiences: Vec::new(),
                audience_unaware: true,
                pod: None,
            },
        );
    }

    /// Makes list and watch requests of `plural` (e.g. `endpointslices`)
    /// fail with `code` (403, 500, 503, ...) until [`heal`](Self::heal).
    pub fn fail(&self, plural: &str, code: u16) {
        self.lock().failures.insert(plural.to_string(), code);
    }

    /// Ends every failure set with [`fail`](Self::fail).
    pub fn heal(&self) {
        self.lock().failures.clear();
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }
}
