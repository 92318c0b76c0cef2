//! Assembles a running proxy from a [`Config`] and its kernel- and
//! network-facing pieces ([`Deps`]), and drains it on request.

use crate::admin::{self, Admin};
use crate::balance::{BalanceConfig, Balancers, EndpointGauges, RequestPolicy};
use crate::config::Config;
use crate::ctx::Shared;
use crate::discovery::ControllerDiscovery;
use crate::discovery::{Discover, Resolution, StaticDiscovery, Watch};
use crate::http::client::{Client, ClientSettings};
use crate::listen::{self, Handler};
use crate::metrics::{Direction, Metrics};
use crate::orig_dst::{LocalAddr, OrigDst, SoOriginalDst};
use crate::transport::tls::{TlsAcceptor, TlsConnector};
use crate::transport::{Acceptor, Connector, PlainAcceptor, TcpConnector};
use anyhow::Context as _;
use conduit_proxy_tls::Credentials;
use futures::FutureExt;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How long a new destination waits for the controller's first answer
/// before it counts as unanswered (refused inside the cluster networks).
pub const DISCOVERY_ANSWER_WAIT: Duration = Duration::from_secs(3);

/// Discovery that knows nothing: every destination is forwarded unchanged.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoDiscovery;

impl Discover for NoDiscovery {
    fn watch(&self, _orig_dst: SocketAddr) -> Box<dyn Watch> {
        Box::new(NoDiscovery)
    }
}

impl Watch for NoDiscovery {
    fn resolution(&self) -> Resolution {
        Resolution::Unknown
    }
}

/// The replaceable parts: kernel lookups, discovery, and the two mTLS seams.
pub struct Deps {
    pub outbound_orig_dst: Arc<dyn OrigDst>,
    pub inbound_orig_dst: Arc<dyn OrigDst>,
    pub discover: Arc<dyn Discover>,
    pub connector: Arc<dyn Connector>,
    pub acceptor: Arc<dyn Acceptor>,
    /// The proxy's mTLS credentials; `None` = plaintext only. When set, the
    /// proxy is ready only while it holds a certificate.
    pub credentials: Option<Credentials>,
    /// The controller, for the inbound policy (`None`: the configured
    /// default, or `--inbound-policy-file`).
    pub controller: Option<tonic::transport::Channel>,
}

impl Deps {
    /// Production: SO_ORIGINAL_DST, local address; discovery from the
    /// controller (`--controller-addr`) or static (`--service`,
    /// `--discovery-file`); mTLS when an identity is configured, else plain TCP.
    pub fn system(cfg: &Config) -> anyhow::Result<Self> {
        let tcp = TcpConnector {
            connect_timeout: cfg.connect_timeout,
        };
        let controller = crate::identity::controller_channel(cfg)?;
        let credentials = crate::identity::start(cfg, controller.as_ref())?;
        let (connector, acceptor): (Arc<dyn Connector>, Arc<dyn Acceptor>) = match &credentials {
            Some(c) => (
                Arc::new(TlsConnector::new(tcp, c.clone())),
                Arc::new(TlsAcceptor::new(c.clone()).context("setting up the mTLS acceptor")?),
            ),
            None => (Arc::new(tcp), Arc::new(PlainAcceptor)),
        };
        let discover: Arc<dyn Discover> = if let Some(channel) = controller.clone() {
            Arc::new(ControllerDiscovery::new(channel, DISCOVERY_ANSWER_WAIT))
        } else if cfg.services.is_empty() && cfg.discovery_file.is_none() {
            Arc::new(NoDiscovery)
        } else {
            let d = StaticDiscovery::new(cfg.services.clone(), cfg.discovery_file.clone())
                .context("loading static discovery")?;
            d.spawn_reload(cfg.discovery_reload);
            Arc::new(d)
        };
        let outbound_orig_dst: Arc<dyn OrigDst> = match cfg.outbound_fixed_dst {
            Some(addr) => Arc::new(crate::orig_dst::Fixed(addr)),
            None => Arc::new(SoOriginalDst),
        };
        Ok(Self {
            outbound_orig_dst,
            inbound_orig_dst: Arc::new(LocalAddr),
            discover,
            connector,
            acceptor,
            credentials,
            controller,
        })
    }

