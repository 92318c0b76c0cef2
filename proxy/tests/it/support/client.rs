//! Real HTTP clients (hyper) for the tests.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::net::TcpStream;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn body(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub async fn h1(addr: SocketAddr) -> http1::SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (s, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    s
}

pub async fn h2(addr: SocketAddr) -> http2::SendRequest<Body> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    s
}

/// Response head and the whole body as text.
pub async fn text(rsp: Response<hyper::body::Incoming>) -> (http::response::Parts, String) {
    let (parts, b) = rsp.into_parts();
    let bytes = b.collect().await.unwrap().to_bytes();
    (parts, String::from_utf8_lossy(&bytes).into_owned())
}

pub fn get(uri: &str, host: &str) -> Request<Body> {
    Request::get(uri)
        .header("host", host)
        .body(body(""))
        .unwrap()
}
