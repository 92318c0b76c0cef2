//! Discovery: the agent finds the proxies itself, so that a meshed pod needs
//! no hostPath to the agent's socket and runs under Pod Security `baseline`.
//!
//! Each round (`--discover-interval`, default 1 s) the agent lists the
//! network namespaces of the node's processes (`/proc/<pid>/ns/net`; the
//! agent has `hostPID`), leaves out the node's and its own, those already
//! being served, and, when `--cgroup` is not the hierarchy's root, those
//! with no process under it. On one short-lived thread it enters each
//! remaining namespace (`setns`) and connects to the abstract unix socket
//! [`ABSTRACT_NAME`], which only exists where a proxy in discovery mode
//! listens (abstract names are per network namespace). For each connection:
//!
//! * `SO_PEERCRED` names the process that listens there (host pid and uid);
//!   it must still be in the namespace that was probed;
//! * the proxy sends the usual [`wire::Request`] without a descriptor;
//! * the agent takes the inbound listener itself with `pidfd_open` +
//!   `pidfd_getfd` (ptrace rights over the proxy: `CAP_SYS_PTRACE`): the
//!   listening TCP socket bound to the request's `inbound_port`;
//! * in a cluster, the process must be the claimed pod's `conduit-proxy`
//!   container: its cgroup names one of that container's ids in the pod's
//!   status (`conduit_kube::proxy_container`), so an application container
//!   of the same pod that binds the name is refused;
//! * then everything goes through the same checks and enrolment as a
//!   registration over the socket (`Registry::open_slot` for the limits,
//!   then `Registry::register`),
//!   and the connection is held: the pod stays enrolled while it lives.
//!
//! A namespace whose registration was refused is probed again with backoff
//! (1 s doubling to 30 s); one whose registration closed is probed at the
//! next round (the proxy restarted, or will).

use crate::enrol::Peer;
use crate::register;
use crate::registry::Registry;
use anyhow::{Context, Result, anyhow, bail};
use conduit_register::wire;
use nix::sys::socket::{SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use conduit_register::discovery::ABSTRACT_NAME;

#[derive(clap::Args, Debug, Clone)]
pub struct DiscoverOptions {
    /// Also find proxies that listen on the abstract registration socket in
    /// their pod's network namespace (no hostPath in pods; see docs/ebpf.md).
    #[arg(long)]
    pub discover: bool,
    /// How often to look for new proxies.
    #[arg(long, default_value = "1000", value_name = "MILLISECONDS")]
    pub discover_interval: u64,
}

/// Longest wait after refused registrations in one namespace.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// First wait after a refused registration.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Most descriptors of a proxy looked at for its inbound listener.
const MAX_FDS: usize = 4096;

/// What the agent knows about one network namespace (by inode).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Probe {
    /// A registration from it is being served.
    busy: bool,
    /// After refusals: not before this instant, and the current backoff.
    after: Option<(Instant, Duration)>,
}

/// Per-namespace probing state; pure, so its rules are tested alone.
#[derive(Debug, Default)]
struct Probes {
    by_netns: HashMap<u64, Probe>,
}

impl Probes {
    /// Of the namespaces seen this round (inode, a pid in it), those to
    /// probe now; forgets namespaces that are gone.
    fn due(&mut self, seen: &[(u64, u32)], now: Instant) -> Vec<(u64, u32)> {
        let alive: HashSet<u64> = seen.iter().map(|(i, _)| *i).collect();
        self.by_netns.retain(|i, p| alive.contains(i) || p.busy);
        seen.iter()
            .filter(|(i, _)| match self.by_netns.get(i) {
                None => true,
                Some(p) => !p.busy && p.after.is_none_or(|(t, _)| now >= t),
            })
            .copied()
            .collect()
    }

    fn busy(&mut self, netns: u64) {
        self.by_netns.entry(netns).or_default().busy = true;
    }

    /// A registration from `netns` ended: enrolled and then closed (probe
    /// again at once), or refused (back off).
    fn finished(&mut self, netns: u64, enrolled: bool, now: Instant) {
        if enrolled {
            self.by_netns.remove(&netns);
            return;
        }
        let p = self.by_netns.entry(netns).or_default();
        let b = p
            .after
            .map_or(BACKOFF_MIN, |(_, b)| (b * 2).min(BACKOFF_MAX));
        *p = Probe {
            busy: false,
            after: Some((now + b, b)),
        };
    }
}

/// `net:[4026531840]` -> 4026531840.
fn netns_inode(link: &str) -> Option<u64> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn inode_of(pid: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    netns_inode(link.to_str()?)
}

/// `--cgroup` when it is not the root of its hierarchy (the root has no
/// `cgroup.type`): then only processes under it are looked at.
fn scope_of(attach: &Path) -> Option<PathBuf> {
    attach
        .join("cgroup.type")
        .exists()
        .then(|| attach.to_path_buf())
}

