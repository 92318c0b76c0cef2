//! Load balancing against real HTTP/1.1 servers and TCP listeners on
//! loopback: spreading, slow endpoints, failover and probing back, and the
//! retry budget.

use crate::balance_util;

use balance_util::{TestServer, client, get, wait_until};
use conduit_proxy::balance::{
    AccrualConfig, Attempt, BalanceConfig, Balancer, BudgetConfig, RequestPolicy, RetryBudget,
};
use conduit_proxy::discovery::{Destination, Endpoint};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn balancer(
    servers: &[&TestServer],
    config: BalanceConfig,
) -> (watch::Sender<Destination>, Balancer) {
    let endpoints = servers.iter().map(|s| Endpoint::plain(s.addr)).collect();
    let (tx, rx) = watch::channel(Destination::known("web", endpoints));
    (tx, Balancer::new(rx, config))
}

/// Sends `n` GETs through the balancer, `concurrency` at a time; returns
/// how many got a 2xx.
async fn load(b: &Balancer, policy: &RequestPolicy, n: usize, concurrency: usize) -> usize {
    let c = client();
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (b, c, policy) = (b.clone(), c.clone(), policy.clone());
        tasks.spawn(async move {
            let r = b
                .call(&policy, true, |ep| {
                    let c = c.clone();
                    async move {
                        match get(&c, ep.addr).await {
                            Ok(s) if s < 500 => Attempt::Success(s),
                            other => Attempt::Failure(other.unwrap_or(0)),
                        }
                    }
                })
                .await;
            drop(permit);
            matches!(r, Ok(s) if (200..300).contains(&s))
        });
    }
    tasks.join_all().await.into_iter().filter(|ok| *ok).count()
}

fn retries(max_attempts: u32) -> RequestPolicy {
    RequestPolicy {
        max_attempts,
        budget: Some(Arc::new(RetryBudget::new(BudgetConfig::default()))),
        ..Default::default()
    }
}

#[tokio::test]
async fn requests_spread_across_equal_endpoints() {
    let servers = [
        TestServer::start(Duration::ZERO, 200).await,
        TestServer::start(Duration::ZERO, 200).await,
        TestServer::start(Duration::ZERO, 200).await,
    ];
    // A short decay, so one scheduling hiccup on a busy machine (which
    // peak-EWMA remembers for `decay`) does not starve an endpoint for the
    // whole test.
    let config = BalanceConfig {
        decay: Duration::from_millis(100),
        ..Default::default()
    };
    let (_tx, b) = balancer(&servers.iter().collect::<Vec<_>>(), config);
    assert_eq!(load(&b, &RequestPolicy::default(), 600, 8).await, 600);
    let hits: Vec<usize> = servers.iter().map(|s| s.hits()).collect();
    assert_eq!(hits.iter().sum::<usize>(), 600);
    assert!(
        hits.iter().all(|h| *h >= 60),
        "every endpoint gets a share: {hits:?}"
    );
}

#[tokio::test]
async fn slow_endpoint_gets_less_traffic() {
    let fast1 = TestServer::start(Duration::ZERO, 200).await;
    let fast2 = TestServer::start(Duration::ZERO, 200).await;
    let slow = TestServer::start(Duration::from_millis(30), 200).await;
    let (_tx, b) = balancer(&[&fast1, &slow, &fast2], BalanceConfig::default());
    assert_eq!(load(&b, &RequestPolicy::default(), 400, 4).await, 400);
    let (f1, f2, s) = (fast1.hits(), fast2.hits(), slow.hits());
    assert!(
        s * 10 < 400,
        "slow endpoint got {s} of 400 (fast: {f1}, {f2})"
    );
    assert!(
        f1 > 100 && f2 > 100,
        "fast endpoints share the rest: {f1}, {f2}"
    );
}

