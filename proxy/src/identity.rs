//! The proxy's identity for mTLS (crate `conduit-proxy-tls`): built from
//! the identity flags, certified by the controller and kept renewed. The
//! resulting [`Credentials`] feed the TLS connector and acceptor
//! (`transport::tls`), readiness, and the certificate expiry gauge. Also the
//! one channel to the controller that discovery and `Certify` share: TLS
//! checked against `--controller-identity`; plaintext only with the explicit
//! `--controller-insecure-plaintext` (the token would travel readable, and
//! discovery answers could be forged).

use crate::config::Config;
use anyhow::{Context as _, anyhow, bail};
use conduit_proxy_tls::{
    ControlConnector, Credentials, GrpcCertifier, Refresher, SpiffeId, TokenFile, TrustAnchors,
};
use std::time::Duration;
use tonic::transport::Channel;
use tracing::{info, warn};

/// The channel to `--controller-addr`, connecting lazily, when one is set.
pub fn controller_channel(cfg: &Config) -> anyhow::Result<Option<Channel>> {
    let Some(addr) = &cfg.controller_addr else {
        return Ok(None);
    };
    let Some(id) = &cfg.controller_identity else {
        if !cfg.controller_insecure_plaintext {
            bail!(
                "--controller-addr {addr} needs --controller-identity (the controller's SPIFFE ID, checked over TLS); \
                 refusing to send discovery requests{} to the controller in plaintext. \
                 Only for a controller started with --insecure-plaintext-grpc on a trusted network: --controller-insecure-plaintext",
                if spiffe_id(cfg)?.is_some() {
                    " and the service account token"
                } else {
                    ""
                }
            );
        }
        if spiffe_id(cfg)?.is_some() {
            warn!(controller = %addr, "INSECURE (--controller-insecure-plaintext): the service account token and discovery travel in plaintext to the controller");
        } else {
            warn!(controller = %addr, "INSECURE (--controller-insecure-plaintext): discovery travels in plaintext to the controller and can be forged");
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .with_context(|| format!("bad --controller-addr {addr:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        return Ok(Some(channel));
    };
    if cfg.controller_insecure_plaintext {
        bail!("--controller-insecure-plaintext contradicts --controller-identity: choose one");
    }
    let id = SpiffeId::parse(id).with_context(|| format!("bad --controller-identity {id:?}"))?;
    let anchors = trust_anchors(cfg)?.ok_or_else(|| {
        anyhow!("--controller-identity {id} needs trust anchors: --identity-trust-anchors or CONDUIT_PROXY_TRUST_ANCHORS_PEM")
    })?;
    let connector = ControlConnector::new(anchors, id.clone()).context("TLS to the controller")?;
    let channel = connector
        .channel(addr)
        .with_context(|| format!("bad --controller-addr {addr:?}"))?;
    info!(controller = %addr, identity = %id, "controller reached over TLS");
    Ok(Some(channel))
}

/// The trust anchors the flags give, if any.
fn trust_anchors(cfg: &Config) -> anyhow::Result<Option<TrustAnchors>> {
    Ok(
        match (&cfg.identity_trust_anchors, &cfg.trust_anchors_pem) {
            (Some(path), _) => Some(
                TrustAnchors::from_pem_file(path)
                    .with_context(|| format!("reading trust anchors from {}", path.display()))?,
            ),
            (None, Some(pem)) => Some(
                TrustAnchors::from_pem(pem.as_bytes())
                    .context("parsing CONDUIT_PROXY_TRUST_ANCHORS_PEM")?,
            ),
            (None, None) => None,
        },
    )
}

/// The identity the flags name, if any.
pub fn spiffe_id(cfg: &Config) -> anyhow::Result<Option<SpiffeId>> {
    if let Some(id) = &cfg.identity {
        let id = SpiffeId::parse(id).with_context(|| format!("bad --identity {id:?}"))?;
        return Ok(Some(id));
    }
    match (&cfg.trust_domain, &cfg.service_account) {
        (Some(td), Some(sa)) => {
            let id = SpiffeId::new(td, &cfg.pod_namespace, sa).with_context(|| {
                format!(
                    "identity from trust domain {td:?}, namespace {:?}, service account {sa:?}",
                    cfg.pod_namespace
                )
            })?;
            Ok(Some(id))
        }
        _ => Ok(None),
    }
}

/// Credentials and their refresher, when an identity is configured; the
/// certificate requests go over `controller` (from [`controller_channel`]).
/// Everything an identity needs must be present, or this fails clearly.
pub fn start(cfg: &Config, controller: Option<&Channel>) -> anyhow::Result<Option<Credentials>> {
    let Some(id) = spiffe_id(cfg)? else {
        info!("no identity configured: plaintext only (no mTLS)");
        return Ok(None);
    };
    let Some(anchors) = trust_anchors(cfg)? else {
        bail!(
            "identity {id} needs trust anchors: --identity-trust-anchors or CONDUIT_PROXY_TRUST_ANCHORS_PEM"
        );
    };
    let Some(token) = &cfg.identity_token_file else {
        bail!("identity {id} needs --identity-token-file");
    };
    let Some(channel) = controller else {
        bail!("identity {id} needs --controller-addr to have its certificate signed");
    };
    let certifier = GrpcCertifier::new(channel.clone());
    let credentials = Credentials::new(id.clone(), anchors);
    tokio::spawn(Refresher::new(credentials.clone(), TokenFile::new(token), certifier).run());
    info!(identity = %id, "identity configured: certifying with the controller");
    Ok(Some(credentials))
}
