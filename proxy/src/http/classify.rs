//! Counting a response in `conduit_response_total` with its classification
//! ([`super::grpc::classify_head`]). Most responses are classified by their
//! head and counted at once: every non-gRPC request (nothing is added to
//! its path but the content-type check made once per request) and the
//! trailers-only gRPC answers (errors, the proxy's own included). Only a
//! gRPC response with a body waits: its body is wrapped ([`ResponseBody`])
//! and it is counted when the body ends, by its trailers' `grpc-status`
//! ([`super::grpc::classify_end`]); for gRPC-Web, whose trailers are the
//! body's last frame, by that frame ([`WebScan`]). A stream that fails or
//! is dropped before its end counts as a failure. A tapped response's body
//! goes through the same one wrapper, which also feeds its tap event
//! ([`TapBody`]) and hands it the class the metrics counted.

use super::grpc::{self, AtHead, Class, End};
use super::grpc_web::WebScan;
use super::{Answer, Body, BoxError, boxed};
use crate::metrics::{ConnHttpMetrics, Uncounted};
use crate::tap::TapBody;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Counts `rsp` (its latency recorded in `uncounted`), now or when its
/// body ends, and hands a tapped response's event (`tap`) its body and its
/// class. The body is wrapped only when something waits for it.
pub fn count(
    metrics: &Arc<ConnHttpMetrics>,
    answer: Answer,
    uncounted: Uncounted,
    rsp: http::Response<Body>,
    tap: Option<TapBody>,
) -> http::Response<Body> {
    let grpc_status = match answer {
        Answer::Grpc(_) => grpc::status(rsp.headers()),
        Answer::Http => None,
    };
    let (class, counting, web) =
        match grpc::classify_head(answer.is_grpc(), rsp.status().as_u16(), grpc_status) {
            AtHead::Known(class) => {
                metrics.count(uncounted, class);
                (Some(class), None, None)
            }
            AtHead::AtEnd => {
                let web = match answer {
                    Answer::Grpc(wire) => WebScan::new(wire),
                    Answer::Http => None,
                };
                (None, Some((metrics.clone(), uncounted)), web)
            }
        };
    if counting.is_none() && tap.is_none() {
        return rsp;
    }
    rsp.map(|inner| {
        boxed(ResponseBody {
            inner,
            web,
            class,
            counting,
            tap,
        })
    })
}

/// A response body that a count or a tap event waits for.
struct ResponseBody {
    inner: Body,
    /// gRPC-Web: the body's frames, where its trailers are.
    web: Option<WebScan>,
    /// Known at the head, or once the body's status came (or it ended).
    class: Option<Class>,
    /// A response counted when its class is known; `None` once counted.
    counting: Option<(Arc<ConnHttpMetrics>, Uncounted)>,
    /// A tapped response's event, emitted when the body ends.
    tap: Option<TapBody>,
}

impl ResponseBody {
    /// The class is known (a no-op once it is): counts the response.
    fn settle(&mut self, end: End) -> Class {
        let class = *self.class.get_or_insert_with(|| grpc::classify_end(end));
        if let Some((metrics, uncounted)) = self.counting.take() {
            metrics.count(uncounted, class);
        }
        class
    }

    /// The body ended (or was dropped): counts it and emits its event.
    fn finish(&mut self, end: End) {
        let class = self.settle(end);
        if let Some(tap) = self.tap.take() {
            tap.finish(class);
        }
    }
}

impl http_body::Body for ResponseBody {
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
                    if let Some(tap) = &mut this.tap {
                        tap.trailers(t);
                    }
                    this.settle(End::Trailers(grpc::status(t)));
                } else if let Some(data) = f.data_ref() {
                    if let Some(tap) = &mut this.tap {
                        tap.data(data.len());
                    }
                    if let Some(web) = &mut this.web {
                        web.feed(data);
                        // The trailers frame is the body's last: a client
                        // may stop reading once it has it.
                        if let Some(end) = web.trailers() {
                            this.settle(end);
                        }
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

impl Drop for ResponseBody {
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

    /// A tapped response's event carries the class the metrics counted:
    /// at the head, at the gRPC-Web trailers frame (before the body's end:
    /// a client may stop reading there), and a failure when the body is
    /// dropped first; the event has the body's bytes.
    #[test]
    fn a_tap_event_carries_the_counted_class() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut reg = Registry::default();
        let m = Metrics::new(&mut reg, 10);
        let c = Arc::new(ConnHttpMetrics::new(&m, Direction::Outbound, "web:80"));
        let obs = crate::tap::Observe::new(&mut reg, None, None);
        let mut sub = obs
            .hub
            .subscribe(conduit_register::tap::TapFilter::default(), 16)
            .unwrap();
        let ms = std::time::Duration::from_millis(1);
        let web = Answer::Grpc(Wire::Web);
        let web_len = 7 + 5 + "grpc-status:0\r\n".len() as u64;
        // (answer, response, read the body, success, bytes in the event)
        let cases: Vec<(Answer, http::Response<Body>, bool, bool, u64)> = vec![
            (
                Answer::Http,
                grpc_rsp(super::super::full("hi")),
                true,
                true,
                2,
            ),
            (web, grpc_rsp(web_body("0")), true, true, web_len),
            (web, grpc_rsp(web_body("14")), true, false, web_len + 1),
            // Dropped before its end: a failure, as counted.
            (web, grpc_rsp(web_body("0")), false, false, 0),
        ];
        for (i, (answer, rsp, read, want, bytes)) in cases.into_iter().enumerate() {
            let tap = TapBody::new(
                obs.clone(),
                crate::tap::hub::tests::event("/"),
                std::time::Instant::now(),
            );
            let rsp = count(&c, answer, c.response(None, 200, ms), rsp, Some(tap));
            if read {
                rt.block_on(rsp.into_body().collect()).unwrap();
            } else {
                drop(rsp);
            }
            let e = sub.rx.try_recv().expect("one event per response");
            assert_eq!(e.success, Some(want), "case {i}");
            assert_eq!(e.rsp_bytes, 1 + bytes, "case {i}");
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        for (class, n) in [("success", 2), ("failure", 2)] {
            let line = format!(
                r#"conduit_response_total{{direction="outbound",dst="web:80",peer_identity="none",status_class="2xx",classification="{class}"}} {n}"#
            );
            assert!(out.contains(&line), "missing {line}\n{out}");
        }
    }
}
