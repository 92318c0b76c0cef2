//! The agent's registration server: the unix socket proxies register on.
//!
//! Registration has one name on all three sides: the proxy registers from
//! `proxy/src/register.rs` through the `conduit-register` library
//! (`ebpf/register`, which also holds the wire format), and the agent serves
//! it here. Each connection goes through the same steps, each a function
//! below: who called ([`caller_of`], `SO_PEERCRED`), the caller's slot under
//! the limits (`Registry::open_slot`), the request ([`receive_request`]),
//! the checks and enrolment (`Registry::register`), the answer, then the
//! connection is held ([`answer_and_hold`]): the pod stays enrolled while it
//! lives. Discovery (`discover.rs`) serves the connections it opens to
//! proxies with the same steps.

use crate::enrol::Peer;
use crate::limits::Caller;
use crate::netns;
use crate::registry::{Lease, Registry};
use anyhow::{Context, Result, anyhow};
use conduit_register::RegisterError;
use conduit_register::wire::{self, PROTOCOL_VERSION, Request, Response};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::unix::UCred;
use tokio::net::{UnixListener, UnixStream};

/// Mode of the registration socket: the owner (root) and the socket group.
pub const SOCKET_MODE: u32 = 0o660;

/// How long a caller has to send its request after connecting.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The gid of `--socket-group`: a number, or a group name.
pub fn socket_group(spec: &str) -> Result<u32> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    nix::unistd::Group::from_name(spec)
        .with_context(|| format!("looking up group {spec:?}"))?
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| anyhow!("--socket-group {spec:?}: no such group"))
}

