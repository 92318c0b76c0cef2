//! The proxy's integration tests, one binary: real proxies (in process, or the
//! built binary) on loopback with real HTTP/1.1, HTTP/2, gRPC, TCP and TLS
//! peers; one module per theme. Run one theme with
//! `cargo test --workspace --test it -- http1::`.

mod balance_util;
mod h2_raw;
mod support;

mod admin;
mod bad_input;
mod balance;
mod balance_proxy;
mod cli;
mod discovery;
mod discovery_controller;
mod fail_closed;
mod grpc;
mod grpc_web;
mod h2_abuse;
mod http1;
mod http2;
mod inbound_refusals;
mod mtls;
mod policy;
mod register;
mod retry;
mod tcp;
