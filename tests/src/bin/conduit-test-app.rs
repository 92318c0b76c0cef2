//! Test application: `server` answers every connection with one JSON line
//! describing it; `client` dials once, sends a line, and prints what it saw
//! (getsockname, getpeername, the reply) as one JSON line; `flood` writes to
//! one connection until the kernel stops taking bytes and prints how many it
//! took; `hold` opens a connection and never reads it. Used by the
//! end-to-end tests and the demo as the "application" in a pod.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use conduit_tests::report::{
    ClientOutcome, ClientReport, FloodReport, Reply, ServerEvent, canonical, emit,
};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Longest line read from a peer.
const MAX_LINE: u64 = 4096;
/// How long one of `flood`'s writes may take nothing before it calls that
/// push-back.
const FLOOD_QUIET: Duration = Duration::from_millis(500);

#[derive(Parser)]
#[command(about = "conduit end-to-end test application")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer each connection on each address with a JSON line.
    Server {
        /// Name put in every reply.
        #[arg(long)]
        name: String,
        /// Address to listen on (repeatable); `[::]:port` serves IPv4 too.
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Dial once and report.
    Client {
        /// Address to dial.
        #[arg(long)]
        connect: SocketAddr,
        /// Line to send.
        #[arg(long, default_value = "hello")]
        send: String,
        /// Timeout for connect and for the reply, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Dial once (or, with `--listen`, accept once) and write without
    /// reading until writes stop being accepted (or `--limit` bytes were),
    /// then report.
    Flood {
        /// Address to dial.
        #[arg(long, required_unless_present = "listen", conflicts_with = "listen")]
        connect: Option<SocketAddr>,
        /// Address to accept one connection on.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Stop after this many bytes.
        #[arg(long)]
        limit: u64,
    },
    /// Dial once and hold the connection without reading, until killed.
    Hold {
        /// Address to dial.
        #[arg(long)]
        connect: SocketAddr,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Server { name, listen } => server(&name, &listen),
        Cmd::Client {
            connect,
            send,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms);
            emit(&ClientReport {
                dialled: connect,
                outcome: client(connect, &send, timeout),
            });
            Ok(())
        }
        Cmd::Flood {
            connect,
            listen,
            limit,
        } => {
            let s = match (connect, listen) {
                (Some(addr), _) => TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .with_context(|| format!("connecting to {addr}"))?,
                (None, Some(addr)) => {
                    let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
                    emit(&ServerEvent::Listening {
                        addrs: vec![l.local_addr()?],
                    });
                    l.accept().context("accepting")?.0
                }
                (None, None) => anyhow::bail!("flood needs --connect or --listen"),
            };
            let peer = canonical(s.peer_addr()?);
            let (accepted, pushed_back) = flood(s, limit)?;
            emit(&FloodReport {
                peer,
                accepted,
                pushed_back,
            });
            Ok(())
        }
        Cmd::Hold { connect } => {
            let _s = TcpStream::connect_timeout(&connect, Duration::from_secs(5))
                .with_context(|| format!("connecting to {connect}"))?;
            loop {
                std::thread::park();
            }
        }
    }
}

/// Writes to a connection until a write takes nothing for [`FLOOD_QUIET`]
/// (the send and receive buffers between here and the reader are full) or
/// `limit` bytes were taken. Returns the bytes taken and whether the kernel
/// pushed back.
fn flood(mut s: TcpStream, limit: u64) -> Result<(u64, bool)> {
    s.set_write_timeout(Some(FLOOD_QUIET))?;
    let chunk = vec![b'x'; 64 * 1024];
    let mut accepted = 0u64;
    while accepted < limit {
        match s.write(&chunk) {
            Ok(n) => accepted += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok((accepted, true));
            }
            Err(e) => return Err(e).context("writing"),
        }
    }
    Ok((accepted, false))
}

fn server(name: &str, addrs: &[SocketAddr]) -> Result<()> {
    let listeners = addrs
        .iter()
        .map(|a| TcpListener::bind(a).with_context(|| format!("binding {a}")))
        .collect::<Result<Vec<_>>>()?;
    let bound = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?;
    emit(&ServerEvent::Listening { addrs: bound });
    let threads: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let name = name.to_owned();
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    match conn {
                        Ok(s) => {
                            let name = name.clone();
                            std::thread::spawn(move || {
                                if let Err(e) = answer(&name, s) {
                                    eprintln!("connection failed: {e:#}");
                                }
                            });
                        }
                        Err(e) => eprintln!("accept failed: {e}"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn answer(name: &str, mut s: TcpStream) -> Result<()> {
    let local = canonical(s.local_addr()?);
    let peer = canonical(s.peer_addr()?);
    emit(&ServerEvent::Accepted { local, peer });
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let received = read_line(&s)?;
    let reply = Reply::Server {
        name: name.to_owned(),
        local,
        peer,
        received,
    };
    writeln!(s, "{}", serde_json::to_string(&reply)?)?;
    s.shutdown(Shutdown::Write)?;
    Ok(())
}

fn read_line(s: &TcpStream) -> Result<String> {
    let mut line = String::new();
    BufReader::new(std::io::Read::take(s, MAX_LINE)).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

fn client(addr: SocketAddr, send: &str, timeout: Duration) -> ClientOutcome {
    let fail = |step: &str, e: &dyn std::fmt::Display| ClientOutcome::Failed {
        step: step.into(),
        error: e.to_string(),
    };
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return fail("connect", &e),
    };
    let (local, peer) = match (s.local_addr(), s.peer_addr()) {
        (Ok(l), Ok(p)) => (l, p),
        (Err(e), _) | (_, Err(e)) => return fail("getsockname/getpeername", &e),
    };
    if let Err(e) = s
        .set_read_timeout(Some(timeout))
        .and_then(|()| writeln!(s, "{send}"))
    {
        return fail("write", &e);
    }
    let line = match read_line(&s) {
        Ok(l) if l.is_empty() => return fail("read", &"connection closed without a reply"),
        Ok(l) => l,
        Err(e) => return fail("read", &e),
    };
    match serde_json::from_str(&line) {
        Ok(reply) => ClientOutcome::Replied { local, peer, reply },
        Err(e) => fail("parse", &format!("{e}: {line}")),
    }
}
