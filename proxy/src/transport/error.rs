//! [`ConnectError`]: why a connector did not give a connection, typed.
//! Connectors return `io::Result` (the seam is I/O), so the typed error
//! travels as the `io::Error`'s inner error and [`ConnectError::of`] gets it
//! back; callers decide on the type (is this the peer's identity?), never
//! on an `io::ErrorKind`.

use super::intent::Refusal;
use conduit_proxy_tls::{SpiffeId, TlsError};
use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS intent refused the connection before it was made (fail
    /// closed: a meshed peer that cannot be verified, or no identity of our
    /// own).
    #[error("{addr}: {refusal}")]
    Refused { addr: SocketAddr, refusal: Refusal },
    /// The mTLS handshake with a meshed peer failed.
    #[error("mTLS to {addr} (expecting {expected}): {source}")]
    Mtls {
        addr: SocketAddr,
        expected: SpiffeId,
        #[source]
        source: TlsError,
    },
}

impl ConnectError {
    /// The typed error a connector put inside `e`, if any.
    pub fn of(e: &io::Error) -> Option<&ConnectError> {
        e.get_ref()?.downcast_ref()
    }

    /// Whether the connection failed on identity: refused by the intent,
    /// or the peer did not prove the identity discovery named (the
    /// `tls_peer_identity` error reason).
    pub fn is_peer_identity(&self) -> bool {
        match self {
            ConnectError::Refused { .. } => true,
            ConnectError::Mtls { source, .. } => source.is_peer_identity(),
        }
    }

    fn kind(&self) -> io::ErrorKind {
        match self {
            ConnectError::Refused { .. } => io::ErrorKind::PermissionDenied,
            ConnectError::Mtls { source, .. } => source.kind(),
        }
    }
}

impl From<ConnectError> for io::Error {
    fn from(e: ConnectError) -> Self {
        io::Error::new(e.kind(), e)
    }
}

/// Whether a connect error is about the peer's identity (see
/// [`ConnectError::is_peer_identity`]); other I/O errors are not.
pub fn is_peer_identity(e: &io::Error) -> bool {
    ConnectError::of(e).is_some_and(ConnectError::is_peer_identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_through_io_errors() {
        let addr: SocketAddr = "10.0.0.1:4143".parse().unwrap();
        let mtls = |source| -> io::Error {
            ConnectError::Mtls {
                addr,
                expected: "spiffe://td/ns/a/sa/b".parse().unwrap(),
                source,
            }
            .into()
        };
        let refused = ConnectError::Refused {
            addr,
            refusal: Refusal::MeshedWithoutIdentity,
        };
        let no_identity = conduit_proxy_tls::PeerIdentityError::NoIdentity;
        let second = std::time::Duration::from_secs(1);
        use io::ErrorKind::*;
        let cases: Vec<(io::Error, bool, io::ErrorKind)> = vec![
            (refused.into(), true, PermissionDenied),
            (
                mtls(TlsError::PeerIdentity(no_identity)),
                true,
                PermissionDenied,
            ),
            (mtls(TlsError::Timeout(second)), false, TimedOut),
            (mtls(TlsError::NotReady), false, NotConnected),
            // Not ours: never an identity failure, whatever its kind.
            (
                io::Error::new(PermissionDenied, "EACCES"),
                false,
                PermissionDenied,
            ),
            (ConnectionRefused.into(), false, ConnectionRefused),
        ];
        for (e, identity, kind) in cases {
            assert_eq!(is_peer_identity(&e), identity, "{e}");
            assert_eq!(e.kind(), kind, "{e}");
        }
    }
}