    /// Loopback testing: fixed original destination for outbound, the
    /// given discovery, plain TCP.
    pub fn fixed(cfg: &Config, outbound_dst: SocketAddr, discover: Arc<dyn Discover>) -> Self {
        Self {
            outbound_orig_dst: Arc::new(crate::orig_dst::Fixed(outbound_dst)),
            inbound_orig_dst: Arc::new(LocalAddr),
            discover,
            connector: Arc::new(TcpConnector {
                connect_timeout: cfg.connect_timeout,
            }),
            acceptor: Arc::new(PlainAcceptor),
            credentials: None,
            controller: None,
        }
    }

    /// Replaces the transport with mTLS from `credentials` (tests, embedding).
    pub fn with_mtls(mut self, cfg: &Config, credentials: Credentials) -> anyhow::Result<Self> {
        let tcp = TcpConnector {
            connect_timeout: cfg.connect_timeout,
        };
        self.connector = Arc::new(TlsConnector::new(tcp, credentials.clone()));
        self.acceptor = Arc::new(TlsAcceptor::new(credentials.clone())?);
        self.credentials = Some(credentials);
        Ok(self)
    }
}

/// A started proxy.
pub struct Running {
    pub outbound_addrs: Vec<SocketAddr>,
    pub inbound_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// The operator listener (loopback only): `POST /shutdown`.
    pub control_addr: SocketAddr,
    /// Asks for the drain; the listeners stop later (see [`drain`]).
    shutdown: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts draining: stop accepting, finish in-flight work.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
    /// Cancelled when draining starts (signal, POST /shutdown on the
    /// operator listener, or [`Running::shutdown`]).
    pub fn stop_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
    /// Resolves once drained (or the grace period ran out).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Starts a proxy: binds its listeners, builds the shared state, spawns the
/// accept loops, the admin and operator servers and the sweeper, and
/// returns once it is listening (and ready).
pub async fn start(mut cfg: Config, deps: Deps) -> anyhow::Result<Running> {
    crate::control::check_addr(cfg.control_addr).map_err(anyhow::Error::msg)?;
    let listeners = listen::Listeners::bind(&mut cfg)?;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry, cfg.max_dst_labels);
    let inbound_policy = inbound_policy(
        &cfg,
        deps.controller.clone(),
        deps.credentials.as_ref(),
        &mut registry,
    )?;
    // `shutdown` asks for a drain (signal, POST /shutdown); `stop` is
    // cancelled by the drain once the agent no longer steers to us, and
    // stops the accept loops and the HTTP connections (see `drain`).
    let shutdown = CancellationToken::new();
    let stop = CancellationToken::new();
    let client = client(&cfg, deps.connector, deps.credentials.is_some(), &metrics);
    let registration = crate::register::start(
        &cfg,
        listeners.inbound.first(),
        listeners.outbound_addrs.first().map_or(0, |a| a.port()),
        listeners.admin_addr.port(),
        &mut registry,
        deps.credentials.clone(),
    )?;
    let balancers = balancers(&cfg, deps.discover, &metrics, &mut registry);
    let observe = crate::tap::Observe::new(
        &mut registry,
        cfg.access_log.map(crate::access_log::AccessLog::new),
        deps.credentials.as_ref().map(|c| c.identity().to_string()),
    );
    let admin = Arc::new(Admin {
        registry,
        ready: false.into(),
        shutdown: shutdown.clone(),
        credentials: deps.credentials.clone(),
        cert_expiry: metrics.cert_expiry.clone(),
        agent_registered: registration.as_ref().map(|r| r.registered.clone()),
    });
    let shared = Arc::new(Shared {
        policy: request_policy(&cfg),
        inbound_ports: listeners.inbound_ports(&cfg),
        cfg,
        metrics,
        client,
        balancers,
        outbound_orig_dst: deps.outbound_orig_dst,
        inbound_orig_dst: deps.inbound_orig_dst,
        acceptor: deps.acceptor,
        mtls: deps.credentials.is_some(),
        observe: observe.clone(),
        inbound_policy,
        shutdown: stop,
        tracker: TaskTracker::new(),
    });

