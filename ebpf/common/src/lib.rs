//! Types shared between the conduit kernel programs (`ebpf/programs`) and the
//! node agent: map names and capacities, the layout of every map key and
//! value, and the counter numbering. Everything here is `#[repr(C)]`, `Copy`
//! and of a fixed size checked at compile time, so both sides agree byte for
//! byte. `no_std`; the `user` feature adds `aya::Pod` for userspace.
//!
//! Conventions: IP addresses are 16 bytes in IPv6 form as four `u32` words in
//! network byte order (exactly as the kernel hands them over), with IPv4
//! stored IPv4-mapped (`::ffff:a.b.c.d`). Ports are in host byte order.

#![no_std]
// `aya::Pod` is an unsafe marker trait (the types must be plain old data);
// the impls are the only unsafe code here.
#![cfg_attr(feature = "user", allow(unsafe_code))]

pub mod counters;
pub use counters::{Outcome, Program};

/// Enrolled pods: netns cookie (`u64`) -> [`PodConfig`].
pub const MAP_PODS: &str = "CONDUIT_PODS";
/// Pod addresses: [`IpKey`] -> netns cookie (`u64`), for `sk_lookup`, which
/// cannot read the netns cookie. Pod IPs are unique on a node.
pub const MAP_POD_IPS: &str = "CONDUIT_POD_IPS";
/// Original destinations of captured sockets: socket cookie (`u64`) -> [`OrigDst`].
pub const MAP_ORIG_BY_COOKIE: &str = "CONDUIT_ORIG_SK";
/// Original destinations by connection: [`TupleKey`] -> [`OrigDst`].
pub const MAP_ORIG_BY_TUPLE: &str = "CONDUIT_ORIG_TP";
/// Destinations never captured (node-wide): LPM trie over `[u32; 4]` -> `u8`.
pub const MAP_EXCLUDE: &str = "CONDUIT_EXCLUDE";
/// Each pod's inbound proxy listener: sockhash, netns cookie (`u64`) -> socket.
pub const MAP_LISTENERS: &str = "CONDUIT_LISTEN";
/// Fast-path sockets (app <-> proxy on loopback): sockhash, [`TupleKey`] -> socket.
pub const MAP_FASTPATH: &str = "CONDUIT_FASTSK";
/// Per-CPU counters: array of `u64`, index [`counters::index`].
pub const MAP_COUNTERS: &str = "CONDUIT_COUNTER";
/// Node-wide settings: array of one [`GlobalConfig`].
pub const MAP_CONFIG: &str = "CONDUIT_CONFIG";

/// Every map the agent pins, in a stable order.
pub const PINNED_MAPS: [&str; 9] = [
    MAP_PODS,
    MAP_POD_IPS,
    MAP_ORIG_BY_COOKIE,
    MAP_ORIG_BY_TUPLE,
    MAP_EXCLUDE,
    MAP_LISTENERS,
    MAP_FASTPATH,
    MAP_COUNTERS,
    MAP_CONFIG,
];

/// Capacity of [`MAP_PODS`] (pods on one node).
pub const MAX_PODS: u32 = 1024;
/// Capacity of [`MAP_POD_IPS`].
pub const MAX_POD_IP_ENTRIES: u32 = MAX_PODS * MAX_POD_IPS as u32;
/// Capacity of the original-destination maps (LRU: old entries of sockets
/// that never connected are evicted).
pub const MAX_TRACKED_CONNECTIONS: u32 = 65536;
/// Capacity of [`MAP_EXCLUDE`].
pub const MAX_EXCLUDED_CIDRS: u32 = 256;
/// Capacity of [`MAP_FASTPATH`].
pub const MAX_FASTPATH_SOCKETS: u32 = 65536;
/// Skip-ports per direction and pod.
pub const MAX_SKIP_PORTS: usize = 16;
/// Addresses remembered per pod.
pub const MAX_POD_IPS: usize = 4;
/// Bytes kept of a pod's name and namespace.
pub const NAME_LEN: usize = 64;
/// Bytes kept of the attach cgroup's path.
pub const PATH_LEN: usize = 256;

