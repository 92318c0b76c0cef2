//! Protocol detection on the first bytes a client sends.
//!
//! We read (never peek) up to [`MAX_DETECT`] bytes and stop as soon as the
//! bytes decide: the HTTP/2 prior-knowledge preface, an HTTP/1.x request
//! line, or a TLS ClientHello (forwarded untouched, as opaque). Anything else
//! is opaque TCP. If the client sends nothing within the detection timeout
//! the protocol is taken to be server-speaks-first (SMTP, MySQL, ...) and
//! the connection is forwarded as opaque, so such servers are delayed by at
//! most that timeout; ports listed as opaque skip detection entirely.
//!
//! A client that has sent the start of an HTTP request (a known method, or
//! a request line not yet ended, or part of the HTTP/2 preface) when the
//! detection timeout passes is not taken for opaque: it is held to the
//! header read timeout, and closed ([`Detected::SlowHttp`]) if the request
//! line is still incomplete then. Otherwise trickling `G`, `E`, `T` would
//! turn an HTTP connection into an opaque one, free of every HTTP limit.

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
    /// The start of an HTTP request, not finished within the header read
    /// timeout: the connection is closed.
    SlowHttp,
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
            Detected::SlowHttp => "slow_http",
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

/// Standard methods: a buffer that could still become one of them (followed
/// by a space) is an HTTP request in progress.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// The bytes so far are the unfinished start of an HTTP request: a prefix of
/// a standard method and its space, a standard method followed by a request
/// line without its end yet, or a prefix of the HTTP/2 preface.
fn http_in_progress(buf: &[u8]) -> bool {
    if buf.is_empty() {
        return false;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf.len() < H2_PREFACE.len() && buf[..n] == H2_PREFACE[..n] {
        return true;
    }
    METHODS.iter().any(|m| {
        if buf.len() <= m.len() {
            m.starts_with(buf)
        } else {
            buf.starts_with(m) && !buf.contains(&b'\n')
        }
    })
}

/// How long detection waits.
#[derive(Debug, Clone, Copy)]
pub struct DetectTimeouts {
    /// For the first decisive bytes (silence: server-speaks-first).
    pub detect: Duration,
    /// For an HTTP request line once it has started (the header read timeout).
    pub http_head: Duration,
}

/// Reads from `io` until the protocol is known, the client goes quiet for
/// `timeouts.detect` (or, in the middle of an HTTP request line, for
/// `timeouts.http_head` from the start), or [`MAX_DETECT`] bytes arrived.
/// Returns what was read, to be replayed in front of the stream.
pub async fn detect<T: AsyncRead + Unpin>(
    io: &mut T,
    timeouts: DetectTimeouts,
) -> std::io::Result<(Detected, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let start = tokio::time::Instant::now();
    let mut deadline = start + timeouts.detect;
    let http_deadline = start + timeouts.http_head.max(timeouts.detect);
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
            Err(_elapsed) if http_in_progress(&buf) => {
                if deadline >= http_deadline {
                    return Ok((Detected::SlowHttp, buf.freeze()));
                }
                deadline = http_deadline;
                continue;
            }
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

    const T: DetectTimeouts = DetectTimeouts {
        detect: Duration::from_millis(200),
        http_head: Duration::from_millis(400),
    };

    async fn run(chunks: &[&[u8]], close: bool) -> Detected {
        let (mut a, mut b) = tokio::io::duplex(MAX_DETECT * 2);
        for c in chunks {
            a.write_all(c).await.unwrap();
        }
        if close {
            drop(a);
            detect(&mut b, T).await.unwrap().0
        } else {
            let d = detect(&mut b, T).await.unwrap().0;
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
        // Other bytes then silence: forwarded as opaque, bytes kept.
        assert_eq!(run(&[b"HELLO"], false).await, Detected::Opaque);
        assert_eq!(run(&[b"GETX"], false).await, Detected::Opaque);
    }

    #[test]
    fn http_in_progress_cases() {
        for (buf, want) in [
            (&b"G"[..], true),
            (b"GE", true),
            (b"GET", true),
            (b"GET ", true),
            (b"GET /partial", true),
            (b"DELE", true),
            (b"PRI * HTTP/2", true),
            (b"P", true),
            (b"", false),
            (b"GETX", false),
            (b"HELLO", false),
            (b"get", false),
            (b"GET / HTTP/1.1\n", false),
            (b"\x16\x03", false),
        ] {
            assert_eq!(
                http_in_progress(buf),
                want,
                "{:?}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[tokio::test]
    async fn a_trickled_http_method_is_held_to_the_header_timeout() {
        // The start of a method, then silence: not opaque, closed once the
        // header read timeout has passed.
        let start = tokio::time::Instant::now();
        assert_eq!(run(&[b"GE"], false).await, Detected::SlowHttp);
        assert!(start.elapsed() >= T.http_head, "{:?}", start.elapsed());
        assert_eq!(run(&[b"GET /partial"], false).await, Detected::SlowHttp);
        // Finishing the line after the detection timeout but within the
        // header timeout is HTTP.
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"GE").await.unwrap();
        let d = tokio::spawn(async move { detect(&mut b, T).await.unwrap().0 });
        tokio::time::sleep(T.detect + Duration::from_millis(50)).await;
        a.write_all(b"T / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(d.await.unwrap(), Detected::Http1);
    }
}
