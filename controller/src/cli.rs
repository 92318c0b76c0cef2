//! Command-line flags of `conduit-controller` (serve mode) and wiring them
//! into a running controller.

use crate::file::{FileBackend, Settings};
use crate::identity::{Certifier, Issuer, TokenFileVerifier, TrustDomain};
use crate::kubernetes::{KubernetesBackend, TokenReviewVerifier};
use crate::metrics::Metrics;
use crate::model::{DiscoveryBackend, TokenError, TokenVerifier};
use crate::server::{self, ServerConfig};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where discovery data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// `file:PATH`: a YAML file, reloaded when it changes.
    File(PathBuf),
    /// `kubernetes`: Services, EndpointSlices and Pods from the API server.
    Kubernetes,
}

impl FromStr for Discovery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "kubernetes" {
            Ok(Discovery::Kubernetes)
        } else if let Some(p) = s.strip_prefix("file:") {
            if p.is_empty() {
                return Err("file: needs a path, e.g. file:/etc/conduit/discovery.yaml".into());
            }
            Ok(Discovery::File(p.into()))
        } else {
            Err(format!("{s:?}: expected `kubernetes` or `file:PATH`"))
        }
    }
}

/// Parses `500ms`, `30s`, `15m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (ms, s, m, h, d)"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: unit must be ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Discovery backend: `kubernetes` or `file:PATH` (YAML, reloaded on change).
    #[arg(long, env = "CONDUIT_DISCOVERY", value_name = "kubernetes|file:PATH")]
    pub discovery: Discovery,
    /// gRPC address (Destination and Identity services).
    #[arg(long, default_value = "0.0.0.0:8086")]
    pub grpc_addr: SocketAddr,
    /// Admin HTTP address (/metrics, /ready, /live).
    #[arg(long, default_value = "0.0.0.0:9990")]
    pub admin_addr: SocketAddr,
    /// SPIFFE trust domain of issued identities (spiffe://<trust-domain>/ns/<ns>/sa/<sa>).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: TrustDomain,
    /// DNS suffix of service names (name.namespace.svc.<cluster-domain>).
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Issuer (CA) certificate PEM; may be followed by its intermediates.
    /// Without it and --issuer-key, a throwaway issuer is generated.
    #[arg(long, requires = "issuer_key", value_name = "PATH")]
    pub issuer_cert: Option<PathBuf>,
    /// Issuer private key, PKCS#8 PEM.
    #[arg(long, requires = "issuer_cert", value_name = "PATH")]
    pub issuer_key: Option<PathBuf>,
    /// Lifetime of a generated issuer.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub generated_issuer_lifetime: Duration,
    /// Write the issuer certificate chain (PEM) here: the trust anchor proxies need.
    #[arg(long, value_name = "PATH")]
    pub write_trust_anchors: Option<PathBuf>,
    /// Lifetime of issued leaf certificates (capped at the issuer's expiry).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub leaf_lifetime: Duration,
    /// Token file (YAML: tokens -> namespace/serviceAccount) for Certify
    /// without Kubernetes (with --discovery kubernetes it replaces
    /// TokenReview). Without it and without Kubernetes, Certify refuses every
    /// request.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Audience required of service account tokens in Kubernetes TokenReviews.
    #[arg(long, default_value = crate::kubernetes::mesh::IDENTITY_AUDIENCE)]
    pub token_audience: String,
    /// INSECURE: serve gRPC in plaintext instead of TLS. Proxies' service
    /// account tokens and discovery then travel readable and forgeable on
    /// the network, and proxies must be started with
    /// `--controller-insecure-plaintext`. By default gRPC is served over TLS
    /// with a certificate for the controller's own SPIFFE identity
    /// (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`)
    /// signed by the issuer and renewed in memory; proxies check it with
    /// `--controller-identity`.
    #[arg(long, env = "CONDUIT_CONTROLLER_INSECURE_PLAINTEXT_GRPC")]
    pub insecure_plaintext_grpc: bool,
    /// TLS on the gRPC port is the default; this flag is accepted so older
    /// command lines keep working.
    #[arg(long, hide = true, conflicts_with = "insecure_plaintext_grpc")]
    pub grpc_tls: bool,
    /// The controller's namespace: its identity on the gRPC port.
    #[arg(long, env = "CONDUIT_CONTROLLER_NAMESPACE", default_value = "conduit")]
    pub namespace: String,
    /// The controller's service account: its identity on the gRPC port.
    #[arg(
        long,
        env = "CONDUIT_CONTROLLER_SERVICE_ACCOUNT",
        default_value = "conduit-controller"
    )]
    pub service_account: String,
    /// Inbound authorization policy (YAML: defaults, servers,
    /// authorizations; docs/policy.md), re-read when it changes. Without it
    /// the policy comes from the `policy.conduit.io` custom resources under
    /// --discovery kubernetes; otherwise every proxy keeps its configured default.
    #[arg(long, env = "CONDUIT_POLICY_FILE", value_name = "PATH")]
    pub policy_file: Option<PathBuf>,
    /// Safety-net poll interval of the discovery file (changes are also
    /// picked up at once through filesystem notifications).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub file_poll_interval: Duration,
}

