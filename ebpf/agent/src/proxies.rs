//! The enrolled proxies, as the node CLI's observability commands (`stat`,
//! `tap`, `top`, `dashboard`) reach them: found in the agent's pinned state
//! (each pod's proxy pid and ports), and called over HTTP/1.1 from inside
//! the pod's network namespace. A short-lived thread enters
//! `/proc/<proxy pid>/ns/net` and connects to the proxy's loopback
//! listeners there; the socket stays in that namespace and is used from the
//! async runtime afterwards. So the operator listener (loopback only, in
//! the pod) is reached from the node, by root, and by no other pod.

use crate::status::{self, PodStatus};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use nix::sched::CloneFlags;
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// Default port of the proxies' operator listener (`--control-addr`).
pub const DEFAULT_CONTROL_PORT: u16 = 4190;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest metrics page read from a proxy.
const MAX_PAGE: usize = 16 << 20;

/// Which pods a command looks at.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Select {
    /// Only pods in this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only this pod (name, or namespace/name).
    #[arg(long)]
    pub pod: Option<String>,
}

impl Select {
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        let pod_ok = self.pod.as_deref().is_none_or(|p| match p.split_once('/') {
            Some((ns, n)) => ns == namespace && n == name,
            None => p == name,
        });
        pod_ok && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

/// One enrolled pod's proxy.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub namespace: String,
    pub name: String,
    pub pid: u32,
    pub admin_port: u16,
}

impl Proxy {
    /// `namespace/name`.
    pub fn pod(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn from_status(p: &PodStatus) -> Self {
        Self {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            pid: p.proxy_pid,
            admin_port: p.admin_port,
        }
    }
}

/// The live proxies of the enrolled pods that `select` matches.
pub fn find(pin_dir: &Path, select: &Select) -> Result<Vec<Proxy>> {
    let s = status::gather(pin_dir);
    if s.maps.is_empty() {
        bail!(
            "nothing is pinned under {}: is the agent running (and --pin-dir right)?",
            pin_dir.display()
        );
    }
    let mut out: Vec<Proxy> = s
        .pods
        .iter()
        .filter(|p| p.proxy_alive && select.matches(&p.namespace, &p.name))
        .map(Proxy::from_status)
        .collect();
    out.sort_by_key(|p| p.pod());
    Ok(out)
}

/// Connects to `127.0.0.1:port` inside the network namespace of `pid`.
pub fn connect_in_pod(pid: u32, port: u16) -> Result<TcpStream> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))
        .with_context(|| format!("opening the network namespace of pid {pid}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    std::thread::scope(|s| {
        s.spawn(|| -> Result<TcpStream> {
            // Only this thread switches namespace, and it ends right after.
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .context("entering the pod's network namespace")?;
            TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                .with_context(|| format!("connecting to {addr} in the pod of pid {pid}"))
        })
        .join()
        .map_err(|_| anyhow!("the namespace thread panicked"))?
    })
}

/// Sends `GET path` to the proxy's listener on `port`; the response with
/// its body still streaming.
pub async fn get(pid: u32, port: u16, path: &str) -> Result<http::Response<Incoming>> {
    get_with(pid, port, path, None).await
}

/// [`get`] with `Authorization: Bearer <token>` when a token is given.
pub async fn get_with(
    pid: u32,
    port: u16,
    path: &str,
    token: Option<&str>,
) -> Result<http::Response<Incoming>> {
    let std_stream = tokio::task::spawn_blocking(move || connect_in_pod(pid, port)).await??;
    std_stream.set_nonblocking(true)?;
    let tcp = tokio::net::TcpStream::from_std(std_stream)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::get(path).header(http::header::HOST, format!("127.0.0.1:{port}"));
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Empty::<Bytes>::new())?;
    Ok(sender.send_request(req).await?)
}

/// `GET path`, the whole body (at most 16 MiB), failing unless 200.
pub async fn get_text(pid: u32, port: u16, path: &str) -> Result<String> {
    let rsp = tokio::time::timeout(Duration::from_secs(5), async {
        let rsp = get(pid, port, path).await?;
        let status = rsp.status();
        let body = http_body_util::Limited::new(rsp.into_body(), MAX_PAGE)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer: {e}"))?
            .to_bytes();
        anyhow::Ok((status, body))
    })
    .await
    .map_err(|_| anyhow!("no answer within 5 s"))??;
    let text = String::from_utf8_lossy(&rsp.1).into_owned();
    if rsp.0 != http::StatusCode::OK {
        bail!("{} answered {}: {}", path, rsp.0, text.trim());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection() {
        let s = |ns: Option<&str>, pod: Option<&str>| Select {
            namespace: ns.map(Into::into),
            pod: pod.map(Into::into),
        };
        let cases = [
            (s(None, None), "default", "web-1", true),
            (s(Some("default"), None), "default", "web-1", true),
            (s(Some("shop"), None), "default", "web-1", false),
            (s(None, Some("web-1")), "default", "web-1", true),
            (s(None, Some("web-2")), "default", "web-1", false),
            (s(None, Some("shop/web-1")), "default", "web-1", false),
            (s(None, Some("default/web-1")), "default", "web-1", true),
        ];
        for (sel, ns, name, want) in cases {
            assert_eq!(sel.matches(ns, name), want, "{sel:?} {ns}/{name}");
        }
    }
}
