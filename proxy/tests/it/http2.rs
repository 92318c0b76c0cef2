//! HTTP/2 through the mesh: many concurrent streams on one connection,
//! trailers, full-duplex streaming (each chunk answered before the next is
//! sent, so nothing is buffered whole).

use crate::support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::client::{self, text};
use support::{Mesh, apps, assert_sample, metrics};

#[tokio::test]
async fn many_concurrent_streams_on_one_connection() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let c = client::h2(mesh.entry()).await;
    let reqs = (0..50).map(|i| {
        let mut c = c.clone();
        async move {
            let req = Request::post("http://web.test/echo")
                .body(client::body(format!("stream {i}")))
                .unwrap();
            let (parts, body) = text(c.send_request(req).await.unwrap()).await;
            assert_eq!(parts.status, 200);
            assert_eq!(parts.headers["x-version"], "HTTP/2.0");
            assert_eq!(parts.headers["x-host"], "web.test");
            assert_eq!(body, format!("stream {i}"));
        }
    });
    futures::future::join_all(reqs).await;
    let m = metrics(&mesh.outbound).await;
    assert_sample(&m, "conduit_tcp_open_total", &["outbound"], 1.0);
    assert_sample(
        &m,
        "conduit_protocol_detect_total",
        &["protocol=\"http2\""],
        1.0,
    );
    assert_sample(
        &m,
        "conduit_response_total",
        &["outbound", "status_class=\"2xx\""],
        50.0,
    );
    // Between the proxies the streams are spread over exactly
    // `H2_CONNECTIONS` (two) connections, opened once and reused.
    let mi = metrics(&mesh.inbound).await;
    assert_sample(
        &mi,
        "conduit_tcp_open_total",
        &["inbound"],
        conduit_proxy::http::client::H2_CONNECTIONS as f64,
    );
}

#[tokio::test]
async fn trailers_pass_through() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let mut c = client::h2(mesh.entry()).await;
    let rsp = c
        .send_request(
            Request::get("http://web.test/trailers")
                .body(client::body(""))
                .unwrap(),
        )
        .await
        .unwrap();
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["x-checksum"], "42");
    assert_eq!(collected.to_bytes(), "data");

    // Request trailers too: the app echoes the body, trailers included.
    let frames: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
        Ok(Frame::data(Bytes::from_static(b"body"))),
        Ok(Frame::trailers({
            let mut t = http::HeaderMap::new();
            t.insert("x-req-trailer", http::HeaderValue::from_static("yes"));
            t
        })),
    ];
    let req = Request::post("http://web.test/echo")
        .body(BodyExt::boxed(StreamBody::new(futures::stream::iter(
            frames,
        ))))
        .unwrap();
    let collected = c
        .send_request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        collected.trailers().expect("echoed trailers")["x-req-trailer"],
        "yes"
    );
}

#[tokio::test]
async fn full_duplex_streaming() {
    let app = apps::http_server().await;
    let mesh = Mesh::start(app).await;
    let mut c = client::h2(mesh.entry()).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
    >(1);
    let body = BodyExt::boxed(StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let rsp = c
        .send_request(Request::post("http://web.test/echo").body(body).unwrap())
        .await
        .unwrap();
    let mut down = rsp.into_body();
    for i in 0..20 {
        let chunk = Bytes::from(format!("ping {i};"));
        tx.send(Ok(Frame::data(chunk.clone()))).await.unwrap();
        let mut got = Vec::new();
        while got.len() < chunk.len() {
            let f = down
                .frame()
                .await
                .expect("echo arrives while the request is open")
                .unwrap();
            got.extend_from_slice(&f.into_data().unwrap());
        }
        assert_eq!(got, chunk);
    }
    drop(tx);
    // The stream ends cleanly (possibly after an empty end-of-stream frame).
    while let Some(f) = down.frame().await {
        let f = f.expect("clean end of stream");
        assert!(
            f.data_ref().is_none_or(|d| d.is_empty()),
            "unexpected frame {f:?}"
        );
    }
}

#[tokio::test]
async fn http2_plain_outbound_stays_http2() {
    let app = apps::http_server().await;
    let p = support::plain_outbound(app, |_| {}).await;
    let mut c = client::h2(p.outbound_addrs[0]).await;
    let (parts, _) = text(
        c.send_request(
            Request::get("http://web.test/echo")
                .body(client::body(""))
                .unwrap(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(parts.headers["x-version"], "HTTP/2.0");
}
