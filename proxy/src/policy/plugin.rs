//! Calls to authorization plugins (`conduit.authz.v1.AuthorizationPlugin`).
//! One lazily connected HTTP/2 channel per plugin address, shared by every
//! request (calls are multiplexed on it); at most the plugin's
//! `maxInFlight` calls at once; each call bounded by its timeout. Whatever
//! goes wrong is a [`PluginError`], and the caller applies the plugin's
//! failure mode.

use conduit_base::sync::Unpoisoned;
use conduit_controller_api::authz::v1 as pb;
use conduit_controller_api::authz::v1::authorization_plugin_client::AuthorizationPluginClient;
use conduit_policy::compile::Plugin;
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
}

impl PluginError {
    pub fn reason(&self) -> &'static str {
        match self {
            PluginError::Busy { .. } => "busy",
            PluginError::Timeout(_) => "timeout",
            PluginError::Call(_) => "error",
            PluginError::Empty => "bad_answer",
        }
    }
}

struct Conn {
    channel: Channel,
    limit: Arc<Semaphore>,
}

/// A plugin connection's key: name, address, bound on calls in flight.
type ConnKey = (Arc<str>, SocketAddr, usize);

/// The plugin connections.
#[derive(Default)]
pub struct Plugins {
    conns: Mutex<HashMap<ConnKey, Arc<Conn>>>,
}

/// Most distinct plugin connections kept (a policy has at most 16 plugins;
/// old ones are dropped when this is exceeded).
const MAX_CONNS: usize = 64;

impl Plugins {
    fn conn(&self, p: &Plugin) -> Arc<Conn> {
        let key = (p.name.clone(), p.address, p.max_in_flight);
        let mut conns = self.conns.locked();
        if let Some(c) = conns.get(&key) {
            return c.clone();
        }
        if conns.len() >= MAX_CONNS {
            conns.clear();
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", p.address))
            .expect("a socket address is a valid URI")
            .connect_timeout(p.timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        let c = Arc::new(Conn {
            channel,
            limit: Arc::new(Semaphore::new(p.max_in_flight)),
        });
        conns.insert(key, c.clone());
        c
    }

    /// Asks `p` about one request.
    pub async fn check(
        &self,
        p: &Plugin,
        req: pb::CheckRequest,
    ) -> Result<pb::check_response::Decision, PluginError> {
        let conn = self.conn(p);
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
