//! The load generator: a hyper client driving either an open loop (a fixed
//! request rate, each request's latency measured from the moment it was
//! *scheduled*, so a stalled server cannot hide its queueing delay: no
//! coordinated omission) or a closed loop (a fixed number of concurrent
//! requests, to find the maximum rate).

use bytes::Bytes;
use conduit_base::sync::Unpoisoned;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests allowed in flight in the open loop before new ones are counted
/// as errors instead of sent (a bound on the generator's memory).
const MAX_IN_FLIGHT: usize = 20_000;

/// The HTTP version the client speaks (HTTP/2 with prior knowledge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }

    /// Parses `http1` / `h1` / `http2` / `h2`.
    pub fn parse(s: &str) -> Result<Protocol, String> {
        match s {
            "http1" | "h1" => Ok(Protocol::Http1),
            "http2" | "h2" => Ok(Protocol::Http2),
            other => Err(format!("unknown protocol {other:?} (http1, http2)")),
        }
    }
}

/// How hard the client pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Load {
    /// Open loop at this many requests per second.
    Rate(u32),
    /// Closed loop with this many concurrent requests.
    Max(usize),
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Load::Rate(r) => write!(f, "{r} req/s"),
            Load::Max(c) => write!(f, "max (c={c})"),
        }
    }
}

/// Runs `load` against `target` for `duration` ([`open_loop`] or [`closed_loop`]).
pub fn run(rt: &tokio::runtime::Handle, target: &Target, load: Load, duration: Duration) -> Sample {
    match load {
        Load::Rate(r) => open_loop(rt, target, r, duration),
        Load::Max(c) => closed_loop(rt, target, c, duration),
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Latencies of successful requests, nanoseconds, sorted.
    pub latencies: Vec<u64>,
    pub errors: usize,
    pub elapsed: Duration,
    /// How late the open loop's pacer was at worst (its own jitter).
    pub max_send_lag: Duration,
    /// Connections the client opened during the run.
    pub connections: usize,
}

impl Sample {
    /// Adds another run's results (same target and load).
    pub fn merge(&mut self, other: Sample) {
        let mut all = std::mem::take(&mut self.latencies);
        all.extend(other.latencies);
        all.sort_unstable();
        self.latencies = all;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.max_send_lag = self.max_send_lag.max(other.max_send_lag);
        self.connections += other.connections;
    }

    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn quantile(&self, q: f64) -> Option<Duration> {
        crate::stats::quantile(&self.latencies, q).map(Duration::from_nanos)
    }
}

type HttpClient = Client<CountingConnector, Empty<Bytes>>;

/// An `HttpConnector` that counts the connections it opens (an open-loop
/// HTTP/1.1 client opens one per concurrent request, so a stall shows as
/// a burst of new connections).
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    count: Arc<AtomicUsize>,
}

impl tower_service::Service<hyper::Uri> for CountingConnector {
    type Response = <HttpConnector as tower_service::Service<hyper::Uri>>::Response;
    type Error = <HttpConnector as tower_service::Service<hyper::Uri>>::Error;
    type Future = <HttpConnector as tower_service::Service<hyper::Uri>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inner.call(uri)
    }
}

/// A client for `target` (host header and connection address).
#[derive(Clone)]
pub struct Target {
    client: HttpClient,
    uri: hyper::Uri,
    connections: Arc<AtomicUsize>,
}

impl Target {
    pub fn new(addr: SocketAddr, protocol: Protocol) -> Target {
        let mut inner = HttpConnector::new();
        inner.set_nodelay(true);
        let connections = Arc::new(AtomicUsize::new(0));
        let connector = CountingConnector {
            inner,
            count: connections.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(protocol == Protocol::Http2)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let uri = format!("http://{addr}/")
            .parse()
            .expect("a socket address makes a valid URI");
        Target {
            client,
            uri,
            connections,
        }
    }

    /// Connections opened so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// One GET; true when a 2xx came back with its whole body.
    pub async fn get(&self) -> bool {
        match self.client.get(self.uri.clone()).await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                ok && resp.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

/// Open loop: `rate` requests per second for `duration`. The pacer is an
/// OS thread sleeping until each request's scheduled time (the tokio timer
/// has 1 ms granularity, too coarse at thousands of requests per second).
pub fn open_loop(
    rt: &tokio::runtime::Handle,
    target: &Target,
    rate: u32,
    duration: Duration,
) -> Sample {
    let conns_before = target.connections();
    let n = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
    let errors = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n as usize);
    let mut max_lag = Duration::ZERO;
    let start = Instant::now();
    for i in 0..n {
        let scheduled = start + interval.mul_f64(i as f64);
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        } else {
            max_lag = max_lag.max(now - scheduled);
        }
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (target, latencies, errors, in_flight) = (
            target.clone(),
            latencies.clone(),
            errors.clone(),
            in_flight.clone(),
        );
        tasks.push(rt.spawn(async move {
            if target.get().await {
                let lat = scheduled.elapsed().as_nanos() as u64;
                latencies.locked().push(lat);
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = start.elapsed();
    let mut s = finish(latencies, errors, elapsed, max_lag);
    s.connections = target.connections() - conns_before;
    s
}

/// Closed loop: `concurrency` requests always in flight for `duration`.
pub fn closed_loop(
    rt: &tokio::runtime::Handle,
    target: &Target,
    concurrency: usize,
    duration: Duration,
) -> Sample {
    let conns_before = target.connections();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let end = start + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (target, latencies, errors) = (target.clone(), latencies.clone(), errors.clone());
            rt.spawn(async move {
                let mut mine = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    if target.get().await {
                        mine.push(t.elapsed().as_nanos() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.locked().extend(mine);
            })
        })
        .collect();
    rt.block_on(async {
        for w in workers {
            let _ = w.await;
        }
    });
    let elapsed = start.elapsed();
    let mut s = finish(latencies, errors, elapsed, Duration::ZERO);
    s.connections = target.connections() - conns_before;
    s
}

fn finish(
    latencies: Arc<Mutex<Vec<u64>>>,
    errors: Arc<AtomicUsize>,
    elapsed: Duration,
    max_send_lag: Duration,
) -> Sample {
    let mut latencies = std::mem::take(&mut *latencies.locked());
    latencies.sort_unstable();
    Sample {
        latencies,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        max_send_lag,
        connections: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lat: &[u64], secs: u64) -> Sample {
        Sample {
            latencies: lat.to_vec(),
            errors: 1,
            elapsed: Duration::from_secs(secs),
            max_send_lag: Duration::ZERO,
            connections: 0,
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut s = sample(&(1..=1000).collect::<Vec<_>>(), 1);
        assert_eq!(s.quantile(0.5), Some(Duration::from_nanos(500)));
        assert_eq!(s.quantile(0.99), Some(Duration::from_nanos(990)));
        assert_eq!(s.quantile(0.999), Some(Duration::from_nanos(999)));
        assert_eq!(s.quantile(1.0), Some(Duration::from_nanos(1000)));
        s.merge(sample(&[0; 1000], 1));
        assert_eq!(s.latencies.len(), 2000);
        assert_eq!(s.quantile(0.5), Some(Duration::from_nanos(0)));
        assert_eq!((s.errors, s.throughput()), (2, 1000.0));
        assert_eq!(Sample::default().quantile(0.5), None);
    }
}
