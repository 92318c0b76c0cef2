//! How the proxy reaches peers and how peers reach it. Two seams carry the
//! future mutual TLS: [`Connector`] makes every upstream connection and
//! [`Acceptor`] takes every connection a meshed peer makes to the inbound
//! port. Plain TCP implementations live here; a TLS implementation wraps
//! them without touching the rest of the proxy. [`header`] is the short
//! transport header by which a peer proxy says which application port and
//! protocol it wants.

pub mod accept;
pub mod connect;
pub mod error;
pub mod guard;
pub mod header;
pub mod intent;
pub mod tls;

pub use accept::{Accepted, Acceptor, PlainAcceptor};
pub use connect::{Connector, NextHop, TcpConnector};
pub use error::ConnectError;
pub use header::{MeshProto, TransportHeader};
pub use intent::{NoTls, Peer, Refusal, Tls};

use crate::io::BoxIo;
use std::io;

/// Opens a connection to `hop` through `connector` and, towards a peer
/// proxy, writes the transport header first. Every upstream connection is
/// made here.
pub async fn open(connector: &dyn Connector, hop: &NextHop) -> io::Result<BoxIo> {
    let mut io = connector.connect(hop).await?;
    if let Some(h) = hop.header() {
        h.write(&mut io).await?;
    }
    Ok(io)
}
