//! The status of a gRPC-Web response, which travels in its body
//! (`doc/PROTOCOL-WEB.md` in grpc/grpc): the body is a sequence of
//! length-prefixed frames (a flag byte, a 4-byte big-endian length, the
//! bytes), and the trailers are the last frame, the flag's high bit set,
//! their bytes HTTP/1-style header lines (`grpc-status:0\r\n`). The
//! `-text` variant base64-encodes the same frames, each possibly padded on
//! its own.
//!
//! [`WebScan`] reads the body as it passes through the proxy, chunk by
//! chunk: it looks at frame headers only, skips the bytes of messages,
//! and keeps at most [`MAX_TRAILERS`] bytes of the trailers frame, so a
//! response of any size costs a few bytes of state.

use super::grpc::{End, STATUS, Wire};

/// The most of a trailers frame kept to find its `grpc-status` in.
pub const MAX_TRAILERS: usize = 4096;

/// The flag bit of the trailers frame.
const TRAILERS_FLAG: u8 = 0x80;

/// A gRPC-Web response body's frames, read as they pass.
#[derive(Debug)]
pub struct WebScan {
    /// The base64 decoder of the `-text` variant.
    text: Option<Base64>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Reading a frame's 5-byte header.
    Header { buf: [u8; 5], have: usize },
    /// Skipping the rest of a message frame.
    Message { left: u32 },
    /// Reading the trailers frame: bytes still to come, what is kept.
    Trailers { left: u32, kept: Vec<u8> },
    /// The trailers frame is complete: its `grpc-status`.
    Done(Option<i32>),
    /// Not gRPC-Web text (a byte outside base64): no status can be read.
    Broken,
}

const HEADER: State = State::Header {
    buf: [0; 5],
    have: 0,
};

impl WebScan {
    /// A scan for a response of this wire; `None` for gRPC over HTTP/2,
    /// whose status is in the HTTP trailers.
    pub fn new(wire: Wire) -> Option<WebScan> {
        let text = match wire {
            Wire::Grpc => return None,
            Wire::Web => None,
            Wire::WebText => Some(Base64::default()),
        };
        Some(WebScan {
            text,
            state: HEADER,
        })
    }

    /// Reads the next chunk of the body.
    pub fn feed(&mut self, data: &[u8]) {
        let Some(b64) = &mut self.text else {
            push(&mut self.state, data);
            return;
        };
        let mut out = [0u8; 192];
        for chunk in data.chunks(256) {
            let mut n = 0;
            for &c in chunk {
                match b64.push(c) {
                    Ok(Some(b)) => {
                        out[n] = b;
                        n += 1;
                    }
                    Ok(None) => {}
                    Err(()) => {
                        self.state = State::Broken;
                        return;
                    }
                }
            }
            push(&mut self.state, &out[..n]);
        }
    }

    /// The trailers frame's status once the frame is complete: it is the
    /// body's last, and a client may stop reading there, before the body
    /// ends.
    pub fn trailers(&self) -> Option<End> {
        match self.state {
            State::Done(status) => Some(End::Trailers(status)),
            _ => None,
        }
    }

    /// How the body ended, once it has: with the trailers frame's status,
    /// or without trailers (none came, or they were cut short).
    pub fn end(&self) -> End {
        self.trailers().unwrap_or(End::NoTrailers)
    }
}

/// Advances `state` over `data` (decoded frame bytes).
fn push(state: &mut State, mut data: &[u8]) {
    while !data.is_empty() {
        match state {
            State::Header { buf, have } => {
                let n = (buf.len() - *have).min(data.len());
                buf[*have..*have + n].copy_from_slice(&data[..n]);
                *have += n;
                data = &data[n..];
                if *have < buf.len() {
                    return;
                }
                let left = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
                *state = match (buf[0] & TRAILERS_FLAG != 0, left) {
                    (true, 0) => State::Done(None),
                    (true, _) => State::Trailers {
                        left,
                        kept: Vec::with_capacity((left as usize).min(MAX_TRAILERS)),
                    },
                    (false, 0) => HEADER,
                    (false, _) => State::Message { left },
                };
            }
            State::Message { left } => {
                let n = data.len().min(*left as usize);
                *left -= n as u32;
                data = &data[n..];
                if *left == 0 {
                    *state = HEADER;
                }
            }
            State::Trailers { left, kept } => {
                let n = data.len().min(*left as usize);
                let room = MAX_TRAILERS - kept.len();
                kept.extend_from_slice(&data[..n.min(room)]);
                *left -= n as u32;
                data = &data[n..];
                if *left == 0 {
                    *state = State::Done(status_of(kept));
                }
            }
            // The trailers are the last frame: nothing after them counts.
            State::Done(_) | State::Broken => return,
        }
    }
}

