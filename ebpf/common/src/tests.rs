use super::*;

#[test]
fn v4_mapping_round_trips_and_detects_loopback() {
    let ip = IpKey::v4(u32::from_ne_bytes([10, 1, 2, 3]));
    assert!(ip.is_v4());
    assert_eq!(
        ip.octets(),
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]
    );
    assert_eq!(IpKey::from_octets(ip.octets()), ip);
    assert!(!ip.is_loopback());
    assert!(IpKey::v4(u32::from_ne_bytes([127, 0, 0, 53])).is_loopback());
    let mut one = [0u8; 16];
    one[15] = 1;
    assert!(IpKey::from_octets(one).is_loopback());
    one[0] = 0xfd;
    assert!(!IpKey::from_octets(one).is_loopback());
}

#[test]
fn skip_ports_respect_their_length() {
    let mut pod = PodConfig {
        outbound_port: 4140,
        inbound_port: 4143,
        admin_port: 4191,
        skip_inbound_len: 1,
        ..PodConfig::default()
    };
    pod.skip_inbound[0] = 22;
    pod.skip_inbound[1] = 9000;
    assert!(pod.skips_inbound(22));
    assert!(!pod.skips_inbound(9000));
    assert!(pod.skips_inbound(4143) && pod.skips_inbound(4191));
    assert!(!pod.skips_outbound(0));
}

#[test]
fn counter_indices_are_dense_and_named() {
    assert_eq!(
        counters::index(Program::SkMsg, Outcome::Fastpath),
        counters::COUNTERS - 1
    );
    for (p, outcomes) in counters::VALID.iter().enumerate() {
        assert!(!counters::PROGRAM_NAMES[p].is_empty());
        for o in *outcomes {
            assert!(!counters::OUTCOME_NAMES[*o as usize].is_empty());
        }
    }
}

#[test]
fn only_the_proxy_cgroup_is_skipped_never_a_uid() {
    let mut pod = PodConfig {
        proxy_uid: 1337,
        proxy_cgroup_id: 42,
        ..PodConfig::default()
    };
    // (flags, current cgroup, skipped?)
    for (flags, cgroup, skipped) in [
        (POD_SKIP_BY_CGROUP, 42, true),
        (POD_SKIP_BY_CGROUP, 43, false),
        // The retired uid bit (1), as an entry written by an older agent
        // has it, changes nothing.
        (POD_SKIP_BY_CGROUP | 1, 43, false),
        (1, 42, false),
        (0, 42, false),
    ] {
        pod.flags = flags;
        assert_eq!(
            pod.is_proxy_cgroup(cgroup),
            skipped,
            "flags {flags} cgroup {cgroup}"
        );
    }
}
