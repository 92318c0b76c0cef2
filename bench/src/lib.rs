//! The project's benchmark programs and the pieces they share. The programs
//! (`src/bin`, run by `cargo xtask bench`): `conduit-proxy-bench`,
//! `conduit-controller-bench`, `conduit-controller-scale-bench`,
//! `conduit-scaling-bench`, `conduit-tls-bench`, `conduit-mesh-bench`,
//! `conduit-cost` and `conduit-soak`; they depend on the production crates, never the reverse,
//! so `conduit-proxy` and the others ship without the load generator or the
//! plotting stack. The shared pieces: an HTTP/1.1 and HTTP/2 load generator (open loop
//! at a fixed rate, timed from each request's scheduled send so stalls are
//! not hidden, and closed loop for the maximum rate), a plain hyper server,
//! percentile math, CPU and memory sampling of other processes from
//! `/proc`, Markdown tables and PNG latency plots. Benchmarks print tables;
//! nothing here asserts on speed.

pub mod args;
pub mod cost;
pub mod loadgen;
pub mod plot;
pub mod procstat;
pub mod propagation;
pub mod redirect;
pub mod report;
pub mod server;
pub mod soak;
pub mod stats;
pub mod table;

pub use loadgen::{Load, Protocol, Sample, Target};
