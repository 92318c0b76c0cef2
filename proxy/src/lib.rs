//! conduit-proxy: the transparent data-plane proxy that runs beside every
//! meshed pod. It accepts the pod's outbound connections (captured by the
//! node agent's eBPF programs or by iptables REDIRECT) and inbound
//! connections from peers, detects the protocol, resolves the destination
//! through discovery, balances requests over endpoints and records metrics.

pub mod balance;
pub mod discovery;
