//! What the test binaries report, as JSON lines: the test server and client
//! (`conduit-test-app`) and the test proxy (`conduit-test-proxy`). Tests
//! parse these to assert exactly what happened on each connection.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Which listener of the proxy accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// `127.0.0.1:4140` / `[::1]:4140`: captured outbound connections.
    Outbound,
    /// `[::]:4143`: inbound connections steered by sk_lookup.
    Inbound,
}

/// The first (and only) line a client receives on a connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Reply {
    /// A test server answered (directly, or through a relaying proxy).
    Server {
        /// The server's name.
        name: String,
        /// Its local address for the connection (getsockname).
        local: SocketAddr,
        /// Its peer (getpeername): the client, or the proxy that relayed.
        peer: SocketAddr,
        /// The line the client sent.
        received: String,
    },
    /// A test proxy in report mode answered.
    Proxy {
        /// The pod the proxy serves.
        pod: String,
        /// Which listener accepted.
        side: Side,
        /// The original destination it recovered.
        original_dst: SocketAddr,
        /// Its local address for the accepted connection.
        local: SocketAddr,
        /// The connection's peer.
        peer: SocketAddr,
        /// The line the client sent.
        received: String,
    },
}

/// What the test client prints (one line) for one connection attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientReport {
    /// The address the client dialled.
    pub dialled: SocketAddr,
    /// What happened.
    pub outcome: ClientOutcome,
}

/// What the test application's `flood` prints: how much one connection
/// took before its writes would block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloodReport {
    /// The connection's peer.
    pub peer: SocketAddr,
    /// Bytes the kernel accepted from the writes.
    pub accepted: u64,
    /// Whether the writes stopped being accepted (else the limit was reached).
    pub pushed_back: bool,
}

/// The result of one connection attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientOutcome {
    /// Connected and got a reply.
    Replied {
        /// getsockname on the client's socket.
        local: SocketAddr,
        /// getpeername on the client's socket (should be `dialled`).
        peer: SocketAddr,
        /// The reply.
        reply: Reply,
    },
    /// Something failed (connect, write, read or parse).
    Failed {
        /// At which step.
        step: String,
        /// The error.
        error: String,
    },
}

/// Events the test server prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ServerEvent {
    /// Listening on these addresses.
    Listening {
        /// Bound addresses.
        addrs: Vec<SocketAddr>,
    },
    /// Accepted a connection.
    Accepted {
        /// Local address.
        local: SocketAddr,
        /// Peer address.
        peer: SocketAddr,
    },
}

/// Events the test proxy prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProxyEvent {
    /// Listeners are bound.
    Listening {
        /// Outbound listeners.
        outbound: Vec<SocketAddr>,
        /// The inbound listener (passed to the agent).
        inbound: SocketAddr,
    },
    /// The agent enrolled the pod.
    Registered,
    /// The registration ended (agent gone, or told to unregister).
    Unregistered,
    /// A connection was accepted and its original destination recovered.
    Accepted {
        /// Per-proxy connection number.
        conn: u64,
        /// Which listener.
        side: Side,
        /// Local address of the accepted socket.
        local: SocketAddr,
        /// Its peer.
        peer: SocketAddr,
        /// The original destination.
        original_dst: SocketAddr,
    },
    /// The proxy connected to the original destination and relayed.
    Relayed {
        /// Connection number.
        conn: u64,
        /// The proxy's own socket towards the destination.
        upstream_local: SocketAddr,
        /// The destination it reached.
        upstream_peer: SocketAddr,
        /// Bytes from client to upstream.
        bytes_up: u64,
        /// Bytes from upstream to client.
        bytes_down: u64,
    },
    /// Handling a connection failed.
    Failed {
        /// Connection number, if one was accepted.
        conn: Option<u64>,
        /// What failed.
        error: String,
    },
}

/// Canonical form of an address: IPv4-mapped IPv6 becomes IPv4 (a
/// dual-stack listener reports IPv4 peers as `::ffff:a.b.c.d`).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Prints one event as a JSON line on stdout.
pub fn emit<T: Serialize>(event: &T) {
    match serde_json::to_string(event) {
        // Never panic when the reader went away (println! would).
        Ok(s) => {
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{s}");
        }
        Err(e) => eprintln!("cannot serialise event: {e}"),
    }
}
