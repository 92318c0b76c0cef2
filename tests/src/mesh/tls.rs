//! TLS from the host towards a proxy: `openssl s_client` with the mesh's
//! trust anchors and, optionally, a client certificate.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// `openssl s_client` from the host to `addr` offering the protocol `alpn`,
/// with an optional client certificate; ends after 3 s at most (124: it
/// was still connected). Returns (exit code, everything it printed).
pub fn s_client(
    addr: &str,
    alpn: &str,
    anchors: &Path,
    cert: Option<&(PathBuf, PathBuf)>,
) -> Result<(i32, String)> {
    let mut cmd = std::process::Command::new("timeout");
    cmd.args([
        "3", "openssl", "s_client", "-connect", addr, "-alpn", alpn, "-ign_eof",
    ])
    .arg("-CAfile")
    .arg(anchors)
    .stdin(std::process::Stdio::null());
    if let Some((c, k)) = cert {
        cmd.arg("-cert").arg(c).arg("-key").arg(k);
    }
    let out = cmd.output().context("running openssl s_client")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}