/// Listens on `path` (replacing a stale socket), owned by root and `group`,
/// mode [`SOCKET_MODE`].
pub fn bind(path: &Path, group: u32) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()));
        }
    }
    let l = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    // Only root and the proxies' group may connect (connecting needs write
    // permission on the socket); SO_PEERCRED then says who called.
    std::os::unix::fs::chown(path, None, Some(group))
        .with_context(|| format!("giving {} to group {group}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(l)
}

/// Accepts registrations until SIGTERM or SIGINT, each connection on its
/// own task.
pub async fn accept_until_stopped(listener: UnixListener, registry: Arc<Registry>) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let registry = registry.clone();
                    tokio::spawn(async move { serve_connection(registry, stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of descriptors: give closing connections a moment
                    // instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// One connection on the unix socket: limits, request, enrol, answer, hold
/// until the proxy hangs up (the lease's drop removes the pod).
async fn serve_connection(registry: Arc<Registry>, mut stream: UnixStream) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "SO_PEERCRED failed"),
    };
    let mut slot = match registry.open_slot(caller_of(&cred)) {
        Ok(s) => s,
        // open_slot logged it.
        Err(e) => return answer_refused(&mut stream, e.to_string()).await,
    };
    let (request, fd) = match receive_request(&mut stream).await {
        Ok(r) => r,
        // `status --check --socket` connects and hangs up.
        Err(NoRequest::Closed) => return tracing::debug!("connection closed without a request"),
        Err(NoRequest::Refused(reason)) => return refuse(&mut stream, cred.pid(), reason).await,
    };
    let peer = match peer_of(&cred) {
        Ok(p) => p,
        Err(reason) => return refuse(&mut stream, cred.pid(), reason).await,
    };
    let lease = match registry.register(peer, request.pod, fd).await {
        Ok(lease) => lease,
        // register logged it.
        Err(r) => return answer_refused(&mut stream, r.to_string()).await,
    };
    slot.answered();
    answer_and_hold(stream, lease).await;
}

/// The limits' key for a caller: its uid and network namespace.
pub fn caller_of(cred: &UCred) -> Caller {
    Caller {
        uid: cred.uid(),
        netns: netns::caller_netns(cred.pid()),
    }
}

/// The enrolment's view of a caller; refused when its pid is unknown.
fn peer_of(cred: &UCred) -> Result<Peer, String> {
    let Some(pid) = cred.pid().filter(|p| *p > 0) else {
        return Err("the caller's pid is unknown (SO_PEERCRED)".to_string());
    };
    Ok(Peer {
        pid: pid as u32,
        uid: cred.uid(),
    })
}

/// Why a connection brought no request to enrol.
#[derive(Debug)]
pub enum NoRequest {
    /// The caller hung up before sending anything.
    Closed,
    /// A request that is late, malformed or of another protocol version:
    /// the reason to answer.
    Refused(String),
}

impl NoRequest {
    /// The reason to answer (or log).
    pub fn reason(self) -> String {
        match self {
            NoRequest::Closed => RegisterError::ClosedBeforeRequest.to_string(),
            NoRequest::Refused(reason) => reason,
        }
    }
}

/// Reads the request (within [`REQUEST_TIMEOUT`]) and checks its version.
pub async fn receive_request(
    stream: &mut UnixStream,
) -> Result<(Request, Option<OwnedFd>), NoRequest> {
    let (request, fd) =
        match tokio::time::timeout(REQUEST_TIMEOUT, wire::recv_request(stream)).await {
            Ok(Ok(r)) => r,
            Ok(Err(RegisterError::ClosedBeforeRequest)) => return Err(NoRequest::Closed),
            Ok(Err(e)) => return Err(NoRequest::Refused(e.to_string())),
            Err(_) => {
                let msg = format!("no request within {} s", REQUEST_TIMEOUT.as_secs());
                return Err(NoRequest::Refused(msg));
            }
        };
    check_version(request.version).map_err(NoRequest::Refused)?;
    Ok((request, fd))
}

/// Only [`PROTOCOL_VERSION`] is spoken.
fn check_version(version: u32) -> Result<(), String> {
    if version == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(format!(
        "protocol version {version} not supported (agent speaks {PROTOCOL_VERSION})"
    ))
}

/// Answers an enrolled proxy, then holds the registration until it hangs
/// up. Returns whether the answer was sent.
pub async fn answer_and_hold(mut stream: UnixStream, lease: Lease) -> bool {
    let answer = Response::Enrolled(lease.enrolled().clone());
    if let Err(e) = wire::write_frame(&mut stream, &answer).await {
        tracing::warn!(error = %e, "answering the proxy failed");
        return false;
    }
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    // The pod is removed here, before `stream` closes on return: a draining
    // proxy half-closes and waits for that close as its acknowledgement
    // (`conduit_register::Registration::deregister`).
    drop(lease);
    true
}

/// Refuses a request that never reached the registry, and logs it.
async fn refuse(stream: &mut UnixStream, pid: Option<i32>, reason: String) {
    tracing::warn!(pid, %reason, "registration refused");
    answer_refused(stream, reason).await;
}

/// Answers a refusal (best effort: the caller may be gone).
pub async fn answer_refused(stream: &mut UnixStream, reason: String) {
    let _ = wire::write_frame(stream, &Response::Refused { reason }).await;
}

#[cfg(test)]
mod tests {
    use super::{check_version, socket_group};
    use conduit_register::wire::PROTOCOL_VERSION;

    #[test]
    fn socket_groups_are_gids_or_names() {
        // (--socket-group, gid or None for an error)
        for (spec, want) in [
            ("2102", Some(2102)),
            ("0", Some(0)),
            ("root", Some(0)),
            ("no-such-group-conduit", None),
            ("-1", None),
        ] {
            assert_eq!(socket_group(spec).ok(), want, "{spec}");
        }
    }

    #[test]
    fn only_the_agents_protocol_version_is_spoken() {
        assert_eq!(check_version(PROTOCOL_VERSION), Ok(()));
        for other in [0, PROTOCOL_VERSION + 1, u32::MAX] {
            let err = check_version(other).unwrap_err();
            assert!(
                err.contains(&format!("protocol version {other} not supported")),
                "{err}"
            );
        }
    }
}
