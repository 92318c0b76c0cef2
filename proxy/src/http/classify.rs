//! Counting a response in `conduit_response_total` with its classification
//! ([`super::grpc::classify_head`]). Most responses are classified by their
//! head and counted at once: every non-gRPC request (nothing is added to
//! its path but the content-type check made once per request) and the
//! trailers-only gRPC answers (errors, the proxy's own included). Only a
//! gRPC response with a body waits: its body is wrapped ([`ClassifiedBody`])
//! and it is counted when the body ends, by its trailers' `grpc-status`
//! ([`super::grpc::classify_end`]); for gRPC-Web, whose trailers are the
//! body's last frame, by that frame ([`WebScan`]). A stream that fails or
//! is dropped before its end counts as a failure.

use super::grpc::{self, AtHead, End};
use super::grpc_web::WebScan;
use super::{Answer, Body, BoxError, boxed};
use crate::metrics::{ConnHttpMetrics, Uncounted};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Counts `rsp` (its latency recorded in `uncounted`), now or when its
/// body ends.
pub fn count(
    metrics: &Arc<ConnHttpMetrics>,
    answer: Answer,
    uncounted: Uncounted,
    rsp: http::Response<Body>,
) -> http::Response<Body> {
    let grpc_status = match answer {
        Answer::Grpc(_) => grpc::status(rsp.headers()),
        Answer::Http => None,
    };
    match grpc::classify_head(answer.is_grpc(), rsp.status().as_u16(), grpc_status) {
        AtHead::Known(class) => {
            metrics.count(uncounted, class);
            rsp
        }
        AtHead::AtEnd => {
            let metrics = metrics.clone();
            let web = match answer {
                Answer::Grpc(wire) => WebScan::new(wire),
                Answer::Http => None,
            };
            rsp.map(|inner| {
                boxed(ClassifiedBody {
                    inner,
                    web,
                    pending: Some((metrics, uncounted)),
                })
            })
        }
    }
}

/// A gRPC response body counted when it ends.
struct ClassifiedBody {
    inner: Body,
    /// gRPC-Web: the body's frames, where its trailers are.
    web: Option<WebScan>,
    /// `None` once counted.
    pending: Option<(Arc<ConnHttpMetrics>, Uncounted)>,
}

impl ClassifiedBody {
    fn finish(&mut self, end: End) {
        if let Some((metrics, uncounted)) = self.pending.take() {
            metrics.count(uncounted, grpc::classify_end(end));
        }
    }
}

impl http_body::Body for ClassifiedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(t) = f.trailers_ref() {
                    this.finish(End::Trailers(grpc::status(t)));
                } else if let (Some(web), Some(data)) = (&mut this.web, f.data_ref()) {
                    web.feed(data);
                    if let Some(end) = web.trailers() {
                        this.finish(end);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(End::Error),
            Poll::Ready(None) => {
                let end = this.web.as_ref().map_or(End::NoTrailers, WebScan::end);
                this.finish(end)
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ClassifiedBody {
    fn drop(&mut self) {
        self.finish(End::Dropped);
    }
}
