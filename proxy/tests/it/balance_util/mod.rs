//! Real HTTP/1.1 test servers on loopback for the balancing tests: each
//! counts the requests it served, can answer slowly or with an error
//! status, and can be stopped and started again on the same port.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub struct TestServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    delay: Duration,
    status: u16,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(delay: Duration, status: u16) -> TestServer {
        let mut s = TestServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            hits: Arc::new(AtomicUsize::new(0)),
            delay,
            status,
            task: None,
        };
        s.listen().await;
        s
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every connection: new connections are
    /// refused.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.listen().await;
    }

    async fn listen(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("bind test server");
        self.addr = listener.local_addr().unwrap();
        let (hits, delay, status) = (self.hits.clone(), self.delay, self.status);
        self.task = Some(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let hits = hits.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |_req| {
                        let hits = hits.clone();
                        async move {
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            hits.fetch_add(1, Ordering::SeqCst);
                            let resp = hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"hello")))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        }));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `http://addr/`: the status, or the error as text.
pub async fn get(client: &HttpClient, addr: SocketAddr) -> Result<u16, String> {
    let uri: hyper::Uri = format!("http://{addr}/").parse().unwrap();
    let resp = client.get(uri).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// Waits (test-support's `wait_until_async`) until `cond` holds; panics
/// naming `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    conduit_test_support::wait_until_async(what, limit, || {
        let now = cond();
        async move {
            anyhow::ensure!(now, "still false");
            Ok(())
        }
    })
    .await
    .unwrap();
}