    let listen::Listeners {
        outbound,
        inbound,
        admin: admin_listener,
        control: control_listener,
        outbound_addrs,
        inbound_addrs,
        admin_addr,
        control_addr,
    } = listeners;
    spawn_accept_loops(&shared, outbound, inbound);
    let admin_stop = CancellationToken::new();
    spawn_operator_servers(
        &shared,
        &admin,
        &observe,
        admin_listener,
        control_listener,
        &admin_stop,
    );
    let sweeper = spawn_sweeper(shared.clone());
    admin.ready.store(true, Ordering::Relaxed);
    info!(outbound = ?outbound_addrs, inbound = ?inbound_addrs, admin = %admin_addr, control = %control_addr, "conduit-proxy listening");

    let requested = shutdown.clone();
    let done = tokio::spawn(async move {
        requested.cancelled().await;
        drain(&shared, &admin, registration).await;
        sweeper.abort();
        admin_stop.cancel();
    });
    Ok(Running {
        outbound_addrs,
        inbound_addrs,
        admin_addr,
        control_addr,
        shutdown,
        done,
    })
}

/// The inbound authorization policy: from `--inbound-policy-file`, else
/// from the controller, else the configured default.
fn inbound_policy(
    cfg: &Config,
    controller: Option<tonic::transport::Channel>,
    credentials: Option<&Credentials>,
    registry: &mut Registry,
) -> anyhow::Result<Arc<crate::policy::PolicyStore>> {
    let inbound_policy = crate::policy::PolicyStore::new(
        crate::policy::context(cfg).context("the inbound policy's context")?,
        registry,
    );
    // Plugins the policy names with an identity are reached over mTLS.
    if let Some(c) = credentials {
        inbound_policy.plugins.set_credentials(c.clone());
    }
    if let Some(path) = &cfg.inbound_policy_file {
        crate::policy::file::start(inbound_policy.clone(), path.clone(), cfg.discovery_reload)?;
    } else if let Some(channel) = controller {
        let labels = crate::policy::controller::parse_labels(&cfg.pod_labels)
            .map_err(|e| anyhow::anyhow!("bad --pod-labels: {e}"))?;
        crate::policy::controller::spawn(
            &inbound_policy,
            channel,
            conduit_controller_api::policy::v1::Workload {
                namespace: cfg.pod_namespace.clone(),
                pod: cfg.pod_name.clone(),
                labels,
            },
            cfg.identity_token_file.clone(),
        );
    }
    Ok(inbound_policy)
}

/// The upstream HTTP client. Every upstream connection goes through the
/// guard: refused when it would reach a meshed peer without mTLS, counted
/// when plaintext.
fn client(
    cfg: &Config,
    connector: Arc<dyn Connector>,
    local_identity: bool,
    metrics: &Metrics,
) -> Client {
    let connector: Arc<dyn Connector> = Arc::new(crate::transport::guard::Guarded::new(
        connector,
        local_identity,
        metrics.outbound_plaintext.clone(),
        metrics.outbound_refused.clone(),
    ));
    Client::new(
        connector,
        ClientSettings {
            idle_timeout: cfg.pool_idle_timeout,
            max_idle_per_upstream: 64,
            max_header_bytes: cfg.max_header_bytes,
        },
    )
}

/// Per-request timeouts and retries for discovered destinations.
fn request_policy(cfg: &Config) -> RequestPolicy {
    RequestPolicy {
        timeout: cfg.request_timeout,
        try_timeout: cfg.request_try_timeout,
        max_attempts: cfg.max_attempts.max(1),
        // Each destination's own retry budget: one failing service cannot
        // use up the retries of the others.
        budget: None,
    }
}