/// The token checks chosen by the flags.
pub enum Verifier {
    File(TokenFileVerifier),
    Kubernetes(Box<TokenReviewVerifier>),
    Disabled,
}

impl TokenVerifier for Verifier {
    async fn verify(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<(), TokenError> {
        match self {
            Verifier::File(v) => v.verify(token, namespace, service_account).await,
            Verifier::Kubernetes(v) => v.verify(token, namespace, service_account).await,
            Verifier::Disabled => Err(TokenError::Unavailable(
                "no token verifier configured: start the controller with --token-file or --discovery kubernetes".into(),
            )),
        }
    }

    async fn prove_workload(
        &self,
        token: &str,
        claim: crate::policy::caller::Claim<'_>,
    ) -> Result<crate::policy::caller::ProvenWorkload, crate::policy::caller::WorkloadError> {
        match self {
            Verifier::File(v) => v.prove_workload(token, claim).await,
            Verifier::Kubernetes(v) => v.prove_workload(token, claim).await,
            Verifier::Disabled => Err(crate::policy::caller::WorkloadError::Unavailable(
                "no token verifier configured: start the controller with --token-file or --discovery kubernetes".into(),
            )),
        }
    }
}

/// Runs the controller until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    let metrics = Arc::new(Metrics::new());
    let mut kube_client = None;
    let backend: Arc<dyn DiscoveryBackend> = match &args.discovery {
        Discovery::File(path) => FileBackend::start(
            path,
            Settings {
                trust_domain: args.trust_domain.to_string(),
                cluster_domain: args.cluster_domain.clone(),
            },
            args.file_poll_interval,
            Some(metrics.clone()),
        )?,
        Discovery::Kubernetes => {
            let client = crate::kubernetes::client().await.context(
                "connecting to the Kubernetes API (in-cluster service account or $KUBECONFIG)",
            )?;
            let backend = KubernetesBackend::start(
                client.clone(),
                args.trust_domain.to_string(),
                args.cluster_domain.clone(),
            )?;
            kube_client = Some(client);
            Arc::new(backend)
        }
    };
    // Policy custom resources come from the same API server.
    let policy_client = kube_client.clone();
    let verifier = match (&args.token_file, kube_client) {
        (Some(p), _) => Verifier::File(TokenFileVerifier::load(p)?),
        (None, Some(client)) => Verifier::Kubernetes(Box::new(TokenReviewVerifier::new(
            client,
            args.token_audience.clone(),
        ))),
        (None, None) => {
            tracing::warn!("no --token-file: Identity.Certify will refuse every request");
            Verifier::Disabled
        }
    };
    let issuer = load_issuer(&args)?;
    let certifier = Arc::new(Certifier::new(
        issuer,
        verifier,
        args.trust_domain.clone(),
        args.leaf_lifetime,
    ));
    // Kept alive while the controller serves (dropping it stops its reflectors).
    let mut _kube_policy = None;
    let td = args.trust_domain.clone();
    let policy = match (&args.policy_file, &policy_client) {
        (Some(path), _) => {
            crate::policy::file::PolicyFile::start(path, Some(td), args.file_poll_interval)?
                .resources()
        }
        (None, Some(client)) => {
            let p = crate::policy::kubernetes::KubernetesPolicy::start(client.clone(), Some(td));
            let rx = p.resources();
            _kube_policy = Some(p);
            rx
        }
        (None, None) => crate::policy::none(),
    };
    let running = server::start_with_policy(
        ServerConfig {
            grpc_addr: args.grpc_addr,
            admin_addr: args.admin_addr,
            backend,
            cluster_domain: args.cluster_domain.clone(),
            certifier,
            metrics,
            grpc_tls: grpc_tls(&args)?,
        },
        policy,
    )
    .await?;
    running.serve_until(shutdown_signal()).await
}

