//! What the agent learns about a process: its network namespace (cookie and
//! addresses, read from inside the namespace), cgroup and start time.

use anyhow::{Context, Result, anyhow};
use nix::sched::CloneFlags;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use std::fs::File;
use std::net::IpAddr;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub use crate::sys::socket_netns_cookie;

/// The cookie of the agent's own network namespace.
pub fn own_netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket_netns_cookie(sock.as_fd())
}

#[derive(Debug, Clone)]
pub struct Netns {
    pub cookie: u64,
    /// Addresses of the namespace's interfaces, loopback and link-local left out.
    pub ips: Vec<IpAddr>,
}

/// Enters the network namespace of `pid` on a short-lived thread and reads
/// its cookie and addresses there.
pub fn inspect(pid: u32) -> Result<Netns> {
    in_netns(&format!("/proc/{pid}/ns/net"), |cookie| {
        Ok(Netns {
            cookie,
            ips: global_addresses()?,
        })
    })
}

/// The cookie of the network namespace `path` names (e.g. the node's,
/// `/proc/1/ns/net`).
pub fn cookie_of(path: &str) -> Result<u64> {
    in_netns(path, Ok)
}

/// Runs `f` with the cookie of the network namespace at `path`, on a
/// short-lived thread that has entered it (only that thread switches).
fn in_netns<T: Send>(path: &str, f: impl FnOnce(u64) -> Result<T> + Send) -> Result<T> {
    let ns = File::open(path).with_context(|| format!("opening the network namespace {path}"))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering the network namespace {path}"))?;
            f(own_netns_cookie().context("reading SO_NETNS_COOKIE")?)
        })
        .join()
        .map_err(|_| anyhow!("the namespace thread panicked"))?
    })
}

/// The addresses of this thread's network namespace: every interface's,
/// loopback, unspecified and link-local left out.
fn global_addresses() -> Result<Vec<IpAddr>> {
    let mut ips = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("listing interface addresses")? {
        let Some(addr) = ifa.address else { continue };
        let ip = if let Some(a) = addr.as_sockaddr_in() {
            IpAddr::V4(a.ip())
        } else if let Some(a) = addr.as_sockaddr_in6() {
            IpAddr::V6(a.ip())
        } else {
            continue;
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
        if !ip.is_loopback() && !ip.is_unspecified() && !link_local && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// The network namespace of `pid` as a cheap, setns-free key (the inode of
/// `/proc/<pid>/ns/net`), for per-caller limits at accept time.
pub fn caller_netns(pid: Option<i32>) -> crate::limits::CallerNetns {
    use crate::limits::CallerNetns;
    match pid.filter(|p| *p > 0) {
        Some(pid) => std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| CallerNetns::Inode(m.ino()))
            .unwrap_or(CallerNetns::Unknown),
        None => CallerNetns::Unknown,
    }
}

/// The id of a cgroup v2 directory (its inode number).
pub fn cgroup_id(dir: &Path) -> Result<u64> {
    Ok(std::fs::metadata(dir)
        .with_context(|| format!("cgroup {}", dir.display()))?
        .ino())
}

/// Start time of `pid` (clock ticks since boot), to tell a live process from
/// a reused pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process that enrolled a pod still runs (a zombie does not).
pub fn alive(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let mut fields = after.split_whitespace();
    let running = !matches!(fields.next(), Some("Z" | "X" | "x"));
    pid != 0 && running && fields.nth(18).and_then(|f| f.parse().ok()) == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_namespace_and_process() {
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert!(alive(me, start_time(me).unwrap()));
        assert!(!alive(me, start_time(me).unwrap() + 1));
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsFd;
        let cookie = socket_netns_cookie(sock.as_fd()).unwrap();
        assert_ne!(cookie, 0);
        if nix::unistd::Uid::effective().is_root() {
            assert_eq!(inspect(me).unwrap().cookie, cookie);
            assert_eq!(cookie_of(&format!("/proc/{me}/ns/net")).unwrap(), cookie);
        }
        assert!(matches!(
            caller_netns(Some(me as i32)),
            crate::limits::CallerNetns::Inode(_)
        ));
        assert_eq!(caller_netns(None), crate::limits::CallerNetns::Unknown);
        assert_eq!(caller_netns(Some(0)), crate::limits::CallerNetns::Unknown);
    }
}
