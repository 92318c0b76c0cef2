//! gRPC with a real tonic service and client through the mesh: unary,
//! client streaming, server streaming, bidirectional streaming, deadlines,
//! messages of several MB, the proxy's own errors as gRPC statuses, and
//! gRPC errors counted as failures in the metrics.

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
    assert_sample(&m, "conduit_response_total", &["outbound", "success"], 4.0);
}

pub fn msg(text: &str, count: u32) -> Msg {
    Msg {
        text: text.into(),
        payload: vec![],
        count,
    }
}

/// The `classification` of `direction` responses in a metrics page, with
/// status class 2xx: (successes, failures).
pub fn classified(page: &str, direction: &str) -> (f64, f64) {
    let n = |class: &str| {
        support::sample(
            page,
            "conduit_response_total",
            &[
                direction,
                "status_class=\"2xx\"",
                &format!("classification=\"{class}\""),
            ],
        )
    };
    (n("success"), n("failure"))
}

/// A gRPC call the proxies cannot deliver ends with a gRPC status a client
/// understands (UNAVAILABLE), not an HTTP 502 with a text body, which
/// tonic read as gRPC framing before the HTTP status: the old code fails
/// here with `Internal: protocol error: received message with invalid
/// compression flag: 117` (the `u` of `upstream connect failed`).
#[tokio::test]
async fn an_unreachable_application_is_unavailable_to_a_grpc_client() {
    // Nothing listens where the application should be: the inbound proxy
    // cannot connect, and answers for it.
    let dead = crate::support::refusing();
    let mesh = Mesh::start(dead.addr).await;
    let mut c = client(&mesh).await;
    for _ in 0..2 {
        let err = c.unary(msg("hi", 0)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert_eq!(err.message(), "upstream connect failed", "{err:?}");
        assert_eq!(
            err.metadata()
                .get("conduit-proxy-error")
                .and_then(|v| v.to_str().ok()),
            Some("upstream connect failed"),
            "{err:?}"
        );
    }
    // Both proxies count them as failures, though in HTTP 200 responses.
    for (p, direction) in [(&mesh.outbound, "outbound"), (&mesh.inbound, "inbound")] {
        let m = metrics(p).await;
        assert_eq!(classified(&m, direction), (0.0, 2.0), "{direction}:\n{m}");
    }
    // The channel still works for the next call (nothing was broken).
    let err = c.unary(msg("again", 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
}

/// A call whose application dies while it is in flight (sent, never
/// answered: the fault suite's endpoint killed under load) is UNAVAILABLE,
/// `upstream request failed`, to the client: the old code answered a 502
/// with a text body (`Internal`, compression flag 117).
#[tokio::test]
async fn a_call_lost_in_flight_is_unavailable_to_a_grpc_client() {
    let mesh = Mesh::start(support::apps::h2_server_dying_mid_call().await).await;
    let mut c = client(&mesh).await;
    let err = c.unary(msg("lost", 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "upstream request failed", "{err:?}");
    let m = metrics(&mesh.outbound).await;
    assert_eq!(classified(&m, "outbound"), (0.0, 1.0), "{m}");
}

/// The proxy's request timeout is DEADLINE_EXCEEDED to a gRPC client (the
/// old code: `Internal`, compression flag 114, the `r` of `request timeout`).
#[tokio::test]
async fn the_proxys_request_timeout_is_deadline_exceeded() {
    let mesh = Mesh::start_with(grpc_app().await, |c| {
        c.request_timeout = Some(Duration::from_millis(300))
    })
    .await;
    let mut c = client(&mesh).await;
    // The echo service answers "sleep" after 5 s; the client sets no deadline.
    let err = c.unary(msg("sleep", 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert_eq!(err.message(), "request timeout", "{err:?}");
    let m = metrics(&mesh.outbound).await;
    assert_eq!(classified(&m, "outbound"), (0.0, 1.0), "{m}");
}

/// An application's gRPC errors are failures in the metrics (they travel
/// in HTTP 200 responses: by status class alone they were successes), from
/// the headers of a trailers-only answer or from the trailers at the end
/// of a stream; OK calls are successes.
#[tokio::test]
async fn grpc_errors_of_the_application_count_as_failures() {
    let mesh = Mesh::start(grpc_app().await).await;
    two_good_and_two_failed_calls(&mut client(&mesh).await).await;
    for (p, direction) in [(&mesh.outbound, "outbound"), (&mesh.inbound, "inbound")] {
        let m = metrics(p).await;
        assert_eq!(classified(&m, direction), (2.0, 2.0), "{direction}:\n{m}");
    }
}

/// A unary call and a stream that succeed, a unary call the application
/// fails before any message (trailers-only: grpc-status 14 in the response
/// headers) and a stream it fails after 3 items (grpc-status 14 at the
/// end), by any client (gRPC, gRPC-Web).
pub async fn two_good_and_two_failed_calls<T>(c: &mut EchoClient<T>)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    assert_eq!(
        c.unary(msg("ok", 0)).await.unwrap().into_inner().text,
        "echo ok"
    );
    let err = c.unary(msg(echo::FAIL, 0)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "asked to fail");
    let mut down = c
        .server_stream(msg(echo::FAIL, 3))
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        assert_eq!(
            down.next().await.unwrap().unwrap().text,
            format!("item {i}")
        );
    }
    let err = down.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(down.next().await.is_none());
    let mut down = c.server_stream(msg("", 2)).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(m) = down.next().await {
        assert_eq!(m.unwrap().text, format!("item {n}"));
        n += 1;
    }
    assert_eq!(n, 2);
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
