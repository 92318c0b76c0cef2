//! [`StaticDiscovery`]: a [`Discover`] backend over `--service` flags and a
//! YAML file (format in [`super::config`]), reloaded when the file changes.

use super::config::{ConfigError, ServiceConfig, ServiceFlag, Table, parse_file};
use super::{Destination, Discover, Resolution, Watch};
use conduit_base::sync::UnpoisonedRw;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Largest discovery file read (a bound on memory, far above real tables).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why the static table could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error("cannot read discovery file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("discovery file {path} is {len} bytes, more than the {MAX_FILE_BYTES} allowed")]
    TooLarge { path: PathBuf, len: u64 },
    #[error("discovery file {path}: {source}")]
    File { path: PathBuf, source: ConfigError },
    #[error("--service flags: {0}")]
    Flags(ConfigError),
    #[error("discovery file {path} together with the --service flags: {source}")]
    Combined { path: PathBuf, source: ConfigError },
}

/// Static discovery: cheap to clone, shares one watch per address, so every
/// connection to the same destination sees the same updates.
#[derive(Clone, Debug)]
pub struct StaticDiscovery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    flags: Vec<ServiceConfig>,
    file: Option<PathBuf>,
    state: RwLock<State>,
}

#[derive(Debug, Default)]
struct State {
    watches: HashMap<SocketAddr, watch::Sender<Destination>>,
    /// Hash of the file text last applied, so an unchanged file is not
    /// parsed again.
    applied_hash: Option<u64>,
    /// Hash of the file text last refused.
    refused_hash: Option<u64>,
}

impl StaticDiscovery {
    /// Loads the flags and (if given) the file. Fails with a clear message
    /// on a bad file or flag; nothing starts half-configured.
    pub fn new(flags: Vec<ServiceFlag>, file: Option<PathBuf>) -> Result<Self, StaticError> {
        let flags: Vec<ServiceConfig> = flags.into_iter().map(|f| f.0).collect();
        Table::build(&flags).map_err(StaticError::Flags)?;
        let this = StaticDiscovery {
            inner: Arc::new(Inner {
                flags,
                file,
                state: RwLock::new(State::default()),
            }),
        };
        this.reload()?;
        Ok(this)
    }

    /// An in-memory table (no file), for tests and embedding.
    pub fn from_services(services: Vec<ServiceConfig>) -> Result<Self, StaticError> {
        Self::new(services.into_iter().map(ServiceFlag).collect(), None)
    }

    /// Reads the file again and applies it when it changed. Returns whether
    /// anything was applied. On error the previous table stays in force.
    pub fn reload(&self) -> Result<bool, StaticError> {
        self.reload_inner().map_err(|(e, _)| e)
    }

    /// Like `reload`; the error says whether this file text was refused
    /// before (so the reload loop logs each bad version once).
    fn reload_inner(&self) -> Result<bool, (StaticError, bool)> {
        let (file_services, hash) = match &self.inner.file {
            None => (Vec::new(), None),
            Some(path) => {
                let text = read_bounded(path).map_err(|e| (e, false))?;
                let hash = hash_of(&text);
                if self.read_state().applied_hash == Some(hash) {
                    return Ok(false);
                }
                let services = parse_file(&text).map_err(|source| {
                    let seen = self.refused(hash);
                    (
                        StaticError::File {
                            path: path.clone(),
                            source,
                        },
                        seen,
                    )
                })?;
                (services, Some(hash))
            }
        };
        let mut all = self.inner.flags.clone();
        all.extend(file_services);
        let table = Table::build(&all).map_err(|source| {
            let seen = hash.is_some_and(|h| self.refused(h));
            let path = self.inner.file.clone().unwrap_or_default();
            (StaticError::Combined { path, source }, seen)
        })?;
        self.apply(table, hash);
        Ok(true)
    }

    /// Notes a refused file version; returns whether it was refused before.
    fn refused(&self, hash: u64) -> bool {
        self.write_state().refused_hash.replace(hash) == Some(hash)
    }

    fn apply(&self, table: Table, hash: Option<u64>) {
        let mut state = self.write_state();
        state.applied_hash = hash;
        state
            .watches
            .retain(|addr, _| table.by_addr.contains_key(addr));
        for (addr, dest) in table.by_addr {
            match state.watches.get(&addr) {
                Some(tx) => {
                    tx.send_if_modified(|cur| {
                        if *cur == dest {
                            return false;
                        }
                        *cur = dest;
                        true
                    });
                }
                None => {
                    state.watches.insert(addr, watch::channel(dest).0);
                }
            }
        }
        tracing::info!(
            addresses = state.watches.len(),
            "static discovery table loaded"
        );
    }

