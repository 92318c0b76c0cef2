//! Test certificate authorities (rcgen) and loopback TLS plumbing.
#![allow(dead_code)]

use conduit_proxy_tls::testing::TestCa;
use conduit_proxy_tls::{Clock, Credentials, SpiffeId, TrustAnchors};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const HOUR: Duration = Duration::from_secs(3600);

/// A certificate authority for tests (the crate's `TestCa`, unwrapped).
pub struct Ca {
    pub cert: CertificateDer<'static>,
    inner: TestCa,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let inner = TestCa::new(name).unwrap();
        Ca {
            cert: inner.certificate().clone(),
            inner,
        }
    }

    pub fn anchors(&self) -> TrustAnchors {
        self.inner.anchors().unwrap()
    }

    /// Signs a CSR (as the controller would), keeping its URI SAN.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> CertificateDer<'static> {
        self.inner.sign_csr(csr_der, not_before, not_after).unwrap()
    }

    /// A new key and a leaf for it, valid for an hour either side of now.
    pub fn issue(&self, uri: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let now = SystemTime::now();
        self.issue_between(uri, now - HOUR, now + HOUR)
    }

    pub fn issue_between(
        &self,
        uri: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.inner.issue(uri, not_before, not_after).unwrap()
    }
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// Credentials for `identity` holding a fresh certificate from `ca`.
pub fn certified(ca: &Ca, identity: &str) -> Credentials {
    let creds = Credentials::new(id(identity), ca.anchors());
    let (chain, key) = ca.issue(identity);
    creds.install(chain, key).unwrap();
    creds
}

/// A clock stuck at one moment.
#[derive(Debug)]
pub struct FixedClock(pub SystemTime);

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}

/// A clock the test moves.
#[derive(Debug)]
pub struct SettableClock(std::sync::Mutex<SystemTime>);

impl SettableClock {
    pub fn new(t: SystemTime) -> Self {
        SettableClock(std::sync::Mutex::new(t))
    }

    pub fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap() = t;
    }
}

impl Clock for SettableClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

pub fn fixed_clock(t: SystemTime) -> Arc<dyn Clock> {
    Arc::new(FixedClock(t))
}

/// Writes `msg` and reads the same number of bytes back (the other side
/// echoes).
pub async fn round_trip<S>(stream: &mut S, msg: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(msg).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = vec![0; msg.len()];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

/// Echoes until EOF.
pub async fn echo<S>(mut stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}
