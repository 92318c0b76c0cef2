//! HTTP/1 request heads at the proxy's edge: hyper's parser configured as
//! the proxy configures it (`proxy/src/http/server.rs`: head size and field
//! count limits, from the proxy's default configuration), and for every
//! request that parses the proxy's own header handling
//! (`proxy/src/http/headers.rs`): hop-by-hop stripping, upgrade detection,
//! the authority, and reshaping for the next hop in both HTTP versions.
#![no_main]

use bytes::Bytes;
use clap::Parser;
use conduit_fuzz::runtime;
use conduit_proxy::config::Config;
use conduit_proxy::http::{Proto, headers};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use libfuzzer_sys::fuzz_target;
use std::convert::Infallible;
use std::sync::OnceLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| Config::try_parse_from(["conduit-proxy"]).expect("default proxy config"))
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let upgrade = headers::is_upgrade(&req);
    let _ = headers::authority(&req);
    let (parts, _body) = req.into_parts();
    let mut headers_copy = parts.headers.clone();
    headers::strip_hop_by_hop(&mut headers_copy, upgrade);
    assert!(headers_copy.get("keep-alive").is_none());
    assert!(headers_copy.get("transfer-encoding").is_none());
    for proto in [Proto::Http2, Proto::Http1] {
        let mut r = http::Request::from_parts(parts.clone(), ());
        *r.headers_mut() = headers_copy.clone();
        if headers::for_version(&mut r, proto, &"fallback.invalid:80").is_ok() {
            match proto {
                Proto::Http2 => assert!(r.headers().get(http::header::HOST).is_none()),
                Proto::Http1 => assert!(r.headers().get(http::header::HOST).is_some()),
            }
        }
    }
    Ok(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fuzz_target!(|input: &[u8]| {
    let cfg = config();
    runtime().block_on(async {
        let (client, server) = tokio::io::duplex(256 * 1024);
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout)
            .max_headers(cfg.max_headers)
            .max_buf_size(cfg.max_header_bytes.max(8192));
        let conn = b
            .serve_connection(TokioIo::new(server), service_fn(handle))
            .with_upgrades();
        let (mut rd, mut wr) = tokio::io::split(client);
        let data = input.to_vec();
        let writer = async move {
            let _ = wr.write_all(&data).await;
            let _ = wr.shutdown().await;
        };
        let reader = async move {
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink).await;
        };
        let (_, _, _) = tokio::join!(conn, writer, reader);
    });
});
