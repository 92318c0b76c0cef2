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
use tokio::io::AsyncReadExt;
use tracing::{debug, info};

/// Detects and serves a connection arriving transparently (captured).
pub async fn serve_transparent(shared: Arc<Shared>, conn: ConnCtx, io: impl Io) {
    let port = conn.route.orig_dst.port();
    if shared.cfg.opaque_ports.contains(&port) {
        count(&shared, &conn, "opaque_port");
        return crate::tcp::forward(&shared, &conn, io).await;
    }
    let timeouts = detect::DetectTimeouts {
        detect: shared.cfg.detect_timeout,
        http_head: shared.cfg.header_read_timeout,
    };
    let Some((detected, io)) = detect_replayed(&conn, io, timeouts).await else {
        return;
    };
    if detected == Detected::Timeout {
        return after_silence(shared, conn, io, timeouts).await;
    }
    serve_detected(shared, conn, detected, io).await;
}

/// Detects the client's protocol; the connection comes back with the bytes
/// detection read replayed in front of it. `None` when a read failed.
async fn detect_replayed<T: Io>(
    conn: &ConnCtx,
    mut io: T,
    timeouts: detect::DetectTimeouts,
) -> Option<(Detected, PrefixedIo<T>)> {
    match detect::detect(&mut io, timeouts).await {
        Ok((detected, prefix)) => Some((detected, PrefixedIo::new(prefix, io))),
        Err(e) => {
            debug!(direction = conn.direction.as_str(), client = %conn.client_addr, error = %e,
                "read failed during protocol detection");
            None
        }
    }
}

/// Counts what detection found and hands the connection to HTTP or opaque
/// TCP (or closes it).
async fn serve_detected(shared: Arc<Shared>, mut conn: ConnCtx, detected: Detected, io: impl Io) {
    let direction = conn.direction.as_str();
    count(&shared, &conn, detected.label());
    match detected {
        Detected::Closed => {
            debug!(direction, client = %conn.client_addr, "client closed before sending anything")
        }
        Detected::SlowHttp => {
            info!(direction, client = %conn.client_addr, reason = "header_read_timeout",
                "closing connection: an HTTP request line not complete within {:?}", shared.cfg.header_read_timeout);
            shared.metrics.error(conn.direction, "header_read_timeout");
        }
        // `Timeout` is handled by `after_silence`, which never passes it on.
        Detected::Timeout
        | Detected::Http1
        | Detected::Http2
        | Detected::Tls
        | Detected::Opaque => {}
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

/// A client silent for the detection timeout: a server-speaks-first
/// protocol (SMTP, MySQL ...), or an HTTP client's connection opened ahead
/// of its request (connection pools do that: a connect started for a
/// request that an older connection then served is kept idle). The
/// upstream is opened at once, so a server's greeting waits no longer,
/// and whoever speaks first decides: the server's bytes make it opaque
/// TCP on that upstream; the client's are detected as usual (HTTP is served
/// as HTTP, with its metrics, balancing and retries, and the unused
/// upstream connection closed). Before, such a pooled HTTP connection was
/// forwarded as opaque TCP for its whole life.
async fn after_silence(
    shared: Arc<Shared>,
    conn: ConnCtx,
    mut client: impl Io,
    timeouts: detect::DetectTimeouts,
) {
    let Some((mut upstream, addr)) = crate::tcp::connect(&shared, &conn).await else {
        return;
    };
    let mut from_client = vec![0u8; 1024];
    let mut from_server = vec![0u8; 1024];
    // Both reads are cancel-safe: the one that loses has taken nothing.
    // Silent both ways, the connection is idle: closed after the opaque
    // idle timeout, as it was when it went opaque at once.
    let idle = shared.cfg.tcp_idle_timeout;
    let first = tokio::select! {
        r = client.read(&mut from_client) => Speaker::Client(r),
        r = upstream.read(&mut from_server) => Speaker::Server(r),
        () = tokio::time::sleep(idle) => {
            info!(client = %conn.client_addr, upstream = %addr, "closing a connection silent both ways for {idle:?}");
            count(&shared, &conn, Detected::Timeout.label());
            shared.metrics.error(conn.direction, "idle_timeout");
            return;
        }
    };
    match first {
        Speaker::Client(Ok(n)) if n > 0 => {
            drop(upstream);
            from_client.truncate(n);
            // Detection reads these bytes first (so it never times out
            // again), and whatever it did not read stays queued behind.
            let io = PrefixedIo::new(from_client.into(), client);
            if let Some((detected, io)) = detect_replayed(&conn, io, timeouts).await {
                serve_detected(shared, conn, detected, io).await
            }
        }
        Speaker::Server(Ok(n)) => {
            from_server.truncate(n);
            count_silent(&shared, &conn);
            let upstream = PrefixedIo::new(from_server.into(), upstream);
            crate::tcp::relay(&shared, &conn, client, upstream, addr).await
        }
        // The client closed its side, or a read failed: opaque as before,
        // the copy carries the half-close or ends on the error.
        Speaker::Client(_) | Speaker::Server(Err(_)) => {
            count_silent(&shared, &conn);
            crate::tcp::relay(&shared, &conn, client, upstream, addr).await
        }
    }
}

/// Who sent the first bytes after a silent detection.
enum Speaker {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
}

fn count_silent(shared: &Shared, conn: &ConnCtx) {
    count(shared, conn, Detected::Timeout.label());
    info!(direction = conn.direction.as_str(), client = %conn.client_addr, dst = %conn.dst_label,
        "no bytes from client within {:?}, then none or the server's first: forwarding as opaque", shared.cfg.detect_timeout);
}

/// `conduit_protocol_detect_total{protocol}` for this connection.
fn count(shared: &Shared, conn: &ConnCtx, protocol: &'static str) {
    shared
        .metrics
        .detect
        .get_or_create(&DetectLabels {
            direction: conn.direction.as_str(),
            protocol,
        })
        .inc();
}
