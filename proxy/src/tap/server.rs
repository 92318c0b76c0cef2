//! `GET /tap?direction=..&method=..&path=..&status=..&buffer=N`: the tap
//! stream, one JSON [`TapMessage`] per line (chunked), for as long as the
//! client reads. Mounted on the operator listener (see [`route`]); who may
//! tap is decided by [`super::peer::authorize`].

use super::hub::{DEFAULT_BUFFER, Hub, Subscription};
use crate::http::{Body, BoxError, boxed, full};
use bytes::Bytes;
use conduit_register::tap::{TapFilter, TapMessage};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{info, warn};

/// Path of the tap endpoint.
pub const PATH: &str = "/tap";
/// Send buffer of operator connections (the kernel doubles it): with the
/// per-listener queue and hyper's few queued chunks, what a stalled tap
/// reader can hold before events are dropped.
pub const SNDBUF: usize = 32 * 1024;
/// A silent stream sends an empty line this often (readers skip it), so a
/// listener that went away is noticed and its slot freed.
const KEEPALIVE: Duration = Duration::from_secs(5);

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut rsp = Response::new(full(body));
    *rsp.status_mut() = status;
    rsp
}

/// The mounting hook: `Some(response)` for requests to [`PATH`], `None`
/// for every other path (the operator server answers those).
pub fn route<B>(
    hub: &Arc<Hub>,
    client: SocketAddr,
    local: SocketAddr,
    req: &Request<B>,
) -> Option<Response<Body>> {
    if req.uri().path() != PATH {
        return None;
    }
    if req.method() != Method::GET {
        return Some(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET /tap\n".into(),
        ));
    }
    if let Err(e) = super::peer::authorize(client, local) {
        warn!(%client, error = %e, "tap request refused");
        return Some(text(StatusCode::FORBIDDEN, format!("{e}\n")));
    }
    let query = req.uri().query().unwrap_or_default();
    let (filter, extra) = match TapFilter::from_query(query, &["buffer"]) {
        Ok(x) => x,
        Err(e) => return Some(text(StatusCode::BAD_REQUEST, format!("{e}\n"))),
    };
    let buffer = match extra.first().map(|(_, v)| v.parse::<usize>()) {
        None => DEFAULT_BUFFER,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            return Some(text(
                StatusCode::BAD_REQUEST,
                "buffer must be a positive number of events\n".into(),
            ));
        }
    };
    match hub.subscribe(filter.clone(), buffer) {
        Ok(sub) => {
            info!(%client, filter = %filter.to_query(), buffer, "tap listener attached");
            let mut rsp = Response::new(stream(sub));
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/jsonl"),
            );
            Some(rsp)
        }
        Err(e) => Some(text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))),
    }
}

fn line(m: &TapMessage) -> Bytes {
    let mut v = serde_json::to_vec(m).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn stream(sub: Subscription) -> Body {
    let s = futures::stream::unfold((sub, 0u64), |(mut sub, mut reported)| async move {
        let chunk = loop {
            let dropped = sub.dropped.load(Ordering::Relaxed);
            if dropped != reported {
                reported = dropped;
                break line(&TapMessage::Dropped { total: dropped });
            }
            match tokio::time::timeout(KEEPALIVE, sub.rx.recv()).await {
                Ok(Some(ev)) => break line(&TapMessage::Request(Box::new((*ev).clone()))),
                Ok(None) => return None,
                Err(_) if sub.dropped.load(Ordering::Relaxed) != reported => continue,
                Err(_) => break Bytes::from_static(b"\n"),
            }
        };
        Some((Ok::<_, BoxError>(Frame::data(chunk)), (sub, reported)))
    });
    boxed(http_body_util::StreamBody::new(s))
}