#[tokio::test]
async fn dead_endpoint_is_failed_over_and_probed_back() {
    let a = TestServer::start(Duration::ZERO, 200).await;
    let mut dead = TestServer::start(Duration::ZERO, 200).await;
    let config = BalanceConfig {
        accrual: AccrualConfig {
            threshold: 3,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_millis(400),
        },
        ..Default::default()
    };
    let (_tx, b) = balancer(&[&a, &dead], config);
    assert_eq!(load(&b, &retries(2), 100, 4).await, 100);
    assert!(dead.hits() > 0, "both endpoints in use before");

    dead.stop().await;
    let before = dead.hits();
    // Retries move the failed requests to the live endpoint: none is lost.
    assert_eq!(load(&b, &retries(2), 200, 4).await, 200);
    let health = b.snapshot()[1].health;
    assert!(
        !health.is_alive(),
        "refusing endpoint out of rotation: {health:?}"
    );
    assert_eq!(dead.hits(), before);

    // It comes back: a probe finds it and it is in rotation again.
    dead.restart().await;
    let c = client();
    let (b2, dead_hits) = (b.clone(), dead.hits.clone());
    let traffic = tokio::spawn(async move {
        loop {
            let _ = b2
                .call(&retries(2), true, |ep| {
                    let c = c.clone();
                    async move {
                        match get(&c, ep.addr).await {
                            Ok(s) => Attempt::Success(s),
                            Err(_) => Attempt::Failure(0),
                        }
                    }
                })
                .await;
            if dead_hits.load(std::sync::atomic::Ordering::SeqCst) > before + 20 {
                return;
            }
        }
    });
    wait_until(
        "the restarted endpoint serves again",
        Duration::from_secs(10),
        || traffic.is_finished(),
    )
    .await;
    assert!(b.snapshot()[1].health.is_alive());
}

#[tokio::test]
async fn tcp_connect_fails_over_to_a_live_endpoint() {
    let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusing = crate::support::refusing();
    let refused = refusing.addr;
    let endpoints = vec![
        Endpoint::plain(refused),
        Endpoint::plain(live.local_addr().unwrap()),
    ];
    let (_tx, rx) = watch::channel(Destination::known("tcp", endpoints));
    let b = Balancer::new(rx, BalanceConfig::default());
    for _ in 0..20 {
        let (stream, pick) = b
            .connect(&retries(2), |ep| tokio::net::TcpStream::connect(ep.addr))
            .await
            .expect("connect fails over");
        assert_eq!(stream.peer_addr().unwrap(), live.local_addr().unwrap());
        assert_eq!(
            b.snapshot()[1].in_flight,
            1,
            "the connection counts as load"
        );
        drop(pick);
        live.accept().await.unwrap();
    }
    assert!(!b.snapshot()[0].health.is_alive());
    // With nowhere to go, the error names the destination and address.
    let (_tx, rx) = watch::channel(Destination::known("tcp", vec![Endpoint::plain(refused)]));
    let none = Balancer::new(rx, BalanceConfig::default());
    let err = none
        .connect(&retries(2), |ep| tokio::net::TcpStream::connect(ep.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&refused.to_string()), "{err}");
}

#[tokio::test]
async fn retry_budget_bounds_retries() {
    let s1 = TestServer::start(Duration::ZERO, 503).await;
    let s2 = TestServer::start(Duration::ZERO, 503).await;
    let config = BalanceConfig {
        accrual: AccrualConfig {
            threshold: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let (_tx, b) = balancer(&[&s1, &s2], config);
    let budget = BudgetConfig {
        ratio: 0.2,
        min_per_sec: 1,
        ttl: Duration::from_secs(10),
    };
    let policy = RequestPolicy {
        max_attempts: 3,
        budget: Some(Arc::new(RetryBudget::new(budget))),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let n = 300;
    assert_eq!(load(&b, &policy, n, 8).await, 0, "every answer is a 503");
    let served = s1.hits() + s2.hits();
    let retried = served - n;
    // 20 % of the requests, plus 1/s over the window (ttl + elapsed).
    let floor = (10.0 + started.elapsed().as_secs_f64()).ceil() as usize;
    let bound = n / 5 + floor;
    assert!(retried <= bound, "{retried} retries, budget allows {bound}");
    assert!(retried >= n / 5, "the budget is used: {retried} retries");
    // Without the budget the same policy would have sent 3 x {n}.
    assert!(served < 2 * n);
}
