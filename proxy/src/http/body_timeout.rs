//! Slow clients, after the head: a request body whose client pauses longer
//! than `--body-read-timeout` while the proxy waits for it fails with
//! [`BodyTimeout`], so the upstream request is cancelled and the client
//! answered 408 instead of holding an upstream connection indefinitely.
//!
//! The upstream side may report the cancelled request in its own words (an
//! HTTP/2 reset, say), so the body also raises a shared [`Tripped`] flag
//! that the request handler checks.
//!
//! Only time spent waiting on the client counts: the clock starts when the
//! proxy asks for the next frame and none is there, so a slow upstream
//! (backpressure: the proxy stops asking) never trips it.

use super::BoxError;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The error a stalled request body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body data for {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Raised once a [`ReadTimeout`] body has timed out.
pub type Tripped = super::flag::Flag;

pin_project_lite::pin_project! {
    /// A body that fails when its client stalls for longer than `limit`.
    pub struct ReadTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        limit: Duration,
        waiting: bool,
        tripped: Tripped,
    }
}

impl<B> ReadTimeout<B> {
    pub fn new(inner: B, limit: Duration, tripped: Tripped) -> Self {
        ReadTimeout {
            inner,
            sleep: tokio::time::sleep(limit),
            limit,
            waiting: false,
            tripped,
        }
    }
}

impl<B> Body for ReadTimeout<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        if !*this.waiting {
            *this.waiting = true;
            this.sleep.as_mut().reset(Instant::now() + *this.limit);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => {
                this.tripped.raise();
                Poll::Ready(Some(Err(Box::new(BodyTimeout(*this.limit)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    fn chunk(s: &'static str) -> Result<Frame<Bytes>, BoxError> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_limit() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let tripped = Tripped::default();
        let body = ReadTimeout::new(
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            Duration::from_secs(30),
            tripped.clone(),
        );
        tx.send(chunk("a")).await.unwrap();
        let mut body = std::pin::pin!(body);
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        let started = Instant::now();
        assert!(!tripped.is_set());
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyTimeout>(), "{err}");
        assert!(tripped.is_set());
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_reader_is_away_does_not_count() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = ReadTimeout::new(
            StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            Duration::from_secs(30),
            Tripped::default(),
        );
        let mut body = std::pin::pin!(body);
        // Backpressure: the proxy does not read for longer than the limit.
        tokio::time::sleep(Duration::from_secs(60)).await;
        // The client keeps sending, 20 s apart: each wait is under the limit.
        let sender = tokio::spawn(async move {
            for s in ["a", "b", "c"] {
                tokio::time::sleep(Duration::from_secs(20)).await;
                tx.send(chunk(s)).await.unwrap();
            }
        });
        let mut got = String::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            got.push_str(std::str::from_utf8(&data).unwrap());
        }
        assert_eq!(got, "abc");
        sender.await.unwrap();
    }
}
