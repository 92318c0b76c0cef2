//! Load balancing over a destination's endpoints: power of two choices over
//! peak-EWMA latency, failure accrual, per-request timeouts and retries
//! bounded by a retry budget.
//!
//! # API
//!
//! One [`Balancers`] per proxy resolves original destinations through
//! [`Discover`](crate::discovery::Discover) and hands out one shared
//! [`Balancer`] per destination (statistics must be shared by all
//! connections, so do not build a `Balancer` per connection):
//!
//! ```ignore
//! let balancers = Balancers::new(discover, BalanceConfig::default());
//! match balancers.get(orig_dst) {
//!     None => forward_unchanged(orig_dst),         // unknown destination
//!     Some(balancer) => { /* per request or per connection, below */ }
//! }
//! ```
//!
//! **Per HTTP request** — [`Balancer::call`] picks an endpoint, runs the
//! attempt with the per-try/total timeouts of a [`RequestPolicy`], records
//! latency and outcome, and retries on another endpoint when the request is
//! retryable ([`is_idempotent`] and replayable), attempts remain and the
//! destination's [`RetryBudget`] allows:
//!
//! ```ignore
//! let policy = RequestPolicy { timeout: Some(10 * SEC), try_timeout: None,
//!                              max_attempts: 3, budget: None /* the destination's own */ };
//! let resp = balancer.call(&policy, is_idempotent(req.method()) && body_is_empty, |ep| {
//!     let req = rebuild(&parts);
//!     async move {
//!         match pool.send(ep.addr, req).await {
//!             Ok(r) if r.status().is_server_error() => Attempt::Failure(Ok(r)),
//!             Ok(r) => Attempt::Success(Ok(r)),
//!             Err(e) => Attempt::Failure(Err(e)),
//!         }
//!     }
//! }).await;                     // Result<R, CallError{NoEndpoints, Timeout}>
//! ```
//!
//! **Per TCP connection** — [`Balancer::connect`] picks an endpoint and
//! connects, failing over to another endpoint on a connect error or
//! timeout; it returns the connection and its [`Pick`], which records the
//! connect time as latency and counts as load until dropped:
//!
//! ```ignore
//! let (stream, pick) = balancer.connect(&policy, |ep| TcpStream::connect(ep.addr)).await?;
//! copy_bidirectional(...).await;
//! drop(pick); // or pick.success() / pick.failure()
//! ```
//!
//! **Lower level** — [`Balancer::pick`] returns a [`Pick`]: the endpoint
//! (`pick.endpoint()`, with identity and meshed inbound port from
//! discovery); `pick.record_latency()` when the answer starts,
//! `pick.success()` or `pick.failure()` when done; dropping it without
//! either is a cancellation (load released, no outcome).
//!
//! # Behaviour
//!
//! * Cost of an endpoint = peak-EWMA latency × (in-flight + 1) / weight;
//!   two distinct random endpoints are compared and the cheaper one wins.
//!   New endpoints start at [`BalanceConfig::default_rtt`]; estimates decay
//!   with [`BalanceConfig::decay`] so a once-slow endpoint is tried again.
//! * The balancer follows the destination's `watch` channel: changes apply
//!   to the next pick; endpoints that stay keep their statistics. Weight 0
//!   endpoints get no new traffic.
//! * Failure accrual ([`AccrualConfig`]): `threshold` consecutive failures
//!   take an endpoint out of rotation for a jittered backoff; then the next
//!   request is its probe; success brings it back, failure doubles the
//!   backoff (up to `max_backoff`). If no endpoint is in rotation, requests
//!   are spread over all of them rather than all failing.
//! * Each destination has its own retry budget (unless the policy names a
//!   shared one), so a failing service cannot spend the retries of healthy
//!   ones. The retry budget allows `ratio` retries per original request over
//!   `ttl`, plus `min_per_sec`.

mod accrual;
mod balancer;
mod budget;
mod cache;
mod call;
mod choose;
mod ewma;
mod gauges;
mod pick;

pub use accrual::{AccrualConfig, Health};
pub use balancer::{Balancer, EndpointSnapshot};
pub use budget::{BudgetConfig, RetryBudget};
pub use cache::{Balancers, DEFAULT_CAPACITY, DEFAULT_IDLE_TIMEOUT, Lookup};
pub use call::{Attempt, CallError, ConnectError, RequestPolicy, is_idempotent, with_timeout};
pub use gauges::EndpointGauges;
pub use pick::Pick;

use std::time::Duration;

/// Balancer settings.
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    /// Latency assumed for an endpoint before its first sample.
    pub default_rtt: Duration,
    /// Time constant of the peak-EWMA decay.
    pub decay: Duration,
    pub accrual: AccrualConfig,
    /// Each destination's own retry budget (see [`RequestPolicy::budget`]).
    pub retry_budget: BudgetConfig,
    /// How long a request or connection waits for endpoints when the
    /// destination has none (discovery not answered yet) before failing.
    pub endpoint_wait: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            accrual: AccrualConfig::default(),
            retry_budget: BudgetConfig::default(),
            endpoint_wait: Duration::from_secs(1),
        }
    }
}
