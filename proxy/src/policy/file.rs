//! A static inbound policy from a YAML file (`--inbound-policy-file`, the
//! format of [`InboundSpec`], see docs/policy.md), re-read when it changes.
//! A file that does not parse or compile is refused with its line and the
//! policy in force stays.

use super::PolicyStore;
use conduit_policy::InboundSpec;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::error;

#[derive(Debug, thiserror::Error)]
pub enum PolicyFileError {
    #[error("cannot read inbound policy file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("inbound policy file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Parses the file's text; errors name the line.
pub fn parse(text: &str) -> Result<InboundSpec, String> {
    if text.trim().is_empty() {
        return Ok(InboundSpec::default());
    }
    conduit_policy::yaml::from_str(text).map_err(|e| match e.line() {
        Some(line) => format!("line {line}: {}", e.message()),
        None => e.to_string(),
    })
}

fn load(store: &PolicyStore, path: &Path) -> Result<(), PolicyFileError> {
    let text = conduit_policy::yaml::read_file(path).map_err(|error| PolicyFileError::Read {
        path: path.into(),
        error,
    })?;
    install(store, path, &text)
}

/// Parses `text`, the content of `path`, and puts it in force.
fn install(store: &PolicyStore, path: &Path, text: &str) -> Result<(), PolicyFileError> {
    let invalid = |message: String| PolicyFileError::Invalid {
        path: path.into(),
        message,
    };
    let spec = parse(text).map_err(invalid)?;
    store.install(&spec, "file").map_err(|e| {
        invalid(format!(
            "{} (line {}): {}",
            e.at,
            line_of(text, &e.at),
            e.message
        ))
    })
}

/// Best effort: the line where the named entry (`servers[1] (web)`) starts.
fn line_of(text: &str, at: &str) -> usize {
    let name = at
        .split_once(" (")
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(n, _)| n);
    name.and_then(|n| {
        let want = format!("name: {n}");
        text.lines().position(|l| {
            l.split([',', '{', '}'])
                .any(|part| part.trim().trim_start_matches("- ").trim() == want)
        })
    })
    .map_or(1, |i| i + 1)
}

/// Loads `path` (which must be good) and re-reads it every `interval`, on
/// a blocking thread: a large file read and parsed on the runtime's thread
/// would hold up every connection of a one-thread proxy.
pub fn start(
    store: Arc<PolicyStore>,
    path: PathBuf,
    interval: Duration,
) -> Result<(), PolicyFileError> {
    load(&store, &path)?;
    let mut last = read(&path);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let (store, path) = (store.clone(), path.clone());
            last = match tokio::task::spawn_blocking(move || reread(&store, &path, last)).await {
                Ok(now) => now,
                Err(e) => {
                    error!(error = %e, "re-reading the inbound policy file failed; no longer watching it");
                    return;
                }
            };
        }
    });
    Ok(())
}

/// The file's text (bounded, as `load` reads it) or why it cannot be read.
fn read(path: &Path) -> Result<String, std::io::ErrorKind> {
    conduit_policy::yaml::read_file(path).map_err(|e| e.kind())
}

/// Loads `path` again if its text changed since `last` (a missing file
/// keeps the policy in force); returns what to compare the next time with.
fn reread(
    store: &PolicyStore,
    path: &Path,
    last: Result<String, std::io::ErrorKind>,
) -> Result<String, std::io::ErrorKind> {
    let now = read(path);
    if now == Err(std::io::ErrorKind::NotFound) || now == last {
        return last;
    }
    // The text just read is what goes in force: the file is not read twice.
    let installed = match &now {
        Ok(text) => install(store, path, text),
        Err(_) => load(store, path),
    };
    if let Err(e) = installed {
        error!(error = %e, "loading the inbound policy file failed; keeping the inbound policy in force");
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line() {
        let e = parse("servers:\n  - name: web\n    port: eighty\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        let text = "servers:\n  - name: a\n    port: 1\n  - name: b\n    port: 0\n";
        assert_eq!(line_of(text, "servers[1] (b).port"), 4);
        assert_eq!(
            line_of("authorizations: [{name: x}]", "authorizations[0] (x)"),
            1
        );
    }
}
