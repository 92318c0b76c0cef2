//! `conduit-ebpf agent`: probe, load or adopt, then serve registrations.

use crate::admission::Forbidden;
use crate::enrol::Node;
use crate::limits::Limits;
use crate::loader::{self, LoadOptions, to_field};
use crate::pins::Pins;
use crate::registry::Registry;
use crate::{features, netns, object, register, sys};
use anyhow::{Context, Result, anyhow};
use aya::maps::lpm_trie::Key;
use conduit_ebpf_common::{CONFIG_FASTPATH, GlobalConfig, MAX_EXCLUDED_CIDRS};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// Enable the sockops + sk_msg fast path between applications and
    /// proxies. Unsafe for untrusted traffic: it bypasses TCP flow control
    /// (a writer is never pushed back; what the reader has not read waits in
    /// the kernel without a per-socket bound). See docs/security.md.
    #[arg(long)]
    pub sockmap_fastpath: bool,
    /// Destinations never captured (repeatable), e.g. 10.96.0.1/32 or fd00::/8.
    #[arg(long = "exclude-cidr", value_name = "CIDR")]
    pub exclude_cidr: Vec<String>,
    /// After adopting pinned state, how long pods have to re-register.
    /// (A duration: `10`, `30s`, `2m`; a bare number is seconds.)
    #[arg(long, default_value = "10", value_name = "DURATION", value_parser = conduit_base::duration::parse)]
    pub grace_period: Duration,
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

/// Where the node's network namespace is found under hostPID: init's, and
/// kthreadd's (kernel threads always run in the node's namespace; reading it
/// works where a security profile forbids reading init's).
const HOST_NETNS: [&str; 2] = ["/proc/1/ns/net", "/proc/2/ns/net"];

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

/// The agent's life: check the node, load (or adopt) the programs, set the
/// node-wide maps, then serve registrations until SIGTERM.
async fn serve(opts: Options) -> Result<()> {
    let object = object::get()?;
    let cgroup = check_node(&opts)?;
    let excluded = excluded_cidrs(&opts.exclude_cidr)?;
    // Before touching the kernel: a cluster agent that cannot check claims
    // must not start.
    let claims = crate::claims::checker(&opts.kube).await?;
    // Never enrolled: the node's network namespace and the agent's own.
    let forbidden = Forbidden {
        host: host_netns_cookie(opts.host_netns.as_deref())?,
        agent: netns::own_netns_cookie().context("reading the agent's network namespace")?,
    };
    let group = register::socket_group(&opts.socket_group)?;
    crate::pins::ensure_dir(&opts.pin_dir)?;
    let pins = Pins::new(&opts.pin_dir);
    let loaded = loader::load_or_adopt(&LoadOptions {
        pins: &pins,
        cgroup: &cgroup,
        object,
        bpf_log: opts.bpf_log,
    })?;
    let adopted = loaded.adopted;
    // Held for the agent's lifetime (aya-log's programs, when loaded here).
    let _ebpf = loaded._ebpf;
    let mut node = Node {
        pins: pins.clone(),
        maps: loaded.maps,
        sk_lookup: loaded.sk_lookup,
    };
    configure_node(&mut node, &opts, &cgroup, &excluded)?;

    sys::raise_fd_limit();
    let registry = Registry::new(node, claims, forbidden, Limits::AGENT);
    wait_for_adopted(&registry, opts.grace_period);

    let listener = register::bind(&opts.socket, group)?;
    if opts.discover.discover {
        tokio::spawn(crate::discover::run(
            registry.clone(),
            opts.discover.clone(),
            cgroup.clone(),
        ));
    }
    tracing::info!(
        socket = %opts.socket.display(), socket_group = group, pin_dir = %pins.dir.display(), cgroup = %cgroup.display(),
        adopted, fastpath = opts.sockmap_fastpath, checks_pod_claims = registry.checks_claims(), "agent ready"
    );
    register::accept_until_stopped(listener, registry).await?;
    // Leave pinned state (and so capture) in place for the next agent; the
    // pods' registrations close with this process and they re-register.
    let _ = std::fs::remove_file(&opts.socket);
    tracing::info!("agent stopping; pinned programs and maps stay in place");
    std::process::exit(0);
}

/// The kernel features and the cgroup v2 directory to attach at.
fn check_node(opts: &Options) -> Result<PathBuf> {
    let found = features::probe();
    features::require(&found)?;
    let cgroup = match opts.cgroup.clone() {
        Some(c) => c,
        None => features::cgroup2_mount().context("cgroup v2 is not mounted")?,
    };
    features::check_cgroup(&cgroup)?;
    Ok(cgroup)
}

/// `--exclude-cidr`, parsed, at most [`MAX_EXCLUDED_CIDRS`].
fn excluded_cidrs(flags: &[String]) -> Result<Vec<Key<[u32; 4]>>> {
    let excluded = flags
        .iter()
        .map(|c| parse_cidr(c))
        .collect::<Result<Vec<_>>>()?;
    if excluded.len() > MAX_EXCLUDED_CIDRS as usize {
        return Err(anyhow!("at most {MAX_EXCLUDED_CIDRS} --exclude-cidr"));
    }
    Ok(excluded)
}

/// Node-wide settings (the fast path, the attach cgroup) and the excluded
/// destinations, replacing what a previous agent left.
fn configure_node(
    node: &mut Node,
    opts: &Options,
    cgroup: &Path,
    excluded: &[Key<[u32; 4]>],
) -> Result<()> {
    let cfg = GlobalConfig {
        flags: if opts.sockmap_fastpath {
            CONFIG_FASTPATH
        } else {
            0
        },
        _pad: 0,
        cgroup_id: netns::cgroup_id(cgroup)?,
        cgroup_path: to_field(&cgroup.to_string_lossy()),
    };
    node.maps
        .config
        .set(0, cfg, 0)
        .context("writing the node settings")?;
    if opts.sockmap_fastpath {
        loader::attach_fastpath(&node.pins).context("attaching the sk_msg fast path")?;
        tracing::warn!(
            "sockmap fast path on: it bypasses TCP flow control, so a peer that writes faster \
             than an application or proxy reads fills the node's kernel memory without a \
             per-socket bound (docs/security.md); use it only for trusted traffic"
        );
    }
    let old: Vec<_> = node.maps.exclude.keys().filter_map(|k| k.ok()).collect();
    for k in old {
        let _ = node.maps.exclude.remove(&k);
    }
    for k in excluded {
        node.maps
            .exclude
            .insert(k, 1, 0)
            .context("storing an excluded CIDR")?;
    }
    Ok(())
}

/// Pods enrolled under a previous agent: drop the dead, give the live
/// `grace` to re-register.
fn wait_for_adopted(registry: &Arc<Registry>, grace: Duration) {
    let pending = registry.adopted_waiting();
    if pending > 0 {
        tracing::info!(
            pods = pending,
            grace_secs = grace.as_secs(),
            "waiting for adopted pods to re-register"
        );
        registry.expire_adopted_after(grace);
    }
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