/// Names of the kernel programs (the `#[...]` functions), as the agent looks
/// them up in the object and pins them.
pub mod programs {
    pub const CONNECT4: &str = "conduit_connect4";
    pub const CONNECT6: &str = "conduit_connect6";
    pub const SOCKOPS: &str = "conduit_sockops";
    pub const GETSOCKOPT: &str = "conduit_getsockopt";
    pub const GETPEERNAME4: &str = "conduit_getpeername4";
    pub const GETPEERNAME6: &str = "conduit_getpeername6";
    pub const SK_LOOKUP: &str = "conduit_sk_lookup";
    pub const SK_MSG: &str = "conduit_sk_msg";
}

/// `getsockopt` level/optname pairs answered with the original destination.
pub const SOL_IP: i32 = 0;
pub const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` (SOL_IP) and `IP6T_SO_ORIGINAL_DST` (SOL_IPV6) share 80.
pub const SO_ORIGINAL_DST: i32 = 80;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A 16-byte address (see the crate conventions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpKey {
    pub words: [u32; 4],
}

impl IpKey {
    /// IPv4 address as the kernel gives it (network byte order in memory).
    #[inline(always)]
    pub const fn v4(be: u32) -> Self {
        Self {
            words: [0, 0, 0xffffu32.to_be(), be],
        }
    }
    #[inline(always)]
    pub const fn v6(words: [u32; 4]) -> Self {
        Self { words }
    }
    /// Whether this is an IPv4-mapped address.
    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        self.words[0] == 0 && self.words[1] == 0 && self.words[2] == 0xffffu32.to_be()
    }
    /// The IPv4 address (network byte order) when [`Self::is_v4`].
    #[inline(always)]
    pub const fn v4_be(&self) -> u32 {
        self.words[3]
    }
    /// 127.0.0.0/8, ::1, or unspecified.
    #[inline(always)]
    pub const fn is_loopback(&self) -> bool {
        if self.is_v4() {
            (u32::from_be(self.words[3]) >> 24) == 127
        } else {
            self.words[0] == 0
                && self.words[1] == 0
                && self.words[2] == 0
                && (u32::from_be(self.words[3]) <= 1)
        }
    }
    /// Bytes in network order (for userspace conversions).
    pub fn octets(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = self.words[i].to_ne_bytes();
            out[i * 4] = b[0];
            out[i * 4 + 1] = b[1];
            out[i * 4 + 2] = b[2];
            out[i * 4 + 3] = b[3];
            i += 1;
        }
        out
    }
    /// From bytes in network order.
    pub fn from_octets(o: [u8; 16]) -> Self {
        let mut words = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            words[i] = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
            i += 1;
        }
        Self { words }
    }
}

/// Original destination of a captured connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub ip: IpKey,
    /// Host byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`]: the family the application dialled.
    pub family: u16,
}

/// A TCP connection inside one network namespace, seen from the client (the
/// application) side: `client` is the application's socket, `server` the
/// proxy's outbound listener it was redirected to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TupleKey {
    pub netns_cookie: u64,
    pub client: IpKey,
    pub server: IpKey,
    pub client_port: u16,
    pub server_port: u16,
    /// [`SIDE_CLIENT`] or [`SIDE_SERVER`]: which end's socket a fast-path
    /// entry holds (always [`SIDE_CLIENT`] in [`MAP_ORIG_BY_TUPLE`]).
    pub side: u32,
}

/// [`TupleKey::side`]: the application's socket.
pub const SIDE_CLIENT: u32 = 0;
/// [`TupleKey::side`]: the proxy's accepted socket.
pub const SIDE_SERVER: u32 = 1;

/// [`PodConfig::flags`]: the proxy is recognised by its cgroup id (the only
/// rule: bit 1, "recognised by its uid", is retired, because an application
/// running under the proxy's uid escaped capture; the kernel programs ignore
/// it).
pub const POD_SKIP_BY_CGROUP: u32 = 2;

/// An enrolled pod (value of [`MAP_PODS`]). The kernel reads the capture
/// settings; the bookkeeping fields let a restarted agent and `status` know
/// which proxy enrolled the pod.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PodConfig {
    pub flags: u32,
    /// The proxy's uid (bookkeeping for `status`; not a capture rule).
    pub proxy_uid: u32,
    pub proxy_cgroup_id: u64,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub admin_port: u16,
    pub skip_inbound_len: u16,
    pub skip_outbound_len: u16,
    pub ips_len: u16,
    pub _pad: u32,
    pub skip_inbound: [u16; MAX_SKIP_PORTS],
    pub skip_outbound: [u16; MAX_SKIP_PORTS],
    pub ips: [IpKey; MAX_POD_IPS],
    // Bookkeeping, not read by the kernel programs.
    pub proxy_pid: u32,
    pub _pad2: u32,
    /// Start time of the proxy process (clock ticks since boot, /proc/pid/stat
    /// field 22), to tell a live proxy from a reused pid.
    pub proxy_start_time: u64,
    /// Unix time of the enrolment, in seconds.
    pub enrolled_at: u64,
    pub name: [u8; NAME_LEN],
    pub namespace: [u8; NAME_LEN],
}

