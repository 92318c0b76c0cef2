//! Command-line flags and `CONDUIT_PROXY_*` environment variables.

use crate::discovery::{ClusterNetworks, DEFAULT_CLUSTER_NETWORKS, ServiceFlag};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The one duration grammar of the conduit binaries (`250ms`, `10s`, `5m`,
/// `1h`, `7d`; a bare number is seconds): `conduit_base::duration`.
pub use conduit_base::duration::parse as parse_duration;

/// conduit-proxy: the transparent data-plane proxy beside every meshed pod.
///
/// Outbound connections (captured by the node agent's eBPF programs or by
/// iptables REDIRECT) arrive on the outbound listener; the original
/// destination comes from SO_ORIGINAL_DST. Inbound connections arrive on the
/// inbound listener, either from peer proxies (which send a transport header
/// naming the application port) or steered by sk_lookup (the local address
/// is the original destination). Every flag can also be set through the
/// environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "conduit-proxy", version, about, long_about = None)]
pub struct Config {
    /// Outbound listener addresses (comma separated).
    #[arg(
        long,
        alias = "outbound-addr",
        env = "CONDUIT_PROXY_OUTBOUND_ADDRS",
        value_delimiter = ',',
        default_value = "127.0.0.1:4140,[::1]:4140"
    )]
    pub outbound_addrs: Vec<SocketAddr>,

    /// Inbound listener addresses (comma separated). An IPv6 wildcard is bound
    /// IPv6-only so it can sit beside the IPv4 one.
    #[arg(
        long,
        alias = "inbound-addr",
        env = "CONDUIT_PROXY_INBOUND_ADDRS",
        value_delimiter = ',',
        default_value = "0.0.0.0:4143,[::]:4143"
    )]
    pub inbound_addrs: Vec<SocketAddr>,

    /// Admin server, read-only: `GET /metrics`, `/ready`, `/live`. Reachable
    /// from the network (for scraping and probes); nothing on it changes the
    /// proxy's state.
    #[arg(long, env = "CONDUIT_PROXY_ADMIN_ADDR", default_value = "0.0.0.0:4191")]
    pub admin_addr: SocketAddr,

    /// Operator listener, state-changing endpoints (`POST /shutdown`). Must be
    /// a loopback address: only processes in the pod's own network namespace
    /// reach it, never another pod (the proxy refuses to forward to its own
    /// ports, and tells the agent to leave this port alone).
    #[arg(
        long,
        env = "CONDUIT_PROXY_CONTROL_ADDR",
        default_value = "127.0.0.1:4190"
    )]
    pub control_addr: SocketAddr,

    /// A file holding a secret the operator listener also requires, as
    /// `Authorization: Bearer <secret>` (re-read on each request). Unset:
    /// loopback alone authorizes.
    #[arg(long, env = "CONDUIT_PROXY_CONTROL_TOKEN_FILE")]
    pub control_token_file: Option<PathBuf>,

    /// Explicit-proxy mode: every outbound connection goes to this original
    /// destination instead of asking the kernel (SO_ORIGINAL_DST). For
    /// running without capture (benchmarks, local use).
    #[arg(long, env = "CONDUIT_PROXY_OUTBOUND_FIXED_DST")]
    pub outbound_fixed_dst: Option<SocketAddr>,

    /// Application ports reached on loopback (127.0.0.1 / [::1]) instead of
    /// the pod's own address, for applications that listen on loopback only
    /// and must still be served through the mesh. Opting a port in exposes
    /// that loopback service to every client the proxy accepts: use only for
    /// services meant to be reachable from outside the pod.
    #[arg(
        long,
        env = "CONDUIT_PROXY_INBOUND_LOOPBACK_PORTS",
        value_delimiter = ','
    )]
    pub inbound_loopback_ports: Vec<u16>,

    /// Destination ports that skip protocol detection and are forwarded as
    /// opaque TCP at once (server-speaks-first protocols: SMTP, MySQL, ...).
    #[arg(
        long,
        env = "CONDUIT_PROXY_OPAQUE_PORTS",
        value_delimiter = ',',
        default_value = "25,587,3306,4444,5432,6379,9300,11211"
    )]
    pub opaque_ports: Vec<u16>,

    /// How long to wait for a client's first bytes before treating the
    /// connection as a server-speaks-first protocol (forwarded as opaque).
    #[arg(long, env = "CONDUIT_PROXY_DETECT_TIMEOUT", value_parser = parse_duration, default_value = "500ms")]
    pub detect_timeout: Duration,

    /// Timeout for establishing an upstream TCP connection.
    #[arg(long, env = "CONDUIT_PROXY_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "1s")]
    pub connect_timeout: Duration,

    /// Opaque TCP connections with no bytes in either direction for this long are closed.
    #[arg(long, env = "CONDUIT_PROXY_TCP_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "1h")]
    pub tcp_idle_timeout: Duration,

    /// Slow clients: time allowed to send a complete HTTP/1 request head.
    #[arg(long, env = "CONDUIT_PROXY_HEADER_READ_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub header_read_timeout: Duration,

    /// HTTP/1 keep-alive connections with no request under way for this
    /// long are closed (0: never). Longer than clients' own pool timeouts
    /// (90 s in Go's and hyper's), so the client drops an idle connection
    /// first and never sends a request into one being closed.
    #[arg(long, env = "CONDUIT_PROXY_HTTP_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "1h")]
    pub http_idle_timeout: Duration,

    /// Slow clients: longest pause allowed while waiting for more of an
    /// HTTP/1 request body; the request is then cancelled and answered 408.
    /// 0 turns it off. (HTTP/2 and gRPC streams may idle legitimately.)
    #[arg(long, env = "CONDUIT_PROXY_BODY_READ_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub body_read_timeout: Duration,

    /// Largest HTTP request or response head accepted, in bytes (431 beyond).
    #[arg(long, env = "CONDUIT_PROXY_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// Most header fields accepted in one HTTP/1 request (431 beyond).
    #[arg(long, env = "CONDUIT_PROXY_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,

    /// Most bytes of a request body the proxy holds in memory to replay it on
    /// a retry (idempotent requests with a declared length up to this).
    /// Other bodies are streamed, and not retried.
    #[arg(long, env = "CONDUIT_PROXY_MAX_BUFFERED_BODY", default_value_t = 64 * 1024)]
    pub max_buffered_body: usize,

    /// Upper bound on concurrently open accepted connections, per direction.
    /// Connections beyond it are closed at once (and counted).
    #[arg(long, env = "CONDUIT_PROXY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Idle pooled upstream HTTP connections are closed after this long.
    #[arg(long, env = "CONDUIT_PROXY_POOL_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "90s")]
    pub pool_idle_timeout: Duration,

    /// On SIGTERM or POST /shutdown (operator listener): how long in-flight requests may finish
    /// before the proxy exits anyway.
    #[arg(long, env = "CONDUIT_PROXY_SHUTDOWN_GRACE_PERIOD", value_parser = parse_duration, default_value = "30s")]
    pub shutdown_grace_period: Duration,

    /// Most distinct destination names used as metric labels; more are
    /// reported as `overflow`.
    #[arg(long, env = "CONDUIT_PROXY_MAX_DST_LABELS", default_value_t = 500)]
    pub max_dst_labels: usize,

    /// Static discovery file (YAML, see docs/proxy.md), re-read when it changes.
    #[arg(long, env = "CONDUIT_PROXY_DISCOVERY_FILE")]
    pub discovery_file: Option<PathBuf>,

    /// A static service: `NAME@ADDR[,ADDR...]=ENDPOINT[,ENDPOINT...]` or
    /// `ADDR=ENDPOINT[,...]`. Repeat the flag; in the environment separate
    /// services with `;`.
    #[arg(
        long = "service",
        env = "CONDUIT_PROXY_SERVICES",
        value_delimiter = ';'
    )]
    pub services: Vec<ServiceFlag>,

    /// How often the discovery file is checked for changes.
    #[arg(long, env = "CONDUIT_PROXY_DISCOVERY_RELOAD", value_parser = parse_duration, default_value = "2s")]
    pub discovery_reload: Duration,

    /// Bound on a request to a discovered service until its response
    /// headers, retries included (unset: no bound).
    #[arg(long, env = "CONDUIT_PROXY_REQUEST_TIMEOUT", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Bound on one attempt of such a request (unset: no bound).
    #[arg(long, env = "CONDUIT_PROXY_REQUEST_TRY_TIMEOUT", value_parser = parse_duration)]
    pub request_try_timeout: Option<Duration>,

    /// Attempts per request at most, the first included. Only idempotent
    /// requests without a body are retried, and only within the retry
    /// budget (20% of requests plus 10 per second).
    #[arg(long, env = "CONDUIT_PROXY_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,

    /// Controller (`HOST:PORT`): discovery (`Destination.Get`) and, with an
    /// identity, certificates (`Identity.Certify`). Without it discovery is
    /// static (`--service`, `--discovery-file`).
    #[arg(long, env = "CONDUIT_PROXY_CONTROLLER_ADDR")]
    pub controller_addr: Option<String>,

    /// The controller's SPIFFE identity: reach `--controller-addr` over TLS
    /// and require the controller to present this identity, chained to the
    /// trust anchors. Required with `--controller-addr` unless
    /// `--controller-insecure-plaintext` is given.
    #[arg(long, env = "CONDUIT_PROXY_CONTROLLER_IDENTITY")]
    pub controller_identity: Option<String>,

    /// INSECURE: reach the controller in plaintext (no `--controller-identity`):
    /// discovery answers can be forged and, with an identity, the service
    /// account token travels readable on the network. For a controller
    /// started with `--insecure-plaintext-grpc`, on a trusted network only.
    #[arg(long, env = "CONDUIT_PROXY_CONTROLLER_INSECURE_PLAINTEXT")]
    pub controller_insecure_plaintext: bool,

    /// The cluster's pod and service networks (comma-separated CIDRs). A
    /// destination inside them that the controller has not answered about
    /// (controller away or blocked) is refused, never sent in plaintext;
    /// only destinations outside them go out unchanged then. Empty: none.
    #[arg(
        long,
        env = "CONDUIT_PROXY_CLUSTER_NETWORKS",
        default_value = DEFAULT_CLUSTER_NETWORKS
    )]
    pub cluster_networks: ClusterNetworks,

    /// This proxy's identity, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`. With
    /// an identity the proxy speaks mTLS to meshed peers and requires it on
    /// the inbound port; it is not ready until it holds a certificate.
    /// Without one it is plaintext only.
    #[arg(long, env = "CONDUIT_PROXY_IDENTITY")]
    pub identity: Option<String>,

    /// Trust domain; with `--service-account` and `--pod-namespace` it makes
    /// the identity when `--identity` is not given.
    #[arg(long, env = "CONDUIT_PROXY_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,

    /// File holding the token sent with certificate requests (re-read each time).
    #[arg(long, env = "CONDUIT_PROXY_IDENTITY_TOKEN_FILE")]
    pub identity_token_file: Option<PathBuf>,

    /// Trust anchors (PEM file) for peer certificates.
    #[arg(long, env = "CONDUIT_PROXY_IDENTITY_TRUST_ANCHORS")]
    pub identity_trust_anchors: Option<PathBuf>,

    /// Trust anchors as PEM text (instead of a file).
    #[arg(long, env = "CONDUIT_PROXY_TRUST_ANCHORS_PEM", hide_env_values = true)]
    pub trust_anchors_pem: Option<String>,

    /// Node agent's unix socket. When set, the proxy registers its pod with
    /// the agent (which starts eBPF capture) and keeps the registration alive.
    #[arg(long, env = "CONDUIT_PROXY_AGENT_SOCKET")]
    pub agent_socket: Option<PathBuf>,

    /// `abstract`: instead of connecting to `--agent-socket`, listen on the
    /// abstract unix socket `conduit.io/agent-registration` in the pod's
    /// network namespace, where the node agent finds the proxy (the pod
    /// then needs no hostPath: Pod Security `baseline`; docs/ebpf.md).
    #[arg(long, env = "CONDUIT_PROXY_AGENT_DISCOVERY", value_enum)]
    pub agent_discovery: Option<crate::register::AgentDiscovery>,

    /// Pod name told to the agent.
    #[arg(long, env = "CONDUIT_PROXY_POD_NAME", default_value = "unknown")]
    pub pod_name: String,

    /// Pod namespace told to the agent.
    #[arg(long, env = "CONDUIT_PROXY_POD_NAMESPACE", default_value = "default")]
    pub pod_namespace: String,

    /// The pod's labels (`k=v,k=v`), which the controller's policy servers
    /// and defaults select on.
    #[arg(long, env = "CONDUIT_PROXY_POD_LABELS", default_value = "")]
    pub pod_labels: String,

    /// Pod service account told to the agent.
    #[arg(long, env = "CONDUIT_PROXY_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,

    /// Inbound ports the agent's capture must leave alone.
    #[arg(long, env = "CONDUIT_PROXY_SKIP_INBOUND_PORTS", value_delimiter = ',')]
    pub skip_inbound_ports: Vec<u16>,

    /// Outbound destination ports the agent's capture must leave alone.
    #[arg(long, env = "CONDUIT_PROXY_SKIP_OUTBOUND_PORTS", value_delimiter = ',')]
    pub skip_outbound_ports: Vec<u16>,

    /// Access log on stderr, one line per request: `json` or `common`
    /// (docs/observability.md). Off when unset.
    #[arg(long, env = "CONDUIT_PROXY_ACCESS_LOG", value_enum)]
    pub access_log: Option<crate::access_log::AccessLogFormat>,

    /// Inbound default policy, for ports and requests no authorization
    /// matches (until the controller's policy says otherwise): all-unauthenticated,
    /// all-authenticated (only mTLS clients of the mesh: the recommended
    /// production setting), cluster-authenticated, deny or audit. See docs/policy.md.
    #[arg(
        long,
        env = "CONDUIT_PROXY_INBOUND_POLICY",
        default_value = "all-unauthenticated"
    )]
    pub inbound_policy: conduit_policy::DefaultPolicy,

    /// A static inbound policy (YAML, docs/policy.md), re-read when it
    /// changes; for proxies without a controller.
    #[arg(long, env = "CONDUIT_PROXY_INBOUND_POLICY_FILE")]
    pub inbound_policy_file: Option<PathBuf>,

    /// Worker threads of the proxy's async runtime. 1 (the default): one
    /// thread runs everything (tokio's current-thread runtime); a sidecar
    /// shares its node's cores with its application, and on one thread no
    /// request waits for a wake-up from another thread (lower latency and
    /// less CPU per request, docs/benchmarks.md). More than 1: that many
    /// workers (tokio's multi-threaded runtime), for a proxy in front of a
    /// busy service with cores to spare.
    #[arg(
        long,
        env = "CONDUIT_PROXY_WORKERS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=256)
    )]
    pub workers: u16,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or
    /// `conduit_proxy=debug`; default: `RUST_LOG`, else `info`
    /// (`conduit_base::logging`, as the controller and the agent).
    #[arg(long, env = "CONDUIT_PROXY_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// Log format.
    #[arg(
        long,
        env = "CONDUIT_PROXY_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: conduit_base::logging::LogFormat,
}

