//! Test certificate authorities (rcgen) and loopback TLS plumbing.
#![allow(dead_code)]

use conduit_proxy_tls::{Clock, Credentials, SpiffeId, TrustAnchors};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const HOUR: Duration = Duration::from_secs(3600);

/// A certificate authority for tests.
pub struct Ca {
    pub cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = (now - 24 * HOUR).into();
        params.not_after = (now + 24 * HOUR).into();
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().clone();
        Ca {
            cert: der,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn anchors(&self) -> TrustAnchors {
        TrustAnchors::from_der([self.cert.clone()]).unwrap()
    }

    /// A leaf for `public_key` naming `uri`, valid between the given times.
    pub fn sign(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        uri: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri.to_owned().try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params
            .signed_by(public_key, &self.issuer)
            .unwrap()
            .der()
            .clone()
    }

    /// Signs a CSR (as the controller would), keeping its URI SAN.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> CertificateDer<'static> {
        let csr =
            rcgen::CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).unwrap();
        let [SanType::URI(uri)] = csr.params.subject_alt_names.as_slice() else {
            panic!(
                "CSR must have exactly one URI SAN: {:?}",
                csr.params.subject_alt_names
            )
        };
        self.sign(&csr.public_key, uri.as_str(), not_before, not_after)
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
        let key = KeyPair::generate().unwrap();
        let leaf = self.sign(&key, uri, not_before, not_after);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![leaf], key)
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
