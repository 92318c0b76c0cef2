//! conduit-proxy: the transparent data-plane proxy that runs beside every
//! meshed pod. It accepts the pod's outbound connections (captured by the
//! node agent's eBPF programs or by iptables REDIRECT) and inbound
//! connections from peers, detects the protocol, resolves the destination
//! through discovery, balances requests over endpoints and records metrics.
//!
//! Start one with [`app::start`] from a [`config::Config`] and [`app::Deps`];
//! `Deps` holds the replaceable pieces: original-destination lookup
//! ([`orig_dst::OrigDst`]), discovery, and the two mTLS seams
//! ([`transport::Connector`] for every upstream connection,
//! [`transport::Acceptor`] for every connection from a peer proxy).

// The public surface: what the binary, the integration tests in
// proxy/tests and the fuzz targets use (start a proxy from a config and its
// replaceable parts; discovery and balancing driven directly; the parsers
// under fuzzing). Everything else is the proxy's own.
pub mod app;
pub mod balance;
pub mod config;
pub mod detect;
pub mod discovery;
pub mod http;
pub mod io;
pub mod orig_dst;
pub mod policy;
pub mod runtime;
pub mod transport;

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod control;
pub(crate) mod ctx;
pub(crate) mod dispatch;
pub(crate) mod identity;
mod idle_map;
pub(crate) mod inbound;
pub(crate) mod inbound_target;
pub(crate) mod listen;
pub(crate) mod memory;
pub(crate) mod metrics;
pub(crate) mod outbound;
pub(crate) mod protocol;
pub(crate) mod register;
pub(crate) mod route;
pub(crate) mod tap;
pub(crate) mod tcp;

pub use app::{Deps, Running, start};
pub use config::Config;
