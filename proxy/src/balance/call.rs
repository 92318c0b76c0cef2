//! Running a request or opening a connection through a [`Balancer`]:
//! timeouts, retries bounded by a [`RetryBudget`], failover to another
//! endpoint.

use super::budget::RetryBudget;
use super::{Balancer, Pick};
use crate::discovery::Endpoint;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How one request (or connection attempt) is run.
#[derive(Debug, Clone)]
pub struct RequestPolicy {
    /// Bound on the whole request, retries included.
    pub timeout: Option<Duration>,
    /// Bound on one attempt; a timed out attempt is a failure and may be
    /// retried.
    pub try_timeout: Option<Duration>,
    /// Attempts at most, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Budget that retries draw from. `None` (the default): the
    /// destination's own budget ([`BalanceConfig::retry_budget`](super::BalanceConfig)),
    /// so a failing service cannot spend the retries of healthy ones.
    /// `Some`: this budget, e.g. one shared by a group of destinations.
    pub budget: Option<Arc<RetryBudget>>,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        RequestPolicy {
            timeout: None,
            try_timeout: None,
            max_attempts: 1,
            budget: None,
        }
    }
}

/// What one attempt gave. `Failure` carries the value to hand back if the
/// request is not retried (an error, or a 5xx response).
#[derive(Debug)]
pub enum Attempt<R> {
    Success(R),
    Failure(R),
    /// A failure before anything reached the endpoint (its connection was
    /// refused or could not be set up): retried on another endpoint even
    /// when the request is not idempotent.
    NotSent(R),
}

/// Why a request got no answer from any endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("destination {0} has no endpoints")]
    NoEndpoints(Arc<str>),
    #[error("request to {destination} timed out after {elapsed:?} ({attempts} attempts)")]
    Timeout {
        destination: Arc<str>,
        elapsed: Duration,
        attempts: u32,
    },
}

/// Why no connection could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError<E: std::error::Error + 'static> {
    #[error("destination {0} has no endpoints")]
    NoEndpoints(Arc<str>),
    #[error("connecting to {addr} (destination {destination}) timed out")]
    Timeout {
        destination: Arc<str>,
        addr: SocketAddr,
    },
    #[error("connecting to {addr} (destination {destination}): {source}")]
    Failed {
        destination: Arc<str>,
        addr: SocketAddr,
        source: E,
    },
}

/// Whether a method may be retried after it may have reached the server
/// (RFC 9110 section 9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE). The
/// caller must also be able to send the request again (no body, or a
/// buffered one).
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// Runs `fut` with an optional timeout (`None` = no bound).
pub async fn with_timeout<F: Future>(
    timeout: Option<Duration>,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match timeout {
        Some(t) => tokio::time::timeout(t, fut).await,
        None => Ok(fut.await),
    }
}

