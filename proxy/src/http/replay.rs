//! Request bodies kept for a retry. Only idempotent requests whose body is
//! empty or has a declared length within `--max-buffered-body` are read
//! into memory (never more than the limit, whatever the body claims); everything else streams and is not retried.

use super::{Body, BoxError, boxed, full};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, StreamBody};

/// A request that can be sent again.
#[derive(Debug, Clone)]
pub struct Replay {
    method: http::Method,
    uri: http::Uri,
    headers: HeaderMap,
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    pub fn request(&self) -> Request<Body> {
        // Without trailers the body is a `Full`, which says when it is
        // empty (`is_end_stream`): an empty request then goes out as one
        // HEADERS frame with END_STREAM, and hyper's HTTP/2 client spawns
        // no task to stream it (a stream body would cost both, per request).
        let body = match &self.trailers {
            None => full(self.data.clone()),
            Some(t) => {
                let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = Vec::new();
                if !self.data.is_empty() {
                    frames.push(Ok(Frame::data(self.data.clone())));
                }
                frames.push(Ok(Frame::trailers(t.clone())));
                boxed(StreamBody::new(futures::stream::iter(frames)))
            }
        };
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }
}

/// For a request whose body is already at its end (most idempotent
/// requests): the [`Replay`] and the request to send first, with nothing
/// to read and no future to build.
pub fn without_body(req: Request<Body>) -> (Request<Body>, Replay) {
    let (parts, _) = req.into_parts();
    let replay = Replay {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        data: Bytes::new(),
        trailers: None,
    };
    (replay.request(), replay)
}

/// Reads the body when it is small enough to keep; returns the request to
/// send first and, if kept, a [`Replay`] for retries.
pub async fn prepare(
    req: Request<Body>,
    limit: usize,
) -> Result<(Request<Body>, Option<Replay>), BoxError> {
    let body = req.body();
    let small = body.is_end_stream() || body.size_hint().exact().is_some_and(|n| n <= limit as u64);
    if !small {
        return Ok((req, None));
    }
    let (parts, mut body) = req.into_parts();
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(d) if data.len() + d.len() > limit => {
                return Err(format!("request body exceeds the {limit}-byte replay limit").into());
            }
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok().or(trailers),
        }
    }
    let replay = Replay {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        data: data.freeze(),
        trailers,
    };
    Ok((replay.request(), Some(replay)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_bodies_are_kept_large_ones_stream() {
        let req = Request::put("/a").body(full("hello")).unwrap();
        let (first, replay) = prepare(req, 16).await.unwrap();
        let replay = replay.expect("kept");
        assert_eq!(
            first.into_body().collect().await.unwrap().to_bytes(),
            "hello"
        );
        let again = replay.request();
        assert_eq!(again.method(), http::Method::PUT);
        assert_eq!(
            again.into_body().collect().await.unwrap().to_bytes(),
            "hello"
        );

        let req = Request::put("/a").body(full(vec![0u8; 17])).unwrap();
        let (first, replay) = prepare(req, 16).await.unwrap();
        assert!(replay.is_none());
        assert_eq!(
            first.into_body().collect().await.unwrap().to_bytes().len(),
            17
        );
    }

    #[tokio::test]
    async fn an_empty_replayed_body_says_so() {
        // hyper sends a request whose body is at its end as one HEADERS
        // frame with END_STREAM and spawns no task to stream the body.
        let req = Request::get("/a").body(crate::http::empty()).unwrap();
        let (first, replay) = prepare(req, 16).await.unwrap();
        assert!(first.body().is_end_stream());
        let again = replay.expect("kept").request();
        assert!(again.body().is_end_stream());
        assert_eq!(again.body().size_hint().exact(), Some(0));

        let req = Request::put("/a").body(full("hello")).unwrap();
        let (first, _) = prepare(req, 16).await.unwrap();
        assert!(!first.body().is_end_stream());
        assert_eq!(first.body().size_hint().exact(), Some(5));
    }

    /// The synchronous path for a body at its end keeps the same head and
    /// sends the same (empty, ended) body as `prepare` does.
    #[tokio::test]
    async fn without_body_is_prepare_for_an_ended_body() {
        let req = || {
            Request::get("http://web/a?b=1")
                .header("x-one", "1")
                .header("x-one", "2")
                .body(crate::http::empty())
                .unwrap()
        };
        let (first, replay) = without_body(req());
        let (want_first, want_replay) = prepare(req(), 16).await.unwrap();
        let want_replay = want_replay.expect("kept");
        for (got, want) in [
            (first, want_first),
            (replay.request(), want_replay.request()),
        ] {
            assert_eq!(got.method(), want.method());
            assert_eq!(got.uri(), want.uri());
            assert_eq!(got.headers(), want.headers());
            assert!(got.body().is_end_stream());
            assert_eq!(got.into_body().collect().await.unwrap().to_bytes(), "");
        }
    }
}
