//! After a `101 Switching Protocols` (WebSocket) or a successful `CONNECT`,
//! both HTTP connections become byte streams; this joins them.

use crate::ctx::{ConnCtx, Shared};
use crate::tcp::pipe;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tracing::debug;

pub fn spawn(shared: &Arc<Shared>, conn: &Arc<ConnCtx>, client: OnUpgrade, upstream: OnUpgrade) {
    let (shared, conn) = (shared.clone(), conn.clone());
    conn.clone().tunnels.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(client = %conn.client_addr, error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
        match pipe(&mut c, &mut u, &conn.activity, shared.cfg.tcp_idle_timeout).await {
            Ok((up, down)) => debug!(client = %conn.client_addr, up, down, "tunnel closed"),
            Err(e) => debug!(client = %conn.client_addr, error = %e, "tunnel ended"),
        }
    });
}
