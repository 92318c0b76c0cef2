use super::*;
use conduit_ebpf_common::{MAX_POD_IPS, MAX_SKIP_PORTS, NAME_LEN};

fn map(name: &str, entries: usize, max_entries: u32) -> MapStatus {
    MapStatus {
        name: name.into(),
        id: 1,
        entries,
        max_entries,
    }
}

fn status(maps: Vec<MapStatus>) -> Status {
    Status {
        pin_dir: "/sys/fs/bpf/conduit".into(),
        attached: true,
        cgroup: Some("/sys/fs/cgroup".into()),
        fastpath: false,
        features: vec![Feature {
            name: "program sk_lookup".into(),
            available: false,
        }],
        programs: vec![ProgramStatus {
            name: "conduit_connect4".into(),
            kind: "cgroup_sock_addr".into(),
            attach_type: "cgroup/connect4".into(),
            attach_point: Some("cgroup:/sys/fs/cgroup".into()),
            id: 7,
            link_id: Some(9),
        }],
        maps,
        pods: vec![PodStatus {
            name: "web-1".into(),
            namespace: "default".into(),
            netns_cookie: 4242,
            pod_ips: vec!["10.1.2.3".parse().unwrap()],
            proxy_pid: 77,
            proxy_uid: 1337,
            proxy_cgroup_id: 5,
            proxy_alive: true,
            outbound_port: 4140,
            inbound_port: 4143,
            admin_port: 4191,
            skip_inbound_ports: vec![],
            skip_outbound_ports: vec![],
            sk_lookup_link_id: Some(11),
            enrolled_at: 0,
        }],
        counters: vec![
            CounterStatus {
                program: "connect4".into(),
                outcome: "captured".into(),
                value: 3,
            },
            CounterStatus {
                program: "connect6".into(),
                outcome: "captured".into(),
                value: 0,
            },
        ],
    }
}

#[test]
fn table_shows_pods_programs_and_only_nonzero_counters() {
    let s = status(vec![map(common::MAP_PODS, 1, 1024)]);
    let t = render(&s);
    assert!(t.contains("capture: attached"), "{t}");
    assert!(t.contains("MISSING: program sk_lookup"), "{t}");
    assert!(
        t.contains("conduit_connect4") && t.contains("cgroup:/sys/fs/cgroup"),
        "{t}"
    );
    assert!(
        t.contains("default/web-1") && t.contains("10.1.2.3") && t.contains("4140/4143/4191"),
        "{t}"
    );
    assert!(t.contains("connect4") && !t.contains("connect6"), "{t}");
    assert!(!t.contains("WARNING"), "{t}");
    let json: serde_json::Value = serde_json::to_value(&s).unwrap();
    assert_eq!(json["programs"][0]["type"], "cgroup_sock_addr");
    assert_eq!(json["pods"][0]["pod_ips"][0], "10.1.2.3");
}

#[test]
fn json_reads_back_to_the_same_status() {
    let s = status(vec![map(common::MAP_ORIG_BY_COOKIE, 10, 65536)]);
    let text = serde_json::to_string_pretty(&s).unwrap();
    let back: Status = serde_json::from_str(&text).unwrap();
    assert_eq!(back, s);
}

#[test]
fn fill_levels_warn_at_the_threshold_for_maps_that_can_fill() {
    // (map, entries, max, warns)
    let cases: [(&str, usize, u32, bool); 9] = [
        (common::MAP_PODS, 921, 1024, false), // 89%
        (common::MAP_PODS, 922, 1024, true),  // 90%
        (common::MAP_PODS, 1024, 1024, true),
        (common::MAP_POD_IPS, 4096, 4096, true),
        (common::MAP_ORIG_BY_COOKIE, 65536, 65536, true),
        (common::MAP_ORIG_BY_TUPLE, 100, 65536, false),
        (common::MAP_FASTPATH, 60000, 65536, true),
        // Arrays are full by construction: never a warning.
        (common::MAP_COUNTERS, 64, 64, false),
        (common::MAP_CONFIG, 1, 1, false),
    ];
    for (name, entries, max, warns) in cases {
        let w = pressure(&status(vec![map(name, entries, max)]));
        assert_eq!(w.len(), usize::from(warns), "{name} {entries}/{max}: {w:?}");
        if warns {
            assert!(
                w[0].contains(name) && w[0].contains(&format!("({entries}/{max})")),
                "{w:?}"
            );
        }
    }
    let full = status(vec![map(common::MAP_PODS, 1024, 1024)]);
    let w = pressure(&full);
    assert!(
        w[0].contains("100% full") && w[0].contains("refused"),
        "{w:?}"
    );
    let t = render(&full);
    assert!(
        t.contains("100%") && t.contains("WARNING: map CONDUIT_PODS"),
        "{t}"
    );
    assert_eq!(fill_percent(&map(common::MAP_PODS, 5, 0)), 0);
}

fn pod_config() -> PodConfig {
    PodConfig {
        proxy_uid: 1,
        proxy_cgroup_id: 2,
        outbound_port: 4140,
        inbound_port: 4143,
        admin_port: 4191,
        proxy_pid: 3,
        proxy_start_time: 4,
        enrolled_at: 5,
        ..PodConfig::default()
    }
}

#[test]
fn pod_records_with_lengths_beyond_their_arrays_are_clamped() {
    let mut c = pod_config();
    c.ips_len = u16::MAX;
    c.skip_inbound_len = 17;
    c.skip_outbound_len = 3;
    c.ips[0] = IpKey::v4(u32::from_be_bytes([10, 0, 0, 1]).to_be());
    c.name = [b'x'; NAME_LEN]; // no NUL at all
    c.namespace[..3].copy_from_slice(b"d\xffe");
    let p = pod_status(9, &c, true, None);
    assert_eq!(p.pod_ips.len(), MAX_POD_IPS);
    assert_eq!(p.pod_ips[0], "10.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(p.skip_inbound_ports.len(), MAX_SKIP_PORTS);
    assert_eq!(p.skip_outbound_ports.len(), 3);
    assert_eq!(p.name.len(), NAME_LEN);
    assert_eq!(p.namespace, "d\u{fffd}e");
}

#[test]
fn cgroup_path_is_none_when_unset() {
    let mut g = GlobalConfig::default();
    assert_eq!(cgroup_path(&g), None);
    g.cgroup_path[..4].copy_from_slice(b"/sys");
    assert_eq!(cgroup_path(&g).as_deref(), Some("/sys"));
}
