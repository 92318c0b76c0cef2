//! Opaque TCP: bytes copied both ways with half-close (EOF on one side
//! becomes a write shutdown on the other while the other direction keeps
//! flowing) and an idle timeout. Byte counts are kept by the accepted
//! connection's [`Activity`], which also feeds the metrics.

use crate::ctx::{ConnCtx, Shared};
use crate::io::{Activity, BoxIo, Io};
use crate::transport::{self, MeshProto, NextHop};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

/// Copies between `a` and `b` until both directions finish, or until
/// `activity` (which must watch `a`'s bytes) has seen nothing for `idle`.
pub async fn pipe<A, B>(
    a: &mut A,
    b: &mut B,
    activity: &Activity,
    idle: Duration,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let copy = tokio::io::copy_bidirectional(a, b);
    tokio::pin!(copy);
    loop {
        let left = idle.saturating_sub(activity.idle_for());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("idle for {idle:?}"),
            ));
        }
        tokio::select! {
            res = &mut copy => return res,
            _ = tokio::time::sleep(left) => {}
        }
    }
}

/// Forwards an accepted connection as opaque TCP to the connection's
/// route; a discovered destination's balancer picks the endpoint and fails
/// over on connect errors.
pub async fn forward(shared: &Arc<Shared>, conn: &ConnCtx, client: impl Io) {
    if let Some((upstream, addr)) = connect(shared, conn).await {
        relay(shared, conn, client, upstream, addr).await;
    }
}

/// Opens the opaque upstream connection for `conn` (after the inbound
/// policy admits it); `None` when refused or unreachable (counted).
pub async fn connect(shared: &Arc<Shared>, conn: &ConnCtx) -> Option<(BoxIo, SocketAddr)> {
    if conn.direction == crate::metrics::Direction::Inbound
        && !crate::policy::enforce::admit_connection(shared, conn)
    {
        return None;
    }
    let connector = shared.client.connector().clone();
    let open = |hop: NextHop| {
        let connector = connector.clone();
        async move {
            let hop = hop.carrying(MeshProto::Tcp);
            let io = transport::open(&*connector, &hop).await?;
            Ok::<_, io::Error>((io, hop.addr))
        }
    };
    match conn.route.target.connect(&shared.policy, open).await {
        Ok((opened, _pick)) => Some(opened),
        Err(e) => {
            info!(client = %conn.client_addr, dst = %conn.dst_label, error = %e, "opaque connect failed");
            shared.metrics.error(conn.direction, "connect");
            None
        }
    }
}

/// Copies between the client and its opened upstream until both are done
/// or the connection idles for `--tcp-idle-timeout`.
pub async fn relay(
    shared: &Arc<Shared>,
    conn: &ConnCtx,
    mut client: impl Io,
    mut upstream: impl Io,
    addr: SocketAddr,
) {
    match pipe(
        &mut client,
        &mut upstream,
        &conn.activity,
        shared.cfg.tcp_idle_timeout,
    )
    .await
    {
        Ok((up, down)) => {
            debug!(client = %conn.client_addr, upstream = %addr, up, down, "opaque connection done")
        }
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            info!(client = %conn.client_addr, upstream = %addr, error = %e, "closing idle opaque connection");
            shared.metrics.error(conn.direction, "idle_timeout");
        }
        Err(e) => {
            debug!(client = %conn.client_addr, upstream = %addr, error = %e, "opaque connection ended")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::CountingIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_keeps_the_other_direction() {
        let (mut client, proxy_a) = tokio::io::duplex(1024);
        let (proxy_b, mut server) = tokio::io::duplex(1024);
        let act = Activity::new();
        let mut a = CountingIo::new(proxy_a, act.clone());
        let mut b = proxy_b;
        let task =
            tokio::spawn(async move { pipe(&mut a, &mut b, &act, Duration::from_secs(5)).await });
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap(); // sees EOF
        assert_eq!(got, b"request");
        server.write_all(b"late response").await.unwrap();
        drop(server);
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"late response");
        assert_eq!(task.await.unwrap().unwrap(), (7, 13));
    }

    #[tokio::test]
    async fn idle_connections_time_out() {
        let (_client, proxy_a) = tokio::io::duplex(64);
        let (mut proxy_b, _server) = tokio::io::duplex(64);
        let act = Activity::new();
        let mut a = CountingIo::new(proxy_a, act.clone());
        let err = pipe(&mut a, &mut proxy_b, &act, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
