//! A tapped response's event while its body passes: the bytes sent, the
//! `grpc-status` of the trailers and, when the body ends (or the client
//! goes away and the body is dropped), the finished event with the class
//! the metrics counted. The body is wrapped once, by
//! [`crate::http::classify`], which counts the response and feeds this.

use crate::http::grpc::{self, Class};
use conduit_register::tap::TapEvent;
use std::sync::Arc;
use std::time::Instant;

/// The event of a tapped response whose headers were sent.
pub struct TapBody {
    obs: Arc<super::Observe>,
    event: TapEvent,
    start: Instant,
}

impl TapBody {
    pub(crate) fn new(obs: Arc<super::Observe>, event: TapEvent, start: Instant) -> Self {
        Self { obs, event, start }
    }

    /// A data frame of `len` bytes was sent.
    pub fn data(&mut self, len: usize) {
        self.event.rsp_bytes += len as u64;
    }

    /// The trailers were sent.
    pub fn trailers(&mut self, t: &http::HeaderMap) {
        self.event.grpc_status = grpc::status(t).or(self.event.grpc_status);
    }

    /// The body ended or was dropped: emits the event with the response's
    /// class.
    pub fn finish(mut self, class: Class) {
        self.event.duration_us = micros(self.start);
        self.event.success = Some(class == Class::Success);
        self.obs.emit(self.event);
    }
}

pub fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}
