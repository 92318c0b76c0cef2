//! The proxy's identity for mTLS (crate `conduit-proxy-tls`): built from
//! the identity flags, certified by the controller and kept renewed. The
//! resulting [`Credentials`] feed the TLS connector and acceptor
//! (`transport::tls`), readiness, and the certificate expiry gauge.

use crate::config::Config;
use anyhow::{Context as _, bail};
use conduit_proxy_tls::{Credentials, GrpcCertifier, Refresher, SpiffeId, TokenFile, TrustAnchors};
use tracing::info;

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

/// Credentials and their refresher, when an identity is configured.
/// Everything an identity needs must be present, or this fails clearly.
pub fn start(cfg: &Config) -> anyhow::Result<Option<Credentials>> {
    let Some(id) = spiffe_id(cfg)? else {
        info!("no identity configured: plaintext only (no mTLS)");
        return Ok(None);
    };
    let anchors = match (&cfg.identity_trust_anchors, &cfg.trust_anchors_pem) {
        (Some(path), _) => TrustAnchors::from_pem_file(path)
            .with_context(|| format!("reading trust anchors from {}", path.display()))?,
        (None, Some(pem)) => TrustAnchors::from_pem(pem.as_bytes())
            .context("parsing CONDUIT_PROXY_TRUST_ANCHORS_PEM")?,
        (None, None) => bail!(
            "identity {id} needs trust anchors: --identity-trust-anchors or CONDUIT_PROXY_TRUST_ANCHORS_PEM"
        ),
    };
    let Some(token) = &cfg.identity_token_file else {
        bail!("identity {id} needs --identity-token-file");
    };
    let Some(controller) = &cfg.controller_addr else {
        bail!("identity {id} needs --controller-addr to have its certificate signed");
    };
    let certifier = GrpcCertifier::connect_lazy(&format!("http://{controller}"))
        .with_context(|| format!("bad --controller-addr {controller:?}"))?;
    let credentials = Credentials::new(id.clone(), anchors);
    tokio::spawn(Refresher::new(credentials.clone(), TokenFile::new(token), certifier).run());
    info!(identity = %id, controller = %controller, "identity configured: certifying with the controller");
    Ok(Some(credentials))
}