impl RequestPolicy {
    fn try_bound(&self, deadline: Option<Instant>) -> Option<Duration> {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match (left, self.try_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The budget for a request to `balancer`'s destination.
    fn budget<'a>(&'a self, balancer: &'a Balancer) -> &'a RetryBudget {
        self.budget
            .as_deref()
            .unwrap_or_else(|| balancer.retry_budget())
    }

    /// Whether another attempt may start after `attempts` of them.
    fn may_retry(&self, budget: &RetryBudget, attempts: u32, deadline: Option<Instant>) -> bool {
        attempts < self.max_attempts
            && deadline.is_none_or(|d| Instant::now() < d)
            && budget.try_withdraw()
    }
}

impl Balancer {
    /// A pick; when the destination has no endpoints yet (e.g. discovery
    /// has not answered), waits for some, at most
    /// [`BalanceConfig::endpoint_wait`](super::BalanceConfig) and the deadline.
    async fn pick_waiting(&self, avoid: &[SocketAddr], deadline: Option<Instant>) -> Option<Pick> {
        if let Some(p) = self.pick_avoiding(avoid) {
            return Some(p);
        }
        let mut wait = self.config().endpoint_wait;
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        if wait.is_zero() || !self.ready(wait).await {
            return None;
        }
        self.pick_avoiding(avoid)
    }

    /// Runs one request: picks an endpoint, calls `attempt` with it, records
    /// latency and outcome, and retries on another endpoint when `retryable`
    /// (see [`is_idempotent`]), attempts remain and the budget allows.
    /// Returns the last attempt's value, success or failure.
    pub async fn call<R, F, Fut>(
        &self,
        policy: &RequestPolicy,
        retryable: bool,
        mut attempt: F,
    ) -> Result<R, CallError>
    where
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Attempt<R>>,
    {
        let start = Instant::now();
        let deadline = policy.timeout.map(|t| start + t);
        let budget = policy.budget(self);
        budget.deposit();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempts = 0;
        loop {
            let pick = self
                .pick_waiting(&tried, deadline)
                .await
                .ok_or_else(|| CallError::NoEndpoints(self.name()))?;
            attempts += 1;
            tried.push(pick.addr());
            let outcome =
                with_timeout(policy.try_bound(deadline), attempt(pick.endpoint().clone())).await;
            let (last, unsent) = match outcome {
                Ok(Attempt::Success(r)) => {
                    pick.success();
                    return Ok(r);
                }
                Ok(Attempt::Failure(r)) => {
                    pick.failure();
                    (Some(r), false)
                }
                Ok(Attempt::NotSent(r)) => {
                    pick.failure();
                    (Some(r), true)
                }
                Err(_) => {
                    pick.failure();
                    (None, false)
                }
            };
            let can_retry = (retryable || unsent) && policy.may_retry(budget, attempts, deadline);
            match last {
                Some(r) if !can_retry => return Ok(r),
                None if !can_retry => {
                    return Err(CallError::Timeout {
                        destination: self.name(),
                        elapsed: start.elapsed(),
                        attempts,
                    });
                }
                _ => {
                    tracing::debug!(destination = %self.name(), attempts, "retrying on another endpoint")
                }
            }
        }
    }

    /// Opens a connection: picks an endpoint and calls `connect` with it; on
    /// an error or timeout fails over to another endpoint (nothing was sent,
    /// so this is always safe) while attempts remain and the budget allows.
    /// The returned [`Pick`] has the connect time recorded as latency;
    /// hold it for the connection's life (it counts as load).
    pub async fn connect<C, E, F, Fut>(
        &self,
        policy: &RequestPolicy,
        mut connect: F,
    ) -> Result<(C, Pick), ConnectError<E>>
    where
        E: std::error::Error + 'static,
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<C, E>>,
    {
        let deadline = policy.timeout.map(|t| Instant::now() + t);
        let budget = policy.budget(self);
        budget.deposit();
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempts = 0;
        loop {
            let mut pick = self
                .pick_waiting(&tried, deadline)
                .await
                .ok_or_else(|| ConnectError::NoEndpoints(self.name()))?;
            attempts += 1;
            let addr = pick.addr();
            tried.push(addr);
            let err =
                match with_timeout(policy.try_bound(deadline), connect(pick.endpoint().clone()))
                    .await
                {
                    Ok(Ok(conn)) => {
                        pick.record_latency();
                        return Ok((conn, pick));
                    }
                    Ok(Err(source)) => ConnectError::Failed {
                        destination: self.name(),
                        addr,
                        source,
                    },
                    Err(_) => ConnectError::Timeout {
                        destination: self.name(),
                        addr,
                    },
                };
            pick.failure();
            if !policy.may_retry(budget, attempts, deadline) {
                return Err(err);
            }
            tracing::debug!(error = %err, "connect failed; trying another endpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{BalanceConfig, BudgetConfig};
    use crate::discovery::Destination;
    use tokio::sync::watch;

    fn balancer(n: u16) -> (watch::Sender<Destination>, Balancer) {
        let eps = (1..=n)
            .map(|p| Endpoint::plain(SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let (tx, rx) = watch::channel(Destination::known("svc", eps));
        (tx, Balancer::new(rx, BalanceConfig::default()))
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&http::Method::GET));
        assert!(is_idempotent(&http::Method::PUT));
        assert!(!is_idempotent(&http::Method::POST));
        assert!(!is_idempotent(&http::Method::PATCH));
    }

    /// A request whose connection failed was not sent: it is tried on
    /// another endpoint even when it is not retryable (a POST), within the
    /// attempts; a failure after sending is not.
    #[tokio::test]
    async fn an_unsent_request_is_retried_whatever_its_method() {
        let (_tx, b) = balancer(3);
        let policy = RequestPolicy {
            max_attempts: 3,
            budget: Some(Arc::new(RetryBudget::new(BudgetConfig::default()))),
            ..Default::default()
        };
        let cases: &[(
            &str,
            fn(u16) -> Attempt<&'static str>,
            (Result<&str, CallError>, u32),
        )] = &[
            (
                "refused on 1 and 2, answered by 3",
                |port| match port {
                    3 => Attempt::Success("ok"),
                    _ => Attempt::NotSent("refused"),
                },
                (Ok("ok"), 3),
            ),
            (
                "refused everywhere: the last error",
                |_| Attempt::NotSent("refused"),
                (Ok("refused"), 3),
            ),
            (
                "sent and failed: not retried",
                |_| Attempt::Failure("bad"),
                (Ok("bad"), 1),
            ),
        ];
        for (what, outcome, want) in cases {
            let mut n = 0u32;
            let mut seen = Vec::new();
            let r = b
                .call(&policy, false, |ep| {
                    n += 1;
                    seen.push(ep.addr);
                    let o = outcome(ep.addr.port());
                    async move { o }
                })
                .await;
            let mut distinct = seen.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                seen.len(),
                "{what}: an endpoint twice: {seen:?}"
            );
            // Endpoints are picked at random: 3 is reached within the three
            // attempts, maybe sooner.
            if want.0 == Ok("ok") {
                assert!(r == Ok("ok") && n <= want.1, "{what}: {r:?} after {n}");
            } else {
                assert_eq!((r, n), want.clone(), "{what}");
            }
        }
    }

    #[tokio::test]
    async fn retries_on_other_endpoints_within_attempts() {
        let (_tx, b) = balancer(3);
        let policy = RequestPolicy {
            max_attempts: 3,
            budget: Some(Arc::new(RetryBudget::new(BudgetConfig::default()))),
            ..Default::default()
        };
        let mut seen = Vec::new();
        let r = b
            .call(&policy, true, |ep| {
                seen.push(ep.addr);
                async move {
                    if ep.addr.port() == 3 {
                        Attempt::Success("ok")
                    } else {
                        Attempt::Failure("bad")
                    }
                }
            })
            .await;
        let mut distinct = seen.clone();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            seen.len(),
            "each attempt on another endpoint: {seen:?}"
        );
        assert_eq!(
            r,
            Ok("ok"),
            "three attempts on three endpoints reach the good one"
        );
        // Not retryable: one attempt only.
        let mut n = 0;
        let r = b
            .call(&policy, false, |_| {
                n += 1;
                async { Attempt::Failure("bad") }
            })
            .await;
        assert_eq!((r, n), (Ok("bad"), 1));
        // One attempt allowed: no retries.
        let mut n = 0;
        let once = RequestPolicy::default();
        let _ = b
            .call(&once, true, |_| {
                n += 1;
                async { Attempt::Failure(()) }
            })
            .await;
        assert_eq!(n, 1);
        // An empty budget: no retries either.
        let mut n = 0;
        let empty = RequestPolicy {
            max_attempts: 3,
            budget: Some(Arc::new(RetryBudget::new(BudgetConfig {
                ratio: 0.0,
                min_per_sec: 0,
                ttl: Duration::from_secs(1),
            }))),
            ..Default::default()
        };
        let _ = b
            .call(&empty, true, |_| {
                n += 1;
                async { Attempt::Failure(()) }
            })
            .await;
        assert_eq!(n, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_bound_attempts_and_the_whole_request() {
        let (_tx, b) = balancer(2);
        let policy = RequestPolicy {
            timeout: Some(Duration::from_millis(250)),
            try_timeout: Some(Duration::from_millis(100)),
            max_attempts: 10,
            budget: Some(Arc::new(RetryBudget::new(BudgetConfig::default()))),
        };
        let mut n = 0;
        let r: Result<(), _> = b
            .call(&policy, true, |_| {
                n += 1;
                std::future::pending()
            })
            .await;
        assert!(
            matches!(r, Err(CallError::Timeout { attempts: 3, .. })),
            "{r:?}"
        );
        assert_eq!(n, 3);
        assert!(b.snapshot().iter().all(|e| e.in_flight == 0));
    }

    #[tokio::test]
    async fn each_destination_has_its_own_budget() {
        let config = BalanceConfig {
            retry_budget: BudgetConfig {
                ratio: 0.0,
                min_per_sec: 1,
                ttl: Duration::from_secs(1),
            },
            ..Default::default()
        };
        let dest = |port| {
            let ep = Endpoint::plain(SocketAddr::from(([127, 0, 0, 1], port)));
            let (tx, rx) = watch::channel(Destination::known("d", vec![ep]));
            (tx, Balancer::new(rx, config.clone()))
        };
        let ((_ta, a), (_tb, b)) = (dest(1), dest(2));
        let policy = RequestPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        let attempts = |bal: Balancer| {
            let policy = policy.clone();
            async move {
                let mut n = 0;
                let _ = bal
                    .call(&policy, true, |_| {
                        n += 1;
                        async { Attempt::Failure(()) }
                    })
                    .await;
                n
            }
        };
        // The floor allows one retry per destination per second.
        assert_eq!(attempts(a.clone()).await, 2);
        assert_eq!(attempts(a.clone()).await, 1, "a's budget is spent");
        assert_eq!(attempts(b.clone()).await, 2, "b still has its own");
    }

    #[tokio::test(start_paused = true)]
    async fn no_endpoints_waits_a_bounded_time() {
        let (tx, b) = balancer(0);
        let t0 = Instant::now();
        let r = b
            .call(&RequestPolicy::default(), true, |_| async {
                Attempt::Success(())
            })
            .await;
        assert_eq!(r, Err(CallError::NoEndpoints("svc".into())));
        assert_eq!(t0.elapsed(), BalanceConfig::default().endpoint_wait);
        // Endpoints that arrive while a request waits are used.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send_modify(|d| {
                d.endpoints
                    .push(Endpoint::plain("127.0.0.1:9".parse().unwrap()))
            });
        });
        let r = b
            .call(&RequestPolicy::default(), true, |ep| async move {
                Attempt::Success(ep.addr.port())
            })
            .await;
        assert_eq!(r, Ok(9));
    }
}