/// The per-destination cache over discovery, and its endpoint gauges.
fn balancers(
    cfg: &Config,
    discover: Arc<dyn Discover>,
    metrics: &Metrics,
    registry: &mut Registry,
) -> Arc<Balancers> {
    let balancers = Arc::new(Balancers::new(
        discover,
        BalanceConfig {
            endpoint_wait: cfg.connect_timeout,
            ..BalanceConfig::default()
        },
    ));
    registry
        .sub_registry_with_prefix("conduit")
        .register_collector(Box::new(EndpointGauges::new(
            balancers.clone(),
            metrics.dst_labels.clone(),
        )));
    balancers
}

/// The accept loops, with one connection limit per direction shared by its
/// listeners.
fn spawn_accept_loops(shared: &Arc<Shared>, outbound: Vec<TcpListener>, inbound: Vec<TcpListener>) {
    let out_handler: Handler = |s, t, c, l, a| crate::outbound::handle(s, t, c, l, a).boxed();
    let in_handler: Handler = |s, t, c, l, a| crate::inbound::handle(s, t, c, l, a).boxed();
    for (listeners, direction, handler) in [
        (outbound, Direction::Outbound, out_handler),
        (inbound, Direction::Inbound, in_handler),
    ] {
        let limit = Arc::new(Semaphore::new(shared.cfg.max_connections));
        for l in listeners {
            tokio::spawn(listen::accept_loop(
                shared.clone(),
                l,
                direction,
                limit.clone(),
                handler,
            ));
        }
    }
}

/// The admin server and the operator listener (`POST /shutdown`, tap),
/// both stopped by `stop`.
fn spawn_operator_servers(
    shared: &Shared,
    admin: &Arc<Admin>,
    observe: &crate::tap::Observe,
    admin_listener: TcpListener,
    control_listener: TcpListener,
    stop: &CancellationToken,
) {
    tokio::spawn(admin::serve(admin.clone(), admin_listener, stop.clone()));
    let credential = match &shared.cfg.control_token_file {
        Some(path) => crate::control::Credential::TokenFile(path.clone()),
        None => crate::control::Credential::LoopbackOnly,
    };
    tokio::spawn(crate::control::serve(
        admin.clone(),
        credential,
        observe.hub.clone(),
        control_listener,
        stop.clone(),
    ));
}

/// Every 10 s: idle pooled connections closed, free heap returned.
fn spawn_sweeper(shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            shared.client.sweep();
            if let Some(r) = crate::memory::reclaim(crate::memory::DEFAULT_THRESHOLD) {
                debug!(
                    free_before = r.free_before,
                    rss_before = ?r.rss_before,
                    rss_after = ?r.rss_after,
                    "returned free heap memory to the kernel"
                );
            }
        }
    })
}

/// The drain, in this order:
///
/// 1. not ready (`/ready` 503);
/// 2. deregister from the node agent and wait for its confirmation: capture
///    for the pod stops, so sk_lookup no longer steers new inbound
///    connections to our listener and the pod's new outbound connections are
///    no longer redirected to us. Until then we keep accepting: whatever the
///    agent steered meanwhile is served;
/// 3. stop accepting: the listeners close (the agent's copy is gone), so a
///    new connection to the inbound port is refused at once (a peer proxy
///    fails over to another endpoint) rather than left in a backlog nobody
///    accepts from; HTTP connections finish their requests and close
///    (`Connection: close`, GOAWAY);
/// 4. wait for in-flight work, at most the grace period.
async fn drain(
    shared: &Arc<Shared>,
    admin: &Admin,
    registration: Option<crate::register::Registration>,
) {
    admin.ready.store(false, Ordering::Relaxed);
    if let Some(r) = registration {
        let outcome = r.task.deregister().await;
        info!(?outcome, "draining: deregistered from the node agent");
    }
    shared.shutdown.cancel();
    let grace = shared.cfg.shutdown_grace_period;
    info!(
        open = shared.tracker.len(),
        "draining: no new connections; waiting up to {grace:?} for in-flight work"
    );
    shared.tracker.close();
    match tokio::time::timeout(grace, shared.tracker.wait()).await {
        Ok(()) => info!("drained"),
        Err(_) => warn!(
            open = shared.tracker.len(),
            "grace period over; closing remaining connections"
        ),
    }
}
