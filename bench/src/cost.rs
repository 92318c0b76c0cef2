//! What `conduit-cost` shares and tests: a real `conduit-proxy` run under
//! valgrind's callgrind (instruction counts, which a busy machine does not
//! blur the way it blurs latency), the arithmetic that turns two runs into
//! instructions per request, and `h2load` as the HTTP/1.1 and HTTP/2 client.
//!
//! The method: the same proxy set-up forwards `N` and then `2N` requests;
//! everything but the requests (start-up, connection set-up, shutdown) is the
//! same in both runs, so `(total(2N) - total(N)) / N` is the cost of one
//! request.

use anyhow::{Context, Result, bail, ensure};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The proxy runs as this uid (the mesh's proxy uid, as in a pod).
pub const PROXY_UID: u32 = 1337;

/// Instructions callgrind counted (`summary:` or `totals:` line).
pub fn callgrind_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Instructions per request from the totals of a run of `n` requests and
/// one of `2n`.
pub fn per_request(total_n: u64, total_2n: u64, n: u64) -> Option<f64> {
    (n > 0 && total_2n >= total_n).then(|| (total_2n - total_n) as f64 / n as f64)
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[m]),
        _ => Some((v[m - 1] + v[m]) / 2.0),
    }
}

/// The HTTP version `h2load` speaks to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2loadProtocol {
    /// `--h1`, one request at a time per connection.
    Http1,
    /// HTTP/2 with prior knowledge, several streams per connection.
    Http2,
}

/// How `h2load` loads the proxy: the same shape in both runs of a case so
/// only the number of requests differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2load {
    pub protocol: H2loadProtocol,
    /// Connections (`-c`).
    pub connections: u32,
    /// Concurrent streams per connection (`-m`; 1 for HTTP/1.1).
    pub streams: u32,
}

impl H2load {
    /// `h2load`'s arguments for `requests` requests to `target`.
    pub fn args(&self, target: SocketAddr, requests: u64) -> Vec<String> {
        let mut args = vec![
            "-n".to_owned(),
            requests.to_string(),
            "-c".to_owned(),
            self.connections.to_string(),
            "-m".to_owned(),
            self.streams.to_string(),
        ];
        if self.protocol == H2loadProtocol::Http1 {
            args.push("--h1".to_owned());
        }
        args.push(format!("http://{target}/"));
        args
    }

    /// Runs `h2load` for `requests` requests; fails unless every one
    /// succeeded with a 2xx.
    pub fn run(&self, target: SocketAddr, requests: u64) -> Result<()> {
        let out = Command::new("h2load")
            .args(self.args(target, requests))
            .output()
            .context("running h2load (apt-get install nghttp2-client, or `cargo xtask setup`)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "h2load failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let done = H2loadCounts::parse(&text).with_context(|| format!("h2load said: {text}"))?;
        ensure!(
            done.succeeded == requests && done.ok_2xx == requests,
            "h2load: {done:?} of {requests} requests: {text}"
        );
        Ok(())
    }
}

/// What `h2load` reports about its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2loadCounts {
    pub succeeded: u64,
    pub ok_2xx: u64,
}

impl H2loadCounts {
    /// From the `requests:` and `status codes:` lines, e.g.
    /// `requests: 400 total, 400 started, 400 done, 400 succeeded, 0 failed, ...`
    /// and `status codes: 400 2xx, 0 3xx, 0 4xx, 0 5xx`.
    pub fn parse(text: &str) -> Option<H2loadCounts> {
        fn field(line: &str, name: &str) -> Option<u64> {
            line.split(',')
                .find_map(|part| part.trim().strip_suffix(name)?.trim().parse().ok())
        }
        let line = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix));
        Some(H2loadCounts {
            succeeded: field(line("requests:")?, "succeeded")?,
            ok_2xx: field(line("status codes:")?, "2xx")?,
        })
    }
}

pub fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Polls `f` every 50 ms until it gives a value or `limit` passes.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The proxy's listeners in one run.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub control: SocketAddr,
}

/// One release `conduit-proxy` under callgrind, as uid [`PROXY_UID`], with
/// static discovery of one service (`bench`, 10.96.0.1:80, whose one
/// endpoint is `upstream`) and every outbound connection taken as bound for
/// that service: the balanced outbound path with metrics, retries and the
/// tap hook in force.
pub struct CallgrindProxy {
    child: Child,
    pub ports: Ports,
    out_file: PathBuf,
}

