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

pub mod access_log;
pub mod admin;
pub mod app;
pub mod balance;
pub mod config;
pub mod control;
pub mod ctx;
pub mod detect;
pub mod discovery;
pub mod dispatch;
pub mod http;
pub mod identity;
mod idle_map;
pub mod inbound;
pub mod inbound_target;
pub mod io;
pub mod listen;
pub mod memory;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod policy;
pub mod register;
pub mod route;
pub mod tap;
pub mod tcp;
pub mod transport;

pub use app::{Deps, Running, start};
pub use config::Config;
