//! Protocol detection on the first bytes a client sends.
//!
//! We read (never peek) up to [`MAX_DETECT`] bytes and stop as soon as the
//! bytes decide: the HTTP/2 prior-knowledge preface, an HTTP/1.x request
//! line, or a TLS ClientHello (forwarded untouched, as opaque). Anything else
//! is opaque TCP. If the client sends nothing within the detection timeout
//! the protocol is taken to be server-speaks-first (SMTP, MySQL, ...) and
//! the connection is forwarded as opaque, so such servers are delayed by at
//! most that timeout; ports listed as opaque skip detection entirely.

use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest prefix we buffer while deciding (an HTTP/1 request line longer
/// than this is treated as opaque).
pub const MAX_DETECT: usize = 8 * 1024;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// TLS ClientHello: not ours to terminate, forwarded as opaque.
    Tls,
    /// Bytes that are none of the above.
    Opaque,
    /// The client sent nothing in time (server-speaks-first) or closed.
    Timeout,
    Closed,
}

impl Detected {
    pub fn label(self) -> &'static str {
        match self {
            Detected::Http1 => "http1",
            Detected::Http2 => "http2",
            Detected::Tls => "tls",
            Detected::Opaque => "opaque",
            Detected::Timeout => "timeout",
            Detected::Closed => "closed",
        }
    }
}

enum Verdict {
    Done(Detected),
    NeedMore,
}

fn classify(buf: &[u8]) -> Verdict {
    if buf.is_empty() {
        return Verdict::NeedMore;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Verdict::Done(Detected::Http2)
        } else {
            Verdict::NeedMore
        };
    }
    if buf[0] == 0x16 {
        // TLS record: type handshake, version 3.x, handshake type ClientHello.
        if buf.len() < 6 {
            return Verdict::NeedMore;
        }
        let tls = buf[1] == 0x03 && buf[5] == 0x01;
        return Verdict::Done(if tls { Detected::Tls } else { Detected::Opaque });
    }
    http1_request_line(buf)
}

/// `METHOD SP request-target SP HTTP/1.x CRLF`, checked loosely: a token
/// method, then the version at the end of the first line.
fn http1_request_line(buf: &[u8]) -> Verdict {
    let method_len = buf
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || **b == b'-')
        .count();
    if method_len == buf.len() {
        return if method_len < 20 {
            Verdict::NeedMore
        } else {
            Verdict::Done(Detected::Opaque)
        };
    }
    if method_len == 0 || buf[method_len] != b' ' {
        return Verdict::Done(Detected::Opaque);
    }
    let Some(eol) = buf.iter().position(|b| *b == b'\n') else {
        let printable = buf
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\r');
        return if printable && buf.len() < MAX_DETECT {
            Verdict::NeedMore
        } else {
            Verdict::Done(Detected::Opaque)
        };
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    let ok = line.len() > 9 && line[line.len() - 9..line.len() - 1] == *b" HTTP/1.";
    Verdict::Done(if ok {
        Detected::Http1
    } else {
        Detected::Opaque
    })
}

/// Reads from `io` until the protocol is known, the client goes quiet for
/// `timeout`, or [`MAX_DETECT`] bytes arrived. Returns what was read, to be
/// replayed in front of the stream.
pub async fn detect<T: AsyncRead + Unpin>(
    io: &mut T,
    timeout: Duration,
) -> std::io::Result<(Detected, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if buf.len() >= MAX_DETECT {
            return Ok((Detected::Opaque, buf.freeze()));
        }
        let read = tokio::time::timeout_at(deadline, async {
            let mut chunk = [0u8; 1024];
            let want = chunk.len().min(MAX_DETECT - buf.len());
            let n = io.read(&mut chunk[..want]).await?;
            buf.extend_from_slice(&chunk[..n]);
            Ok::<usize, std::io::Error>(n)
        })
        .await;
        match read {
            Err(_elapsed) if buf.is_empty() => return Ok((Detected::Timeout, buf.freeze())),
            Err(_elapsed) => return Ok((Detected::Opaque, buf.freeze())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) if buf.is_empty() => return Ok((Detected::Closed, buf.freeze())),
            Ok(Ok(0)) => return Ok((Detected::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
        }
        if let Verdict::Done(d) = classify(&buf) {
            return Ok((d, buf.freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn run(chunks: &[&[u8]], close: bool) -> Detected {
        let (mut a, mut b) = tokio::io::duplex(MAX_DETECT * 2);
        for c in chunks {
            a.write_all(c).await.unwrap();
        }
        if close {
            drop(a);
            detect(&mut b, Duration::from_millis(200)).await.unwrap().0
        } else {
            let d = detect(&mut b, Duration::from_millis(200)).await.unwrap().0;
            drop(a);
            d
        }
    }

    #[tokio::test]
    async fn detects_each_protocol() {
        assert_eq!(
            run(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], false).await,
            Detected::Http1
        );
        assert_eq!(run(&[b"POST /x HTTP/1.0\n"], false).await, Detected::Http1);
        assert_eq!(run(&[H2_PREFACE], false).await, Detected::Http2);
        assert_eq!(
            run(&[b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n"], false).await,
            Detected::Http2
        );
        assert_eq!(
            run(&[&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]], false).await,
            Detected::Tls
        );
        assert_eq!(run(&[b"\x00\x01binary"], false).await, Detected::Opaque);
        assert_eq!(run(&[b"hello world\r\n"], false).await, Detected::Opaque);
        assert_eq!(run(&[b"GET / FTP/1.1\r\n"], false).await, Detected::Opaque);
    }

    #[tokio::test]
    async fn split_request_line_waits_for_more() {
        assert_eq!(
            run(&[b"GE", b"T /a HT", b"TP/1.1\r\n"], false).await,
            Detected::Http1
        );
    }

    #[tokio::test]
    async fn silence_is_server_speaks_first() {
        assert_eq!(run(&[], false).await, Detected::Timeout);
        assert_eq!(run(&[], true).await, Detected::Closed);
        // A partial request line then silence: forwarded as opaque, bytes kept.
        assert_eq!(run(&[b"GET /partial"], false).await, Detected::Opaque);
    }
}
