//! [`Guarded`]: the connector in front of every upstream connection. It
//! applies [`intent::for_peer`](super::intent::for_peer) (through
//! [`ConnectTarget::tls`]): a connection that
//! must not be made without mTLS is refused (logged, counted in
//! `conduit_outbound_refused_total{reason}`), and every connection that
//! leaves the pod in plaintext is counted in
//! `conduit_outbound_plaintext_total{reason}`.

use super::intent::Tls;
use super::{Connector, NextHop};
use crate::io::BoxIo;
use crate::metrics::WhyLabels;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::io;
use std::sync::Arc;

pub struct Guarded {
    inner: Arc<dyn Connector>,
    /// Whether `inner` holds an identity (mTLS credentials).
    local_identity: bool,
    plaintext: Family<WhyLabels, Counter>,
    refused: Family<WhyLabels, Counter>,
}

impl Guarded {
    pub fn new(
        inner: Arc<dyn Connector>,
        local_identity: bool,
        plaintext: Family<WhyLabels, Counter>,
        refused: Family<WhyLabels, Counter>,
    ) -> Self {
        Guarded {
            inner,
            local_identity,
            plaintext,
            refused,
        }
    }
}

impl Connector for Guarded {
    fn connect(&self, target: &NextHop) -> BoxFuture<'static, io::Result<BoxIo>> {
        let why = match target.tls(self.local_identity) {
            Ok(Tls::Mutual { .. }) => None,
            Ok(Tls::Plain(why)) => Some(why),
            Err(refusal) => {
                tracing::warn!(upstream = %target.addr, reason = refusal.as_str(), "refused: {refusal}");
                self.refused
                    .get_or_create(&WhyLabels {
                        reason: refusal.as_str(),
                    })
                    .inc();
                let e = io::Error::from(super::ConnectError::Refused {
                    addr: target.addr,
                    refusal,
                });
                return Box::pin(async move { Err(e) });
            }
        };
        let connecting = self.inner.connect(target);
        let plaintext = self.plaintext.clone();
        Box::pin(async move {
            let io = connecting.await?;
            if let Some(why) = why.filter(|w| w.leaves_the_pod()) {
                plaintext
                    .get_or_create(&WhyLabels {
                        reason: why.as_str(),
                    })
                    .inc();
            }
            Ok(io)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::TcpConnector;
    use crate::transport::intent::NoTls;
    use std::time::Duration;
    use tokio::net::TcpListener;

    fn guarded(
        local_identity: bool,
    ) -> (
        Guarded,
        Family<WhyLabels, Counter>,
        Family<WhyLabels, Counter>,
    ) {
        let (p, r) = (Family::default(), Family::default());
        let tcp = Arc::new(TcpConnector {
            connect_timeout: Duration::from_secs(2),
        });
        (
            Guarded::new(tcp, local_identity, p.clone(), r.clone()),
            p,
            r,
        )
    }

    fn count(f: &Family<WhyLabels, Counter>, reason: &'static str) -> u64 {
        f.get_or_create(&WhyLabels { reason }).get()
    }

    #[tokio::test]
    async fn counts_plaintext_and_refuses_meshed_peers_without_mtls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (g, plain, refused) = guarded(false);

        g.connect(&NextHop::plain(addr, NoTls::NotInClusterNetworks))
            .await
            .unwrap();
        g.connect(&NextHop::plain(addr, NoTls::LocalApplication))
            .await
            .unwrap();
        g.connect(&NextHop::meshed(addr, None, 8080)).await.unwrap();
        assert_eq!(count(&plain, "not_in_cluster_networks"), 1);
        assert_eq!(count(&plain, "local_application"), 0, "inside the pod");
        assert_eq!(count(&plain, "no_identity_configured"), 1);

        let err = g
            .connect(&NextHop::meshed(
                addr,
                Some("spiffe://td/ns/a/sa/b".parse().unwrap()),
                8080,
            ))
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("needs mTLS"), "{err}");
        assert_eq!(count(&refused, "no_local_identity"), 1);

        let (g, _, refused) = guarded(true);
        assert!(g.connect(&NextHop::meshed(addr, None, 8080)).await.is_err());
        assert_eq!(count(&refused, "meshed_without_identity"), 1);
    }
}
