//! Proxy side of registration with the conduit node agent.
//!
//! A meshed pod's proxy calls [`register`] (or [`maintain`], which also
//! re-registers after an agent restart) with its pod's identity, its ports and
//! its inbound listener. The agent enrols the pod in the kernel maps: traffic
//! capture for the pod is on for as long as the returned [`Registration`] (and
//! so the unix connection) lives, and stops when it is dropped. The wire format
//! lives in [`wire`] and is shared with the agent.

pub mod discovery;
pub mod tap;
pub mod wire;

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

/// Default path of the agent's unix socket.
pub const DEFAULT_SOCKET: &str = "/run/conduit/agent.sock";

/// What a proxy tells the agent about its pod.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: Option<String>,
    /// Proxy ports inside the pod (defaults 4140 / 4143 / 4191).
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub admin_port: u16,
    /// Inbound ports that sk_lookup must leave alone (besides the proxy's own).
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports never captured.
    pub skip_outbound_ports: Vec<u16>,
    /// The pod's addresses as the proxy knows them (e.g. `status.podIPs`
    /// from the downward API). Empty: the agent takes the addresses it finds
    /// in the proxy's network namespace. Either way the agent enrols only
    /// addresses configured in that namespace and owned by no other enrolled
    /// pod, and refuses the registration otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<IpAddr>,
}

/// Most addresses a proxy may claim ([`PodInfo::pod_ips`]).
pub const MAX_CLAIMED_IPS: usize = 16;

impl PodInfo {
    /// A pod with the default proxy ports and no skip-ports.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            service_account: None,
            outbound_port: 4140,
            inbound_port: 4143,
            admin_port: 4191,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            pod_ips: Vec::new(),
        }
    }

    /// Checks what does not depend on the agent's limits: names present,
    /// ports non-zero and distinct.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() || self.name.len() > 253 {
            return Err(format!(
                "pod name must have 1 to 253 characters, got {:?}",
                self.name
            ));
        }
        if self.namespace.is_empty() || self.namespace.len() > 253 {
            return Err(format!(
                "pod namespace must have 1 to 253 characters, got {:?}",
                self.namespace
            ));
        }
        let ports = [
            ("outbound_port", self.outbound_port),
            ("inbound_port", self.inbound_port),
            ("admin_port", self.admin_port),
        ];
        for (what, p) in ports {
            if p == 0 {
                return Err(format!("{what} must not be 0"));
            }
        }
        if self.outbound_port == self.inbound_port
            || self.outbound_port == self.admin_port
            || self.inbound_port == self.admin_port
        {
            return Err(format!(
                "proxy ports must differ: outbound {}, inbound {}, admin {}",
                self.outbound_port, self.inbound_port, self.admin_port
            ));
        }
        if self.skip_inbound_ports.contains(&0) || self.skip_outbound_ports.contains(&0) {
            return Err("skip-ports must not contain 0".into());
        }
        if self.pod_ips.len() > MAX_CLAIMED_IPS {
            return Err(format!(
                "at most {MAX_CLAIMED_IPS} pod IPs may be claimed, got {}",
                self.pod_ips.len()
            ));
        }
        if let Some(ip) = self
            .pod_ips
            .iter()
            .find(|ip| ip.is_loopback() || ip.is_unspecified() || ip.is_multicast())
        {
            return Err(format!("{ip} cannot be a pod IP"));
        }
        Ok(())
    }
}

/// The agent's answer when enrolment succeeded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Enrolled {
    /// Cookie of the pod's network namespace (the key of the pod in the maps).
    pub netns_cookie: u64,
    /// The pod's addresses, as the agent found them in the namespace.
    pub pod_ips: Vec<IpAddr>,
    /// The proxy's uid (from SO_PEERCRED): its sockets are never captured.
    pub proxy_uid: u32,
}

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot connect to the agent at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("I/O error talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("registration protocol error: {0}")]
    Protocol(String),
    /// The peer hung up without sending anything (e.g. a liveness probe
    /// that only checks the agent accepts connections).
    #[error("connection closed before the request")]
    ClosedBeforeRequest,
    #[error("the agent refused the registration: {0}")]
    Refused(String),
    #[error("invalid pod info: {0}")]
    InvalidPod(String),
}

/// An active registration: capture for the pod lasts while this value (and so
/// the unix connection) lives. Dropping it ends capture for the pod.
#[derive(Debug)]
pub struct Registration {
    stream: UnixStream,
    enrolled: Enrolled,
}

impl Registration {
    /// What the agent enrolled.
    pub fn enrolled(&self) -> &Enrolled {
        &self.enrolled
    }

    /// Resolves when the agent closes the connection (agent restart/exit).
    /// Anything the agent sends after its answer is ignored.
    pub async fn closed(&mut self) {
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    /// Ends the registration and waits, at most `timeout`, for the agent to
    /// confirm it: the proxy half-closes the connection, the agent removes
    /// the pod (capture off, the listener out of its sockhash) and only then
    /// closes its side. [`Deregistered::Confirmed`] means capture is off.
    pub async fn deregister(mut self, timeout: Duration) -> Deregistered {
        if self.stream.shutdown().await.is_err() {
            // The agent is already gone: nothing to wait for.
            return Deregistered::Confirmed;
        }
        match tokio::time::timeout(timeout, self.closed()).await {
            Ok(()) => Deregistered::Confirmed,
            Err(_) => Deregistered::Unconfirmed,
        }
    }
}

/// How a drain's deregistration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deregistered {
    /// The agent removed the pod and closed the registration.
    Confirmed,
    /// No registration was active (no agent, or between two).
    NotRegistered,
    /// The agent did not close the registration in time.
    Unconfirmed,
}

