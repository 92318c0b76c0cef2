//! gRPC with a real tonic service and client through the mesh: unary,
//! client streaming, server streaming, bidirectional streaming, deadlines,
//! and messages of several MB.

use crate::support;

use conduit_test_support::echo::{self, EchoClient, Msg};
use std::time::Duration;
use support::{Mesh, assert_sample, metrics};
use tokio_stream::StreamExt;
use tonic::Request;

/// The echo gRPC service (test-support) on loopback.
async fn grpc_app() -> std::net::SocketAddr {
    echo::serve().await.unwrap()
}

async fn client(mesh: &Mesh) -> EchoClient<tonic::transport::Channel> {
    echo::client(mesh.entry()).await.unwrap()
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
