//! Test proxy: a small but real transparent proxy for the end-to-end tests
//! and the capture demo. Inside a pod's network namespace it listens on
//! `127.0.0.1:4140` and `[::1]:4140` (outbound) and `[::]:4143` (inbound,
//! dual-stack), registers with the node agent through `conduit-register`
//! (handing over the inbound listener), and for every accepted connection
//! recovers the original destination: `getsockopt(SO_ORIGINAL_DST)` /
//! `IP6T_SO_ORIGINAL_DST` on outbound, `getsockname` on inbound. It then
//! either answers with a JSON report (`--mode report`), connects to the
//! original destination and relays (`--mode relay`), or holds the connection
//! open without reading from it (`--mode hold`). Every step is a JSON
//! line on stdout (see `conduit_tests::report::ProxyEvent`).
//!
//! stdin commands: `unregister` closes the registration (the listeners stay),
//! `register` registers again.

// One libc::getsockopt with a sockaddr_storage buffer (nix only offers the
// fixed-family SO_ORIGINAL_DST variants); see `original_dst`.
#![allow(unsafe_code)]

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use conduit_register::{PodInfo, maintain};
use conduit_tests::report::{ProxyEvent, Reply, Side, canonical, emit};
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6, sockopt};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Longest line read from a client in report mode.
const MAX_LINE: u64 = 4096;
/// How long a client may take to send its line, and the proxy to connect.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Report,
    Relay,
    Hold,
}

#[derive(Parser)]
#[command(about = "conduit end-to-end test proxy")]
struct Cli {
    /// Pod name sent to the agent.
    #[arg(long)]
    pod: String,
    /// Pod namespace sent to the agent.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The agent's registration socket; without it the proxy only listens.
    #[arg(long)]
    agent_socket: Option<PathBuf>,
    /// Instead of connecting to the agent's socket, listen on the abstract
    /// registration socket in the pod's network namespace, where the agent
    /// finds the proxy (`conduit_register::discovery`).
    #[arg(long)]
    agent_discovery_abstract: bool,
    /// What to do with accepted connections.
    #[arg(long, value_enum, default_value = "report")]
    mode: Mode,
    #[arg(long, default_value_t = 4140)]
    outbound_port: u16,
    #[arg(long, default_value_t = 4143)]
    inbound_port: u16,
    #[arg(long, default_value_t = 4191)]
    admin_port: u16,
    /// Inbound ports sk_lookup must leave alone (repeatable).
    #[arg(long)]
    skip_inbound_port: Vec<u16>,
    /// Outbound destination ports never captured (repeatable).
    #[arg(long)]
    skip_outbound_port: Vec<u16>,
}

struct Proxy {
    pod: String,
    mode: Mode,
    inbound_port: u16,
    next_conn: AtomicU64,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let out4 = TcpListener::bind((Ipv4Addr::LOCALHOST, cli.outbound_port))
        .await
        .context("binding 127.0.0.1")?;
    let out6 = TcpListener::bind((Ipv6Addr::LOCALHOST, cli.outbound_port))
        .await
        .context("binding [::1]")?;
    let inbound_std = dual_stack_listener(cli.inbound_port)?;
    let inbound_fd: OwnedFd = inbound_std
        .try_clone()
        .context("duplicating the inbound listener")?
        .into();
    let inbound = TcpListener::from_std(inbound_std)?;
    emit(&ProxyEvent::Listening {
        outbound: vec![out4.local_addr()?, out6.local_addr()?],
        inbound: inbound.local_addr()?,
    });

    let proxy = Arc::new(Proxy {
        pod: cli.pod.clone(),
        mode: cli.mode,
        inbound_port: cli.inbound_port,
        next_conn: AtomicU64::new(1),
    });
    for (listener, side) in [
        (out4, Side::Outbound),
        (out6, Side::Outbound),
        (inbound, Side::Inbound),
    ] {
        tokio::spawn(accept_loop(Arc::clone(&proxy), listener, side));
    }

    let mut pod = PodInfo::new(&cli.pod, &cli.namespace);
    pod.outbound_port = cli.outbound_port;
    pod.inbound_port = cli.inbound_port;
    pod.admin_port = cli.admin_port;
    pod.skip_inbound_ports = cli.skip_inbound_port.clone();
    pod.skip_outbound_ports = cli.skip_outbound_port.clone();
    let start = |socket: &PathBuf| -> Result<tokio::task::JoinHandle<()>> {
        let fd = inbound_fd
            .try_clone()
            .context("duplicating the inbound listener")?;
        Ok(maintain(socket.clone(), pod.clone(), fd, |on| {
            emit(&if on {
                ProxyEvent::Registered
            } else {
                ProxyEvent::Unregistered
            })
        }))
    };
    let mut registration = match &cli.agent_socket {
        Some(s) => Some(start(s)?),
        None => None,
    };
    if cli.agent_discovery_abstract {
        let name = conduit_register::discovery::ABSTRACT_NAME;
        let unix = conduit_register::discovery::bind(name)
            .with_context(|| format!("binding the abstract socket @{name}"))?;
        registration = Some(conduit_register::discovery::serve(
            unix,
            pod.clone(),
            |on| {
                emit(&if on {
                    ProxyEvent::Registered
                } else {
                    ProxyEvent::Unregistered
                })
            },
        ));
    }

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            line = stdin.next_line() => match line? {
                // stdin closed: keep serving until SIGTERM.
                None => { sigterm.recv().await; break }
                Some(cmd) => match (cmd.trim(), &cli.agent_socket) {
                    ("unregister", _) => {
                        if let Some(task) = registration.take() {
                            task.abort();
                            let _ = task.await;
                            emit(&ProxyEvent::Unregistered);
                        }
                    }
                    ("register", Some(socket)) => {
                        if registration.is_none() {
                            registration = Some(start(socket)?);
                        }
                    }
                    (other, _) => eprintln!("unknown command {other:?} (try `unregister` or `register`)"),
                },
            },
        }
    }
    Ok(())
}

