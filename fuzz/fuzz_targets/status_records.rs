//! What `conduit-ebpf status` reads (`ebpf/agent/src/status.rs`, decoding
//! in `ebpf/status`): the node settings record and enrolled pods' records from
//! pinned maps, which any process on the node with CAP_BPF can write, turned
//! into the status, its table, its JSON, and the JSON read back.
#![no_main]

use conduit_ebpf_common::{GlobalConfig, PodConfig};
use conduit_ebpf_status::{Feature, MapStatus, Status, cgroup_path, pod_status, pressure, render};
use libfuzzer_sys::fuzz_target;
use std::mem::size_of;

/// A record from raw bytes, as the kernel map hands it over.
fn record<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes, and `T: Pod` is
    // plain data for which every bit pattern is valid (the same contract
    // aya relies on when it reads map values).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fuzz_target!(|input: &[u8]| {
    let global: Option<GlobalConfig> = record(input);
    let rest = input.get(size_of::<GlobalConfig>()..).unwrap_or(&[]);
    let pods: Vec<_> = rest
        .chunks(size_of::<PodConfig>())
        .filter_map(record::<PodConfig>)
        .enumerate()
        .map(|(i, c)| pod_status(i as u64, &c, i % 2 == 0, None))
        .collect();
    let maps = input
        .chunks(8)
        .take(4)
        .map(|c| MapStatus {
            name: conduit_ebpf_common::PINNED_MAPS
                [usize::from(c[0]) % conduit_ebpf_common::PINNED_MAPS.len()]
            .into(),
            id: 1,
            entries: usize::from(c.get(1).copied().unwrap_or(0)) * 17,
            max_entries: u32::from(c.get(2).copied().unwrap_or(0)) * 16,
        })
        .collect();
    let status = Status {
        pin_dir: "/sys/fs/bpf/conduit".into(),
        attached: input.first().is_some_and(|b| b & 1 == 1),
        cgroup: global.as_ref().and_then(cgroup_path),
        fastpath: false,
        features: vec![Feature {
            name: "program sk_lookup".into(),
            available: true,
        }],
        programs: vec![],
        maps,
        pods,
        counters: vec![],
    };
    let _ = render(&status);
    let _ = pressure(&status);
    let json = serde_json::to_string(&status).expect("status serialises");
    let back: Status = serde_json::from_str(&json).expect("status JSON reads back");
    assert_eq!(back, status);
});