impl CallgrindProxy {
    /// Starts it, writing callgrind's output to `out_file`, and waits for its
    /// ports.
    pub fn start(bin: &Path, upstream: SocketAddr, out_file: PathBuf) -> Result<CallgrindProxy> {
        let ports = Ports {
            outbound: free_port()?,
            inbound: free_port()?,
            admin: free_port()?,
            control: free_port()?,
        };
        // As uid 1337, as in a pod: the proxy refuses taps from its own uid.
        let child = Command::new("valgrind")
            .uid(PROXY_UID)
            .gid(PROXY_UID)
            // The allocator setting of a proxy in a pod (conduit_base::malloc).
            .env(
                conduit_base::malloc::TUNABLES_VAR,
                conduit_base::malloc::PROXY_TUNABLES,
            )
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(bin)
            .args(["--outbound-addrs", &ports.outbound.to_string()])
            .args(["--inbound-addrs", &ports.inbound.to_string()])
            .args(["--admin-addr", &ports.admin.to_string()])
            .args(["--control-addr", &ports.control.to_string()])
            .args(["--service", &format!("bench@10.96.0.1:80={upstream}")])
            .args(["--outbound-fixed-dst", "10.96.0.1:80"])
            .args(["--log", "warn"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(out_file.with_extension("log"))?)
            .spawn()
            .context("starting valgrind (apt-get install valgrind, or `cargo xtask setup`)")?;
        let mut proxy = CallgrindProxy {
            child,
            ports,
            out_file,
        };
        let waited = wait_for("the proxy's ports", Duration::from_secs(120), || {
            [ports.outbound, ports.control, ports.admin]
                .iter()
                .all(|a| TcpStream::connect(a).is_ok())
                .then_some(())
        });
        if let Err(e) = waited {
            proxy.stop_quietly();
            return Err(e);
        }
        Ok(proxy)
    }

    /// Stops the proxy (SIGTERM: it exits cleanly and callgrind writes its
    /// totals); the instructions it executed.
    pub fn finish(mut self) -> Result<u64> {
        self.terminate()?;
        let text = std::fs::read_to_string(&self.out_file)
            .with_context(|| format!("callgrind output {}", self.out_file.display()))?;
        callgrind_total(&text).context("no totals in the callgrind output")
    }

    /// Stops it after a failed run, ignoring what it counted.
    pub fn stop_quietly(&mut self) {
        if self.terminate().is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn terminate(&mut self) -> Result<()> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = wait_for("the proxy to exit", Duration::from_secs(60), || {
            self.child.try_wait().ok().flatten()
        })?;
        ensure!(
            status.success(),
            "the proxy under callgrind exited with {status}"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrind_totals() {
        let text = "version: 1\ncmd: x\nevents: Ir\nsummary: 123456\nfn=main\n";
        assert_eq!(callgrind_total(text), Some(123456));
        assert_eq!(callgrind_total("events: Ir\ntotals: 42 7\n"), Some(42));
        assert_eq!(callgrind_total("events: Ir\n"), None);
        assert_eq!(callgrind_total("summary: lots\n"), None);
    }

    #[test]
    fn per_request_is_the_difference_over_n() {
        assert_eq!(per_request(1_000, 3_000, 100), Some(20.0));
        assert_eq!(per_request(1_000, 1_000, 100), Some(0.0));
        assert_eq!(per_request(3_000, 1_000, 100), None);
        assert_eq!(per_request(1, 2, 0), None);
    }

    #[test]
    fn median_of_odd_even_and_none() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn h2load_arguments_per_protocol() {
        let target: SocketAddr = "127.0.0.1:4140".parse().unwrap();
        let h1 = H2load {
            protocol: H2loadProtocol::Http1,
            connections: 4,
            streams: 1,
        };
        assert_eq!(
            h1.args(target, 2000).join(" "),
            "-n 2000 -c 4 -m 1 --h1 http://127.0.0.1:4140/"
        );
        let h2 = H2load {
            protocol: H2loadProtocol::Http2,
            connections: 4,
            streams: 4,
        };
        assert_eq!(
            h2.args(target, 4000).join(" "),
            "-n 4000 -c 4 -m 4 http://127.0.0.1:4140/"
        );
    }

    #[test]
    fn reads_h2load_counts() {
        // h2load 1.52's summary (the lines that matter, as it prints them).
        let text = "finished in 1.23s, 3252.03 req/s, 103.92KB/s\n\
            requests: 4000 total, 4000 started, 4000 done, 3998 succeeded, 2 failed, 0 errored, 0 timeout\n\
            status codes: 3997 2xx, 0 3xx, 0 4xx, 1 5xx\n\
            traffic: 127.83KB (130896) total\n";
        assert_eq!(
            H2loadCounts::parse(text),
            Some(H2loadCounts {
                succeeded: 3998,
                ok_2xx: 3997
            })
        );
        assert_eq!(H2loadCounts::parse("finished in 1s\n"), None);
        assert_eq!(
            H2loadCounts::parse("requests: many succeeded\nstatus codes: 1 2xx\n"),
            None
        );
    }
}
