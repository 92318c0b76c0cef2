//! The echo gRPC service (`proto/echo.proto`): every call kind tonic has,
//! answered so a test can tell what went through. `Unary` echoes the text
//! (`"deadline"` answers the `grpc-timeout` it received, `"sleep"` answers
//! after 5 s, for deadline tests, [`FAIL`] fails with UNAVAILABLE),
//! `ClientStream` counts messages and bytes, `ServerStream` sends `count`
//! items (then, with the text [`FAIL`], fails the stream with UNAVAILABLE:
//! the status in the trailers), `Bidi` answers each message.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// The generated messages, client and server.
pub mod pb {
    tonic::include_proto!("conduit.test.echo");
}

pub use pb::Msg;
pub use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};

/// Largest message the server and [`client`] accept (the proxy's tests send
/// several MB).
pub const MAX_MESSAGE: usize = 64 << 20;

/// The text that makes `Unary` and `ServerStream` fail with UNAVAILABLE.
pub const FAIL: &str = "fail";

/// The service.
#[derive(Debug, Clone, Copy, Default)]
pub struct Svc;

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Svc {
    async fn unary(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let deadline = req
            .metadata()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap_or("?").to_string());
        let m = req.into_inner();
        if m.text == "deadline" {
            return Ok(Response::new(Msg {
                text: deadline.unwrap_or_default(),
                payload: vec![],
                count: 0,
            }));
        }
        if m.text == FAIL {
            return Err(Status::unavailable("asked to fail"));
        }
        if m.text == "sleep" {
            // A slow server on purpose: the caller's deadline must fire.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Ok(Response::new(Msg {
            text: format!("echo {}", m.text),
            payload: m.payload,
            count: 1,
        }))
    }
    async fn client_stream(&self, req: Request<Streaming<Msg>>) -> Result<Response<Msg>, Status> {
        let mut s = req.into_inner();
        let (mut n, mut bytes) = (0, 0usize);
        while let Some(m) = s.next().await {
            let m = m?;
            n += 1;
            bytes += m.payload.len();
        }
        Ok(Response::new(Msg {
            text: format!("{bytes} bytes"),
            payload: vec![],
            count: n,
        }))
    }
    type ServerStreamStream = MsgStream;
    async fn server_stream(&self, req: Request<Msg>) -> Result<Response<MsgStream>, Status> {
        let m = req.into_inner();
        let n = m.count;
        let s = tokio_stream::iter((0..n).map(|i| {
            Ok(Msg {
                text: format!("item {i}"),
                payload: vec![],
                count: i,
            })
        }));
        let fail = (m.text == FAIL).then(|| Err(Status::unavailable("asked to fail")));
        Ok(Response::new(Box::pin(s.chain(tokio_stream::iter(fail)))))
    }
    type BidiStream = MsgStream;
    async fn bidi(&self, req: Request<Streaming<Msg>>) -> Result<Response<MsgStream>, Status> {
        let s = req.into_inner().map(|m| {
            m.map(|m| Msg {
                text: format!("re: {}", m.text),
                payload: m.payload,
                count: m.count,
            })
        });
        Ok(Response::new(Box::pin(s)))
    }
}

/// Serves [`Svc`] on a fresh loopback port (plaintext HTTP/2) for the rest
/// of the test's runtime; returns its address.
pub async fn serve() -> std::io::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let svc = EchoServer::new(Svc)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    Ok(addr)
}

/// A client of the service at `addr` (plaintext HTTP/2), accepting messages
/// up to [`MAX_MESSAGE`].
pub async fn client(
    addr: SocketAddr,
) -> Result<EchoClient<tonic::transport::Channel>, tonic::transport::Error> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(EchoClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}