/// Every field zero (as the other records derive it; arrays this long have
/// no derived `Default`).
impl Default for PodConfig {
    fn default() -> Self {
        PodConfig {
            flags: 0,
            proxy_uid: 0,
            proxy_cgroup_id: 0,
            outbound_port: 0,
            inbound_port: 0,
            admin_port: 0,
            skip_inbound_len: 0,
            skip_outbound_len: 0,
            ips_len: 0,
            _pad: 0,
            skip_inbound: [0; MAX_SKIP_PORTS],
            skip_outbound: [0; MAX_SKIP_PORTS],
            ips: [IpKey { words: [0; 4] }; MAX_POD_IPS],
            proxy_pid: 0,
            _pad2: 0,
            proxy_start_time: 0,
            enrolled_at: 0,
            name: [0; NAME_LEN],
            namespace: [0; NAME_LEN],
        }
    }
}

impl PodConfig {
    /// Whether a socket created by a task in cgroup `cgroup_id` is the
    /// proxy's own (never captured). By cgroup only: a uid is shared by
    /// anything the pod runs under it, a cgroup is the proxy container's.
    #[inline(always)]
    pub fn is_proxy_cgroup(&self, cgroup_id: u64) -> bool {
        self.flags & POD_SKIP_BY_CGROUP != 0 && cgroup_id == self.proxy_cgroup_id
    }
    #[inline(always)]
    pub fn skips_outbound(&self, port: u16) -> bool {
        contains(&self.skip_outbound, self.skip_outbound_len, port)
    }
    #[inline(always)]
    pub fn skips_inbound(&self, port: u16) -> bool {
        port == self.inbound_port
            || port == self.outbound_port
            || port == self.admin_port
            || contains(&self.skip_inbound, self.skip_inbound_len, port)
    }
}

#[inline(always)]
fn contains(ports: &[u16; MAX_SKIP_PORTS], len: u16, port: u16) -> bool {
    let mut i = 0;
    while i < MAX_SKIP_PORTS {
        if i < len as usize && ports[i] == port {
            return true;
        }
        i += 1;
    }
    false
}

/// [`GlobalConfig::flags`]: sockops fills the fast-path sockhash.
pub const CONFIG_FASTPATH: u32 = 1;

/// Node-wide settings (index 0 of [`MAP_CONFIG`]). aya-log records are
/// switched by the `AYA_LOG_LEVEL` global, set at load (off by default).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GlobalConfig {
    pub flags: u32,
    pub _pad: u32,
    // Bookkeeping, not read by the kernel programs: where capture is attached.
    pub cgroup_id: u64,
    pub cgroup_path: [u8; PATH_LEN],
}

impl Default for GlobalConfig {
    fn default() -> Self {
        Self {
            flags: 0,
            _pad: 0,
            cgroup_id: 0,
            cgroup_path: [0; PATH_LEN],
        }
    }
}

const _: () = assert!(core::mem::size_of::<IpKey>() == 16);
const _: () = assert!(core::mem::size_of::<OrigDst>() == 20);
const _: () = assert!(core::mem::size_of::<TupleKey>() == 48);
const _: () = assert!(core::mem::size_of::<PodConfig>() == 312);
const _: () = assert!(core::mem::size_of::<GlobalConfig>() == 16 + PATH_LEN);

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // All are #[repr(C)] plain data with explicit padding fields and no
    // pointers (sizes asserted above); any bit pattern is a valid value.
    // SAFETY: as said above, for each.
    unsafe impl aya::Pod for IpKey {}
    // SAFETY: as said above.
    unsafe impl aya::Pod for OrigDst {}
    // SAFETY: as said above.
    unsafe impl aya::Pod for TupleKey {}
    // SAFETY: as said above.
    unsafe impl aya::Pod for PodConfig {}
    // SAFETY: as said above.
    unsafe impl aya::Pod for GlobalConfig {}
}

#[cfg(test)]
mod tests;
