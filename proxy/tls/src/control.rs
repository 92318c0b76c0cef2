//! TLS to the controller (its gRPC port under `--grpc-tls`): the controller
//! presents a certificate for its own SPIFFE identity, signed by the mesh's
//! issuer; [`ControlConnector`] checks it against the trust anchors and the
//! identity the proxy was given, exactly as for a peer proxy. The proxy
//! presents no certificate here (it asks for its first one over this very
//! connection; its service account token says who it is), so discovery
//! answers and tokens cross the network only inside TLS.

use crate::anchors::TrustAnchors;
use crate::connect::{DEFAULT_HANDSHAKE_TIMEOUT, TlsError, client_handshake};
use crate::verify::ServerIdentityVerifier;
use conduit_identity::SpiffeId;
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client;

/// The protocol the controller speaks: gRPC, HTTP/2.
const H2: &[u8] = b"h2";

/// Connects to the controller over TLS. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ControlConnector {
    config: Arc<ClientConfig>,
    expected: SpiffeId,
    timeout: Duration,
}

impl ControlConnector {
    /// Requires the controller to present exactly `expected`, chained to `anchors`.
    pub fn new(anchors: TrustAnchors, expected: SpiffeId) -> Result<Self, TlsError> {
        let verifier = ServerIdentityVerifier::new(anchors, expected.clone());
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(TlsError::Config)?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
        config.alpn_protocols = vec![H2.to_vec()];
        config.enable_sni = false;
        Ok(ControlConnector {
            config: Arc::new(config),
            expected,
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// The identity the controller must present.
    pub fn expected(&self) -> &SpiffeId {
        &self.expected
    }

    /// Handshakes over `stream`.
    pub async fn connect<S>(&self, stream: S) -> Result<client::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let result = client_handshake(self.config.clone(), stream, self.timeout).await;
        if let Err(e) = &result {
            tracing::warn!(expected = %self.expected, "TLS to the controller failed: {e}");
        }
        result
    }

    /// A lazily connecting gRPC channel to `addr` (`host:port`) over this
    /// TLS; each (re)connection resolves `host`, connects and verifies.
    pub fn channel(&self, addr: &str) -> Result<tonic::transport::Channel, TlsError> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| TlsError::Config(rustls::Error::General(format!("{addr}: {e}"))))?
            .connect_timeout(Duration::from_secs(5));
        let this = self.clone();
        let connect = tower::service_fn(move |uri: http::Uri| {
            let this = this.clone();
            async move {
                let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
                let port = uri.port_u16().unwrap_or(80);
                let tcp = TcpStream::connect((host, port)).await?;
                tcp.set_nodelay(true)?;
                let tls = this.connect(tcp).await.map_err(std::io::Error::from)?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        Ok(endpoint.connect_with_connector_lazy(connect))
    }
}
