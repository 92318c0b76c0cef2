//! Real application servers for the tests.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An HTTP/1.1 + HTTP/2 server (hyper, auto-detected):
/// * `/echo`: streams the request body back; request facts in headers
///   (`x-version`, `x-host`, `x-saw-connection`, `x-saw-orig-proto`, `x-saw-te`);
///   request trailers are returned as response trailers.
/// * `/trailers`: body `data` then trailer `x-checksum: 42`.
/// * `/status/NNN`: that status.
/// * `/chunks/N`: N chunks of 1 KiB, streamed.
/// * `/slow/MS`: answers after MS milliseconds.
pub async fn http_server() -> SocketAddr {
    serve("127.0.0.1:0", |tcp| async move {
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(tcp), service_fn(app))
            .await;
    })
    .await
    .unwrap()
}

/// [`http_server`] whose HTTP/2 side takes any number of streams reset
/// before it accepted them (hyper's default closes the connection after 20:
/// h2's own rapid-reset guard). A proxy relays its clients' cancellations
/// over one shared upstream connection, and an upstream that lags behind
/// (a loaded machine) then sees them as a rapid reset of its own and closes
/// that connection, failing the requests of every other client on it: the
/// h2_abuse tests use this server to measure the proxy's defences, not that
/// upstream policy.
pub async fn http_server_taking_resets() -> SocketAddr {
    serve("127.0.0.1:0", |tcp| async move {
        let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        b.http2().max_pending_accept_reset_streams(Some(usize::MAX));
        let _ = b
            .serve_connection_with_upgrades(TokioIo::new(tcp), service_fn(app))
            .await;
    })
    .await
    .unwrap()
}

/// Binds `bind` and hands every accepted connection to `conn`, each on a
/// task of its own, for as long as the test runtime lives.
/// An HTTP/2 server that dies in the middle of every call: it takes the
/// first request of a connection and drops the connection unanswered (an
/// application killed while a call is in flight; its request was sent).
pub async fn h2_server_dying_mid_call() -> SocketAddr {
    serve("127.0.0.1:0", |tcp| async move {
        let Ok(mut conn) = h2::server::handshake(tcp).await else {
            return;
        };
        // The request's headers arrived; dying drops the connection.
        let _ = conn.accept().await;
    })
    .await
    .unwrap()
}

async fn serve<F, Fut>(bind: &str, conn: F) -> std::io::Result<SocketAddr>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind(bind).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(conn(tcp));
        }
    });
    Ok(addr)
}

async fn app(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let mut rsp = if path == "/echo" {
        let facts = facts(&req);
        let body = req.into_body();
        let mut r = Response::new(body.boxed());
        r.headers_mut().extend(facts);
        r
    } else if path == "/count" {
        // Reads the whole request body before answering with its length.
        let n = match req.into_body().collect().await {
            Ok(b) => b.to_bytes().len().to_string(),
            Err(e) => format!("body error: {e}"),
        };
        Response::new(full(n))
    } else if path == "/trailers" {
        let frames = vec![
            Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"data"))),
            Ok(Frame::trailers({
                let mut t = HeaderMap::new();
                t.insert("x-checksum", HeaderValue::from_static("42"));
                t
            })),
        ];
        Response::new(BodyExt::boxed(StreamBody::new(futures::stream::iter(
            frames,
        ))))
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(format!("status {code}")));
        *r.status_mut() = code.parse().unwrap_or(http::StatusCode::BAD_REQUEST);
        r
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(100))).await;
        Response::new(full("slow done"))
    } else if let Some(n) = path.strip_prefix("/chunks/") {
        let n: usize = n.parse().unwrap_or(1);
        let frames =
            (0..n).map(|_| Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![b'x'; 1024]))));
        Response::new(BodyExt::boxed(StreamBody::new(futures::stream::iter(
            frames.collect::<Vec<_>>(),
        ))))
    } else {
        let mut r = Response::new(full("not found"));
        *r.status_mut() = http::StatusCode::NOT_FOUND;
        r
    };
    rsp.headers_mut()
        .insert("x-app", HeaderValue::from_static("echo"));
    Ok(rsp)
}

fn facts(req: &Request<Incoming>) -> HeaderMap {
    let mut h = HeaderMap::new();
    let v = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("?"));
    h.insert("x-version", v(format!("{:?}", req.version())));
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    h.insert("x-host", v(host));
    h.insert(
        "x-saw-connection",
        v(req.headers().contains_key("connection").to_string()),
    );
    h.insert(
        "x-saw-keep-alive",
        v(req.headers().contains_key("keep-alive").to_string()),
    );
    h.insert(
        "x-saw-orig-proto",
        v(req.headers().contains_key("conduit-orig-proto").to_string()),
    );
    h.insert(
        "x-saw-custom",
        v(req
            .headers()
            .get("x-custom")
            .map(|v| v.to_str().unwrap_or("").to_string())
            .unwrap_or_default()),
    );
    h
}

/// A WebSocket echo server (tokio-tungstenite).
pub async fn websocket_server() -> SocketAddr {
    use futures::{SinkExt, StreamExt};
    serve("127.0.0.1:0", |tcp| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                return;
            }
        }
    })
    .await
    .unwrap()
}

/// Opaque echo: every byte read is written back; on EOF, writes "bye" and
/// closes (checks half-close).
pub async fn tcp_echo_server() -> SocketAddr {
    tcp_echo_server_on("127.0.0.1:0").await.unwrap()
}

/// [`tcp_echo_server`] on `bind` (`None` when that address cannot be bound,
/// e.g. `[::1]:0` on a machine without IPv6 loopback).
pub async fn tcp_echo_server_on(bind: &str) -> Option<SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    serve(bind, |mut tcp| async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tcp.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tcp.write_all(b"bye").await;
    })
    .await
    .ok()
}

/// Server-speaks-first (SMTP-like): greets on connect, then answers each line.
pub async fn greeting_server() -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    serve("127.0.0.1:0", |tcp| async move {
        let (r, mut w) = tcp.into_split();
        if w.write_all(b"220 mail.test ESMTP ready\r\n").await.is_err() {
            return;
        }
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let reply = if line.starts_with("QUIT") {
                "221 bye\r\n".to_string()
            } else {
                format!("250 ok {line}\r\n")
            };
            if w.write_all(reply.as_bytes()).await.is_err() || line.starts_with("QUIT") {
                return;
            }
        }
    })
    .await
    .unwrap()
}