fn in_scope(pid: u32, scope: &Path, mounts: &[crate::cgroup::Mount]) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return false;
    };
    crate::cgroup::v2_path(&text)
        .and_then(|p| crate::cgroup::resolve(p, mounts))
        .is_some_and(|dir| dir.starts_with(scope))
}

/// Every network namespace of the node's processes, but `skip`: (inode, a
/// pid in it, under `scope` when given).
fn scan(skip: &[u64], scope: Option<&Path>) -> Vec<(u64, u32)> {
    let mounts = scope
        .and_then(|_| std::fs::read_to_string("/proc/self/mountinfo").ok())
        .map(|m| crate::cgroup::cgroup2_mounts(&m))
        .unwrap_or_default();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: HashMap<u64, u32> = HashMap::new();
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Some(ino) = inode_of(&pid.to_string()) else {
            continue;
        };
        if skip.contains(&ino) || found.contains_key(&ino) {
            continue;
        }
        if let Some(scope) = scope
            && !in_scope(pid, scope, &mounts)
        {
            continue;
        }
        found.insert(ino, pid);
    }
    let mut v: Vec<_> = found.into_iter().collect();
    v.sort();
    v
}

/// Enters each namespace (by a pid in it) on one short-lived thread and
/// connects to the abstract socket `name` there. Namespaces where nothing
/// listens are left out.
fn connect_all(due: Vec<(u64, u32)>, name: &str) -> Vec<(u64, std::os::unix::net::UnixStream)> {
    let name = name.to_string();
    let run = move || {
        let mut out = Vec::new();
        let Ok(addr) = nix::sys::socket::UnixAddr::new_abstract(name.as_bytes()) else {
            return out;
        };
        for (ino, pid) in due {
            let Ok(ns) = std::fs::File::open(format!("/proc/{pid}/ns/net")) else {
                continue;
            };
            // The pid may have been reused by a process of another namespace.
            if ns.metadata().map(|m| m.ino()).ok() != Some(ino) {
                continue;
            }
            // Only this thread switches namespace, and it ends after the loop.
            if let Err(e) = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET) {
                tracing::warn!(pid, error = %e, "cannot enter a network namespace to look for a proxy");
                continue;
            }
            // The socket is created here, so the abstract name is looked up
            // in this namespace; it stays usable after the thread leaves.
            match connect_nonblocking(&addr) {
                Ok(s) => out.push((ino, s)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(e) => {
                    tracing::debug!(pid, error = %e, "connecting to the registration socket failed")
                }
            }
        }
        out
    };
    std::thread::spawn(run).join().unwrap_or_default()
}

/// Connects without blocking: a listener whose backlog is full (one that
/// never accepts) fails at once with `EAGAIN` instead of stalling the probe
/// of every other namespace.
fn connect_nonblocking(
    addr: &nix::sys::socket::UnixAddr,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, connect, socket};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), addr)?;
    Ok(std::os::unix::net::UnixStream::from(fd))
}

/// Whether `fd` is a listening TCP (IPv4/IPv6) socket bound to `port`.
fn is_listener_on(fd: &OwnedFd, port: u16) -> bool {
    let listening = getsockopt(fd, sockopt::AcceptConn).unwrap_or(false);
    let stream = getsockopt(fd, sockopt::SockType).ok() == Some(nix::sys::socket::SockType::Stream);
    let bound = getsockname::<SockaddrStorage>(fd.as_fd().as_raw_fd()).ok();
    let bound_port = bound.and_then(|a| {
        a.as_sockaddr_in()
            .map(|a| a.port())
            .or_else(|| a.as_sockaddr_in6().map(|a| a.port()))
            .filter(|_| a.family().is_some())
    });
    listening && stream && bound_port == Some(port)
}

/// Takes the proxy's inbound listener (the listening TCP socket bound to
/// `port`) out of process `pid`'s descriptor table.
fn take_listener(pid: u32, port: u16) -> Result<OwnedFd> {
    let pidfd = crate::sys::pidfd_open(pid)
        .with_context(|| format!("pidfd_open of the proxy (pid {pid})"))?;
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing the descriptors of the proxy (pid {pid})"))?
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds.truncate(MAX_FDS);
    for fd in fds {
        match crate::sys::pidfd_getfd(&pidfd, fd) {
            Ok(dup) if is_listener_on(&dup, port) => return Ok(dup),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                return Err(anyhow!(e)).context(
                    "pidfd_getfd on the proxy was refused: the agent needs CAP_SYS_PTRACE (and Yama ptrace_scope below 3)",
                );
            }
            Err(_) => {} // closed meanwhile
        }
    }
    bail!("the proxy (pid {pid}) has no listening TCP socket on its inbound port {port}")
}

