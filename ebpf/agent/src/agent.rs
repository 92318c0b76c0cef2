//! `conduit-ebpf agent`: probe, load or adopt, then serve registrations.

use crate::enrol::{self, Node, Peer};
use crate::loader::{self, LoadOptions, to_field};
use crate::pins::Pins;
use crate::{features, netns, object};
use anyhow::{Context, Result, anyhow};
use aya::maps::lpm_trie::Key;
use conduit_ebpf_common::{CONFIG_FASTPATH, GlobalConfig, MAX_EXCLUDED_CIDRS};
use conduit_register::wire::{self, PROTOCOL_VERSION, Response};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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
    #[command(flatten)]
    pub discover: crate::discover::DiscoverOptions,
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

/// Who currently owns each enrolled netns (the latest registration wins).
#[derive(Default)]
struct Owners {
    next: u64,
    by_netns: HashMap<u64, u64>,
    /// Pods adopted from a previous agent, waiting to re-register.
    pending: HashSet<u64>,
}

pub(crate) struct Shared {
    node: Mutex<Node>,
    /// In a cluster: checks each proxy's pod claim before enrolling.
    pub(crate) claims: Option<crate::claims::Claims>,
    owners: Mutex<Owners>,
    /// Registrations being served; bounded so a runaway client cannot
    /// exhaust the agent.
    pub(crate) active: std::sync::atomic::AtomicUsize,
}

/// Most registrations served at once (each pod holds one).
pub(crate) const MAX_ACTIVE: usize = 2 * conduit_ebpf_common::MAX_PODS as usize;

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

    // Pods enrolled under a previous agent: drop the dead, wait for the live.
    let mut owners = Owners::default();
    let enrolled: Vec<u64> = node.pods().into_iter().map(|(c, _)| c).collect();
    for (cookie, pod) in node.pods() {
        if netns::alive(pod.proxy_pid, pod.proxy_start_time) {
            owners.pending.insert(cookie);
        } else {
            node.remove(cookie);
        }
    }
    for cookie in pins.pod_links() {
        if !enrolled.contains(&cookie) {
            node.remove(cookie);
        }
    }
    let pending = owners.pending.len();
    let shared = Arc::new(Shared {
        node: Mutex::new(node),
        claims,
        owners: Mutex::new(owners),
        active: std::sync::atomic::AtomicUsize::new(0),
    });
    if pending > 0 {
        tracing::info!(
            pods = pending,
            grace_secs = opts.grace_period,
            "waiting for adopted pods to re-register"
        );
        let s = shared.clone();
        let grace = Duration::from_secs(opts.grace_period);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let stale: Vec<u64> = s.owners.lock().unwrap().pending.drain().collect();
            let mut node = s.node.lock().unwrap();
            for cookie in stale {
                tracing::warn!(netns_cookie = cookie, "proxy did not re-register in time");
                node.remove(cookie);
            }
        });
    }

    let listener = bind(&opts.socket)?;
    if opts.discover.discover {
        tokio::spawn(crate::discover::run(
            shared.clone(),
            opts.discover.clone(),
            cgroup.clone(),
        ));
    }
    tracing::info!(
        socket = %opts.socket.display(), pin_dir = %pins.dir.display(), cgroup = %cgroup.display(),
        adopted, fastpath = opts.sockmap_fastpath, checks_pod_claims = shared.claims.is_some(), "agent ready"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut stream, _)) => {
                    use std::sync::atomic::Ordering;
                    let s = shared.clone();
                    if s.active.fetch_add(1, Ordering::SeqCst) >= MAX_ACTIVE {
                        s.active.fetch_sub(1, Ordering::SeqCst);
                        tokio::spawn(async move { refuse(&mut stream, "too many registrations".into()).await });
                        continue;
                    }
                    tokio::spawn(async move {
                        handle(s.clone(), stream).await;
                        s.active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
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

fn bind(path: &std::path::Path) -> Result<UnixListener> {
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
    // Proxies run under their own uids; SO_PEERCRED tells who they are.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// One registration: enrol, answer, hold until the proxy hangs up, remove.
async fn handle(shared: Arc<Shared>, mut stream: UnixStream) {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "SO_PEERCRED failed"),
    };
    let request =
        tokio::time::timeout(Duration::from_secs(5), wire::recv_request(&mut stream)).await;
    let (request, fd) = match request {
        Ok(Ok(r)) => r,
        Ok(Err(conduit_register::RegisterError::ClosedBeforeRequest)) => {
            // `status --check --socket` connects and hangs up.
            return tracing::debug!("connection closed without a request");
        }
        Ok(Err(e)) => return refuse(&mut stream, format!("{e}")).await,
        Err(_) => return refuse(&mut stream, "no request within 5 s".into()).await,
    };
    let Some(pid) = cred.pid().filter(|p| *p > 0) else {
        return refuse(
            &mut stream,
            "the caller's pid is unknown (SO_PEERCRED)".into(),
        )
        .await;
    };
    let peer = Peer {
        pid: pid as u32,
        uid: cred.uid(),
    };
    serve_registration(shared, stream, peer, request, fd).await;
}

/// A registration whose request has been read, from the socket or from
/// discovery (`crate::discover`): check, enrol, answer, hold until the proxy
/// hangs up, remove. Returns whether the pod was enrolled.
pub(crate) async fn serve_registration(
    shared: Arc<Shared>,
    mut stream: UnixStream,
    peer: Peer,
    request: wire::Request,
    fd: Option<std::os::fd::OwnedFd>,
) -> bool {
    if request.version != PROTOCOL_VERSION {
        let msg = format!(
            "protocol version {} not supported (agent speaks {PROTOCOL_VERSION})",
            request.version
        );
        refuse(&mut stream, msg).await;
        return false;
    }
    let pod = request.pod;
    let inspected = tokio::task::spawn_blocking(move || enrol::inspect(peer, pod, fd)).await;
    let candidate = match inspected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            refuse_logged(&mut stream, peer, e).await;
            return false;
        }
        Err(e) => {
            refuse(&mut stream, format!("internal error: {e}")).await;
            return false;
        }
    };
    if let Some(claims) = &shared.claims
        && !readopting(&shared, &candidate)
        && let Err(reason) = crate::claims::check(claims, &candidate).await
    {
        // claims::check logged it, with the claim.
        let _ = wire::write_frame(&mut stream, &Response::Refused { reason }).await;
        return false;
    }
    let s = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        let pod = candidate.pod.clone();
        let enrolled = s.node.lock().unwrap().enrol(candidate)?;
        let mut owners = s.owners.lock().unwrap();
        owners.next += 1;
        let token = owners.next;
        owners.by_netns.insert(enrolled.netns_cookie, token);
        owners.pending.remove(&enrolled.netns_cookie);
        Ok::<_, anyhow::Error>((enrolled, token, pod))
    })
    .await;
    let (enrolled, token, pod) = match result {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            refuse_logged(&mut stream, peer, e).await;
            return false;
        }
        Err(e) => {
            refuse(&mut stream, format!("internal error: {e}")).await;
            return false;
        }
    };
    let cookie = enrolled.netns_cookie;
    if let Err(e) = wire::write_frame(&mut stream, &Response::Enrolled(enrolled)).await {
        tracing::warn!(error = %e, "answering the proxy failed");
    } else {
        // Hold the registration until the proxy hangs up.
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 256];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }
    tracing::info!(pod = %pod.name, namespace = %pod.namespace, netns_cookie = cookie, "registration closed");
    let _ = tokio::task::spawn_blocking(move || {
        let mut owners = shared.owners.lock().unwrap();
        if owners.by_netns.get(&cookie) == Some(&token) {
            owners.by_netns.remove(&cookie);
            drop(owners);
            shared.node.lock().unwrap().remove(cookie);
        }
    })
    .await;
    true
}