/// The `grpc-status` of a trailers frame's header lines (names are
/// case-insensitive; `None`: missing or not a number).
fn status_of(block: &[u8]) -> Option<i32> {
    block.split(|&b| b == b'\n').find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if !name
            .trim_ascii()
            .eq_ignore_ascii_case(STATUS.as_str().as_bytes())
        {
            return None;
        }
        std::str::from_utf8(value).ok()?.trim().parse().ok()
    })
}

/// A streaming base64 decoder (standard or URL-safe alphabet): `=` ends a
/// group, so frames padded one by one decode as one stream; line breaks
/// and spaces are skipped.
#[derive(Debug, Default)]
struct Base64 {
    acc: u32,
    bits: u32,
}

impl Base64 {
    /// The next decoded byte, if `c` completes one; `Err`: not base64.
    fn push(&mut self, c: u8) -> Result<Option<u8>, ()> {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => {
                (self.acc, self.bits) = (0, 0);
                return Ok(None);
            }
            b'\r' | b'\n' | b' ' | b'\t' => return Ok(None),
            _ => return Err(()),
        };
        self.acc = (self.acc << 6) | u32::from(v);
        self.bits += 6;
        if self.bits < 8 {
            return Ok(None);
        }
        self.bits -= 8;
        let byte = (self.acc >> self.bits) as u8;
        self.acc &= (1 << self.bits) - 1;
        Ok(Some(byte))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, bytes: &[u8]) -> Vec<u8> {
        let mut f = vec![flag];
        f.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        f.extend_from_slice(bytes);
        f
    }

    /// Frames of a body: (flag, bytes).
    type Frames<'a> = &'a [(u8, &'a [u8])];

    fn body(frames: Frames<'_>) -> Vec<u8> {
        frames.iter().flat_map(|(f, b)| frame(*f, b)).collect()
    }

    /// Scans `body` cut at every pair of positions (three chunks), and
    /// checks each cut ends the same.
    fn end_of(wire: Wire, body: &[u8]) -> End {
        let whole = {
            let mut s = WebScan::new(wire).unwrap();
            s.feed(body);
            // The trailers frame is known as soon as it is complete.
            if let End::Trailers(_) = s.end() {
                assert_eq!(s.trailers(), Some(s.end()));
            }
            s.end()
        };
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let mut s = WebScan::new(wire).unwrap();
                s.feed(&body[..i]);
                s.feed(&body[i..j]);
                s.feed(&body[j..]);
                assert_eq!(s.end(), whole, "cut at {i} and {j}");
            }
        }
        whole
    }

    #[test]
    fn the_status_is_in_the_trailers_frame() {
        let msg: &[u8] = &[7; 40];
        let cases: &[(Frames<'_>, End)] = &[
            (
                &[(0, msg), (0x80, b"grpc-status:0\r\n")],
                End::Trailers(Some(0)),
            ),
            (
                &[
                    (0, msg),
                    (0x80, b"grpc-status: 14\r\ngrpc-message: down\r\n"),
                ],
                End::Trailers(Some(14)),
            ),
            // Names are case-insensitive; the status need not come first.
            (
                &[(0x80, b"grpc-message:x\r\nGrpc-Status:7\r\n")],
                End::Trailers(Some(7)),
            ),
            // A message whose bytes look like a trailers frame is skipped.
            (
                &[
                    (0, &frame(0x80, b"grpc-status:0\r\n")),
                    (0x80, b"grpc-status:13"),
                ],
                End::Trailers(Some(13)),
            ),
            // Compressed messages (flag 1) and empty ones are skipped too.
            (
                &[(1, msg), (0, b""), (0x80, b"grpc-status:0")],
                End::Trailers(Some(0)),
            ),
            // Trailers without a (numeric) status.
            (&[(0x80, b"grpc-message:x\r\n")], End::Trailers(None)),
            (&[(0x80, b"grpc-status:ok\r\n")], End::Trailers(None)),
            (&[(0x80, b"")], End::Trailers(None)),
            // No trailers frame: a gRPC client reports an error.
            (&[(0, msg)], End::NoTrailers),
            (&[], End::NoTrailers),
        ];
        for (frames, want) in cases {
            let b = body(frames);
            assert_eq!(end_of(Wire::Web, &b), *want, "{frames:?}");
        }
    }

    #[test]
    fn a_body_cut_short_has_no_trailers() {
        let b = body(&[(0, &[1; 10]), (0x80, b"grpc-status:0\r\n")]);
        for cut in 0..b.len() {
            let mut s = WebScan::new(Wire::Web).unwrap();
            s.feed(&b[..cut]);
            assert_eq!(s.end(), End::NoTrailers, "cut at {cut}");
        }
    }

    #[test]
    fn large_trailers_keep_only_their_start() {
        let mut t = b"grpc-status:3\r\n".to_vec();
        t.extend(std::iter::repeat_n(b'x', 1 << 20));
        let mut s = WebScan::new(Wire::Web).unwrap();
        s.feed(&body(&[(0x80, &t)]));
        assert_eq!(s.end(), End::Trailers(Some(3)));
        // A status past the kept bytes is not seen: the call is a failure,
        // never a success read from unbounded state.
        let mut t = vec![b'x'; MAX_TRAILERS];
        t.extend_from_slice(b"\r\ngrpc-status:0\r\n");
        let mut s = WebScan::new(Wire::Web).unwrap();
        s.feed(&body(&[(0x80, &t)]));
        assert_eq!(s.end(), End::Trailers(None));
    }

    /// RFC 4648 encoding, for the tests.
    fn b64(bytes: &[u8]) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        for c in bytes.chunks(3) {
            let n = c.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b)) << (8 * (3 - c.len()));
            for i in 0..4 {
                out.push(match i <= c.len() {
                    true => A[(n >> (18 - 6 * i) & 63) as usize],
                    false => b'=',
                });
            }
        }
        out
    }

    #[test]
    fn the_text_variant_is_base64_padded_per_frame_or_not() {
        let msg = frame(0, b"hello, world");
        let ok = frame(0x80, b"grpc-status:0\r\n");
        let failed = frame(0x80, b"grpc-status:14\r\n");
        let joined = |a: &[u8], b: &[u8]| [a, b].concat();
        let cases: &[(Vec<u8>, End)] = &[
            // The frames encoded one by one, each padded.
            (joined(&b64(&msg), &b64(&ok)), End::Trailers(Some(0))),
            (joined(&b64(&msg), &b64(&failed)), End::Trailers(Some(14))),
            // The whole body encoded at once.
            (b64(&joined(&msg, &failed)), End::Trailers(Some(14))),
            (b64(&msg), End::NoTrailers),
            // Not base64: nothing can be read.
            (b"!!!!".to_vec(), End::NoTrailers),
            (joined(b"*", &b64(&ok)), End::NoTrailers),
        ];
        for (text, want) in cases {
            assert_eq!(
                end_of(Wire::WebText, text),
                *want,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn base64_decodes_both_alphabets() {
        let decode = |s: &[u8]| {
            let mut d = Base64::default();
            s.iter()
                .filter_map(|&c| d.push(c).unwrap())
                .collect::<Vec<u8>>()
        };
        assert_eq!(decode(b"aGk="), b"hi");
        assert_eq!(decode(b"aGk=aGk="), b"hihi");
        assert_eq!(decode(b"+/8="), [0xfb, 0xff]);
        assert_eq!(decode(b"-_8="), [0xfb, 0xff]);
        assert_eq!(decode(b"aG\r\nk="), b"hi");
        assert!(Base64::default().push(b'*').is_err());
    }

    /// Any bytes, in any chunks: no panic, and state bounded by
    /// [`MAX_TRAILERS`] (an application's body is untrusted input).
    #[test]
    fn random_bodies_never_panic() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let len = (next() % 300) as usize;
            // Small lengths in frame headers now and then, so trailers
            // frames complete.
            let body: Vec<u8> = (0..len)
                .map(|i| match (i % 5, next() % 4) {
                    (1..=3, 0..=2) => 0,
                    _ => next() as u8,
                })
                .collect();
            for wire in [Wire::Web, Wire::WebText] {
                let mut s = WebScan::new(wire).unwrap();
                let mut rest = &body[..];
                while !rest.is_empty() {
                    let n = 1 + (next() as usize % rest.len());
                    s.feed(&rest[..n]);
                    rest = &rest[n..];
                    if let State::Trailers { kept, .. } = &s.state {
                        assert!(kept.len() <= MAX_TRAILERS);
                    }
                }
                let _ = s.end();
            }
        }
    }

    #[test]
    fn http2_grpc_needs_no_scan() {
        assert!(WebScan::new(Wire::Grpc).is_none());
    }
}
