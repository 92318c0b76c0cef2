//! The file discovery backend: services and endpoints from a YAML file (see
//! [`config`] for the format), reloaded when the file changes. A file that
//! does not parse or validate is refused with an error naming the line, and
//! the last good state stays in force.

pub mod config;

use crate::metrics::Metrics;
use crate::model::{DestinationView, DiscoveryBackend, Target};
use crate::store::ViewStore;
pub use config::{ConfigError, Settings, Snapshot};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Why the discovery file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read discovery file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("discovery file {path} rejected: {error}")]
    Config { path: PathBuf, error: ConfigError },
    #[error("cannot watch {path} for changes: {error}")]
    Watch { path: PathBuf, error: notify::Error },
}

/// Outcome counters of reloads, for tests and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Successful loads that changed the state (the first load counts).
    pub applied: u64,
    /// Refused files (read or parse errors).
    pub failed: u64,
    /// The latest refusal, until a good file is loaded.
    pub last_error: Option<String>,
}

pub struct FileBackend {
    path: PathBuf,
    settings: Settings,
    store: ViewStore<Arc<Snapshot>>,
    /// The text in force, and the latest refused text (not re-reported).
    texts: Mutex<(String, Option<String>)>,
    status: watch::Sender<ReloadStatus>,
    metrics: Option<Arc<Metrics>>,
}

impl FileBackend {
    /// Loads `path` (which must be a good file) and starts following it:
    /// filesystem notifications on its directory (which also catches
    /// Kubernetes ConfigMap symlink swaps) plus a poll every `poll_interval`
    /// as a safety net. Must be called within a Tokio runtime.
    pub fn start(
        path: impl Into<PathBuf>,
        settings: Settings,
        poll_interval: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Arc<FileBackend>, FileError> {
        let path = path.into();
        let text = read(&path)?;
        let snapshot = Snapshot::parse(&text, &settings).map_err(|error| FileError::Config {
            path: path.clone(),
            error,
        })?;
        tracing::info!(path = %path.display(), services = snapshot.services(), "discovery file loaded");
        let backend = Arc::new(FileBackend {
            store: ViewStore::new(Arc::new(snapshot), Snapshot::view),
            path,
            settings,
            texts: Mutex::new((text, None)),
            status: watch::channel(ReloadStatus {
                applied: 1,
                ..Default::default()
            })
            .0,
            metrics,
        });
        if let Some(m) = &backend.metrics {
            m.file_reload(true);
        }
        let (tx, rx) = mpsc::channel(1);
        let watcher = watch_dir(&backend.path, tx)?;
        tokio::spawn(follow(Arc::downgrade(&backend), watcher, rx, poll_interval));
        Ok(backend)
    }

    /// Re-reads the file now. `Ok(true)` when a changed file was applied,
    /// `Ok(false)` when the content is unchanged; on error the previous state
    /// stays and the error is logged and counted.
    pub fn reload(&self) -> Result<bool, FileError> {
        let result = self.try_reload();
        self.record(&result);
        result
    }

    /// Like [`reload`](Self::reload), but a file that does not parse is not
    /// reported (the caller retries shortly: it may be half-written).
    fn reload_quietly(&self) -> Result<bool, FileError> {
        let result = self.try_reload();
        if matches!(result, Err(FileError::Config { .. })) {
            // Forget the refusal so that the retry reports it.
            self.texts.lock().unwrap_or_else(|p| p.into_inner()).1 = None;
        } else {
            self.record(&result);
        }
        result
    }

    fn record(&self, result: &Result<bool, FileError>) {
        match result {
            Ok(false) => {}
            Ok(true) => {
                self.status.send_modify(|s| {
                    s.applied += 1;
                    s.last_error = None;
                });
                if let Some(m) = &self.metrics {
                    m.file_reload(true);
                }
            }
            Err(e) => {
                tracing::error!("{e}; keeping the last good state");
                self.status.send_modify(|s| {
                    s.failed += 1;
                    s.last_error = Some(e.to_string());
                });
                if let Some(m) = &self.metrics {
                    m.file_reload(false);
                }
            }
        }
    }

    fn try_reload(&self) -> Result<bool, FileError> {
        let text = read(&self.path)?;
        let mut texts = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        if texts.0 == text || texts.1.as_ref() == Some(&text) {
            return Ok(false);
        }
        let snapshot = match Snapshot::parse(&text, &self.settings) {
            Ok(s) => s,
            Err(error) => {
                texts.1 = Some(text);
                return Err(FileError::Config {
                    path: self.path.clone(),
                    error,
                });
            }
        };
        let services = snapshot.services();
        let changed = self.store.replace(Arc::new(snapshot));
        *texts = (text, None);
        tracing::info!(path = %self.path.display(), services, changed_targets = changed, "discovery file reloaded");
        Ok(true)
    }

    /// Follows reload outcomes (tests wait on this instead of sleeping).
    pub fn status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.subscribe()
    }

    /// Number of targets with live subscribers or cached views.
    pub fn watched_targets(&self) -> usize {
        self.store.targets()
    }
}

impl DiscoveryBackend for FileBackend {
    fn watch(&self, target: &Target) -> watch::Receiver<DestinationView> {
        self.store.watch(target)
    }
}

fn read(path: &Path) -> Result<String, FileError> {
    conduit_policy::yaml::read_file(path).map_err(|error| FileError::Read {
        path: path.into(),
        error,
    })
}

fn watch_dir(path: &Path, tx: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher, FileError> {
    use notify::Watcher;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let err = |error| FileError::Watch {
        path: dir.clone(),
        error,
    };
    let name = path.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only events about our file, or about a Kubernetes ConfigMap
        // mount's `..data` symlink swap (names starting with `..`), matter;
        // opening or reading a file does not (closing after a write does).
        use notify::event::{AccessKind, AccessMode, EventKind};
        let relevant = event.is_ok_and(|e| {
            !matches!(
                e.kind,
                EventKind::Access(
                    AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
                )
            ) && (e.paths.is_empty()
                || e.paths.iter().any(|p| {
                    let n = p.file_name();
                    n == name.as_deref() || n.is_some_and(|n| n.to_string_lossy().starts_with(".."))
                }))
        });
        if relevant {
            // Capacity 1: events arriving while a reload is pending coalesce.
            let _ = tx.try_send(());
        }
    })
    .map_err(err)?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(err)?;
    Ok(watcher)
}

async fn follow(
    backend: Weak<FileBackend>,
    _watcher: notify::RecommendedWatcher,
    mut events: mpsc::Receiver<()>,
    poll_interval: Duration,
) {
    let mut poll = tokio::time::interval(poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    loop {
        let notified = tokio::select! {
            e = events.recv() => e.is_some(),
            _ = poll.tick() => false,
        };
        let Some(backend) = backend.upgrade() else {
            return;
        };
        if notified {
            // A file caught half-written (written in place rather than
            // renamed) is retried once, shortly, before it is reported.
            match backend.reload_quietly() {
                Err(FileError::Config { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => continue,
            }
        }
        let _ = backend.reload();
    }
}