    /// Polls the file every `interval` (read and parsed on a blocking
    /// thread) and applies changes; a bad file is logged and the previous
    /// table kept. Stops when the last clone of this `StaticDiscovery` is
    /// dropped. Must be called within a Tokio runtime; does nothing without
    /// a file.
    pub fn spawn_reload(&self, interval: Duration) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.file.as_ref()?;
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let this = StaticDiscovery { inner };
                // On a blocking thread: a large file read and parsed on the
                // runtime's thread would hold up every connection of a
                // one-thread proxy.
                let reloaded = match tokio::task::spawn_blocking(move || this.reload_inner()).await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "reloading the discovery file failed; no longer watching it");
                        return;
                    }
                };
                match reloaded {
                    Ok(true) => tracing::info!("discovery file changed: table reloaded"),
                    Ok(false) | Err((_, true)) => {}
                    Err((e, false)) => tracing::error!(
                        error = %e,
                        "discovery file not applied; keeping the previous table"
                    ),
                }
            }
        }))
    }

    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read_locked()
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write_locked()
    }
}

impl StaticDiscovery {
    /// What the table says about `orig_dst` now.
    pub fn resolve(&self, orig_dst: SocketAddr) -> Resolution {
        match self.read_state().watches.get(&orig_dst) {
            Some(tx) => Resolution::Known(tx.subscribe()),
            None => Resolution::Unknown,
        }
    }
}

/// A static destination: the table (reloaded in place) is looked up on
/// every resolution.
struct StaticWatch {
    discovery: StaticDiscovery,
    orig_dst: SocketAddr,
}

impl Watch for StaticWatch {
    fn resolution(&self) -> Resolution {
        self.discovery.resolve(self.orig_dst)
    }
}

impl Discover for StaticDiscovery {
    fn watch(&self, orig_dst: SocketAddr) -> Box<dyn Watch> {
        Box::new(StaticWatch {
            discovery: self.clone(),
            orig_dst,
        })
    }
}

fn read_bounded(path: &Path) -> Result<String, StaticError> {
    let read_err = |source| StaticError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_FILE_BYTES {
        return Err(StaticError::TooLarge {
            path: path.to_owned(),
            len,
        });
    }
    conduit_policy::yaml::read_file(path).map_err(read_err)
}

fn hash_of(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(d: &StaticDiscovery, a: &str) -> watch::Receiver<Destination> {
        match d.resolve(a.parse().unwrap()) {
            Resolution::Known(rx) => rx,
            other => panic!("{a}: {other:?}"),
        }
    }

    #[test]
    fn flags_resolve_and_unknown_is_unknown() {
        let d = StaticDiscovery::new(vec!["web@10.96.0.10:80=127.0.0.1:1".parse().unwrap()], None)
            .unwrap();
        assert_eq!(known(&d, "10.96.0.10:80").borrow().display_name(), "web");
        assert!(matches!(
            d.resolve("10.96.0.10:81".parse().unwrap()),
            Resolution::Unknown
        ));
    }

    #[test]
    fn reload_updates_watches_and_keeps_old_table_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.yaml");
        std::fs::write(
            &path,
            "services:\n  - {name: a, addresses: [1.1.1.1:80], endpoints: [127.0.0.1:1]}\n",
        )
        .unwrap();
        let d = StaticDiscovery::new(vec![], Some(path.clone())).unwrap();
        let mut rx = known(&d, "1.1.1.1:80");
        assert_eq!(rx.borrow_and_update().endpoints.len(), 1);
        assert!(!d.reload().unwrap(), "unchanged file is not applied again");

        std::fs::write(&path, "services:\n  - {name: a, addresses: [1.1.1.1:80], endpoints: [127.0.0.1:1, 127.0.0.1:2]}\n").unwrap();
        assert!(d.reload().unwrap());
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().endpoints.len(), 2);

        std::fs::write(&path, "services: [oops").unwrap();
        let e = d.reload().unwrap_err();
        assert!(e.to_string().contains("d.yaml"), "{e}");
        assert_eq!(
            known(&d, "1.1.1.1:80").borrow().endpoints.len(),
            2,
            "old table kept"
        );

        std::fs::remove_file(&path).unwrap();
        assert!(matches!(d.reload(), Err(StaticError::Read { .. })));
        assert_eq!(
            known(&d, "1.1.1.1:80").borrow().endpoints.len(),
            2,
            "old table kept"
        );
    }

    #[test]
    fn file_and_flags_must_not_clash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.yaml");
        std::fs::write(&path, "services:\n  - {name: a, addresses: [1.1.1.1:80]}\n").unwrap();
        let e = StaticDiscovery::new(vec!["b@1.1.1.1:80=2.2.2.2:2".parse().unwrap()], Some(path))
            .unwrap_err();
        assert!(e.to_string().contains("already used"), "{e}");
        let e = StaticDiscovery::new(vec![], Some(dir.path().join("missing.yaml"))).unwrap_err();
        assert!(e.to_string().contains("missing.yaml"), "{e}");
    }
}