/// Whether process `pid` (started at `start`) is the proxy of a pod adopted
/// from a previous agent and not re-registered yet: that agent checked it
/// (discovery then skips its container check, as `readopting` skips the
/// claim check, so an API server outage during a restart keeps capture).
pub(crate) fn adopted_proxy(shared: &Shared, pid: u32, start: u64) -> bool {
    let pending: Vec<u64> = shared
        .owners
        .lock()
        .unwrap()
        .pending
        .iter()
        .copied()
        .collect();
    let node = shared.node.lock().unwrap();
    pending.iter().any(|c| {
        node.maps
            .pods
            .get(c, 0)
            .is_ok_and(|cfg| cfg.proxy_pid == pid && cfg.proxy_start_time == start)
    })
}

/// A proxy re-registering after an agent restart, exactly as the previous
/// agent enrolled it (same process, same claim, same namespace): its claim
/// was checked then, so it is not asked again, and an API server outage
/// during an agent restart does not stop capture.
fn readopting(shared: &Shared, c: &enrol::Candidate) -> bool {
    if !shared
        .owners
        .lock()
        .unwrap()
        .pending
        .contains(&c.netns_cookie)
    {
        return false;
    }
    let cfg = shared
        .node
        .lock()
        .unwrap()
        .maps
        .pods
        .get(&c.netns_cookie, 0);
    let same = cfg.is_ok_and(|cfg| c.same_as(c.netns_cookie, &cfg));
    if same {
        tracing::info!(pod = %c.pod.name, namespace = %c.pod.namespace, "adopted pod re-registers unchanged: its claim was checked before");
    }
    same
}

async fn refuse_logged(stream: &mut UnixStream, peer: Peer, e: anyhow::Error) {
    tracing::warn!(
        pid = peer.pid,
        error = format!("{e:#}"),
        "registration refused"
    );
    let _ = wire::write_frame(
        stream,
        &Response::Refused {
            reason: format!("{e:#}"),
        },
    )
    .await;
}

async fn refuse(stream: &mut UnixStream, reason: String) {
    tracing::warn!(%reason, "registration refused");
    let _ = wire::write_frame(stream, &Response::Refused { reason }).await;
}

#[cfg(test)]
mod tests {
    use super::parse_cidr;

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
