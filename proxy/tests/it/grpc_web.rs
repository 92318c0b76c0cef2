//! gRPC-Web through the mesh, with tonic-web's client and server: the
//! client speaks HTTP/1.1 as a browser's gRPC-Web library does, the
//! application answers gRPC-Web, whose status travels in the body's last
//! frame rather than in HTTP trailers. Calls work; the metrics classify
//! them by that frame (the old code counted every gRPC-Web call that
//! streamed a message as a failure: no HTTP trailers came); the proxy's
//! own errors reach a gRPC-Web client as gRPC statuses with gRPC-Web's
//! content type.

use crate::grpc::{classified, msg};
use crate::support::{Mesh, metrics};
use conduit_test_support::echo::{self, EchoClient, pb::echo_server::EchoServer};
use std::net::SocketAddr;

/// The echo service behind tonic-web's layer (HTTP/1.1 accepted), on
/// loopback.
async fn web_app() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(tonic_web::GrpcWebLayer::new())
            .add_service(EchoServer::new(echo::Svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

type WebClient = EchoClient<
    tonic_web::GrpcWebClientService<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            tonic_web::GrpcWebCall<tonic::body::Body>,
        >,
    >,
>;

/// A gRPC-Web client (binary wire) over HTTP/1.1 to `addr`.
fn web_client(addr: SocketAddr) -> WebClient {
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let svc = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .service(http);
    EchoClient::with_origin(svc, format!("http://{addr}").parse().unwrap())
}

#[tokio::test]
async fn grpc_web_calls_are_classified_by_the_trailers_frame() {
    let mesh = Mesh::start(web_app().await).await;
    // The successes' status, and the failed stream's, are in the
    // trailers frame.
    crate::grpc::two_good_and_two_failed_calls(&mut web_client(mesh.entry())).await;
    for (p, direction) in [(&mesh.outbound, "outbound"), (&mesh.inbound, "inbound")] {
        let m = metrics(p).await;
        assert_eq!(classified(&m, direction), (2.0, 2.0), "{direction}:\n{m}");
    }
}

/// The proxy's own error reaches a gRPC-Web client as UNAVAILABLE, in a
/// response of gRPC-Web's content type.
#[tokio::test]
async fn an_unreachable_application_is_unavailable_to_a_grpc_web_client() {
    let dead = crate::support::refusing();
    let mesh = Mesh::start(dead.addr).await;
    let mut c = web_client(mesh.entry());
    let err = c.unary(msg("hi", 0)).await.unwrap_err();
    eprintln!("the gRPC-Web client sees: {err:?}");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "upstream connect failed", "{err:?}");
    // The raw answer, as a browser's library sees it.
    let rsp = reqwest_like_post(mesh.entry()).await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(
        rsp.headers()[http::header::CONTENT_TYPE],
        "application/grpc-web+proto"
    );
    assert_eq!(rsp.headers()["grpc-status"], "14");
    let m = metrics(&mesh.outbound).await;
    assert_eq!(classified(&m, "outbound"), (0.0, 2.0), "{m}");
}

/// One gRPC-Web POST over HTTP/1.1 with an empty message, with hyper's
/// client: the response head.
async fn reqwest_like_post(addr: SocketAddr) -> http::Response<hyper::body::Incoming> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{addr}/conduit.test.echo.Echo/Unary"))
        .header(http::header::CONTENT_TYPE, "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .unwrap();
    send.send_request(req).await.unwrap()
}
