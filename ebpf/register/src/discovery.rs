//! Registration without the agent's socket ("discovery" mode), for pods that
//! run under Pod Security `baseline`: no hostPath, so the proxy cannot reach
//! the agent's unix socket on the node.
//!
//! The proxy listens instead on an **abstract** unix socket, [`ABSTRACT_NAME`]
//! (abstract names live in the network namespace, so the name is private to
//! the pod). The node agent, which has `hostPID` and `CAP_SYS_ADMIN`, finds
//! the pod's network namespace, enters it on a thread, connects, and learns
//! the proxy's host pid and uid from `SO_PEERCRED`. The proxy then sends the
//! same [`Request`](crate::wire::Request) frame as over the socket, **without
//! a descriptor**: the agent takes the inbound listener (the listening TCP
//! socket bound to `pod.inbound_port`) out of the proxy's descriptor table
//! with `pidfd_getfd(2)`, which needs ptrace rights over the proxy. Whoever
//! else connects to the abstract socket (the pod's own application
//! containers share its network namespace) learns only the pod info, which
//! they know anyway, and gets no descriptor. The agent answers with a
//! [`Response`](crate::wire::Response) and holds the connection; the pod stays
//! enrolled while it lives, as with [`register`](crate::register).

use crate::{Enrolled, PodInfo, RegisterError, wire};
use std::os::linux::net::SocketAddrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};

/// Abstract socket name the proxy listens on and the agent connects to
/// (without the leading NUL byte).
pub const ABSTRACT_NAME: &str = "conduit.io/agent-registration";

/// Connections served at once; further ones wait to be accepted (an
/// application in the pod cannot hold every slot for long: see
/// [`ANSWER_TIMEOUT`]).
pub const MAX_CONNECTIONS: usize = 4;

/// How long the proxy waits for the agent's answer after sending its
/// request (the agent may be checking the pod claim with the API server).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Binds the abstract unix socket `name` in the caller's network namespace.
/// Fails with `AddrInUse` when something in the pod already holds it.
pub fn bind(name: &str) -> std::io::Result<UnixListener> {
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let l = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
}

/// One connection from the agent: send the request (no descriptor), wait
/// for the answer. `Ok` with the stream to hold while enrolled.
pub async fn answer(
    mut stream: UnixStream,
    pod: &PodInfo,
) -> Result<(UnixStream, Enrolled), RegisterError> {
    pod.validate().map_err(RegisterError::InvalidPod)?;
    let request = wire::Request {
        version: wire::PROTOCOL_VERSION,
        pod: pod.clone(),
    };
    wire::write_frame(&mut stream, &request).await?;
    let answer = tokio::time::timeout(
        ANSWER_TIMEOUT,
        wire::read_frame::<wire::Response>(&mut stream),
    )
    .await
    .map_err(|_| {
        RegisterError::Protocol(format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()))
    })??;
    match answer {
        None => Err(RegisterError::Protocol(
            "the agent closed the connection without answering".into(),
        )),
        Some(wire::Response::Refused { reason }) => Err(RegisterError::Refused(reason)),
        Some(wire::Response::Enrolled(e)) => Ok((stream, e)),
    }
}

async fn hold(mut stream: UnixStream, mut drain: tokio::sync::watch::Receiver<bool>) {
    let mut buf = [0u8; 256];
    loop {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            // Draining: closing our end makes the agent remove the pod.
            _ = drain.wait_for(|d| *d) => return,
        }
    }
}

/// Like [`serve`], from when `ready` resolves until the returned handle's
/// [`deregister`](crate::Maintained::deregister): then the held
/// registrations are closed (the agent removes the pod when its end
/// closes) and the socket stops accepting.
pub fn serve_drainable(
    listener: UnixListener,
    pod: PodInfo,
    on_change: impl Fn(bool) + Send + Sync + 'static,
    ready: impl std::future::Future<Output = ()> + Send + 'static,
) -> crate::Maintained {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = ready => {}
            _ = &mut stopped => return crate::Deregistered::NotRegistered,
        }
        let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
        let enrolled = Arc::new(AtomicUsize::new(0));
        let accepting = serve_inner(
            listener,
            pod,
            Arc::new(on_change),
            drain_rx,
            enrolled.clone(),
        );
        let _ = stopped.await;
        accepting.abort();
        let was = enrolled.load(Ordering::SeqCst) > 0;
        let _ = drain_tx.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while enrolled.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match (was, enrolled.load(Ordering::SeqCst)) {
            (false, _) => crate::Deregistered::NotRegistered,
            (true, 0) => crate::Deregistered::Confirmed,
            (true, _) => crate::Deregistered::Unconfirmed,
        }
    });
    crate::Maintained { stop, task }
}

