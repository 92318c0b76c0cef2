//! Following one target over `Destination.Get`, reconnecting with backoff.

use super::state::{DestinationState, EndpointSet};
use crate::destination::v1::{GetRequest, destination_client::DestinationClient};
use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Reconnection behaviour of [`watch_destination_with`].
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Wait before the first retry after a stream broke or a connect failed.
    pub initial_backoff: Duration,
    /// Upper bound of the exponential backoff.
    pub max_backoff: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Follows `target` with default [`WatchOptions`]. See
/// [`watch_destination_with`].
pub fn watch_destination(
    channel: Channel,
    target: impl Into<String>,
) -> watch::Receiver<DestinationState> {
    watch_destination_with(channel, target, WatchOptions::default())
}

/// Spawns a task (on the current Tokio runtime) that follows `target` and
/// publishes its state in the returned receiver.
///
/// The receiver starts with `exists == None` and `connected == false`. The
/// task reconnects forever with jittered exponential backoff while keeping the
/// last known endpoints, and ends when every receiver is dropped.
pub fn watch_destination_with(
    channel: Channel,
    target: impl Into<String>,
    options: WatchOptions,
) -> watch::Receiver<DestinationState> {
    spawn_watch(channel, target.into(), options).1
}

/// Starts following `target`; returns the shared sender (to subscribe more
/// receivers while it is open) and a first receiver. The task ends when the
/// receiver count drops to zero.
pub(crate) fn spawn_watch(
    channel: Channel,
    target: String,
    options: WatchOptions,
) -> (
    Arc<watch::Sender<DestinationState>>,
    watch::Receiver<DestinationState>,
) {
    let (tx, rx) = watch::channel(DestinationState::new(target.clone()));
    let tx = Arc::new(tx);
    tokio::spawn(follow_forever(channel, target, options, tx.clone()));
    (tx, rx)
}

async fn follow_forever(
    channel: Channel,
    target: String,
    options: WatchOptions,
    tx: Arc<watch::Sender<DestinationState>>,
) {
    let mut client = DestinationClient::new(channel);
    let mut backoff = options.initial_backoff;
    loop {
        let delivered = tokio::select! {
            _ = tx.closed() => return,
            d = follow_once(&mut client, &target, &tx) => d,
        };
        // Keep the endpoints; only say that they may be stale.
        tx.send_if_modified(|s| std::mem::replace(&mut s.connected, false));
        if delivered {
            backoff = options.initial_backoff;
        }
        let pause = jitter(backoff);
        tracing::debug!(%target, ?pause, "destination stream ended; reconnecting");
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// One `Get` stream, until it ends. Returns whether it delivered anything.
async fn follow_once(
    client: &mut DestinationClient<Channel>,
    target: &str,
    tx: &watch::Sender<DestinationState>,
) -> bool {
    let request = GetRequest {
        target: target.to_owned(),
    };
    let mut stream = match client.get(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            // The controller does not understand the target: it is not a
            // destination it will ever know. Say so (callers use the
            // original address); retries continue at the slowest pace.
            tracing::debug!(%target, message = status.message(), "target refused by the controller");
            tx.send_if_modified(|s| {
                let unknown = DestinationState {
                    exists: Some(false),
                    connected: true,
                    endpoints: super::state::unknown_endpoints(&s.target),
                    ..DestinationState::new(s.target.clone())
                };
                (*s != unknown).then(|| *s = unknown).is_some()
            });
            return false;
        }
        Err(status) => {
            tracing::debug!(%target, code = ?status.code(), message = status.message(), "Destination.Get failed");
            return false;
        }
    };
    // A new stream starts with a complete state: build it from scratch.
    let mut set = EndpointSet::default();
    let mut delivered = false;
    loop {
        match stream.message().await {
            Ok(Some(update)) => {
                set.apply(update);
                delivered = true;
                // Apply what has already arrived too (a change is often an
                // add and a remove), so readers see one consistent update.
                // `message()` is cancel safe, so polling it once is fine.
                let mut ended = false;
                for _ in 0..MAX_BATCH {
                    match stream.message().now_or_never() {
                        Some(Ok(Some(more))) => set.apply(more),
                        Some(_) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                tx.send_if_modified(|state| set.publish(state));
                if ended {
                    return delivered;
                }
            }
            Ok(None) => {
                tracing::debug!(%target, "Destination.Get stream closed by the controller");
                return delivered;
            }
            Err(status) => {
                tracing::debug!(%target, code = ?status.code(), message = status.message(), "Destination.Get stream broke");
                return delivered;
            }
        }
    }
}

/// Updates applied together before publishing (bounds the time a reader waits).
const MAX_BATCH: usize = 64;

/// Between half and all of `d`, so that many proxies do not retry in step.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}
