//! The response body of an observed request: counts the bytes sent, reads
//! `grpc-status` from the trailers and, when the body ends (or the client
//! goes away and the body is dropped), hands the finished event on.

use crate::http::classify::Verdict;
use crate::http::{Body, BoxError};
use bytes::Bytes;
use conduit_register::tap::TapEvent;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

pub struct ObservedBody {
    inner: Body,
    /// The response's class, as the metrics count it.
    verdict: Option<Verdict>,
    /// `None` once emitted.
    pending: Option<(Arc<super::Observe>, TapEvent, Instant)>,
}

impl ObservedBody {
    pub fn new(
        inner: Body,
        obs: Arc<super::Observe>,
        event: TapEvent,
        start: Instant,
        verdict: Option<Verdict>,
    ) -> Self {
        Self {
            inner,
            verdict,
            pending: Some((obs, event, start)),
        }
    }

    /// Emits the event. The inner body (the classified one, when the class
    /// waited for the end) was polled to its end first, so its class is
    /// set; if this body is dropped before, the class is unset and the
    /// event is a failure, as the metrics count a dropped response.
    fn finish(&mut self) {
        if let Some((obs, mut event, start)) = self.pending.take() {
            event.duration_us = micros(start);
            event.success = self.verdict.as_ref().map(Verdict::success);
            obs.emit(event);
        }
    }
}

pub fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

impl http_body::Body for ObservedBody {
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
                if let Some((_, e, _)) = this.pending.as_mut() {
                    if let Some(d) = f.data_ref() {
                        e.rsp_bytes += d.len() as u64;
                    } else if let Some(t) = f.trailers_ref() {
                        e.grpc_status = crate::http::grpc::status(t).or(e.grpc_status);
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
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

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish();
    }
}