/// Serves the agent's connections on `listener` for as long as the returned
/// task runs. `on_change` is told whenever the pod becomes enrolled (true)
/// or stops being enrolled (false). Aborting the task does not close the
/// connections already enrolled: drop the process (or the runtime) for that.
pub fn serve(
    listener: UnixListener,
    pod: PodInfo,
    on_change: impl Fn(bool) + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let task = serve_inner(
        listener,
        pod,
        Arc::new(on_change),
        drain_rx,
        Arc::new(AtomicUsize::new(0)),
    );
    tokio::spawn(async move {
        let _keep = drain_tx;
        let _ = task.await;
    })
}

fn serve_inner<F: Fn(bool) + Send + Sync + 'static>(
    listener: UnixListener,
    pod: PodInfo,
    on_change: Arc<F>,
    drain: tokio::sync::watch::Receiver<bool>,
    enrolled: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let pod = Arc::new(pod);
    let busy = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = busy.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the registration socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (pod, on_change, enrolled) = (pod.clone(), on_change.clone(), enrolled.clone());
            let drain = drain.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match answer(stream, &pod).await {
                    Ok((stream, e)) => {
                        tracing::info!(
                            netns_cookie = e.netns_cookie, pod_ips = ?e.pod_ips,
                            "the node agent enrolled the pod: capture is on"
                        );
                        if enrolled.fetch_add(1, Ordering::SeqCst) == 0 {
                            on_change(true);
                        }
                        hold(stream, drain).await;
                        tracing::warn!(
                            "the node agent closed the registration; waiting for it to come back"
                        );
                        if enrolled.fetch_sub(1, Ordering::SeqCst) == 1 {
                            on_change(false);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "registration with the node agent failed; waiting for it to retry")
                    }
                }
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    fn unique(name: &str) -> String {
        format!("conduit-test/{name}/{}", std::process::id())
    }

    async fn connect(name: &str) -> UnixStream {
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap();
        s.set_nonblocking(true).unwrap();
        UnixStream::from_std(s).unwrap()
    }

    fn enrolled() -> Enrolled {
        Enrolled {
            netns_cookie: 7,
            pod_ips: vec!["10.0.0.7".parse().unwrap()],
            proxy_uid: 1337,
        }
    }

    #[tokio::test]
    async fn sends_the_pod_without_a_descriptor_and_tracks_enrolment() {
        let name = unique("track");
        let pod = PodInfo::new("web-0", "shop");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _task = serve(bind(&name).unwrap(), pod.clone(), move |on| {
            let _ = tx.send(on);
        });
        let mut agent = connect(&name).await;
        let (req, fd) = wire::recv_request(&mut agent).await.unwrap();
        assert_eq!(req.pod, pod);
        assert!(fd.is_none(), "no descriptor travels in discovery mode");
        wire::write_frame(&mut agent, &wire::Response::Enrolled(enrolled()))
            .await
            .unwrap();
        assert_eq!(rx.recv().await, Some(true));
        drop(agent);
        assert_eq!(rx.recv().await, Some(false));
        // The agent comes back (restart): served again.
        let mut agent = connect(&name).await;
        wire::recv_request(&mut agent).await.unwrap();
        wire::write_frame(&mut agent, &wire::Response::Enrolled(enrolled()))
            .await
            .unwrap();
        assert_eq!(rx.recv().await, Some(true));
    }

    #[tokio::test]
    async fn a_refusal_is_not_enrolment_and_a_silent_peer_does_not_block_the_agent() {
        let name = unique("refuse");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _task = serve(bind(&name).unwrap(), PodInfo::new("a", "b"), move |on| {
            let _ = tx.send(on);
        });
        // An application in the pod connects and says nothing.
        let _squatter = connect(&name).await;
        let mut agent = connect(&name).await;
        wire::recv_request(&mut agent).await.unwrap();
        wire::write_frame(
            &mut agent,
            &wire::Response::Refused {
                reason: "no".into(),
            },
        )
        .await
        .unwrap();
        // Then the agent retries and enrols.
        let mut agent = connect(&name).await;
        wire::recv_request(&mut agent).await.unwrap();
        wire::write_frame(&mut agent, &wire::Response::Enrolled(enrolled()))
            .await
            .unwrap();
        assert_eq!(rx.recv().await, Some(true));
    }

    #[tokio::test]
    async fn the_name_is_taken_once() {
        let name = unique("once");
        let _first = bind(&name).unwrap();
        let err = bind(&name).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
