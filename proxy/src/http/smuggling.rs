//! Requests with both `Content-Length` and `Transfer-Encoding` are refused
//! with 400 (RFC 9112 section 6.1 allows it; two framings on one request are
//! how request smuggling starts when hops disagree).
//!
//! hyper resolves the conflict itself (chunked wins, `Content-Length` is
//! dropped from the parsed head, the connection closes after the response),
//! so the parsed request no longer shows it. [`HeadScanner`] therefore
//! watches the raw bytes hyper reads: each block that looks like a request
//! head (a request line, header lines, a blank line) and carries
//! `Transfer-Encoding` is recorded with whether it also carried
//! `Content-Length`, and the service asks [`Heads::conflicting`] for each
//! request hyper parsed with `Transfer-Encoding`, matched by method and
//! target.
//!
//! The scanner does not know where bodies end, so it fails closed:
//! - heads without `Transfer-Encoding` are not kept, so a pipelined
//!   request of the same method and target cannot answer for a later
//!   ambiguous one;
//! - a request line is also found at the end of a line that body bytes
//!   without a line end ran into (`okPOST /x HTTP/1.1`): the method is
//!   matched as the end of what precedes the target;
//! - a request is refused if any recorded head of its method and target
//!   had both framings, not only the first;
//! - a head with both framings pushed out of the record unasked (more than
//!   [`MAX_HEADS`] pipelined behind it) refuses every later request with
//!   `Transfer-Encoding` on the connection.
//!
//! Bytes inside bodies that look like heads can only make the proxy refuse
//! the sender's own requests; hyper's own handling stays the backstop.
//! Memory is bounded: a capped line buffer, at most [`MAX_HEADS`] recorded
//! heads, and a few small recycled ones (no allocation per request).

use conduit_base::sync::Unpoisoned;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Heads remembered (pipelined requests not yet served).
pub const MAX_HEADS: usize = 16;
/// Longest line kept (longer lines are cut; only their start matters).
const MAX_LINE: usize = 8 * 1024;
/// Heads kept for reuse, and the largest method plus target reused (a
/// longer one is freed, so spare buffers stay small).
const SPARE_HEADS: usize = 4;
const SPARE_BYTES: usize = 512;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Finished heads that carried `Transfer-Encoding`, oldest first.
    done: VecDeque<Head>,
    spare: Vec<Head>,
    /// A head with both framings was pushed out of `done` unasked.
    lost_conflict: bool,
}

impl Head {
    fn ambiguous(&self) -> bool {
        self.content_length && self.transfer_encoding
    }

    /// `method` is the end of the recorded one: body bytes may precede it.
    fn is(&self, method: &[u8], target: &[u8]) -> bool {
        self.target == target && self.method.ends_with(method)
    }
}

