//! Tells a bad request body from a failed upstream. When the client's own
//! body fails (malformed chunked encoding, a client reset), the upstream
//! request fails with it, in the upstream's words; [`ClientBody`] raises a
//! shared [`BodyFailed`] flag so the handler answers 400 (the client's
//! fault) rather than 502.

use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Raised once the client's body has failed.
pub type BodyFailed = super::flag::Flag;

pin_project_lite::pin_project! {
    /// The client's request body, watched for errors.
    pub struct ClientBody<B> {
        #[pin]
        inner: B,
        failed: BodyFailed,
    }
}

impl<B> ClientBody<B> {
    pub fn new(inner: B, failed: BodyFailed) -> Self {
        Self { inner, failed }
    }
}

impl<B: Body> Body for ClientBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &r {
            this.failed.raise();
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_error_from_the_client_body_raises_the_flag() {
        let failed = BodyFailed::default();
        let (mut tx, rx) =
            futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(2);
        let mut b = ClientBody::new(http_body_util::StreamBody::new(rx), failed.clone());
        tx.try_send(Ok(Frame::data(Bytes::from_static(b"ok"))))
            .unwrap();
        tx.try_send(Err(std::io::Error::other("bad chunk")))
            .unwrap();
        assert!(b.frame().await.unwrap().is_ok());
        assert!(!failed.is_set());
        assert!(b.frame().await.unwrap().is_err());
        assert!(failed.is_set());
    }
}
