//! Sidecar injection (`conduit-controller inject`): reads Kubernetes YAML
//! (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob and
//! `List`s of them; several documents in one stream) and adds the conduit
//! proxy to every pod template as a native sidecar (see [`sidecar`]). Other
//! objects pass through unchanged. Injecting twice changes nothing; a pod
//! template (or workload) annotated `conduit.io/inject: disabled` is left
//! alone; host-network pods are skipped. Either every document is processed
//! or nothing is written: a bad document is an error naming the document and
//! the line or field.

mod document;
pub mod podsec;
pub mod sidecar;

pub use document::{Action, ObjectError, Outcome};
pub use sidecar::Options;

use crate::kubernetes::mesh;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::io::{Read, Write};
use std::path::PathBuf;

/// Default proxy image: this release's.
pub const DEFAULT_PROXY_IMAGE: &str = concat!(
    "ghcr.io/conduit-ebpf/conduit-proxy:v",
    env!("CARGO_PKG_VERSION")
);
/// Largest input accepted.
pub const MAX_INPUT_BYTES: u64 = 64 << 20;

/// Namespace of the controller in manifests/ (its identity's namespace).
pub const CONTROLLER_NAMESPACE: &str = "conduit-system";
/// The controller's service account in manifests/.
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "conduit-controller";

/// Add the conduit proxy to workloads' pod templates.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// YAML to read: a file, or `-` for standard input.
    #[arg(default_value = "-", value_name = "FILE|-")]
    pub input: String,
    /// Write the result here (atomically) instead of standard output.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Proxy container image.
    #[arg(long, default_value = DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// Image pull policy of the proxy container.
    #[arg(long, default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// The controller's gRPC address (Destination and Identity), host:port.
    #[arg(
        long,
        default_value = "conduit-controller.conduit-system.svc.cluster.local:8086"
    )]
    pub controller_addr: String,
    /// SPIFFE trust domain (spiffe://<trust-domain>/ns/<ns>/sa/<sa>).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: conduit_identity::TrustDomain,
    /// The controller's SPIFFE identity, which proxies require of its TLS
    /// gRPC port (default: service account `conduit-controller` in
    /// `conduit-system`, in the trust domain).
    #[arg(long, value_name = "SPIFFE-ID")]
    pub controller_identity: Option<conduit_identity::SpiffeId>,
    /// Issuer certificate(s) (PEM) that proxies trust, embedded in each pod.
    /// Without it the proxies must get their trust anchors another way.
    #[arg(long, value_name = "PATH")]
    pub trust_anchors: Option<PathBuf>,
    /// Audience of the projected service-account token sent to Certify.
    #[arg(long, default_value = mesh::IDENTITY_AUDIENCE)]
    pub identity_audience: String,
    /// The proxy's uid (and gid). Workloads that run as this uid are
    /// refused: the application must not share the proxy's identity.
    #[arg(long, default_value_t = 2102)]
    pub proxy_uid: i64,
    /// CPU request of the proxy container.
    #[arg(long, default_value = "10m")]
    pub proxy_cpu_request: String,
    /// Memory request of the proxy container.
    #[arg(long, default_value = "20Mi")]
    pub proxy_memory_request: String,
    /// Memory limit of the proxy container.
    #[arg(long, default_value = "128Mi")]
    pub proxy_memory_limit: String,
    /// Log filter of the proxy (CONDUIT_PROXY_LOG).
    #[arg(long, default_value = "info")]
    pub proxy_log_level: String,
}

/// Why a YAML stream could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {document}: not valid YAML: {message}")]
    Yaml { document: usize, message: String },
    /// Over a parsing limit (an alias bomb, too deep, too large).
    #[error("input refused: {0}")]
    Refused(String),
    /// (The object error is part of the message, not a separate source,
    /// so that error chains do not repeat it.)
    #[error("document {document}: {error}")]
    Object { document: usize, error: ObjectError },
    #[error("document {document}: cannot write YAML: {message}")]
    Write { document: usize, message: String },
}

/// The injected YAML and what happened to each object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub yaml: String,
    pub outcomes: Vec<Outcome>,
}

