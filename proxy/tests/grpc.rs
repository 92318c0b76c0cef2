//! gRPC with a real tonic service and client through the mesh: unary,
//! client streaming, server streaming, bidirectional streaming, deadlines,
//! and messages of several MB.

mod support;

use std::pin::Pin;
use std::time::Duration;
use support::{Mesh, assert_sample, metrics};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

// The test service (tests/proto/test_echo.proto), compiled by the tests
// crate so the proxy's own build compiles no test proto.
use conduit_tests::test_pb as pb;
use pb::Msg;
use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};

struct Svc;

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
        if m.text == "sleep" {
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
        let n = req.into_inner().count;
        let s = tokio_stream::iter((0..n).map(|i| {
            Ok(Msg {
                text: format!("item {i}"),
                payload: vec![],
                count: i,
            })
        }));
        Ok(Response::new(Box::pin(s)))
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

async fn grpc_app() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let svc = EchoServer::new(Svc)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

async fn client(mesh: &Mesh) -> EchoClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.entry()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    EchoClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

#[tokio::test]
async fn every_call_kind_through_the_mesh() {
    let mesh = Mesh::start(grpc_app().await).await;
    let mut c = client(&mesh).await;

    let r = c
        .unary(Msg {
            text: "hi".into(),
            payload: vec![],
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.text, "echo hi");

    let up = tokio_stream::iter((0..10).map(|_| Msg {
        text: String::new(),
        payload: vec![1; 1000],
        count: 0,
    }));
    let r = c.client_stream(up).await.unwrap().into_inner();
    assert_eq!((r.count, r.text.as_str()), (10, "10000 bytes"));

    let mut down = c
        .server_stream(Msg {
            text: String::new(),
            payload: vec![],
            count: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = down.next().await {
        assert_eq!(m.unwrap().text, format!("item {n}"));
        n += 1;
    }
    assert_eq!(n, 100);

    // Bidi: each reply is read before the next message is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = c
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..10u32 {
        tx.send(Msg {
            text: format!("m{i}"),
            payload: vec![],
            count: i,
        })
        .await
        .unwrap();
        assert_eq!(
            replies.next().await.unwrap().unwrap().text,
            format!("re: m{i}")
        );
    }
    drop(tx);
    assert!(replies.next().await.is_none());

    let m = metrics(&mesh.outbound).await;
    assert_sample(&m, "conduit_response_total", &["outbound", "2xx"], 4.0);
}

#[tokio::test]
async fn messages_of_several_megabytes() {
    let mesh = Mesh::start(grpc_app().await).await;
    let mut c = client(&mesh).await;
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let r = c
        .unary(Msg {
            text: "big".into(),
            payload: payload.clone(),
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.payload == payload, "8 MB payload came back different");
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = c
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        tx.send(Msg {
            text: "chunk".into(),
            payload: payload.clone(),
            count: 0,
        })
        .await
        .unwrap();
        assert_eq!(
            replies.next().await.unwrap().unwrap().payload.len(),
            payload.len()
        );
    }
}

#[tokio::test]
async fn deadlines_are_propagated() {
    let mesh = Mesh::start(grpc_app().await).await;
    let mut c = client(&mesh).await;
    let mut req = Request::new(Msg {
        text: "sleep".into(),
        payload: vec![],
        count: 0,
    });
    req.set_timeout(Duration::from_millis(200));
    let start = std::time::Instant::now();
    let err = c.unary(req).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
    // The application saw the caller's deadline (grpc-timeout) through both proxies.
    let mut req = Request::new(Msg {
        text: "deadline".into(),
        payload: vec![],
        count: 0,
    });
    req.set_timeout(Duration::from_secs(7));
    let seen = c.unary(req).await.unwrap().into_inner().text;
    assert!(
        seen.ends_with('u') || seen.ends_with('m') || seen.ends_with('S'),
        "grpc-timeout seen by app: {seen:?}"
    );
    assert!(!seen.is_empty());
    // The connection still works afterwards.
    let r = c
        .unary(Msg {
            text: "after".into(),
            payload: vec![],
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.text, "echo after");
}
