//! The conventions every conduit crate shares, so that `conduit-proxy`,
//! `conduit-controller`, `conduit-ebpf` and the bench tools read the same
//! input the same way and lock the same way:
//!
//! * [`duration`]: the one duration grammar (`500ms`, `30s`, `5m`, `1h`,
//!   `7d`; a bare number is seconds) of every flag and variable that takes
//!   a duration;
//! * [`logging`]: the one tracing set-up (`--log` filter, else `RUST_LOG`,
//!   else `info`; `--log-format plain|json`; on stderr);
//! * [`malloc`]: the allocator setting every proxy is started with;
//! * [`response`]: which response series count as failures (the agent's
//!   `stat` and `top`, the benchmarks' and tests' reports);
//! * [`sync`]: the one mutex policy (std locks taken through
//!   [`sync::Unpoisoned`], poisoning ignored, and why).
//!
//! A leaf crate (clap, thiserror and tracing-subscriber only), so any crate
//! may depend on it.

pub mod duration;
pub mod logging;
pub mod malloc;
pub mod response;
pub mod sync;
