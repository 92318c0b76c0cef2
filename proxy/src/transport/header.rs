//! The transport header a conduit proxy writes first on every connection to
//! a peer's inbound port (after TLS, once there is TLS):
//!
//! ```text
//! CONDUIT/1 <proto> <port>\n
//! ```
//!
//! `<proto>` is `h2` (a multiplexed HTTP/2 connection that carries HTTP/1
//! and HTTP/2 requests alike), `http1` (one HTTP/1.1 connection, used for
//! requests that turn into byte streams: `Upgrade` and `CONNECT`) or `tcp`
//! (opaque bytes). `<port>` is the application port inside the pod. The
//! line is at most [`MAX_LEN`] bytes; anything else is refused.

use bytes::{Bytes, BytesMut};
use std::fmt;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAGIC: &[u8] = b"CONDUIT/1 ";
pub const MAX_LEN: usize = 64;

pub use crate::protocol::MeshProto;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransportHeader {
    pub proto: MeshProto,
    pub port: u16,
}

impl fmt::Display for TransportHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "CONDUIT/1 {} {}", self.proto.as_str(), self.port)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl TransportHeader {
    pub fn parse(line: &[u8]) -> io::Result<Self> {
        let rest = line.strip_prefix(MAGIC).ok_or_else(|| {
            invalid("connection to the inbound port without a CONDUIT/1 transport header".into())
        })?;
        let text = std::str::from_utf8(rest)
            .map_err(|_| invalid("transport header is not UTF-8".into()))?;
        let mut parts = text.trim_end_matches(['\r', '\n']).split(' ');
        let name = parts.next();
        let proto = name
            .and_then(MeshProto::from_name)
            .ok_or_else(|| invalid(format!("transport header: unknown protocol {name:?}")))?;
        let port = parts
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(format!("transport header: bad port in {text:?}")))?;
        if parts.next().is_some() {
            return Err(invalid(format!(
                "transport header: trailing fields in {text:?}"
            )));
        }
        Ok(Self { proto, port })
    }

    pub async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(self.to_string().as_bytes()).await
    }

    /// Reads the header line; returns it and any bytes read past it.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<(Self, Bytes)> {
        let mut buf = BytesMut::with_capacity(MAX_LEN);
        loop {
            if let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(nl + 1);
                return Ok((Self::parse(&line)?, buf.freeze()));
            }
            if buf.len() >= MAX_LEN {
                return Err(invalid("transport header longer than 64 bytes".into()));
            }
            let mut chunk = [0u8; MAX_LEN];
            let n = r.read(&mut chunk[..MAX_LEN - buf.len()]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed before the transport header",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_keeps_following_bytes() {
        let h = TransportHeader {
            proto: MeshProto::H2,
            port: 8080,
        };
        let mut wire = Vec::new();
        h.write(&mut wire).await.unwrap();
        wire.extend_from_slice(b"PRI *");
        let (got, rest) = TransportHeader::read(&mut &wire[..]).await.unwrap();
        assert_eq!(got, h);
        assert_eq!(&rest[..], b"PRI *");
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b"GET / HTTP/1.1\n"[..],
            b"CONDUIT/1 h3 80\n",
            b"CONDUIT/1 tcp 0\n",
            b"CONDUIT/1 tcp 80 x\n",
        ] {
            assert!(TransportHeader::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn rejects_overlong_and_truncated() {
        let long = [b'A'; 200];
        assert!(TransportHeader::read(&mut &long[..]).await.is_err());
        assert!(
            TransportHeader::read(&mut &b"CONDUIT/1 tcp"[..])
                .await
                .is_err()
        );
    }
}
