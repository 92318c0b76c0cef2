//! The maps (names, key and value types from `conduit-ebpf-common`). All are
//! pinned by name, so a restarted agent finds the same maps.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, SockHash},
};
use conduit_ebpf_common::{
    GlobalConfig, IpKey, MAX_EXCLUDED_CIDRS, MAX_FASTPATH_SOCKETS, MAX_POD_IP_ENTRIES, MAX_PODS,
    MAX_TRACKED_CONNECTIONS, OrigDst, Outcome, PodConfig, Program, TupleKey, counters,
};

#[map(name = "CONDUIT_PODS")]
pub static PODS: HashMap<u64, PodConfig> = HashMap::pinned(MAX_PODS, 0);

#[map(name = "CONDUIT_POD_IPS")]
pub static POD_IPS: HashMap<IpKey, u64> = HashMap::pinned(MAX_POD_IP_ENTRIES, 0);

#[map(name = "CONDUIT_ORIG_SK")]
pub static ORIG_BY_COOKIE: LruHashMap<u64, OrigDst> =
    LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

#[map(name = "CONDUIT_ORIG_TP")]
pub static ORIG_BY_TUPLE: LruHashMap<TupleKey, OrigDst> =
    LruHashMap::pinned(MAX_TRACKED_CONNECTIONS, 0);

#[map(name = "CONDUIT_EXCLUDE")]
pub static EXCLUDE: LpmTrie<[u32; 4], u8> = LpmTrie::pinned(MAX_EXCLUDED_CIDRS, 0);

#[map(name = "CONDUIT_LISTEN")]
pub static LISTENERS: SockHash<u64> = SockHash::pinned(MAX_PODS, 0);

#[map(name = "CONDUIT_FASTSK")]
pub static FASTPATH: SockHash<TupleKey> = SockHash::pinned(MAX_FASTPATH_SOCKETS, 0);

#[map(name = "CONDUIT_COUNTER")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counters::COUNTERS, 0);

#[map(name = "CONDUIT_CONFIG")]
pub static CONFIG: Array<GlobalConfig> = Array::pinned(1, 0);

/// Adds one to the (program, outcome) counter of this CPU.
#[inline(always)]
pub fn count(program: Program, outcome: Outcome) {
    if let Some(p) = COUNTERS.get_ptr_mut(counters::index(program, outcome)) {
        // SAFETY: a per-CPU slot, only this CPU writes it while we run.
        unsafe { *p += 1 };
    }
}

/// Node-wide flags ([`conduit_ebpf_common::CONFIG_FASTPATH`]).
#[inline(always)]
pub fn config_flags() -> u32 {
    CONFIG.get(0).map(|c| c.flags).unwrap_or(0)
}

/// The enrolled pod of a network namespace.
#[inline(always)]
pub fn pod(netns_cookie: u64) -> Option<&'static PodConfig> {
    // SAFETY: values are only read; the agent replaces a pod's entry as a
    // whole, and a torn read at worst mis-decides one connection.
    unsafe { PODS.get(netns_cookie) }
}
