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

use super::grpc::{self, AtHead, Class, End};
use super::grpc_web::WebScan;
use super::{Answer, Body, BoxError, boxed};
use crate::metrics::{ConnHttpMetrics, Uncounted};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// The class of a tapped response, for its tap event: known at its head,
/// or set when its body ends (unset when the body was dropped before: a
/// failure, as the metrics count it).
#[derive(Debug, Clone)]
pub enum Verdict {
    Known(Class),
    Later(Arc<OnceLock<Class>>),
}

impl Verdict {
    /// Whether the response was a success, once its body is done with.
    pub fn success(&self) -> bool {
        let class = match self {
            Verdict::Known(c) => Some(*c),
            Verdict::Later(cell) => cell.get().copied(),
        };
        class == Some(Class::Success)
    }
}

/// Counts `rsp` (its latency recorded in `uncounted`), now or when its
/// body ends; when `tapped`, also returns where the tap finds its class.
pub fn count(
    metrics: &Arc<ConnHttpMetrics>,
    answer: Answer,
    uncounted: Uncounted,
    rsp: http::Response<Body>,
    tapped: bool,
) -> (http::Response<Body>, Option<Verdict>) {
    let grpc_status = match answer {
        Answer::Grpc(_) => grpc::status(rsp.headers()),
        Answer::Http => None,
    };
    match grpc::classify_head(answer.is_grpc(), rsp.status().as_u16(), grpc_status) {
        AtHead::Known(class) => {
            metrics.count(uncounted, class);
            (rsp, tapped.then_some(Verdict::Known(class)))
        }
        AtHead::AtEnd => {
            let metrics = metrics.clone();
            let web = match answer {
                Answer::Grpc(wire) => WebScan::new(wire),
                Answer::Http => None,
            };
            let report = tapped.then(|| Arc::new(OnceLock::new()));
            let verdict = report.clone().map(Verdict::Later);
            let rsp = rsp.map(|inner| {
                boxed(ClassifiedBody {
                    inner,
                    web,
                    report,
                    pending: Some((metrics, uncounted)),
                })
            });
            (rsp, verdict)
        }
    }
}

/// A gRPC response body counted when it ends.
struct ClassifiedBody {
    inner: Body,
    /// gRPC-Web: the body's frames, where its trailers are.
    web: Option<WebScan>,
    /// A tapped request's class, set when counted.
    report: Option<Arc<OnceLock<Class>>>,
    /// `None` once counted.
    pending: Option<(Arc<ConnHttpMetrics>, Uncounted)>,
}

impl ClassifiedBody {
    fn finish(&mut self, end: End) {
        if let Some((metrics, uncounted)) = self.pending.take() {
            let class = grpc::classify_end(end);
            metrics.count(uncounted, class);
            if let Some(report) = &self.report {
                let _ = report.set(class);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::grpc::Wire;
    use crate::metrics::{Direction, Metrics};
    use http_body_util::BodyExt;
    use prometheus_client::registry::Registry;

    /// A gRPC-Web body: one message, then a trailers frame with `status`.
    fn web_body(status: &str) -> Body {
        let mut b = vec![0, 0, 0, 0, 2, 7, 7];
        let t = format!("grpc-status:{status}\r\n");
        b.push(0x80);
        b.extend_from_slice(&(t.len() as u32).to_be_bytes());
        b.extend_from_slice(t.as_bytes());
        super::super::full(b)
    }

    fn grpc_rsp(body: Body) -> http::Response<Body> {
        http::Response::new(body)
    }

    /// The tap's verdict is the class the metrics counted: at the head,
    /// at the gRPC-Web trailers frame (before the body's end: a client may
    /// stop reading there), and a failure when the body is dropped first.
    #[test]
    fn the_taps_verdict_is_the_counted_class() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut reg = Registry::default();
        let m = Metrics::new(&mut reg, 10);
        let c = Arc::new(ConnHttpMetrics::new(&m, Direction::Outbound, "web:80"));
        let ms = std::time::Duration::from_millis(1);
        let web = Answer::Grpc(Wire::Web);
        // (answer, response, read the body, success)
        let cases: Vec<(Answer, http::Response<Body>, bool, bool)> = vec![
            (
                Answer::Http,
                http::Response::new(super::super::empty()),
                false,
                true,
            ),
            (web, grpc_rsp(web_body("0")), true, true),
            (web, grpc_rsp(web_body("14")), true, false),
            // Dropped before its end: a failure, as counted.
            (web, grpc_rsp(web_body("0")), false, false),
        ];
        for (i, (answer, rsp, read, want)) in cases.into_iter().enumerate() {
            let (rsp, verdict) = count(&c, answer, c.response(None, 200, ms), rsp, true);
            let verdict = verdict.expect("tapped: a verdict");
            if read {
                rt.block_on(rsp.into_body().collect()).unwrap();
            } else {
                drop(rsp);
            }
            assert_eq!(verdict.success(), want, "case {i}");
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        for (class, n) in [("success", 2), ("failure", 2)] {
            let line = format!(
                r#"conduit_response_total{{direction="outbound",dst="web:80",peer_identity="none",status_class="2xx",classification="{class}"}} {n}"#
            );
            assert!(out.contains(&line), "missing {line}\n{out}");
        }
        // Not tapped: no verdict, nothing allocated for one.
        let (_, v) = count(
            &c,
            web,
            c.response(None, 200, ms),
            grpc_rsp(web_body("0")),
            false,
        );
        assert!(v.is_none());
    }
}