/// `[::]:port` accepting IPv4 too (IPV6_V6ONLY off, whatever the sysctl says).
fn dual_stack_listener(port: u16) -> Result<std::net::TcpListener> {
    let fd = socket::socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)
        .with_context(|| format!("binding [::]:{port}"))?;
    socket::listen(&fd, Backlog::new(1024)?)?;
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    Ok(l)
}

async fn accept_loop(proxy: Arc<Proxy>, listener: TcpListener, side: Side) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let conn = proxy.next_conn.fetch_add(1, Ordering::Relaxed);
                let proxy = Arc::clone(&proxy);
                tokio::spawn(async move {
                    if let Err(e) = proxy.handle(conn, side, stream).await {
                        emit(&ProxyEvent::Failed {
                            conn: Some(conn),
                            error: format!("{e:#}"),
                        });
                    }
                });
            }
            Err(e) => {
                emit(&ProxyEvent::Failed {
                    conn: None,
                    error: format!("accept: {e}"),
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Proxy {
    async fn handle(&self, conn: u64, side: Side, mut client: TcpStream) -> Result<()> {
        let local = canonical(client.local_addr()?);
        let peer = canonical(client.peer_addr()?);
        let original_dst = match side {
            Side::Outbound => original_dst(&client, local)?,
            Side::Inbound => local,
        };
        emit(&ProxyEvent::Accepted {
            conn,
            side,
            local,
            peer,
            original_dst,
        });
        match self.mode {
            Mode::Report => {
                let mut line = String::new();
                let mut reader = BufReader::new((&mut client).take(MAX_LINE));
                tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line))
                    .await
                    .context("reading")??;
                let reply = Reply::Proxy {
                    pod: self.pod.clone(),
                    side,
                    original_dst,
                    local,
                    peer,
                    received: line.trim_end().to_owned(),
                };
                let mut out = serde_json::to_vec(&reply)?;
                out.push(b'\n');
                client.write_all(&out).await?;
                client.shutdown().await?;
            }
            // Never read: what the client sends must wait in the kernel,
            // bounded by the socket buffers.
            Mode::Hold => tokio::time::sleep(IO_TIMEOUT).await,
            Mode::Relay => {
                let target = match side {
                    Side::Outbound => original_dst,
                    Side::Inbound if original_dst.port() == self.inbound_port => {
                        bail!(
                            "a direct connection to the inbound port has no original destination to relay to"
                        )
                    }
                    // Inbound: the application listens in this pod; reach it on loopback.
                    Side::Inbound => match original_dst.ip() {
                        IpAddr::V4(_) => {
                            SocketAddr::from((Ipv4Addr::LOCALHOST, original_dst.port()))
                        }
                        IpAddr::V6(_) => {
                            SocketAddr::from((Ipv6Addr::LOCALHOST, original_dst.port()))
                        }
                    },
                };
                let mut upstream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(target))
                    .await
                    .with_context(|| format!("connecting to {target}: timed out"))?
                    .with_context(|| format!("connecting to {target}"))?;
                let upstream_local = canonical(upstream.local_addr()?);
                let upstream_peer = canonical(upstream.peer_addr()?);
                let (bytes_up, bytes_down) =
                    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
                emit(&ProxyEvent::Relayed {
                    conn,
                    upstream_local,
                    upstream_peer,
                    bytes_up,
                    bytes_down,
                });
            }
        }
        Ok(())
    }
}

/// The original destination of a captured outbound connection, asked the way
/// a proxy behind iptables REDIRECT asks: `getsockopt(SOL_IP, SO_ORIGINAL_DST)`
/// on an IPv4 socket, `getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)` on an IPv6
/// one. The buffer is a `sockaddr_storage`, and the answer is decoded by its
/// family: the agent answers in the family the application dialled, so an
/// IPv6 destination captured to `127.0.0.1:4140` comes back as a
/// `sockaddr_in6` on an IPv4 socket.
fn original_dst(s: &TcpStream, local: SocketAddr) -> Result<SocketAddr> {
    use std::os::fd::AsRawFd;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let (level, what) = if local.is_ipv4() {
        (libc::SOL_IP, "getsockopt(SOL_IP, SO_ORIGINAL_DST)")
    } else {
        (libc::SOL_IPV6, "getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)")
    };
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&ss))?;
    // SAFETY: the fd is the live socket of `s`; `ss` and `len` are valid for
    // writes of `len` bytes and outlive the call.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            SO_ORIGINAL_DST,
            (&raw mut ss).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(what);
    }
    let addr = match i32::from(ss.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says sockaddr_in and it is long enough.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read_unaligned((&raw const ss).cast()) };
            SocketAddr::from((
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says sockaddr_in6 and it is long enough.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read_unaligned((&raw const ss).cast()) };
            SocketAddr::from((
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
            ))
        }
        f => bail!("{what} answered family {f} with {len} bytes"),
    };
    Ok(canonical(addr))
}
