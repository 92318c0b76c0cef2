//! Protocol detection (`proxy/src/detect.rs`) on whatever a client sends
//! first, in any chunking. Must not panic, must return at most MAX_DETECT
//! bytes, and must return exactly the bytes it read (they are replayed in
//! front of the stream).
#![no_main]

use conduit_fuzz::{Chunked, runtime};
use conduit_proxy::detect::{DetectTimeouts, Detected, MAX_DETECT, detect};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|input: &[u8]| {
    let mut reader = Chunked::new(input);
    let payload = reader.payload();
    let (verdict, read) = runtime()
        .block_on(detect(
            &mut reader,
            DetectTimeouts {
                detect: Duration::from_secs(5),
                http_head: Duration::from_secs(5),
            },
        ))
        .expect("reading from memory cannot fail");
    assert!(read.len() <= MAX_DETECT);
    assert_eq!(
        &read[..],
        &payload[..read.len()],
        "bytes read are replayed as read"
    );
    if payload.is_empty() {
        assert_eq!(verdict, Detected::Closed);
    }
    if verdict == Detected::Http2 {
        assert!(read.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    }
});
