//! The fake API server's storage: objects per collection, a global
//! resourceVersion counter (as etcd's revision), the event history that
//! watches resume from, and the open watches.

use bytes::Bytes;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use tokio::sync::mpsc;

/// Capacity of one watch's event queue; a watch that falls this far behind
/// is closed (as the real API server does with slow watchers).
pub(super) const WATCH_QUEUE: usize = 1024;
/// Events kept for watches to resume from; older ones are compacted away
/// (a watch from before them gets 410 Gone).
const HISTORY: usize = 10_000;

/// A collection: `(group, version, plural)`, e.g. `("", "v1", "pods")`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct CollKey {
    pub group: String,
    pub version: String,
    pub plural: String,
}

impl CollKey {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Collection {
    /// Kind of the objects (`Pod`), for list and bookmark kinds.
    pub kind: String,
    /// `(namespace, name)` -> object (with apiVersion, kind, metadata.resourceVersion).
    pub objects: BTreeMap<(String, String), Value>,
}

#[derive(Debug, Clone)]
pub(super) struct HistEvent {
    pub rv: u64,
    pub coll: CollKey,
    pub kind: &'static str,
    pub object: Value,
}

/// Filters of a list or watch request.
#[derive(Debug, Clone, Default)]
pub(super) struct Filter {
    pub namespace: Option<String>,
    /// `(field path, wanted value, equal?)`
    pub fields: Vec<(String, String, bool)>,
    /// `(label, wanted value, equal?)`
    pub labels: Vec<(String, String, bool)>,
}

/// Field selectors the real API server supports for the kinds used here.
const SELECTABLE_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "status.phase",
    "status.podIP",
    "spec.serviceAccountName",
];

impl Filter {
    /// Parses `fieldSelector` and `labelSelector` (equality forms only).
    pub fn parse(
        namespace: Option<String>,
        fields: Option<&str>,
        labels: Option<&str>,
    ) -> Result<Filter, String> {
        let mut f = Filter {
            namespace,
            ..Default::default()
        };
        if let Some(s) = fields.filter(|s| !s.is_empty()) {
            for term in s.split(',') {
                let (k, v, eq) = split_term(term)?;
                if !SELECTABLE_FIELDS.contains(&k.as_str()) {
                    return Err(format!(
                        "field label not supported: {k} (fake API server supports {SELECTABLE_FIELDS:?})"
                    ));
                }
                f.fields.push((k, v, eq));
            }
        }
        if let Some(s) = labels.filter(|s| !s.is_empty()) {
            for term in s.split(',') {
                f.labels.push(split_term(term)?);
            }
        }
        Ok(f)
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        let fields_ok = self.fields.iter().all(|(path, want, eq)| {
            let got = path
                .split('.')
                .fold(obj, |v, p| &v[p])
                .as_str()
                .unwrap_or("");
            (got == want) == *eq
        });
        let labels_ok = self.labels.iter().all(|(k, want, eq)| {
            let got = meta["labels"][k].as_str();
            (got == Some(want.as_str())) == *eq
        });
        fields_ok && labels_ok
    }
}

fn split_term(term: &str) -> Result<(String, String, bool), String> {
    let (k, v, eq) = if let Some((k, v)) = term.split_once("!=") {
        (k, v, false)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, v, true)
    } else if let Some((k, v)) = term.split_once('=') {
        (k, v, true)
    } else {
        return Err(format!(
            "unsupported selector term {term:?} (fake API server supports k=v, k==v, k!=v)"
        ));
    };
    Ok((k.trim().to_string(), v.trim().to_string(), eq))
}

pub(super) struct Watch {
    pub coll: CollKey,
    pub filter: Filter,
    pub bookmarks: bool,
    pub tx: mpsc::Sender<Bytes>,
}

/// What a token presented to TokenReview stands for.
#[derive(Debug, Clone)]
pub(super) struct TokenEntry {
    pub username: String,
    pub audiences: Vec<String>,
    /// Answer like an authenticator that does not check audiences:
    /// authenticated, with an empty `status.audiences`.
    pub audience_unaware: bool,
    /// The pod a projected token is bound to: (name, uid), answered in
    /// `user.extra` as the API server does.
    pub pod: Option<(String, String)>,
}

