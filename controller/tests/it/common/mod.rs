//! Shared helpers: a real controller (file backend, token file, issuer)
//! serving gRPC on loopback, and real tonic clients.
#![allow(dead_code)]

use conduit_controller::file::{FileBackend, Settings};
use conduit_controller::identity::{Certifier, Issuer, TokenFileVerifier};
use conduit_controller::metrics::Metrics;
use conduit_controller::server::{self, RunningController, ServerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

pub const TRUST_DOMAIN: &str = "test.local";
pub const WEB_TOKEN: &str = "web-token-0123456789abcdef";
pub const DB_TOKEN: &str = "db-token-0123456789abcdef";

pub struct TestController {
    pub running: Option<RunningController>,
    pub backend: Arc<FileBackend>,
    pub dir: tempfile::TempDir,
    pub discovery: PathBuf,
    pub grpc_addr: SocketAddr,
}

pub fn settings() -> Settings {
    Settings {
        trust_domain: TRUST_DOMAIN.into(),
        cluster_domain: "cluster.local".into(),
    }
}

pub fn fresh_issuer() -> Issuer {
    Issuer::generate(
        TRUST_DOMAIN,
        SystemTime::now(),
        Duration::from_secs(365 * 86400),
    )
    .unwrap()
}

/// Writes `text` to `path` atomically (write a temporary file, rename).
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl TestController {
    pub async fn start(discovery_yaml: &str) -> TestController {
        Self::start_with_issuer(discovery_yaml, fresh_issuer()).await
    }

    pub async fn start_with_issuer(discovery_yaml: &str, issuer: Issuer) -> TestController {
        let dir = tempfile::tempdir().unwrap();
        let discovery = dir.path().join("discovery.yaml");
        std::fs::write(&discovery, discovery_yaml).unwrap();
        let tokens = dir.path().join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "tokens:\n  - token: {WEB_TOKEN}\n    namespace: default\n    serviceAccount: web\n  \
                 - token: {DB_TOKEN}\n    namespace: default\n    serviceAccount: db\n"
            ),
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let backend = FileBackend::start(
            &discovery,
            settings(),
            Duration::from_secs(1),
            Some(metrics.clone()),
        )
        .unwrap();
        let verifier = TokenFileVerifier::load(&tokens).unwrap();
        let certifier = Arc::new(Certifier::new(
            issuer,
            verifier,
            TRUST_DOMAIN.parse().unwrap(),
            Duration::from_secs(86400),
        ));
        let running =
            start_server("127.0.0.1:0".parse().unwrap(), &backend, certifier, metrics).await;
        let grpc_addr = running.grpc_addr;
        TestController {
            running: Some(running),
            backend,
            dir,
            discovery,
            grpc_addr,
        }
    }

    /// Stops the servers (streams end, connections close); discovery state stays.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(10), r.shutdown())
                .await
                .expect("controller shut down in time")
                .unwrap();
        }
    }

    /// Starts serving again on the same port.
    pub async fn restart(&mut self) {
        assert!(self.running.is_none());
        let tokens = self.dir.path().join("tokens.yaml");
        let certifier = Arc::new(Certifier::new(
            fresh_issuer(),
            TokenFileVerifier::load(&tokens).unwrap(),
            TRUST_DOMAIN.parse().unwrap(),
            Duration::from_secs(86400),
        ));
        let running = start_server(
            self.grpc_addr,
            &self.backend,
            certifier,
            Arc::new(Metrics::new()),
        )
        .await;
        self.running = Some(running);
    }

    pub fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect_lazy()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().admin_addr
    }

    /// Replaces the discovery file and waits until the backend applied it.
    pub async fn set_discovery(&self, yaml: &str) {
        let mut status = self.backend.status();
        let before = status.borrow_and_update().applied;
        write_atomic(&self.discovery, yaml);
        wait_for(&mut status, |s| s.applied > before).await;
    }
}

async fn start_server(
    addr: SocketAddr,
    backend: &Arc<FileBackend>,
    certifier: Arc<Certifier<TokenFileVerifier>>,
    metrics: Arc<Metrics>,
) -> RunningController {
    server::start(ServerConfig {
        grpc_addr: addr,
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        backend: backend.clone(),
        cluster_domain: "cluster.local".into(),
        certifier,
        metrics,
        grpc_tls: None,
    })
    .await
    .unwrap()
}

/// Waits (at most 10 s) until the watched value satisfies `pred`.
pub async fn wait_for<T>(rx: &mut watch::Receiver<T>, pred: impl FnMut(&T) -> bool) -> T
where
    T: Clone,
{
    match tokio::time::timeout(Duration::from_secs(10), rx.wait_for(pred)).await {
        Ok(Ok(v)) => v.clone(),
        Ok(Err(_)) => panic!("watch closed while waiting"),
        Err(_) => panic!("condition not reached within 10 s"),
    }
}

/// A discovery file with service `web` (cluster IP 10.96.0.10, port 80 ->
/// 8080) backed by the given pod IPs (meshed, service account web).
pub fn web_service(ips: &[&str]) -> String {
    let mut s = String::from(
        "services:\n  - name: web\n    namespace: default\n    clusterIP: 10.96.0.10\n    ports:\n      - port: 80\n        targetPort: 8080\n    endpoints:\n",
    );
    if ips.is_empty() {
        s = s.replace("    endpoints:\n", "    endpoints: []\n");
    }
    for ip in ips {
        s.push_str(&format!(
            "      - ip: {ip}\n        serviceAccount: web\n        meshed: true\n        labels: {{pod: \"{ip}\"}}\n"
        ));
    }
    s
}
