//! `conduit-ebpf agent`: probe, load or adopt, then serve registrations.

use crate::admission::Forbidden;
use crate::enrol::{Node, Peer};
use crate::limits::{Caller, Limits};
use crate::loader::{self, LoadOptions, to_field};
use crate::pins::Pins;
use crate::registry::Registry;
use crate::{features, netns, object};
use anyhow::{Context, Result, anyhow};
use aya::maps::lpm_trie::Key;
use conduit_ebpf_common::{CONFIG_FASTPATH, GlobalConfig, MAX_EXCLUDED_CIDRS};
use conduit_register::wire::{self, PROTOCOL_VERSION, Response};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};

#[derive(clap::Args, Debug)]
pub struct Options {
    /// cgroup v2 directory to attach at (default: the cgroup v2 mount).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Unix socket where proxies register.
    #[arg(long, default_value = conduit_register::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Group owning the socket (a gid or a group name); the socket is
    /// mode 0660 (owner root), so only root and this group can register.
    /// The default is the gid `inject` gives proxies (`--proxy-uid`).
    #[arg(long, default_value = "2102", value_name = "GROUP")]
    pub socket_group: String,
    /// The node's network namespace, never enrolled (a process on the node
    /// or a hostNetwork pod registering is refused). Default: pid 1's, else
    /// kthreadd's (pid 2: kernel threads live in the node's namespace); both
    /// need hostPID.
    #[arg(long, value_name = "PATH")]
    pub host_netns: Option<PathBuf>,
    /// bpffs directory for pinned maps, programs and links.
    #[arg(long, default_value = crate::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Enable the sockops + sk_msg fast path between applications and proxies.
    #[arg(long)]
    pub sockmap_fastpath: bool,
    /// Destinations never captured (repeatable), e.g. 10.96.0.1/32 or fd00::/8.
    #[arg(long = "exclude-cidr", value_name = "CIDR")]
    pub exclude_cidr: Vec<String>,
    /// After adopting pinned state, how long pods have to re-register.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    pub grace_period: u64,
    /// Forward the programs' aya-log debug records to the agent log.
    #[arg(long)]
    pub bpf_log: bool,
    /// A cgroup namespace file of the node (entered at start-up, so that
    /// proxies' cgroup paths read as the node sees them); a missing or
    /// unreadable one leaves the agent in its own namespace, with a warning.
    #[arg(long, default_value = crate::cgroup::NODE_CGROUP_NS, value_name = "PATH")]
    pub node_cgroup_ns: PathBuf,
    #[command(flatten)]
    pub kube: crate::claims::KubeOptions,
}

/// Parses `a.b.c.d/n` or `x::/n` into an LPM key over mapped addresses.
pub fn parse_cidr(s: &str) -> Result<Key<[u32; 4]>> {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| anyhow!("invalid CIDR {s:?}: bad address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u32 = if len.is_empty() {
        max
    } else {
        len.parse()
            .map_err(|_| anyhow!("invalid CIDR {s:?}: bad prefix"))?
    };
    if len > max {
        return Err(anyhow!("invalid CIDR {s:?}: prefix longer than {max}"));
    }
    let prefix = if ip.is_ipv4() { len + 96 } else { len };
    Ok(Key::new(prefix, crate::enrol::ip_key(ip).words))
}

/// Where the node's network namespace is found under hostPID: init's, and
/// kthreadd's (kernel threads always run in the node's namespace; reading it
/// works where a security profile forbids reading init's).
const HOST_NETNS: [&str; 2] = ["/proc/1/ns/net", "/proc/2/ns/net"];

/// How long a caller has to send its request after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run(opts: Options) -> Result<()> {
    // Before any thread starts, so that all of them see proxies' cgroups
    // as the node does (see cgroup.rs).
    match crate::cgroup::enter_node_namespace(&opts.node_cgroup_ns) {
        Ok(true) => tracing::info!("entered the node's cgroup namespace"),
        Ok(false) => {}
        Err(e) => tracing::info!(
            error = format!("{e:#}"),
            "staying in the agent's own cgroup namespace; proxies' cgroups are located through the cgroup mounts"
        ),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(opts))
}

