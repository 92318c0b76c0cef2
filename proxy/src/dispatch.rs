//! The shared middle of both paths: given an accepted connection and its
//! route, detect the protocol (unless the port is configured opaque) and
//! hand it to HTTP or opaque TCP (as [`protocol::for_detected`] maps it).

use crate::ctx::{ConnCtx, Shared};
use crate::detect::{self, Detected};
use crate::http;
use crate::io::{Io, PrefixedIo};
use crate::metrics::DetectLabels;
use crate::protocol::{self, Serve};
use std::sync::Arc;
use tracing::{debug, info};

/// Detects and serves a connection arriving transparently (captured).
pub async fn serve_transparent(shared: Arc<Shared>, mut conn: ConnCtx, mut io: impl Io) {
    let direction = conn.direction.as_str();
    let port = conn.route.orig_dst.port();
    let count = |protocol: &'static str| {
        shared
            .metrics
            .detect
            .get_or_create(&DetectLabels {
                direction,
                protocol,
            })
            .inc()
    };
    if shared.cfg.opaque_ports.contains(&port) {
        count("opaque_port");
        return crate::tcp::forward(&shared, &conn, io).await;
    }
    let timeouts = detect::DetectTimeouts {
        detect: shared.cfg.detect_timeout,
        http_head: shared.cfg.header_read_timeout,
    };
    let (detected, prefix) = match detect::detect(&mut io, timeouts).await {
        Ok(d) => d,
        Err(e) => {
            debug!(direction, client = %conn.client_addr, "read failed during protocol detection: {e}");
            return;
        }
    };
    count(detected.label());
    let io = PrefixedIo::new(prefix, io);
    match detected {
        Detected::Closed => {
            debug!(direction, client = %conn.client_addr, "client closed before sending anything")
        }
        Detected::SlowHttp => {
            info!(direction, client = %conn.client_addr, reason = "header_read_timeout",
                "closing connection: an HTTP request line not complete within {:?}", shared.cfg.header_read_timeout);
            shared.metrics.error(conn.direction, "header_read_timeout");
        }
        Detected::Timeout => {
            info!(direction, client = %conn.client_addr, dst = %conn.dst_label,
                "no bytes from client within {:?}: forwarding as opaque (server speaks first?)", shared.cfg.detect_timeout);
        }
        Detected::Http1 | Detected::Http2 | Detected::Tls | Detected::Opaque => {}
    }
    match protocol::for_detected(detected) {
        Some(Serve::Http(version)) => {
            conn.source_proto = version;
            http::server::serve(shared.clone(), Arc::new(conn), io).await
        }
        Some(Serve::Opaque) => crate::tcp::forward(&shared, &conn, io).await,
        None => {}
    }
}
