//! Identity and mTLS tests of `conduit-proxy-tls`, one binary: real rustls
//! handshakes over loopback, certificate refresh and rotation, and the real
//! controller's Certify; one module per theme.

mod support;

mod controller;
mod handshake;
mod refresh;
mod rotation;