impl Config {
    /// Defaults for embedding (tests): every listener on an ephemeral loopback port.
    pub fn loopback_for_tests() -> Self {
        let mut c = Config::parse_from(["conduit-proxy"]);
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        c.outbound_addrs = vec![any_port];
        c.inbound_addrs = vec![any_port];
        c.admin_addr = any_port;
        c.control_addr = any_port;
        c.shutdown_grace_period = Duration::from_secs(5);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        // The shared grammar (conduit_base::duration) has days.
        assert_eq!(parse_duration("3d"), Ok(Duration::from_secs(3 * 86_400)));
        assert!(parse_duration("3w").is_err());
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::parse_from(["conduit-proxy"]);
        assert_eq!(
            c.outbound_addrs,
            vec![
                "127.0.0.1:4140".parse().unwrap(),
                "[::1]:4140".parse().unwrap()
            ]
        );
        assert_eq!(
            c.inbound_addrs,
            vec![
                "0.0.0.0:4143".parse().unwrap(),
                "[::]:4143".parse().unwrap()
            ]
        );
        assert_eq!(c.admin_addr, "0.0.0.0:4191".parse().unwrap());
        assert_eq!(c.cluster_networks, ClusterNetworks::default());
        assert!(!c.controller_insecure_plaintext);
        assert_eq!(c.control_addr, "127.0.0.1:4190".parse().unwrap());
        assert!(c.inbound_loopback_ports.is_empty());
        assert_eq!(c.access_log, None, "the access log is off by default");
        assert_eq!(
            c.inbound_policy,
            conduit_policy::DefaultPolicy::AllUnauthenticated
        );
        assert_eq!(c.workers, 1, "one runtime thread by default");
        assert_eq!(
            (c.header_read_timeout, c.http_idle_timeout),
            (Duration::from_secs(10), Duration::from_secs(3600)),
            "a slow head is cut off in 10 s, an idle keep-alive connection kept an hour"
        );
    }

