//! Calls to authorization plugins (`conduit.authz.v1.AuthorizationPlugin`).
//! One lazily connected HTTP/2 channel per plugin address, shared by every
//! request (calls are multiplexed on it); at most the plugin's
//! `maxInFlight` calls at once; each call bounded by its timeout. Whatever
//! goes wrong is a [`PluginError`], and the caller applies the plugin's
//! failure mode.
//!
//! A plugin whose configuration names an identity is meshed: the
//! connection is mTLS, the proxy presenting its own certificate and
//! requiring exactly that SPIFFE ID (ALPN `h2`); a plugin presenting
//! anything else is never sent a request (the call fails, the failure mode
//! applies). A proxy without an identity cannot reach a meshed plugin.

use conduit_controller_api::authz::v1 as pb;
use conduit_controller_api::authz::v1::authorization_plugin_client::AuthorizationPluginClient;
use conduit_policy::compile::Plugin;
use conduit_proxy_tls::{Credentials, SpiffeId, TlsConnector};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{max} calls already in flight")]
    Busy { max: usize },
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("call failed: {0}")]
    Call(#[from] tonic::Status),
    #[error("answer has no decision")]
    Empty,
    #[error("the plugin is meshed ({0}) and this proxy has no identity to reach it over mTLS")]
    NoIdentity(SpiffeId),
}

impl PluginError {
    pub fn reason(&self) -> &'static str {
        match self {
            PluginError::Busy { .. } => "busy",
            PluginError::Timeout(_) => "timeout",
            PluginError::Call(_) => "error",
            PluginError::Empty => "bad_answer",
            PluginError::NoIdentity(_) => "no_identity",
        }
    }
}

struct Conn {
    channel: Channel,
    limit: Arc<Semaphore>,
}

/// A plugin connection's key: name, address, bound on calls in flight,
/// identity required (meshed plugins).
type ConnKey = (Arc<str>, SocketAddr, usize, Option<SpiffeId>);

/// The plugin connections.
#[derive(Default)]
pub struct Plugins {
    conns: Mutex<HashMap<ConnKey, Arc<Conn>>>,
    /// The proxy's mTLS client, for meshed plugins (set at start when the
    /// proxy has an identity).
    tls: std::sync::OnceLock<TlsConnector>,
}

/// Most distinct plugin connections kept (a policy has at most 16 plugins;
/// old ones are dropped when this is exceeded).
const MAX_CONNS: usize = 64;

impl Plugins {
    /// The proxy's credentials: meshed plugins are reached over mTLS with
    /// them. Without, a meshed plugin's calls fail ([`PluginError::NoIdentity`]).
    pub fn set_credentials(&self, credentials: Credentials) {
        let _ = self.tls.set(TlsConnector::new(credentials));
    }

    fn conn(&self, p: &Plugin) -> Result<Arc<Conn>, PluginError> {
        let key = (
            p.name.clone(),
            p.address,
            p.max_in_flight,
            p.identity.clone(),
        );
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = conns.get(&key) {
            return Ok(c.clone());
        }
        if conns.len() >= MAX_CONNS {
            conns.clear();
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", p.address))
            .expect("a socket address is a valid URI")
            .connect_timeout(p.timeout)
            .tcp_nodelay(true);
        let channel = match &p.identity {
            None => endpoint.connect_lazy(),
            Some(id) => {
                let tls = self
                    .tls
                    .get()
                    .cloned()
                    .ok_or_else(|| PluginError::NoIdentity(id.clone()))?;
                endpoint.connect_with_connector_lazy(MeshedConnector {
                    tls,
                    id: id.clone(),
                    addr: p.address,
                })
            }
        };
        let c = Arc::new(Conn {
            channel,
            limit: Arc::new(Semaphore::new(p.max_in_flight)),
        });
        conns.insert(key, c.clone());
        Ok(c)
    }

    /// Asks `p` about one request.
    pub async fn check(
        &self,
        p: &Plugin,
        req: pb::CheckRequest,
    ) -> Result<pb::check_response::Decision, PluginError> {
        let conn = self.conn(p)?;
        let _permit = conn
            .limit
            .clone()
            .try_acquire_owned()
            .map_err(|_| PluginError::Busy {
                max: p.max_in_flight,
            })?;
        let mut client = AuthorizationPluginClient::new(conn.channel.clone());
        let mut request = tonic::Request::new(req);
        request.set_timeout(p.timeout);
        let rsp = tokio::time::timeout(p.timeout, client.check(request))
            .await
            .map_err(|_| PluginError::Timeout(p.timeout))?
            .map_err(|s| match s.code() {
                // tonic's own deadline (the grpc-timeout the plugin also sees).
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
                    PluginError::Timeout(p.timeout)
                }
                _ => PluginError::Call(s),
            })?;
        rsp.into_inner().decision.ok_or(PluginError::Empty)
    }
}

/// Connects to a meshed plugin: TCP, then mTLS requiring `id`.
#[derive(Clone)]
struct MeshedConnector {
    tls: TlsConnector,
    id: SpiffeId,
    addr: SocketAddr,
}

type TlsIo = hyper_util::rt::TokioIo<conduit_proxy_tls::ClientTlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for MeshedConnector {
    type Response = TlsIo;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<TlsIo, std::io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(this.addr).await?;
            tcp.set_nodelay(true)?;
            let stream = this
                .tls
                .connect_grpc(tcp, &this.id)
                .await
                .map_err(std::io::Error::from)?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}