/// Connects to the agent's unix socket, sends `pod` and the inbound listener fd
/// (SCM_RIGHTS), waits for the agent's answer.
pub async fn register(
    socket: &Path,
    pod: &PodInfo,
    inbound_listener: BorrowedFd<'_>,
) -> Result<Registration, RegisterError> {
    pod.validate().map_err(RegisterError::InvalidPod)?;
    let mut stream =
        UnixStream::connect(socket)
            .await
            .map_err(|source| RegisterError::Connect {
                path: socket.to_path_buf(),
                source,
            })?;
    let request = wire::Request {
        version: wire::PROTOCOL_VERSION,
        pod: pod.clone(),
    };
    wire::send_request(&mut stream, &request, inbound_listener).await?;
    match wire::read_frame::<wire::Response>(&mut stream).await? {
        None => Err(RegisterError::Protocol(
            "the agent closed the connection without answering".into(),
        )),
        Some(wire::Response::Refused { reason }) => Err(RegisterError::Refused(reason)),
        Some(wire::Response::Enrolled(enrolled)) => Ok(Registration { stream, enrolled }),
    }
}

/// First retry delay of [`maintain`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay of [`maintain`].
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Keeps the pod registered for as long as the returned task runs: registers,
/// and when the connection closes (agent restarted) registers again with
/// backoff (100 ms doubling to 5 s). `on_change` is told each time the state
/// changes (true = enrolled). Aborting the task ends the registration.
pub fn maintain(
    socket: PathBuf,
    pod: PodInfo,
    inbound_listener: OwnedFd,
    on_change: impl Fn(bool) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let (stop, stopped) = oneshot::channel();
    let task = maintain_until(
        socket,
        pod,
        inbound_listener,
        on_change,
        std::future::ready(()),
        stopped,
    );
    tokio::spawn(async move {
        let _stop = stop;
        let _ = task.await;
    })
}

/// How long [`Maintained::deregister`] waits for the agent's confirmation.
pub const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// A registration kept alive by [`maintain_until`], ended by
/// [`Maintained::deregister`].
#[derive(Debug)]
pub struct Maintained {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Deregistered>,
}

impl Maintained {
    /// Ends the registration (see [`Registration::deregister`]) and closes
    /// this side's copy of the inbound listener. A draining proxy calls this
    /// *before* it stops accepting: the agent then no longer steers new
    /// connections to a listener nobody will accept on.
    pub async fn deregister(self) -> Deregistered {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(Deregistered::NotRegistered)
    }
}

/// Like [`maintain`], from when `ready` resolves (e.g. the proxy holds a
/// certificate: capture must not send connections to a proxy that cannot
/// serve them yet) until `stop` fires (or its sender is dropped): then the
/// registration is ended with [`Registration::deregister`] and the task
/// returns, dropping its copy of `inbound_listener`.
pub fn maintain_until(
    socket: PathBuf,
    pod: PodInfo,
    inbound_listener: OwnedFd,
    on_change: impl Fn(bool) + Send + 'static,
    ready: impl std::future::Future<Output = ()> + Send + 'static,
    mut stop: oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Deregistered> {
    tokio::spawn(async move {
        tokio::select! {
            _ = ready => {}
            _ = &mut stop => return Deregistered::NotRegistered,
        }
        let mut backoff = BACKOFF_MIN;
        // Stopped while not registered (e.g. between two agents): a new
        // agent may still hold the pod from its predecessor's pinned state,
        // steering its connections here until its grace period ends.
        // Register once more and deregister at once, so it forgets the pod.
        let last_word = |listener: &OwnedFd| {
            let (socket, pod) = (socket.clone(), pod.clone());
            let fd = listener.try_clone();
            async move {
                let Ok(fd) = fd else {
                    return Deregistered::NotRegistered;
                };
                match tokio::time::timeout(DEREGISTER_TIMEOUT, register(&socket, &pod, fd.as_fd()))
                    .await
                {
                    Ok(Ok(reg)) => reg.deregister(DEREGISTER_TIMEOUT).await,
                    _ => Deregistered::NotRegistered,
                }
            }
        };
        loop {
            let attempt = tokio::select! {
                r = register(&socket, &pod, inbound_listener.as_fd()) => r,
                _ = &mut stop => return Deregistered::NotRegistered,
            };
            match attempt {
                Ok(mut reg) => {
                    tracing::info!(
                        socket = %socket.display(),
                        netns_cookie = reg.enrolled().netns_cookie,
                        pod_ips = ?reg.enrolled().pod_ips,
                        "registered with the node agent: capture is on"
                    );
                    on_change(true);
                    backoff = BACKOFF_MIN;
                    let stopping = tokio::select! {
                        _ = reg.closed() => false,
                        _ = &mut stop => true,
                    };
                    if stopping {
                        let d = reg.deregister(DEREGISTER_TIMEOUT).await;
                        on_change(false);
                        tracing::info!(outcome = ?d, "deregistered from the node agent: capture is off");
                        return d;
                    }
                    tracing::warn!(socket = %socket.display(), "node agent closed the registration; re-registering");
                    on_change(false);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "registration with the node agent failed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = &mut stop => return last_word(&inbound_listener).await,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

/// Starts [`maintain_until`] and returns the handle that ends it.
pub fn maintain_drainable(
    socket: PathBuf,
    pod: PodInfo,
    inbound_listener: OwnedFd,
    on_change: impl Fn(bool) + Send + 'static,
    ready: impl std::future::Future<Output = ()> + Send + 'static,
) -> Maintained {
    let (stop, stopped) = oneshot::channel();
    let task = maintain_until(socket, pod, inbound_listener, on_change, ready, stopped);
    Maintained { stop, task }
}

#[cfg(test)]
mod tests;
