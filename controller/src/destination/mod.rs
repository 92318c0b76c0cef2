//! `Destination.Get`: streams a target's state as the backend's views change.
//!
//! A stream first sends the complete state in one message, then, whenever
//! the view changes, the difference (endpoints added or changed, then
//! removed). All streams of a target share one [`fanout::Fanout`]: the diff
//! of a change is computed once, and streams hold only an `Arc` of the last
//! view they sent. The stream is pulled by the client: a slow client is
//! simply not polled, never holds a queue, and on its next poll gets the
//! difference to the latest view, so it cannot block other subscribers and
//! its memory stays bounded.

mod diff;
mod fanout;

pub use diff::diff;
pub use fanout::{Fanout, Fanouts};

use crate::metrics::{Metrics, StreamGuard};
use crate::model::{DestinationView, DiscoveryBackend, Target};
use conduit_controller_api::destination::v1 as pb;
use futures::Stream;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub struct DestinationService {
    backend: Arc<dyn DiscoveryBackend>,
    fanouts: Arc<Fanouts>,
    cluster_domain: String,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

impl DestinationService {
    /// `shutdown` turning true ends every open stream (cleanly, so clients
    /// reconnect elsewhere) and lets the server stop.
    pub fn new(
        backend: Arc<dyn DiscoveryBackend>,
        cluster_domain: String,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        DestinationService {
            backend,
            fanouts: Arc::default(),
            cluster_domain,
            metrics,
            shutdown,
        }
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::Update, Status>> + Send>>;

struct StreamState {
    fanout: Arc<Fanout>,
    /// Wakes this stream when the backend's view changes.
    wake: watch::Receiver<DestinationView>,
    /// Version and view last sent; `None` before the first message.
    sent: Option<(u64, Arc<DestinationView>)>,
    pending: VecDeque<pb::Update>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    _guard: StreamGuard,
}

impl StreamState {
    /// Queues what takes the client from what it has to the latest state.
    fn catch_up(&mut self) {
        let latest = self.fanout.latest();
        match &self.sent {
            None => match self.fanout.snapshot(latest.version) {
                Some(s) => self.pending.extend(s.iter().cloned()),
                None => self.pending.extend(diff(None, &latest.view)),
            },
            Some((v, _)) if *v == latest.version => return,
            Some((v, _)) if v + 1 == latest.version => {
                self.pending.extend(latest.step.iter().cloned())
            }
            Some((_, view)) => self.pending.extend(diff(Some(view), &latest.view)),
        }
        self.sent = Some((latest.version, latest.view));
    }
}

#[tonic::async_trait]
impl pb::destination_server::Destination for DestinationService {
    type GetStream = UpdateStream;

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let raw = request.into_inner().target;
        let target = Target::parse(&raw, &self.cluster_domain)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::debug!(%target, "Destination.Get");
        let (fanout, wake) = self.fanouts.get(self.backend.as_ref(), &target);
        let state = StreamState {
            fanout,
            wake,
            sent: None,
            pending: VecDeque::new(),
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
            _guard: self.metrics.stream_opened(),
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some(update) = st.pending.pop_front() {
                    st.metrics.update_sent();
                    return Some((Ok(update), st));
                }
                if *st.shutdown.borrow() {
                    return None;
                }
                if st.sent.is_some() {
                    tokio::select! {
                        changed = st.wake.changed() => {
                            // The backend dropped this target: end the stream;
                            // the client reconnects and subscribes afresh.
                            changed.ok()?;
                        }
                        _ = st.shutdown.changed() => return None,
                    }
                    st.wake.borrow_and_update();
                }
                st.catch_up();
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