/// The identity served on the gRPC port over TLS, or `None` (with a loud
/// warning) under `--insecure-plaintext-grpc`.
pub fn grpc_tls(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    if args.insecure_plaintext_grpc {
        tracing::warn!(
            "INSECURE: --insecure-plaintext-grpc: gRPC is served in plaintext; proxies' service \
             account tokens and discovery answers can be read and forged on the network"
        );
        return Ok(None);
    }
    let id = crate::identity::spiffe_id(&args.trust_domain, &args.namespace, &args.service_account)
        .context(
            "the controller's own identity (--trust-domain, --namespace, --service-account)",
        )?;
    Ok(Some(id.to_string()))
}

/// The issuer from the flags (loaded, or generated with a warning), after
/// writing its chain to --write-trust-anchors when asked.
pub fn load_issuer(args: &ServeArgs) -> anyhow::Result<Issuer> {
    let issuer = match (&args.issuer_cert, &args.issuer_key) {
        (Some(cert), Some(key)) => {
            let cert_pem = std::fs::read_to_string(cert)
                .with_context(|| format!("reading issuer certificate {}", cert.display()))?;
            let key_pem = std::fs::read_to_string(key)
                .with_context(|| format!("reading issuer key {}", key.display()))?;
            let issuer = Issuer::from_pem(&cert_pem, &key_pem)
                .with_context(|| format!("issuer {} / {}", cert.display(), key.display()))?;
            if issuer.not_after() <= SystemTime::now() {
                tracing::error!(cert = %cert.display(), "issuer certificate has expired: every Certify will be refused");
            }
            issuer
        }
        _ => {
            let issuer = Issuer::generate(
                args.trust_domain.as_str(),
                SystemTime::now(),
                args.generated_issuer_lifetime,
            )?;
            let msg = format!(
                "WARNING: no --issuer-cert/--issuer-key given; generated a throwaway issuer for trust domain {:?}. \
                 It exists only in this process: certificates it signs are trusted only by proxies given its \
                 certificate (--write-trust-anchors), and a restart makes a new one. For local use only.",
                args.trust_domain
            );
            tracing::warn!("{msg}");
            issuer
        }
    };
    if let Some(path) = &args.write_trust_anchors {
        std::fs::write(path, issuer.certificate_pem())
            .with_context(|| format!("writing trust anchors to {}", path.display()))?;
        tracing::info!(path = %path.display(), "wrote the issuer certificate (trust anchors)");
    }
    Ok(issuer)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Many proxies mean many connections: use the hard limit of open files.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(error = %e, "could not raise the open files limit");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_discovery() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(
            "file:/x.yaml".parse(),
            Ok(Discovery::File("/x.yaml".into()))
        );
        assert_eq!("kubernetes".parse(), Ok(Discovery::Kubernetes));
        assert!("file:".parse::<Discovery>().is_err());
        assert!("consul".parse::<Discovery>().is_err());
    }
}