async fn serve(opts: Options) -> Result<()> {
    let object = object::get()?;
    let found = features::probe();
    features::require(&found)?;
    let cgroup = match opts.cgroup.clone() {
        Some(c) => c,
        None => features::cgroup2_mount().context("cgroup v2 is not mounted")?,
    };
    features::check_cgroup(&cgroup)?;
    let excluded = opts
        .exclude_cidr
        .iter()
        .map(|c| parse_cidr(c))
        .collect::<Result<Vec<_>>>()?;
    if excluded.len() > MAX_EXCLUDED_CIDRS as usize {
        return Err(anyhow!("at most {MAX_EXCLUDED_CIDRS} --exclude-cidr"));
    }
    // Before touching the kernel: a cluster agent that cannot check claims
    // must not start.
    let claims = crate::claims::checker(&opts.kube).await?;
    // Never enrolled: the node's network namespace and the agent's own.
    let forbidden = Forbidden {
        host: host_netns_cookie(opts.host_netns.as_deref())?,
        agent: netns::own_netns_cookie().context("reading the agent's network namespace")?,
    };
    let group = socket_group(&opts.socket_group)?;
    crate::pins::ensure_dir(&opts.pin_dir)?;
    let pins = Pins::new(&opts.pin_dir);
    let loaded = loader::load_or_adopt(&LoadOptions {
        pins: &pins,
        cgroup: &cgroup,
        object,
        bpf_log: opts.bpf_log,
    })?;
    let adopted = loaded.adopted;
    let _ebpf = loaded._ebpf;
    let mut node = Node {
        pins: pins.clone(),
        maps: loaded.maps,
        sk_lookup: loaded.sk_lookup,
    };

    // Node-wide settings and exclusions.
    let cfg = GlobalConfig {
        flags: if opts.sockmap_fastpath {
            CONFIG_FASTPATH
        } else {
            0
        },
        _pad: 0,
        cgroup_id: netns::cgroup_id(&cgroup)?,
        cgroup_path: to_field(&cgroup.to_string_lossy()),
    };
    node.maps
        .config
        .set(0, cfg, 0)
        .context("writing the node settings")?;
    if opts.sockmap_fastpath {
        loader::attach_fastpath(&pins).context("attaching the sk_msg fast path")?;
        tracing::info!("sockmap fast path on");
    }
    let old: Vec<_> = node.maps.exclude.keys().filter_map(|k| k.ok()).collect();
    for k in old {
        let _ = node.maps.exclude.remove(&k);
    }
    for k in &excluded {
        node.maps
            .exclude
            .insert(k, 1, 0)
            .context("storing an excluded CIDR")?;
    }

    raise_fd_limit();
    // Pods enrolled under a previous agent: drop the dead, wait for the live.
    let registry = Registry::new(node, claims, forbidden, Limits::AGENT);
    let pending = registry.adopted_waiting();
    if pending > 0 {
        tracing::info!(
            pods = pending,
            grace_secs = opts.grace_period,
            "waiting for adopted pods to re-register"
        );
        registry.expire_adopted_after(Duration::from_secs(opts.grace_period));
    }

    let listener = bind(&opts.socket, group)?;
    tracing::info!(
        socket = %opts.socket.display(), socket_group = group, pin_dir = %pins.dir.display(), cgroup = %cgroup.display(),
        adopted, fastpath = opts.sockmap_fastpath, checks_pod_claims = registry.checks_claims(), "agent ready"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let registry = registry.clone();
                    tokio::spawn(async move { serve_connection(registry, stream).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of descriptors: give closing connections a moment
                    // instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Leave pinned state (and so capture) in place for the next agent; the
    // pods' registrations close with this process and they re-register.
    let _ = std::fs::remove_file(&opts.socket);
    tracing::info!("agent stopping; pinned programs and maps stay in place");
    std::process::exit(0);
}

/// The cookie of the node's network namespace: `--host-netns`, else the
/// first of [`HOST_NETNS`] that can be read (pid 2 only when it is kthreadd).
fn host_netns_cookie(given: Option<&std::path::Path>) -> Result<u64> {
    if let Some(path) = given {
        let path = path.to_string_lossy();
        return netns::cookie_of(&path)
            .with_context(|| format!("reading the node's network namespace {path}"));
    }
    let mut errors = Vec::new();
    for path in HOST_NETNS {
        if path.starts_with("/proc/2/")
            && !std::fs::read_to_string("/proc/2/stat").is_ok_and(|s| s.contains("(kthreadd)"))
        {
            errors.push(format!("{path}: pid 2 is not kthreadd"));
            continue;
        }
        match netns::cookie_of(path) {
            Ok(cookie) => {
                tracing::info!(
                    from = path,
                    netns_cookie = cookie,
                    "the node's network namespace is never enrolled"
                );
                return Ok(cookie);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    Err(anyhow!(
        "cannot read the node's network namespace (the agent needs hostPID and CAP_SYS_ADMIN, or --host-netns): {}",
        errors.join("; ")
    ))
}

/// The gid of `--socket-group`: a number, or a group name.
fn socket_group(spec: &str) -> Result<u32> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(gid);
    }
    nix::unistd::Group::from_name(spec)
        .with_context(|| format!("looking up group {spec:?}"))?
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| anyhow!("--socket-group {spec:?}: no such group"))
}

/// Mode of the registration socket: the owner (root) and the socket group.
pub const SOCKET_MODE: u32 = 0o660;

fn bind(path: &std::path::Path, group: u32) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()));
        }
    }
    let l = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    // Only root and the proxies' group may connect (connecting needs write
    // permission on the socket); SO_PEERCRED then says who called.
    std::os::unix::fs::chown(path, None, Some(group))
        .with_context(|| format!("giving {} to group {group}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(l)
}

/// Raises the soft limit of open descriptors to the hard one: each
/// registration holds a connection.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill and then read.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 || lim.rlim_cur >= lim.rlim_max {
        return;
    }
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    lim.rlim_cur = hard;
    // SAFETY: as above; only the soft limit changes, up to the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, soft, hard, "could not raise the open-descriptor limit");
    }
}

