//! The benchmark's upstream: a real hyper server answering `200 ok` over
//! HTTP/1.1 and HTTP/2 (prior knowledge) on the same port, on its own
//! single-threaded runtime so the load generator does not starve it.

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;

/// A server on its own thread; stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// On a free loopback port.
    pub fn start() -> Result<Server> {
        Server::bind("127.0.0.1:0".parse().expect("a literal address"))
    }

    /// On `addr` (port 0: a free one, see [`Server::addr`]).
    pub fn bind(addr: SocketAddr) -> Result<Server> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the benchmark server to {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("server runtime")?;
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = rx => {}
                        _ = serve(listener) => {}
                    }
                })
            })?;
        Ok(Server {
            addr,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

/// Answers `200 ok` to every request on every connection `listener` accepts.
pub async fn serve(listener: tokio::net::TcpListener) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                    Bytes::from_static(b"ok"),
                )))
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::{Load, Protocol, Target, run};
    use std::time::Duration;

    #[test]
    fn answers_http1_and_http2() {
        let server = Server::start().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        for p in [Protocol::Http1, Protocol::Http2] {
            let t = rt.block_on(async { Target::new(server.addr, p) });
            let s = run(rt.handle(), &t, Load::Rate(200), Duration::from_millis(100));
            assert_eq!((s.latencies.len(), s.errors), (20, 0), "{p:?}");
            let s = run(rt.handle(), &t, Load::Max(4), Duration::from_millis(100));
            assert!(!s.latencies.is_empty() && s.errors == 0, "{p:?}");
        }
    }
}
