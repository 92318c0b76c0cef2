//! The mesh transport header (`proxy/src/transport/header.rs`) a peer
//! proxy sends first on the inbound port: parse a line, and read it from a
//! stream in any chunking. What parses prints back to the same header; what
//! is read never exceeds MAX_LEN and keeps the bytes after the line.
#![no_main]

use conduit_fuzz::{Chunked, runtime};
use conduit_proxy::transport::header::{MAX_LEN, TransportHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if let Ok(h) = TransportHeader::parse(input) {
        assert_ne!(h.port, 0);
        let again =
            TransportHeader::parse(h.to_string().as_bytes()).expect("printed header parses");
        assert_eq!(again, h);
    }
    let mut reader = Chunked::new(input);
    let payload = reader.payload();
    if let Ok((h, rest)) = runtime().block_on(TransportHeader::read(&mut reader)) {
        let line = payload
            .iter()
            .position(|b| *b == b'\n')
            .expect("a header line ends in \\n");
        assert!(line < MAX_LEN);
        assert_eq!(TransportHeader::parse(&payload[..=line]).ok(), Some(h));
        assert!(payload[line + 1..].starts_with(&rest));
    }
});