/// One connection on the unix socket: limits, request, enrol, answer, hold
/// until the proxy hangs up (the lease's drop removes the pod).
async fn serve_connection(registry: Arc<Registry>, mut stream: UnixStream) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "SO_PEERCRED failed"),
    };
    let caller = Caller {
        uid: cred.uid(),
        netns: netns::caller_netns(cred.pid()),
    };
    let mut slot = match registry.open_slot(caller) {
        Ok(s) => s,
        // open_slot logged it.
        Err(e) => return answer_refused(&mut stream, e.to_string()).await,
    };
    let request = tokio::time::timeout(REQUEST_TIMEOUT, wire::recv_request(&mut stream)).await;
    let (request, fd) = match request {
        Ok(Ok(r)) => r,
        Ok(Err(conduit_register::RegisterError::ClosedBeforeRequest)) => {
            // `status --check --socket` connects and hangs up.
            return tracing::debug!("connection closed without a request");
        }
        Ok(Err(e)) => return refuse(&mut stream, cred.pid(), format!("{e}")).await,
        Err(_) => {
            let msg = format!("no request within {} s", REQUEST_TIMEOUT.as_secs());
            return refuse(&mut stream, cred.pid(), msg).await;
        }
    };
    if request.version != PROTOCOL_VERSION {
        let msg = format!(
            "protocol version {} not supported (agent speaks {PROTOCOL_VERSION})",
            request.version
        );
        return refuse(&mut stream, cred.pid(), msg).await;
    }
    let Some(pid) = cred.pid().filter(|p| *p > 0) else {
        let msg = "the caller's pid is unknown (SO_PEERCRED)".to_string();
        return refuse(&mut stream, cred.pid(), msg).await;
    };
    let peer = Peer {
        pid: pid as u32,
        uid: cred.uid(),
    };
    let lease = match registry.register(peer, request.pod, fd).await {
        Ok(lease) => lease,
        // register logged it.
        Err(r) => return answer_refused(&mut stream, r.to_string()).await,
    };
    slot.answered();
    let answer = Response::Enrolled(lease.enrolled().clone());
    if let Err(e) = wire::write_frame(&mut stream, &answer).await {
        tracing::warn!(error = %e, "answering the proxy failed");
        return;
    }
    // Hold the registration until the proxy hangs up.
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    drop(lease);
}

/// Refuses a request that never reached the registry, and logs it.
async fn refuse(stream: &mut UnixStream, pid: Option<i32>, reason: String) {
    tracing::warn!(pid, %reason, "registration refused");
    answer_refused(stream, reason).await;
}

async fn answer_refused(stream: &mut UnixStream, reason: String) {
    let _ = wire::write_frame(stream, &Response::Refused { reason }).await;
}

#[cfg(test)]
mod tests {
    use super::{parse_cidr, socket_group};

    #[test]
    fn socket_groups_are_gids_or_names() {
        // (--socket-group, gid or None for an error)
        for (spec, want) in [
            ("2102", Some(2102)),
            ("0", Some(0)),
            ("root", Some(0)),
            ("no-such-group-conduit", None),
            ("-1", None),
        ] {
            assert_eq!(socket_group(spec).ok(), want, "{spec}");
        }
    }

    #[test]
    fn cidrs_become_mapped_prefixes() {
        let k = parse_cidr("10.96.0.0/12").unwrap();
        assert_eq!(k.prefix_len(), 108);
        assert_eq!(parse_cidr("10.0.0.1").map(|k| k.prefix_len()).unwrap(), 128);
        assert_eq!(parse_cidr("fd00::/8").map(|k| k.prefix_len()).unwrap(), 8);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nonsense/8").is_err());
        assert!(parse_cidr("::/129").is_err());
    }
}