#[derive(Default)]
pub(super) struct State {
    pub rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    pub compacted: u64,
    pub colls: HashMap<CollKey, Collection>,
    pub history: std::collections::VecDeque<HistEvent>,
    pub watches: Vec<Watch>,
    pub tokens: HashMap<String, TokenEntry>,
    /// Plural -> HTTP status that list and watch requests get instead.
    pub failures: HashMap<String, u16>,
    pub stats: super::Stats,
}

/// One line of a watch stream.
pub(super) fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// The `Status` object the API server sends for errors.
pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

impl State {
    /// Stores `object` (create or replace) and notifies watches.
    /// With `unseen`, watches are not told and the history is compacted
    /// past it, as if the event had been lost: clients learn of the change
    /// only by relisting.
    pub fn put(&mut self, coll: CollKey, kind: &str, mut object: Value, unseen: bool) -> u64 {
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = object_key(&object);
        let c = self.colls.entry(coll.clone()).or_default();
        c.kind = kind.to_string();
        if object["metadata"]["uid"].is_null() {
            let uid = c
                .objects
                .get(&key)
                .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("00000000-0000-4000-8000-{rv:012}"));
            object["metadata"]["uid"] = json!(uid);
        }
        let event = if c.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(coll, event, object, unseen);
        rv
    }

    /// Removes an object; `None` when it did not exist.
    pub fn remove(
        &mut self,
        coll: CollKey,
        namespace: &str,
        name: &str,
        unseen: bool,
    ) -> Option<u64> {
        let key = (namespace.to_string(), name.to_string());
        let mut object = self.colls.get_mut(&coll)?.objects.remove(&key)?;
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(coll, "DELETED", object, unseen);
        Some(self.rv)
    }

    fn record(&mut self, coll: CollKey, kind: &'static str, object: Value, unseen: bool) {
        if unseen {
            self.history.clear();
            self.compacted = self.rv;
            return;
        }
        let line = watch_line(kind, &object);
        self.watches.retain(|w| {
            if w.coll != coll || !w.filter.matches(&object) {
                return !w.tx.is_closed();
            }
            // A full queue means the watcher is too slow: close its stream.
            w.tx.try_send(line.clone()).is_ok()
        });
        self.history.push_back(HistEvent {
            rv: self.rv,
            coll,
            kind,
            object,
        });
        if self.history.len() > HISTORY
            && let Some(old) = self.history.pop_front()
        {
            self.compacted = old.rv;
        }
    }

    /// Sends a BOOKMARK with the current resourceVersion to every watch that
    /// asked for bookmarks.
    pub fn bookmark(&mut self) {
        let rv = self.rv.to_string();
        let colls = &self.colls;
        self.watches.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            let kind = colls.get(&w.coll).map(|c| c.kind.as_str()).unwrap_or("");
            let object = json!({
                "kind": kind,
                "apiVersion": w.coll.api_version(),
                "metadata": { "resourceVersion": rv },
            });
            w.tx.try_send(watch_line("BOOKMARK", &object)).is_ok()
        });
    }

    /// Compacts the whole history: every open watch gets an ERROR event
    /// with 410 Gone and is closed, and resuming from any earlier
    /// resourceVersion is refused with 410 (clients must relist).
    pub fn expire(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
        for w in self.watches.drain(..) {
            let status = status(
                410,
                "Expired",
                &format!(
                    "too old resource version: (compacted at {})",
                    self.compacted
                ),
            );
            let _ = w.tx.try_send(watch_line("ERROR", &status));
        }
    }

    /// Ends every open watch normally (as the server's timeout would).
    pub fn close_watches(&mut self) {
        self.watches.clear();
    }

    pub fn open_watches(&mut self) -> usize {
        self.watches.retain(|w| !w.tx.is_closed());
        self.watches.len()
    }
}

pub(super) fn object_key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_string(),
        meta["name"].as_str().unwrap_or("").to_string(),
    )
}
