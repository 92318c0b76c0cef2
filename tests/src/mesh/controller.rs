//! The real `conduit-controller` in a pod of its own: file discovery
//! backend (YAML generated from the mesh's description), a token file, and
//! an issuer (a CA made with openssl, as `manifests/make-issuer.sh` does)
//! whose certificate is the trust anchor every proxy is given. The issuer
//! lives in files, so a restarted controller signs with the same CA.

use crate::bins;
use crate::env::Env;
use crate::mesh::scrape;
use crate::mesh::spec::{CONTROLLER_ADMIN_PORT, CONTROLLER_GRPC_PORT};
use crate::process::Process;
use crate::wait::{fatal, wait_until};
use anyhow::{Context, Result, anyhow};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The controller binary.
pub const CONTROLLER: &str = "conduit-controller";

/// The controller's files, in the mesh's directory.
#[derive(Debug, Clone)]
pub struct ControllerFiles {
    /// Discovery file (`--discovery file:PATH`).
    pub discovery: PathBuf,
    /// Token file (`--token-file`).
    pub tokens: PathBuf,
    /// Issuer certificate (`--issuer-cert`): the proxies' trust anchors.
    pub issuer_cert: PathBuf,
    /// Issuer key, PKCS#8 (`--issuer-key`).
    pub issuer_key: PathBuf,
}

impl ControllerFiles {
    /// The files under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            discovery: dir.join("discovery.yaml"),
            tokens: dir.join("tokens.yaml"),
            issuer_cert: dir.join("issuer.crt"),
            issuer_key: dir.join("issuer.key"),
        }
    }

    /// Makes a new issuer (ECDSA P-256 CA, 1 day) with openssl; the
    /// certificate is world-readable (the proxies read it), the key not.
    pub fn make_issuer(&self) -> Result<()> {
        make_ca(
            &self.issuer_cert,
            &self.issuer_key,
            "identity.cluster.local",
        )
    }
}

/// A CA certificate and PKCS#8 key made with openssl (certificate mode 0644).
pub fn make_ca(cert: &Path, key: &Path, cn: &str) -> Result<()> {
    crate::cmd::run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key.to_string_lossy(),
            "-out",
            &cert.to_string_lossy(),
            "-days",
            "1",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )
    .context("making an issuer with openssl")?;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))?;
    std::fs::set_permissions(cert, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// A running controller.
#[derive(Debug)]
pub struct Controller {
    /// The process.
    pub process: Process,
    /// Its gRPC address (Destination, Identity).
    pub grpc: SocketAddr,
    /// Its admin address (`/ready`, `/metrics`).
    pub admin: SocketAddr,
}

impl Controller {
    /// Starts the controller in pod `pod` and waits until it is ready.
    pub fn start(env: &Env, pod: &str, files: &ControllerFiles) -> Result<Self> {
        let ip = env.pod(pod).ipv4;
        let (grpc, admin) = (
            SocketAddr::from((ip, CONTROLLER_GRPC_PORT)),
            SocketAddr::from((ip, CONTROLLER_ADMIN_PORT)),
        );
        let mut process = env
            .spawn(pod, "controller", bins::find(CONTROLLER)?)?
            .arg("--discovery")
            .arg(format!("file:{}", files.discovery.display()))
            .arg("--token-file")
            .arg(&files.tokens)
            .arg("--issuer-cert")
            .arg(&files.issuer_cert)
            .arg("--issuer-key")
            .arg(&files.issuer_key)
            .args(["--grpc-addr", &format!("0.0.0.0:{CONTROLLER_GRPC_PORT}")])
            .args(["--admin-addr", &format!("0.0.0.0:{CONTROLLER_ADMIN_PORT}")])
            .args(["--file-poll-interval", "1s"])
            .env("RUST_LOG", "info")
            .start()?;
        wait_until(
            "the controller to be ready",
            Duration::from_secs(30),
            || {
                if let Some(s) = process.exited() {
                    return Err(fatal(format!(
                        "the controller exited ({s}):\n{}",
                        process.output_text()
                    )));
                }
                let (code, body) = scrape::get(admin, "/ready")?;
                if code != 200 {
                    return Err(anyhow!("/ready: {code} {body}"));
                }
                Ok(())
            },
        )?;
        Ok(Self {
            process,
            grpc,
            admin,
        })
    }

    /// Stops it (SIGTERM, then SIGKILL).
    pub fn stop(mut self) -> Result<()> {
        self.process.terminate(Duration::from_secs(5))?;
        Ok(())
    }

    /// Its `/metrics`.
    pub fn metrics(&self) -> Result<scrape::Metrics> {
        scrape::Metrics::scrape(self.admin)
    }
}
