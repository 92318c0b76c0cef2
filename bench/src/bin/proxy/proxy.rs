//! Running the real `conduit-proxy` for the benchmark: find (and build)
//! the release binary, start it with static discovery pointing the
//! benchmark service at the server, wait for `/ready`, read its RSS, and
//! route the client's connections into its outbound listener.

use anyhow::{Context, Result, bail};
use conduit_bench::redirect::Redirect;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The address clients dial through the proxy: a loopback address nothing
/// listens on, so only the redirect (or the explicit proxy) can answer.
pub const SERVICE_ADDR: &str = "127.77.0.1:80";
const RULE_COMMENT: &str = "conduit-proxy-bench";

/// The running proxy's pid, for the interrupt handler.
static PROXY_PID: AtomicU32 = AtomicU32::new(0);

/// On Ctrl-C or SIGTERM: stop the proxy and remove the iptables rule before
/// exiting, so an interrupted run leaves nothing behind. Call first thing in
/// `main`, before any other thread exists (they inherit the signal mask).
pub fn cleanup_on_interrupt() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!("\n[bench] {sig}: stopping the proxy and removing the iptables rule");
                let pid = PROXY_PID.load(Ordering::SeqCst);
                if pid != 0 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        Signal::SIGKILL,
                    );
                }
                conduit_bench::redirect::remove_stale(RULE_COMMENT);
                std::process::exit(130);
            }
        })?;
    Ok(())
}

/// The release `conduit-proxy` next to this benchmark binary, rebuilt so it
/// matches the sources (cargo does nothing when it is up to date).
pub fn locate(explicit: Option<PathBuf>, build: bool) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("--proxy-bin {} does not exist", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("finding the benchmark binary")?;
    let dir = exe.parent().context("benchmark binary has no directory")?;
    let bin = dir.join("conduit-proxy");
    if build {
        let target_dir = dir.parent().context("target directory")?;
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/Cargo.toml");
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("release");
        eprintln!(
            "[bench] building conduit-proxy ({profile}) into {} ...",
            dir.display()
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-p",
            "conduit-proxy",
            "--bin",
            "conduit-proxy",
            "--manifest-path",
        ])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .context("running cargo to build conduit-proxy")?;
        if !status.success() {
            bail!(
                "building conduit-proxy failed (see above); build it yourself with \
                 `cargo build --release -p conduit-proxy` or pass --proxy-bin"
            );
        }
    }
    if !bin.is_file() {
        bail!(
            "no conduit-proxy binary at {}: build it with `cargo build --release -p conduit-proxy` \
             or pass --proxy-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// How client connections reach the proxy's outbound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// iptables `REDIRECT` of SERVICE_ADDR to the outbound port; the proxy
    /// reads SO_ORIGINAL_DST, exactly as in a pod (needs root).
    Redirect,
    /// The client connects to the outbound listener, which is told the
    /// destination with `--outbound-fixed-dst` (no root needed).
    Fixed,
}

pub struct Proxy {
    child: Child,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
    _redirect: Option<Redirect>,
}

impl Proxy {
    pub fn start(bin: &Path, server: SocketAddr, route: Route) -> Result<Proxy> {
        let log =
            std::env::temp_dir().join(format!("conduit-proxy-bench-{}.log", std::process::id()));
        let (outbound, inbound, admin) = (free_port()?, free_port()?, free_port()?);
        let mut cmd = Command::new(bin);
        cmd.arg("--outbound-addrs")
            .arg(outbound.to_string())
            .arg("--inbound-addrs")
            .arg(inbound.to_string())
            .arg("--admin-addr")
            .arg(admin.to_string())
            .arg("--control-addr")
            .arg(free_port()?.to_string())
            .arg("--service")
            .arg(format!("bench@{SERVICE_ADDR}={server}"))
            .arg("--log")
            .arg("warn")
            // The allocator setting of a proxy in a pod.
            .env(
                conduit_base::malloc::TUNABLES_VAR,
                conduit_base::malloc::PROXY_TUNABLES,
            );
        if route == Route::Fixed {
            cmd.arg("--outbound-fixed-dst").arg(SERVICE_ADDR);
        }
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        PROXY_PID.store(child.id(), Ordering::SeqCst);
        let redirect = match route {
            Route::Redirect => {
                let (ip, dport) = SERVICE_ADDR.split_once(':').expect("ip:port");
                let dport: u16 = dport.parse().expect("SERVICE_ADDR port");
                Some(Redirect::install(ip, dport, outbound.port(), RULE_COMMENT)?)
            }
            Route::Fixed => None,
        };
        let mut proxy = Proxy {
            child,
            outbound,
            admin,
            log,
            _redirect: redirect,
        };
        proxy.wait_ready(Duration::from_secs(20))?;
        Ok(proxy)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where clients connect.
    pub fn client_addr(&self, route: Route) -> SocketAddr {
        match route {
            Route::Redirect => SERVICE_ADDR.parse().expect("service address"),
            Route::Fixed => self.outbound,
        }
    }

    /// Resident set size now, from /proc.
    pub fn rss_bytes(&self) -> Result<u64> {
        conduit_bench::procstat::rss_bytes(self.pid())
    }

    /// Peak resident set size so far.
    pub fn peak_rss_bytes(&self) -> Result<u64> {
        conduit_bench::procstat::peak_rss_bytes(self.pid())
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "conduit-proxy exited with {status} before it was ready:\n{}",
                    self.log_tail()
                );
            }
            if http_get_status(self.admin, "/ready").is_ok_and(|s| s == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "conduit-proxy not ready after {limit:?}:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self) -> String {
        conduit_bench::report::log_tail(&self.log, 20)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        PROXY_PID.store(0, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Whether the REDIRECT route can work here: root and an iptables binary.
pub fn can_redirect() -> bool {
    nix::unistd::Uid::effective().is_root()
        && Command::new("iptables")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Whether the proxy binary offers `--outbound-fixed-dst`.
pub fn supports_fixed(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--outbound-fixed-dst"))
}

fn free_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?)
}

/// A minimal blocking HTTP/1.0 GET for the admin server's status code.
fn http_get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status line"))
}