/// In a cluster: the listening process must be the claimed pod's
/// `conduit-proxy` container, not an application container of the pod.
async fn check_container(
    client: &kube::Client,
    pid: u32,
    pod: &conduit_register::PodInfo,
) -> Result<(), String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("reading /proc/{pid}/cgroup: {e}"))?;
    let cgroup = crate::cgroup::v2_path(&text)
        .ok_or_else(|| format!("pid {pid} has no cgroup v2 membership"))?;
    conduit_kube::proxy_container::check(client, &pod.namespace, &pod.name, cgroup)
        .await
        .map_err(|e| e.to_string())
}

/// One connection to a proxy's registration socket, served with the steps
/// of a registration over the agent's socket (`register.rs`). Returns
/// whether it was enrolled.
async fn serve(
    registry: Arc<Registry>,
    client: Option<kube::Client>,
    netns: u64,
    std: std::os::unix::net::UnixStream,
) -> bool {
    let refuse = |mut stream: tokio::net::UnixStream, reason: String| async move {
        tracing::warn!(%reason, netns_inode = netns, "discovered registration refused");
        register::answer_refused(&mut stream, reason).await;
        false
    };
    let mut stream = match std
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(std))
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot use a discovered connection");
            return false;
        }
    };
    let (cred, pid) = match listening_proxy(&stream, netns) {
        Ok(found) => found,
        Err(reason) => return refuse(stream, reason).await,
    };
    // The same limits as the socket's connections (per uid, per netns).
    let mut slot = match registry.open_slot(register::caller_of(&cred)) {
        Ok(s) => s,
        // open_slot logged it.
        Err(e) => {
            register::answer_refused(&mut stream, e.to_string()).await;
            return false;
        }
    };
    // A descriptor sent along is ignored (and closed): the agent takes the
    // listener itself.
    let request = match register::receive_request(&mut stream).await {
        Ok((r, _)) => r,
        Err(no) => return refuse(stream, no.reason()).await,
    };
    let listener = match take_checked_listener(&registry, client.as_ref(), pid, &request).await {
        Ok(l) => l,
        Err(reason) => return refuse(stream, reason).await,
    };
    let peer = Peer {
        pid,
        uid: cred.uid(),
    };
    tracing::info!(pid, uid = peer.uid, pod = %request.pod.name, namespace = %request.pod.namespace, "discovered a proxy");
    let lease = match registry.register(peer, request.pod, Some(listener)).await {
        Ok(lease) => lease,
        // register logged it.
        Err(r) => {
            register::answer_refused(&mut stream, r.to_string()).await;
            return false;
        }
    };
    slot.answered();
    // Enrolled, even when the answer cannot be sent.
    register::answer_and_hold(stream, lease).await;
    true
}

/// Who listens on the probed name (`SO_PEERCRED`): its credentials and host
/// pid, still in the network namespace `netns` it was found in (the listener
/// may have moved with setns after binding the name).
fn listening_proxy(
    stream: &tokio::net::UnixStream,
    netns: u64,
) -> Result<(tokio::net::unix::UCred, u32), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("SO_PEERCRED failed: {e}"))?;
    let Some(pid) = cred.pid().filter(|p| *p > 0).map(|p| p as u32) else {
        return Err("the proxy's pid is unknown (SO_PEERCRED)".into());
    };
    if inode_of(&pid.to_string()) != Some(netns) {
        return Err(format!(
            "the process listening on the registration socket (pid {pid}) is not in the network namespace it was found in"
        ));
    }
    Ok((cred, pid))
}