impl Scan {
    fn feed(&mut self, mut bytes: &[u8]) {
        // Line by line, not byte by byte: a line that arrives whole is
        // looked at where it lies, only a partial one is buffered (capped).
        while let Some(i) = memchr::memchr(b'\n', bytes) {
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
            None => {
                if let Some((method, target)) = request_line(line) {
                    let mut h = self.spare.pop().unwrap_or_default();
                    h.method.extend_from_slice(method);
                    h.target.extend_from_slice(target);
                    self.current = Some(h);
                }
            }
            Some(_) if line.is_empty() => {
                if let Some(h) = self.current.take() {
                    if !h.transfer_encoding {
                        self.recycle(h);
                        return;
                    }
                    if self.done.len() == MAX_HEADS
                        && let Some(old) = self.done.pop_front()
                    {
                        self.lost_conflict |= old.ambiguous();
                        self.recycle(old);
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

    /// Keeps a finished head's buffers for the next one, if small.
    fn recycle(&mut self, mut h: Head) {
        if self.spare.len() < SPARE_HEADS
            && h.method.capacity() + h.target.capacity() <= SPARE_BYTES
        {
            h.method.clear();
            h.target.clear();
            h.content_length = false;
            h.transfer_encoding = false;
            self.spare.push(h);
        }
    }
}

/// `METHOD SP target SP HTTP/1.x`: the method and the target. Parsed from
/// the end, and the method is the token that ends what precedes the
/// target: body bytes without a line end may have run into the line.
fn request_line(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = line.rsplitn(3, |b| *b == b' ');
    let version = parts.next()?;
    let target = parts.next()?;
    let before = parts.next()?;
    let start = before
        .iter()
        .rposition(|b| !is_tchar(*b))
        .map_or(0, |i| i + 1);
    let method = &before[start..];
    (!method.is_empty() && !target.is_empty() && version.starts_with(b"HTTP/1."))
        .then_some((method, target))
}

/// RFC 9110 `tchar`: the characters of a method.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What the scanner saw, shared with the connection's service.
#[derive(Debug, Clone, Default)]
pub struct Heads(Arc<Mutex<Scan>>);

impl Heads {
    /// For a request hyper parsed with `Transfer-Encoding`: whether its
    /// head (or any recorded head of the same method and target, or a lost
    /// one) also carried `Content-Length`. The first matching head and
    /// every older one are forgotten.
    pub fn conflicting(&self, method: &str, target: &str) -> bool {
        let (method, target) = (method.as_bytes(), target.as_bytes());
        let mut scan = self.0.locked();
        let Some(i) = scan.done.iter().position(|h| h.is(method, target)) else {
            return scan.lost_conflict;
        };
        let conflict = scan.lost_conflict
            || scan
                .done
                .iter()
                .any(|h| h.is(method, target) && h.ambiguous());
        for _ in 0..=i {
            if let Some(h) = scan.done.pop_front() {
                scan.recycle(h);
            }
        }
        conflict
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
        // Only the heads with Transfer-Encoding are kept: POST /a, PUT /c.
        assert_eq!(whole.len(), 2, "{whole:?}");
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
            h.feed(format!("POST /{i} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes());
            h.feed(format!("GET /{} HTTP/1.1\r\n\r\n", "b".repeat(i * 100)).as_bytes());
        }
        assert_eq!(h.0.lock().unwrap().done.len(), MAX_HEADS);
        assert!(!h.conflicting("PUT", "/none"));
        assert!(!h.conflicting("POST", "/95"));
        h.feed(&vec![b'a'; 1 << 20]);
        let scan = h.0.lock().unwrap();
        assert_eq!(scan.done.len(), 4, "POST /96 to /99 left");
        assert!(scan.line.len() <= MAX_LINE);
        assert!(scan.spare.len() <= SPARE_HEADS);
        assert!(
            scan.spare
                .iter()
                .all(|s| s.method.capacity() + s.target.capacity() <= SPARE_BYTES)
        );
    }

    /// A pipelined request with one framing and the same method and target
    /// must not answer for the ambiguous request after it (hyper asks only
    /// about requests it parsed with Transfer-Encoding).
    #[test]
    fn an_earlier_request_with_the_same_target_does_not_hide_a_conflict() {
        let h = heads(&[
            b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nok",
            b"POST /x HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        assert!(h.conflicting("POST", "/x"));
    }

    #[test]
    fn request_lines() {
        type Found<'a> = Option<(&'a [u8], &'a [u8])>;
        // (line, the method and target found)
        let cases: &[(&[u8], Found<'_>)] = &[
            (b"GET / HTTP/1.1", Some((b"GET", b"/"))),
            (b"get /a?b=1 HTTP/1.0", Some((b"get", b"/a?b=1"))),
            // Body bytes without a line end ran into the request line.
            (b"okPOST /x HTTP/1.1", Some((b"okPOST", b"/x"))),
            (b"a body\x01PUT /y HTTP/1.1", Some((b"PUT", b"/y"))),
            (b"GET /a", None),
            (b"GET  HTTP/1.1", None),
            (b" / HTTP/1.1", None),
            (b"GET / HTTP/2", None),
            (b"HTTP/1.1", None),
            (b"", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                request_line(line),
                *want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// The first request's body holds a head of the same method and target
    /// with one framing; the real ambiguous request comes after it.
    #[test]
    fn a_head_in_a_body_does_not_hide_the_real_one() {
        let h = heads(&[
            b"POST /x HTTP/1.1\r\nContent-Length: 51\r\n\r\n\
              POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        assert!(h.conflicting("POST", "/x"));
    }

    /// More than [`MAX_HEADS`] heads pipelined behind an ambiguous one push
    /// it out unasked: every later request with Transfer-Encoding is refused.
    #[test]
    fn a_conflict_pushed_out_unasked_refuses_later_requests() {
        let h = Heads::default();
        h.feed(
            b"POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        for i in 0..MAX_HEADS {
            h.feed(
                format!("POST /b{i} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                    .as_bytes(),
            );
        }
        assert!(h.conflicting("POST", "/a"));
        assert!(h.conflicting("POST", "/b3"));
        assert!(h.conflicting("GET", "/never-seen"));
    }

    /// Recycled heads start clean: the flags of an ambiguous request do not
    /// carry over to the next request.
    #[test]
    fn recycled_heads_start_clean() {
        let h = Heads::default();
        for _ in 0..3 {
            h.feed(b"POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n");
            assert!(h.conflicting("POST", "/a"));
            h.feed(b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
            assert!(!h.conflicting("POST", "/a"));
            h.feed(b"GET /a HTTP/1.1\r\nContent-Length: 4\r\n\r\n");
        }
        assert!(h.0.lock().unwrap().done.is_empty());
    }
}
