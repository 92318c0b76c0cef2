//! Starting and stopping the controller's servers (gRPC and admin) around a
//! discovery backend and a certifier. Used by the binary, the tests and the
//! benchmark.

use crate::admin::{self, AdminState};
use crate::destination::DestinationService;
use crate::identity::serving::ServingTls;
use crate::identity::{Certifier, IdentityService};
use crate::metrics::Metrics;
use crate::model::{DiscoveryBackend, TokenVerifier};
use crate::policy::service::PolicyService;
use anyhow::Context;
use conduit_controller_api::destination::v1::destination_server::DestinationServer;
use conduit_controller_api::identity::v1::identity_server::IdentityServer;
use conduit_controller_api::policy::v1::inbound_policies_server::InboundPoliciesServer;
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest `GetRequest` accepted (a target name is at most a few hundred bytes).
pub const MAX_GET_REQUEST: usize = 4 * 1024;
/// Largest `CertifyRequest` accepted (a token and a CSR).
pub const MAX_CERTIFY_REQUEST: usize = 64 * 1024;

/// Concurrent gRPC streams one client connection may open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 4096;

pub struct ServerConfig<V> {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub backend: Arc<dyn DiscoveryBackend>,
    pub cluster_domain: String,
    pub certifier: Arc<Certifier<V>>,
    pub metrics: Arc<Metrics>,
    /// Serve gRPC over TLS with a certificate for this SPIFFE identity,
    /// signed by the certifier's issuer (`--grpc-tls`); `None`: plaintext.
    pub grpc_tls: Option<String>,
}

/// A started controller. Dropping it does not stop it; call
/// [`shutdown`](Self::shutdown).
pub struct RunningController {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    admin: JoinHandle<()>,
    /// Keeps the serving certificate renewed while the controller runs.
    _tls: Option<ServingTls>,
}

/// Binds both ports (port 0 picks a free one) and starts serving, with no
/// inbound policy resources (every proxy keeps its configured default).
pub async fn start<V: TokenVerifier>(cfg: ServerConfig<V>) -> anyhow::Result<RunningController> {
    start_with_policy(cfg, crate::policy::none()).await
}

/// [`start`], serving `policy` over `InboundPolicies`.
pub async fn start_with_policy<V: TokenVerifier>(
    cfg: ServerConfig<V>,
    policy: crate::policy::PolicyResources,
) -> anyhow::Result<RunningController> {
    let grpc_listener = TcpListener::bind(cfg.grpc_addr)
        .await
        .with_context(|| format!("binding gRPC address {}", cfg.grpc_addr))?;
    let admin_listener = TcpListener::bind(cfg.admin_addr)
        .await
        .with_context(|| format!("binding admin address {}", cfg.admin_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let (shutdown, shutdown_rx) = watch::channel(false);

    let expiry = cfg.certifier.issuer().not_after();
    let unix = expiry
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    cfg.metrics
        .set_issuer_expiry(i64::try_from(unix).unwrap_or(i64::MAX));

    let destination = DestinationService::new(
        cfg.backend.clone(),
        cfg.cluster_domain.clone(),
        cfg.metrics.clone(),
        shutdown_rx.clone(),
    );
    let identity = IdentityService::new(cfg.certifier.clone(), cfg.metrics.clone());
    let policy = PolicyService::new(
        policy,
        cfg.certifier.clone(),
        cfg.metrics.clone(),
        shutdown_rx.clone(),
    );
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Bounds what one connection can hold open (one stream per
        // destination a proxy talks to).
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .add_service(DestinationServer::new(destination).max_decoding_message_size(MAX_GET_REQUEST))
        .add_service(IdentityServer::new(identity).max_decoding_message_size(MAX_CERTIFY_REQUEST))
        .add_service(
            InboundPoliciesServer::new(policy)
                .max_decoding_message_size(crate::policy::service::MAX_WORKLOAD_REQUEST),
        );
    let mut stop = shutdown_rx.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let tls = match &cfg.grpc_tls {
        Some(id) => Some(
            ServingTls::start(cfg.certifier.clone(), id.clone())
                .with_context(|| format!("TLS for the gRPC port as {id}"))?,
        ),
        None => None,
    };
    let grpc = match &tls {
        Some(tls) => {
            tokio::spawn(router.serve_with_incoming_shutdown(tls.incoming(grpc_listener), stopped))
        }
        None => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_listener).map(|s| {
                let s = s?;
                s.set_nodelay(true)?;
                Ok::<_, std::io::Error>(s)
            });
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    };
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        AdminState {
            metrics: cfg.metrics.clone(),
            backend: cfg.backend.clone(),
        },
        shutdown_rx,
    ));
    tracing::info!(%grpc_addr, %admin_addr, "controller serving");
    Ok(RunningController {
        grpc_addr,
        admin_addr,
        shutdown,
        grpc,
        admin,
        _tls: tls,
    })
}

impl RunningController {
    /// Ends open streams (clients reconnect), stops accepting and waits for
    /// the servers to finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        self.admin.await.context("admin server task")?;
        self.grpc
            .await
            .context("gRPC server task")?
            .context("gRPC server")?;
        Ok(())
    }

    /// Serves until `signal` completes (then shuts down cleanly) or the gRPC
    /// server fails.
    pub async fn serve_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.grpc => {
                let _ = self.shutdown.send(true);
                r.context("gRPC server task")?.context("gRPC server")?;
                anyhow::bail!("gRPC server stopped unexpectedly");
            }
            _ = signal => self.shutdown().await,
        }
    }
}
