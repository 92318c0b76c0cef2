//! Token checks without Kubernetes: a YAML file mapping tokens to service
//! accounts, re-read when it changes.
//!
//! ```yaml
//! tokens:
//!   - token: "4f3c...long random string"
//!     namespace: default
//!     serviceAccount: web
//!     pods:                 # the pods running as it, for InboundPolicies.Watch
//!       web-0: {app: web}   # pod name: its labels
//! ```

use crate::model::{TokenError, TokenVerifier};
use crate::policy::caller::{self, Caller, Claim, PodRecord, ProvenWorkload, WorkloadError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFileSpec {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenEntry {
    token: String,
    namespace: String,
    service_account: String,
    /// Pod name -> labels: the pods whose policy this token may watch.
    #[serde(default)]
    pods: BTreeMap<String, BTreeMap<String, String>>,
}

/// Why a token file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("token file {path} rejected: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Modification time and length of a file.
type Stamp = (SystemTime, u64);

pub struct TokenFileVerifier {
    path: PathBuf,
    /// (modification time and length of the loaded file, its entries)
    cache: Mutex<(Option<Stamp>, Vec<TokenEntry>)>,
}

impl TokenFileVerifier {
    /// Loads `path` now (so a bad file is reported at startup); later calls
    /// re-read it when its modification time or size changes. A file that
    /// became bad keeps the last good entries (and is logged).
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, TokenFileError> {
        let path = path.into();
        let (stamp, entries) = read(&path)?;
        Ok(TokenFileVerifier {
            path,
            cache: Mutex::new((Some(stamp), entries)),
        })
    }

    fn lookup(&self, token: &str) -> Result<Option<TokenEntry>, TokenError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = stamp(&self.path).ok();
        if stamp.is_some() && stamp != cache.0 {
            match read(&self.path) {
                Ok((s, entries)) => *cache = (Some(s), entries),
                Err(e) => {
                    tracing::error!("{e}; keeping the previous tokens");
                    cache.0 = stamp;
                }
            }
        }
        // Compare against every entry so timing does not tell which matched.
        let mut found = None;
        for e in &cache.1 {
            if constant_time_eq(e.token.as_bytes(), token.as_bytes()) && found.is_none() {
                found = Some(e.clone());
            }
        }
        Ok(found)
    }
}

impl TokenVerifier for TokenFileVerifier {
    async fn verify(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<(), TokenError> {
        match self.lookup(token)? {
            None => Err(TokenError::Rejected(
                "token is not in the token file".into(),
            )),
            Some(e) if e.namespace == namespace && e.service_account == service_account => Ok(()),
            Some(e) => Err(TokenError::WrongIdentity {
                requested: format!("service account {namespace}/{service_account}"),
                actual: format!("service account {}/{}", e.namespace, e.service_account),
            }),
        }
    }

    /// The token proves its service account; the claimed pod must be one
    /// the file lists under that token, and its labels are the file's.
    async fn prove_workload(
        &self,
        token: &str,
        claim: Claim<'_>,
    ) -> Result<ProvenWorkload, WorkloadError> {
        let Some(e) = self.lookup(token)? else {
            return Err(TokenError::Rejected("token is not in the token file".into()).into());
        };
        let record = e.pods.get(claim.pod).map(|labels| PodRecord {
            name: claim.pod.to_owned(),
            uid: None,
            service_account: e.service_account.clone(),
            labels: labels.clone(),
        });
        let who = Caller {
            namespace: e.namespace,
            service_account: e.service_account,
            pod: None,
        };
        caller::bind(claim, &who, record)
    }
}

fn stamp(path: &Path) -> std::io::Result<(SystemTime, u64)> {
    let md = std::fs::metadata(path)?;
    Ok((md.modified()?, md.len()))
}

fn read(path: &Path) -> Result<((SystemTime, u64), Vec<TokenEntry>), TokenFileError> {
    let err = |error| TokenFileError::Read {
        path: path.into(),
        error,
    };
    let s = stamp(path).map_err(err)?;
    let text = conduit_policy::yaml::read_file(path).map_err(err)?;
    let spec: TokenFileSpec =
        conduit_policy::yaml::from_str(&text).map_err(|e| TokenFileError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    for (i, e) in spec.tokens.iter().enumerate() {
        if e.token.len() < 16 {
            return Err(TokenFileError::Parse {
                path: path.into(),
                message: format!("tokens[{i}]: token shorter than 16 characters"),
            });
        }
    }
    Ok((s, spec.tokens))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn maps_tokens_to_service_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            "tokens:\n  - token: web-token-0123456789\n    namespace: default\n    serviceAccount: web\n",
        )
        .unwrap();
        let v = TokenFileVerifier::load(&path).unwrap();
        v.verify("web-token-0123456789", "default", "web")
            .await
            .unwrap();
        assert!(matches!(
            v.verify("nope", "default", "web").await,
            Err(TokenError::Rejected(_))
        ));
        assert!(matches!(
            v.verify("web-token-0123456789", "default", "db").await,
            Err(TokenError::WrongIdentity { .. })
        ));
        // Watch: only the pods listed under the token.
        std::fs::write(
            &path,
            "tokens:\n  - token: web-token-0123456789\n    namespace: default\n    serviceAccount: web\n    pods: {web-0: {app: web}}\n",
        )
        .unwrap();
        let claim = |pod| Claim {
            namespace: "default",
            pod,
        };
        let w = v
            .prove_workload("web-token-0123456789", claim("web-0"))
            .await
            .unwrap();
        assert_eq!(w.labels["app"], "web");
        let e = v
            .prove_workload("web-token-0123456789", claim("db-0"))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "unknown_pod");
        let e = v.prove_workload("nope", claim("web-0")).await.unwrap_err();
        assert_eq!(e.reason(), "token_rejected");
        std::fs::write(&path, "tokens: [").unwrap();
        // A broken file keeps the old tokens.
        v.verify("web-token-0123456789", "default", "web")
            .await
            .unwrap();
        std::fs::write(&path, "tokens: []\nextra: 1\n").unwrap();
        assert!(TokenFileVerifier::load(&path).is_err());
    }
}