/// In a cluster, checks that `pid` is the claimed pod's proxy container
/// (an adopted proxy was checked by the agent that enrolled it), then takes
/// its inbound listener.
async fn take_checked_listener(
    registry: &Registry,
    client: Option<&kube::Client>,
    pid: u32,
    request: &wire::Request,
) -> Result<OwnedFd, String> {
    let adopted =
        crate::netns::start_time(pid).is_some_and(|start| registry.is_adopted_proxy(pid, start));
    if let Some(client) = client
        && !adopted
    {
        check_container(client, pid, &request.pod).await?;
    }
    let port = request.pod.inbound_port;
    match tokio::task::spawn_blocking(move || take_listener(pid, port)).await {
        Ok(Ok(l)) => Ok(l),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

/// The discovery loop; runs for the agent's lifetime.
pub async fn run(registry: Arc<Registry>, opts: DiscoverOptions, attach: PathBuf) {
    let interval = Duration::from_millis(opts.discover_interval.max(10));
    let scope = scope_of(&attach);
    // Never probed: the node's network namespace and the agent's own.
    let skip: Vec<u64> = ["1", "self"].iter().filter_map(|p| inode_of(p)).collect();
    tracing::info!(name = ABSTRACT_NAME, ?interval, scope = ?scope, "discovering proxies in pod network namespaces");
    // In a cluster (pod claims checked) the proxy's container is checked too.
    let client = match registry.checks_claims() {
        false => None,
        true => match conduit_kube::client().await {
            Ok(c) => Some(c),
            Err(e) => {
                // Fail closed: no discovery rather than unchecked containers.
                tracing::error!(error = %e, "cannot make a Kubernetes client: discovery is off");
                return;
            }
        },
    };
    let mut probes = Probes::default();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, bool)>();
    loop {
        while let Ok((netns, enrolled)) = done_rx.try_recv() {
            probes.finished(netns, enrolled, Instant::now());
        }
        let (sk, sc) = (skip.clone(), scope.clone());
        let seen = tokio::task::spawn_blocking(move || scan(&sk, sc.as_deref()))
            .await
            .unwrap_or_default();
        let due = probes.due(&seen, Instant::now());
        let connected = if due.is_empty() {
            Vec::new()
        } else {
            tokio::task::spawn_blocking(move || connect_all(due, ABSTRACT_NAME))
                .await
                .unwrap_or_default()
        };
        for (netns, stream) in connected {
            probes.busy(netns);
            let (r, tx, c) = (registry.clone(), done_tx.clone(), client.clone());
            tokio::spawn(async move {
                let enrolled = serve(r, c, netns, stream).await;
                let _ = tx.send((netns, enrolled));
            });
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_links_parse() {
        assert_eq!(netns_inode("net:[4026531840]"), Some(4026531840));
        for bad in ["net:[]", "mnt:[1]", "net:[x]", "net:[1", ""] {
            assert_eq!(netns_inode(bad), None, "{bad}");
        }
    }

    #[test]
    fn probing_rules() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut p = Probes::default();
        // New namespaces are probed.
        assert_eq!(p.due(&[(1, 10), (2, 20)], t0), vec![(1, 10), (2, 20)]);
        // One being served is not probed again.
        p.busy(1);
        assert_eq!(p.due(&[(1, 10), (2, 20)], t0), vec![(2, 20)]);
        // Refused: backoff 1 s, then 2 s, ... up to 30 s.
        p.finished(1, false, t0);
        assert_eq!(p.due(&[(1, 10)], t0), vec![]);
        assert_eq!(p.due(&[(1, 10)], t0 + s), vec![(1, 10)]);
        p.busy(1);
        p.finished(1, false, t0);
        p.finished(1, false, t0);
        assert_eq!(p.by_netns[&1].after, Some((t0 + 4 * s, 4 * s)));
        for _ in 0..10 {
            p.finished(1, false, t0);
        }
        assert_eq!(p.by_netns[&1].after, Some((t0 + BACKOFF_MAX, BACKOFF_MAX)));
        // Enrolled then closed: probed again at once, backoff forgotten.
        p.finished(1, true, t0);
        assert_eq!(p.due(&[(1, 10)], t0), vec![(1, 10)]);
        // A namespace that is gone is forgotten, unless it is being served.
        p.finished(3, false, t0);
        p.busy(4);
        p.due(&[], t0);
        assert!(!p.by_netns.contains_key(&3));
        assert!(p.by_netns.contains_key(&4));
    }

    /// A listener in some pod that never accepts must not stall discovery:
    /// with its backlog full, the probe moves on at once.
    #[test]
    fn a_listener_that_never_accepts_does_not_stall_the_probe() {
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
        };
        let name = format!("conduit-test/stall/{}", std::process::id());
        let addr = UnixAddr::new_abstract(name.as_bytes()).unwrap();
        let l = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(l.as_raw_fd(), &addr).unwrap();
        listen(&l, Backlog::new(0).unwrap()).unwrap();
        // Fill the backlog.
        let mut held = Vec::new();
        while let Ok(s) = connect_nonblocking(&addr) {
            held.push(s);
            assert!(held.len() < 64, "the backlog never filled");
        }
        let ino = inode_of("self").unwrap();
        let pid = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(connect_all(vec![(ino, pid)], &name).len());
        });
        let connected = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the probe returned");
        assert_eq!(connected, 0);
    }

    #[test]
    fn takes_only_a_listening_tcp_socket_on_the_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let _other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let got = take_listener(std::process::id(), port).unwrap();
        assert!(is_listener_on(&got, port));
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let unused = free.local_addr().unwrap().port();
        drop(free);
        let err = take_listener(std::process::id(), unused).unwrap_err();
        assert!(
            format!("{err:#}").contains("no listening TCP socket"),
            "{err:#}"
        );
    }
}
