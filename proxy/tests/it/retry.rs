//! Retries as wired into the HTTP path: idempotent requests are replayed
//! (their bodies kept up to `--max-buffered-body`), others are not, and a
//! body over the limit streams and is not retried.

use crate::support;

use bytes::Bytes;
use conduit_proxy::discovery::{Endpoint, ServiceConfig, StaticDiscovery};
use conduit_proxy::{Config, Deps};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::client::{self, body, text};

/// Fails every odd-numbered request (503), echoes the body on even ones.
async fn flaky_server(hits: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        let data = req.into_body().collect().await?.to_bytes();
                        let mut rsp = Response::new(Full::new(data));
                        if n % 2 == 1 {
                            *rsp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                            *rsp.body_mut() = Full::new(Bytes::from_static(b"try again"));
                        }
                        Ok::<_, hyper::Error>(rsp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn idempotent_requests_are_replayed_with_their_bodies() {
    support::init_tracing();
    let hits = Arc::new(AtomicUsize::new(0));
    let app = flaky_server(hits.clone()).await;
    let svc: std::net::SocketAddr = support::SERVICE.parse().unwrap();
    let discovery = StaticDiscovery::from_services(vec![ServiceConfig {
        name: "flaky:80".into(),
        addresses: vec![svc],
        endpoints: vec![Endpoint::plain(app)],
    }])
    .unwrap();
    let mut cfg = Config::loopback_for_tests();
    cfg.max_buffered_body = 1024;
    let proxy = conduit_proxy::start(cfg.clone(), Deps::fixed(&cfg, svc, Arc::new(discovery)))
        .await
        .unwrap();
    let mut c = client::h1(proxy.outbound_addrs[0]).await;

    for i in 0..6 {
        let req = Request::put("/doc")
            .header("host", "flaky")
            .body(body(format!("version {i}")))
            .unwrap();
        let (parts, got) = text(c.send_request(req).await.unwrap()).await;
        assert_eq!(parts.status, 200, "PUT {i} was not retried");
        assert_eq!(got, format!("version {i}"), "replayed body differs");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        12,
        "each PUT took exactly two attempts"
    );
    let m = support::metrics(&proxy).await;
    assert_eq!(
        support::sample(&m, "conduit_retry_total", &["direction=\"outbound\""]),
        6.0,
        "one retry counted per PUT:\n{m}"
    );

    let post = |b: &'static str| {
        Request::post("/doc")
            .header("host", "flaky")
            .body(body(b))
            .unwrap()
    };
    assert_eq!(
        text(c.send_request(post("x")).await.unwrap())
            .await
            .0
            .status,
        503,
        "POST must not be retried"
    );
    assert_eq!(
        text(c.send_request(post("y")).await.unwrap())
            .await
            .0
            .status,
        200
    );
    assert_eq!(hits.load(Ordering::SeqCst), 14);

    // Over the buffering limit: streamed through, not retried.
    let big = Request::put("/doc")
        .header("host", "flaky")
        .body(body(vec![b'z'; 4096]))
        .unwrap();
    assert_eq!(text(c.send_request(big).await.unwrap()).await.0.status, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 15);
}
