//! The real `conduit-controller` in a pod of its own: file discovery
//! backend (YAML generated from the mesh's description), a token file, and
//! an issuer (a CA made with rcgen, like `manifests/make-issuer.sh` makes)
//! whose certificate is the trust anchor every proxy is given. The issuer
//! lives in files, so a restarted controller signs with the same CA.

use crate::bins;
use crate::env::Env;
use crate::mesh::scrape;
use crate::mesh::spec::{CONTROLLER_ADMIN_PORT, CONTROLLER_GRPC_PORT};
use crate::process::Process;
use crate::wait::{fatal, wait_until};
use anyhow::{Context, Result, anyhow};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const DAY: Duration = Duration::from_secs(24 * 3600);

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

    /// Makes a new issuer (see [`make_ca`]); the certificate is
    /// world-readable (the proxies read it), the key not.
    pub fn make_issuer(&self) -> Result<()> {
        make_ca(
            &self.issuer_cert,
            &self.issuer_key,
            "identity.cluster.local",
        )
    }
}

/// A CA (ECDSA P-256, valid from a day ago for two days, CA:TRUE with
/// path length 0, keyCertSign) made with rcgen: the certificate PEM (mode
/// 0644) and its PKCS#8 key PEM (0600).
pub fn make_ca(cert: &Path, key: &Path, cn: &str) -> Result<()> {
    let pair = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - DAY).into();
    params.not_after = (now + DAY).into();
    let ca = params.self_signed(&pair)?;
    write_pem(key, &pair.serialize_pem(), 0o600)?;
    write_pem(cert, &ca.pem(), 0o644)
}

fn write_pem(path: &Path, pem: &str, mode: u32) -> Result<()> {
    std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
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
    /// `extra_args` are appended to its command line.
    pub fn start(
        env: &Env,
        pod: &str,
        files: &ControllerFiles,
        extra_args: &[String],
    ) -> Result<Self> {
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
            .args(extra_args)
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
        scrape::metrics(self.admin)
    }
}

/// A leaf certificate for `identity` (its one URI SAN, both extended key
/// usages, like the controller's), signed by the CA `ca_cert`/`ca_key`:
/// `<dir>/<name>.crt` and `.key`. For tests that need a certificate the
/// controller did not issue (another CA, another identity).
pub fn issue_leaf(
    ca_cert: &Path,
    ca_key: &Path,
    identity: &str,
    dir: &Path,
    name: &str,
) -> Result<(PathBuf, PathBuf)> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let issuer = Issuer::from_ca_cert_pem(&read(ca_cert)?, KeyPair::from_pem(&read(ca_key)?)?)?;
    let pair = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.to_owned().try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = SystemTime::now();
    params.not_before = (now - DAY).into();
    params.not_after = (now + DAY).into();
    let leaf = params.signed_by(&pair, &issuer)?;
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    write_pem(&cert, &leaf.pem(), 0o644)?;
    write_pem(&key, &pair.serialize_pem(), 0o600)?;
    Ok((cert, key))
}