/// Injects every document of `input` (a YAML stream). Pure: no I/O.
pub fn inject_yaml(input: &str, options: &Options) -> Result<Injected, InjectError> {
    let mut docs = Vec::new();
    let mut outcomes = Vec::new();
    let mut values = Vec::new();
    let mut namespaces = document::NamespacePolicies::new();
    // Refuse an alias bomb or a too deep document before building values
    // (serde_norway keeps the documents' key order, but has no such bounds).
    conduit_policy::yaml::check_limits(input).map_err(|e| InjectError::Refused(e.to_string()))?;
    for (i, de) in serde_norway::Deserializer::from_str(input).enumerate() {
        let document = i + 1;
        let value = serde_norway::Value::deserialize(de).map_err(|e| InjectError::Yaml {
            document,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        document::namespace_policies(&value, &mut namespaces)
            .map_err(|error| InjectError::Object { document, error })?;
        values.push((document, value));
    }
    for (document, mut value) in values {
        document::inject(&mut value, options, &namespaces, &mut outcomes)
            .map_err(|error| InjectError::Object { document, error })?;
        let text = serde_norway::to_string(&value).map_err(|e| InjectError::Write {
            document,
            message: e.to_string(),
        })?;
        docs.push(text);
    }
    Ok(Injected {
        yaml: docs.join("---\n"),
        outcomes,
    })
}

impl Args {
    /// The injection options (reads the trust anchors file).
    pub fn options(&self) -> anyhow::Result<Options> {
        let trust_anchors_pem = match &self.trust_anchors {
            None => None,
            Some(p) => {
                let pem = std::fs::read_to_string(p)
                    .with_context(|| format!("reading trust anchors {}", p.display()))?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    bail!(
                        "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) found",
                        p.display()
                    );
                }
                Some(pem)
            }
        };
        Ok(Options {
            proxy_image: self.proxy_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            controller_addr: self.controller_addr.clone(),
            controller_identity: match &self.controller_identity {
                Some(id) => id.to_string(),
                None => crate::identity::spiffe_id(
                    &self.trust_domain,
                    CONTROLLER_NAMESPACE,
                    CONTROLLER_SERVICE_ACCOUNT,
                )?
                .to_string(),
            },
            trust_domain: self.trust_domain.to_string(),
            trust_anchors_pem,
            identity_audience: self.identity_audience.clone(),
            proxy_uid: self.proxy_uid,
            cpu_request: self.proxy_cpu_request.clone(),
            memory_request: self.proxy_memory_request.clone(),
            memory_limit: self.proxy_memory_limit.clone(),
            log_level: self.proxy_log_level.clone(),
        })
    }
}

fn read_input(input: &str) -> anyhow::Result<String> {
    let mut text = String::new();
    let (reader, what): (Box<dyn Read>, String) = if input == "-" {
        (Box::new(std::io::stdin()), "standard input".into())
    } else {
        let f = std::fs::File::open(input).with_context(|| format!("opening {input}"))?;
        (Box::new(f), input.to_string())
    };
    reader
        .take(MAX_INPUT_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {what}"))?;
    if text.len() as u64 > MAX_INPUT_BYTES {
        bail!("{what} is larger than {MAX_INPUT_BYTES} bytes");
    }
    Ok(text)
}

/// `conduit-controller inject`: reads, injects, writes; prints one line per
/// object on standard error.
pub fn run(args: Args) -> anyhow::Result<()> {
    let options = args.options()?;
    if options.trust_anchors_pem.is_none() {
        eprintln!(
            "warning: no --trust-anchors given: the injected proxies get no issuer certificate to verify peers with"
        );
    }
    let input = read_input(&args.input)?;
    let source = if args.input == "-" {
        "standard input"
    } else {
        args.input.as_str()
    };
    let injected = inject_yaml(&input, &options).with_context(|| format!("injecting {source}"))?;
    match &args.output {
        Some(path) => {
            let tmp = path.with_extension("conduit-inject.tmp");
            std::fs::write(&tmp, &injected.yaml)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(injected.yaml.as_bytes())
                .and_then(|()| out.flush())
                .context("writing standard output")?;
        }
    }
    for o in &injected.outcomes {
        let what = match o.action {
            Action::Injected => "injected",
            Action::AlreadyInjected => "already injected, unchanged",
            Action::OptedOut => "skipped (conduit.io/inject: disabled)",
            Action::HostNetwork => "skipped (hostNetwork pods cannot be meshed)",
            Action::NotAWorkload => "unchanged (no pods)",
        };
        eprintln!("{}/{}: {what}", o.kind.to_lowercase(), o.name);
    }
    Ok(())
}
