//! The file backend of the policy: YAML ([`Resources`]: `defaults`,
//! `servers`, `authorizations`, each with its namespace), usually beside
//! the discovery file, re-read when it changes. A file that does not parse
//! or validate is refused with an error naming the line, and the last good
//! policy stays in force.

use conduit_identity::TrustDomain;
use conduit_policy::resources::Resources;
use conduit_policy::{Context, DefaultPolicy};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("cannot read policy file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("policy file {path} rejected: line {line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Parses and validates the file's text: `(line, message)` on error.
pub fn parse(text: &str, trust_domain: Option<&TrustDomain>) -> Result<Resources, (usize, String)> {
    if text.trim().is_empty() {
        return Ok(Resources::default());
    }
    let r: Resources = conduit_policy::yaml::from_str(text)
        .map_err(|e| (e.line().map_or(1, |l| l as usize), e.message()))?;
    let ctx = Context {
        namespace: "default".into(),
        trust_domain: trust_domain.cloned(),
        default_policy: DefaultPolicy::Deny,
        cluster_networks: vec![],
    };
    r.validate(&ctx)
        .map_err(|e| (line_of(text, &e.at), e.to_string()))?;
    Ok(r)
}

/// The line where the entry an error names (`servers[1] (web)...`) starts:
/// the `index`-th item of that top-level list.
fn line_of(text: &str, at: &str) -> usize {
    let Some((list, rest)) = at.split_once('[') else {
        return 1;
    };
    let Some(index) = rest
        .split_once(']')
        .and_then(|(i, _)| i.parse::<usize>().ok())
    else {
        return 1;
    };
    let mut in_list = false;
    let mut seen = 0;
    let mut indent = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let depth = line.len() - trimmed.len();
        if depth == 0 && !trimmed.is_empty() && !trimmed.starts_with('#') {
            in_list = trimmed.starts_with(&format!("{list}:"));
            continue;
        }
        if in_list && trimmed.starts_with("- ") && indent.is_none_or(|d| d == depth) {
            indent = Some(depth);
            if seen == index {
                return n + 1;
            }
            seen += 1;
        }
    }
    1
}

/// Follows the policy file.
pub struct PolicyFile {
    rx: watch::Receiver<Arc<Resources>>,
}

impl PolicyFile {
    /// Loads `path` (which must be good) and re-reads it every `interval`.
    pub fn start(
        path: impl Into<PathBuf>,
        trust_domain: Option<TrustDomain>,
        interval: Duration,
    ) -> Result<PolicyFile, PolicyFileError> {
        let path = path.into();
        let (text, resources) = load(&path, trust_domain.as_ref())?;
        tracing::info!(path = %path.display(), servers = resources.servers.len(), authorizations = resources.authorizations.len(), "policy file loaded");
        let (tx, rx) = watch::channel(Arc::new(resources));
        tokio::spawn(async move {
            let mut last = text;
            let mut refused: Option<String> = None;
            loop {
                tokio::time::sleep(interval).await;
                if tx.is_closed() {
                    return;
                }
                let text = match conduit_policy::yaml::read_file(&path) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "cannot read policy file: {e}; keeping the last good policy");
                        continue;
                    }
                };
                if text == last || refused.as_ref() == Some(&text) {
                    continue;
                }
                match parse(&text, trust_domain.as_ref()) {
                    Ok(r) => {
                        tracing::info!(path = %path.display(), servers = r.servers.len(), authorizations = r.authorizations.len(), "policy file reloaded");
                        tx.send_replace(Arc::new(r));
                        last = text;
                        refused = None;
                    }
                    Err((line, message)) => {
                        tracing::error!(path = %path.display(), "policy file rejected: line {line}: {message}; keeping the last good policy");
                        refused = Some(text);
                    }
                }
            }
        });
        Ok(PolicyFile { rx })
    }

    pub fn resources(&self) -> watch::Receiver<Arc<Resources>> {
        self.rx.clone()
    }
}

fn load(path: &Path, td: Option<&TrustDomain>) -> Result<(String, Resources), PolicyFileError> {
    let text = conduit_policy::yaml::read_file(path).map_err(|error| PolicyFileError::Read {
        path: path.into(),
        error,
    })?;
    let r = parse(&text, td).map_err(|(line, message)| PolicyFileError::Invalid {
        path: path.into(),
        line,
        message,
    })?;
    Ok((text, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line() {
        let text = "\
servers:
  - name: web
    namespace: shop
    port: 8080
  - name: db
    namespace: shop
    port: 0
authorizations:
  - name: a
    namespace: shop
    from:
      networks: [10.0.0.1/8]
";
        let (line, msg) = parse(text, None).unwrap_err();
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("servers[1] (db).port"), "{msg}");
        let fixed = text.replace("port: 0", "port: 5432");
        let (line, msg) = parse(&fixed, None).unwrap_err();
        assert_eq!(line, 9, "{msg}");
        assert!(msg.contains("10.0.0.0/8"), "{msg}");
        let (line, _) = parse("servers:\n  - name: a\n    port: x\n", None).unwrap_err();
        assert_eq!(line, 3);
        assert_eq!(parse("", None).unwrap(), Resources::default());
    }
}
