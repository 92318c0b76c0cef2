//! Requests with both `Content-Length` and `Transfer-Encoding` are refused
//! with 400 (RFC 9112 section 6.1 allows it; two framings on one request are
//! how request smuggling starts when hops disagree).
//!
//! hyper resolves the conflict itself (chunked wins, `Content-Length` is
//! dropped from the parsed head, the connection closes after the response),
//! so the parsed request no longer shows it. [`HeadScanner`] therefore
//! watches the raw bytes hyper reads: each block that looks like a request
//! head (a request line, header lines, a blank line) is recorded with the
//! framing fields it carried, and the service asks [`Heads::conflicting`]
//! for the request hyper handed it (matched by method and target). Bytes
//! inside bodies that happen to look like a head can only mislead the
//! check about the sender's own requests; hyper's own handling stays the
//! backstop. Memory is bounded: a capped line buffer and at most
//! [`MAX_HEADS`] recorded heads.

use conduit_base::sync::Unpoisoned;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Heads remembered (pipelined requests not yet served).
pub const MAX_HEADS: usize = 16;
/// Longest line kept (longer lines are cut; only their start matters).
const MAX_LINE: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    method: Vec<u8>,
    target: Vec<u8>,
    content_length: bool,
    transfer_encoding: bool,
}

#[derive(Debug, Default)]
struct Scan {
    line: Vec<u8>,
    current: Option<Head>,
    done: VecDeque<Head>,
}

impl Scan {
    fn feed(&mut self, mut bytes: &[u8]) {
        // Line by line, not byte by byte: a line that arrives whole is
        // looked at where it lies, only a partial one is buffered (capped).
        while let Some(i) = bytes.iter().position(|b| *b == b'\n') {
            let (part, rest) = (&bytes[..i], &bytes[i + 1..]);
            if self.line.is_empty() {
                let part = &part[..part.len().min(MAX_LINE)];
                self.end_line(part.strip_suffix(b"\r").unwrap_or(part));
            } else {
                self.buffer(part);
                let mut line = std::mem::take(&mut self.line);
                self.end_line(line.strip_suffix(b"\r").unwrap_or(&line));
                line.clear();
                self.line = line;
            }
            bytes = rest;
        }
        self.buffer(bytes);
    }

    fn buffer(&mut self, part: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn end_line(&mut self, line: &[u8]) {
        match &mut self.current {
            None => self.current = request_line(line),
            Some(_) if line.is_empty() => {
                if let Some(h) = self.current.take() {
                    if self.done.len() == MAX_HEADS {
                        self.done.pop_front();
                    }
                    self.done.push_back(h);
                }
            }
            Some(h) => {
                let name = line.split(|b| *b == b':').next().unwrap_or_default();
                let name = name.trim_ascii();
                if name.eq_ignore_ascii_case(b"content-length") {
                    h.content_length = true;
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    h.transfer_encoding = true;
                }
            }
        }
    }
}

/// `METHOD SP target SP HTTP/1.x`.
fn request_line(line: &[u8]) -> Option<Head> {
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    let token = !method.is_empty() && method.iter().all(|b| b.is_ascii_uppercase() || *b == b'-');
    (token && version.starts_with(b"HTTP/1.") && parts.next().is_none()).then(|| Head {
        method: method.to_vec(),
        target: target.to_vec(),
        content_length: false,
        transfer_encoding: false,
    })
}

/// What the scanner saw, shared with the connection's service.
#[derive(Debug, Clone, Default)]
pub struct Heads(Arc<Mutex<Scan>>);

impl Heads {
    /// Whether the head of the request `method target` carried both
    /// `Content-Length` and `Transfer-Encoding`. The matching head and every
    /// older one are forgotten.
    pub fn conflicting(&self, method: &str, target: &str) -> bool {
        let mut scan = self.0.locked();
        let found = scan
            .done
            .iter()
            .position(|h| h.method == method.as_bytes() && h.target == target.as_bytes());
        match found {
            Some(i) => {
                let h = scan.done.drain(..=i).next_back();
                h.is_some_and(|h| h.content_length && h.transfer_encoding)
            }
            None => false,
        }
    }

    fn feed(&self, bytes: &[u8]) {
        self.0.locked().feed(bytes);
    }
}

/// Passes bytes through, showing what is read to a [`Heads`].
pub type HeadScanner<T> = crate::io::Observed<T, Heads>;

impl crate::io::Observer for Heads {
    fn read(&self, bytes: &[u8]) {
        self.feed(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(chunks: &[&[u8]]) -> Heads {
        let h = Heads::default();
        for c in chunks {
            h.feed(c);
        }
        h
    }

    #[test]
    fn both_framings_are_seen_in_either_order_and_case() {
        for raw in [
            &b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            b"POST /a HTTP/1.1\nTRANSFER-ENCODING : chunked\nContent-Length:5\n\n",
        ] {
            assert!(heads(&[raw]).conflicting("POST", "/a"), "{raw:?}");
        }
    }

    #[test]
    fn one_framing_is_fine() {
        let h = heads(&[
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        assert!(!h.conflicting("POST", "/a"));
        assert!(!h.conflicting("POST", "/b"));
    }

    #[test]
    fn split_reads_and_pipelining() {
        let raw = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let h = Heads::default();
        for b in raw.chunks(3) {
            h.feed(b);
        }
        assert!(!h.conflicting("GET", "/1"));
        assert!(h.conflicting("POST", "/2"));
        // Forgotten once asked.
        assert!(!h.conflicting("POST", "/2"));
    }

    /// The same bytes give the same heads however the reads cut them
    /// (lines whole in one read are scanned in place, split ones buffered).
    #[test]
    fn every_chunking_sees_the_same_heads() {
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_LINE));
        let input = format!(
            "POST /a HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
             GET /b HTTP/1.1\nHost: x\n\n{long}Content-Length: 1\r\n\r\n\
             PUT /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let whole = heads(&[input.as_bytes()]).0.lock().unwrap().done.clone();
        assert_eq!(whole.len(), 3, "{whole:?}");
        for size in [1, 2, 3, 7, 64, 4096, MAX_LINE + 5] {
            let chunks: Vec<&[u8]> = input.as_bytes().chunks(size).collect();
            let got = heads(&chunks).0.lock().unwrap().done.clone();
            assert_eq!(got, whole, "chunks of {size}");
        }
    }

    #[test]
    fn memory_is_bounded() {
        let h = Heads::default();
        for i in 0..100 {
            h.feed(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes());
        }
        h.feed(&vec![b'a'; 1 << 20]);
        let scan = h.0.lock().unwrap();
        assert_eq!(scan.done.len(), MAX_HEADS);
        assert!(scan.line.len() <= MAX_LINE);
    }
}