    #[test]
    fn workers_are_bounded() {
        let parse = |v: &str| Config::try_parse_from(["conduit-proxy", &format!("--workers={v}")]);
        assert_eq!(parse("4").unwrap().workers, 4);
        assert_eq!(parse("256").unwrap().workers, 256);
        for bad in ["0", "257", "-1", "two"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("--workers"), "{bad}: {e}");
        }
    }

    #[test]
    fn access_log_formats() {
        use crate::access_log::AccessLogFormat;
        let parse = |v: &str| Config::try_parse_from(["conduit-proxy", "--access-log", v]);
        assert_eq!(
            parse("json").unwrap().access_log,
            Some(AccessLogFormat::Json)
        );
        assert_eq!(
            parse("common").unwrap().access_log,
            Some(AccessLogFormat::Common)
        );
        assert!(parse("loud").is_err());
    }

    #[test]
    fn inbound_policy_values() {
        let c = Config::parse_from(["conduit-proxy", "--inbound-policy", "all-authenticated"]);
        assert_eq!(
            c.inbound_policy,
            conduit_policy::DefaultPolicy::AllAuthenticated
        );
        let e =
            Config::try_parse_from(["conduit-proxy", "--inbound-policy", "strict"]).unwrap_err();
        assert!(e.to_string().contains("cluster-authenticated"), "{e}");
    }

    #[test]
    fn flags_override() {
        let c = Config::parse_from([
            "conduit-proxy",
            "--opaque-ports",
            "1,2",
            "--detect-timeout",
            "50ms",
        ]);
        assert_eq!(c.opaque_ports, vec![1, 2]);
        assert_eq!(c.detect_timeout, Duration::from_millis(50));
    }
}
