use super::*;

const HOST: u64 = 1;
const AGENT: u64 = 2;
const FORBIDDEN: Forbidden = Forbidden {
    host: HOST,
    agent: AGENT,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

/// Pod `shop/web` in netns 100 (10.0.0.2, fd00::2), proxy pid 500 started at 7.
fn web(holder: Holder) -> Enrolment {
    Enrolment {
        netns_cookie: 100,
        pod: "shop/web".into(),
        ips: ips(&["10.0.0.2", "fd00::2"]),
        proxy_pid: 500,
        proxy_start_time: 7,
        holder,
    }
}

fn table(enrolled: Vec<Enrolment>) -> Table {
    Table {
        enrolled,
        capacity: 4,
    }
}

struct Case {
    name: &'static str,
    table: Table,
    netns: u64,
    pid: u32,
    netns_ips: Vec<IpAddr>,
    claimed: Vec<IpAddr>,
    cgroup: u64,
    want: Result<Admitted, Refusal>,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            name: "",
            table: table(vec![]),
            netns: 200,
            pid: 501,
            netns_ips: vec![],
            claimed: vec![],
            cgroup: 77,
            want: admitted(&[], false),
        }
    }
}

fn admitted(list: &[&str], replaces: bool) -> Result<Admitted, Refusal> {
    Ok(Admitted {
        ips: ips(list),
        left_out: vec![],
        replaces,
    })
}

#[test]
fn registrations_are_admitted_or_refused_by_the_rules() {
    let full = Table {
        enrolled: (0..4)
            .map(|i| Enrolment {
                netns_cookie: 1000 + i,
                pod: format!("shop/p{i}"),
                ips: vec![],
                proxy_pid: 600 + i as u32,
                proxy_start_time: 1,
                holder: Holder::Open,
            })
            .collect(),
        capacity: 4,
    };
    let cases = [
        Case {
            name: "a new pod with its own address",
            table: table(vec![web(Holder::Open)]),
            netns: 200,
            pid: 501,
            netns_ips: ips(&["10.0.0.3"]),
            claimed: vec![],
            want: admitted(&["10.0.0.3"], false),
            ..Case::default()
        },
        Case {
            name: "the host network namespace",
            table: table(vec![]),
            netns: HOST,
            pid: 501,
            netns_ips: ips(&["192.168.1.10"]),
            claimed: vec![],
            want: Err(Refusal::HostNetns),
            ..Case::default()
        },
        Case {
            name: "the agent's network namespace",
            table: table(vec![]),
            netns: AGENT,
            pid: 501,
            netns_ips: ips(&["10.0.0.9"]),
            claimed: vec![],
            want: Err(Refusal::AgentNetns),
            ..Case::default()
        },
        Case {
            name: "a second registration while the first is open",
            table: table(vec![web(Holder::Open)]),
            netns: 100,
            pid: 501,
            netns_ips: ips(&["10.0.0.2"]),
            claimed: vec![],
            want: Err(Refusal::AlreadyEnrolled {
                netns_cookie: 100,
                pod: "shop/web".into(),
                pid: 500,
            }),
            ..Case::default()
        },
        Case {
            name: "the same proxy registering twice while the first is open",
            table: table(vec![web(Holder::Open)]),
            netns: 100,
            pid: 500,
            netns_ips: ips(&["10.0.0.2"]),
            claimed: vec![],
            want: Err(Refusal::AlreadyEnrolled {
                netns_cookie: 100,
                pod: "shop/web".into(),
                pid: 500,
            }),
            ..Case::default()
        },
        Case {
            name: "another process while the adopted proxy lives",
            table: table(vec![web(Holder::Adopted { alive: true })]),
            netns: 100,
            pid: 501,
            netns_ips: ips(&["10.0.0.2"]),
            claimed: vec![],
            want: Err(Refusal::AdoptedByAnother {
                netns_cookie: 100,
                pod: "shop/web".into(),
                pid: 500,
            }),
            ..Case::default()
        },
        Case {
            name: "the adopted proxy re-registering",
            table: table(vec![web(Holder::Adopted { alive: true })]),
            netns: 100,
            pid: 500,
            netns_ips: ips(&["10.0.0.2", "fd00::2"]),
            claimed: vec![],
            want: admitted(&["10.0.0.2", "fd00::2"], true),
            ..Case::default()
        },
        Case {
            name: "a new proxy after the adopted one died",
            table: table(vec![web(Holder::Adopted { alive: false })]),
            netns: 100,
            pid: 501,
            netns_ips: ips(&["10.0.0.2"]),
            claimed: vec![],
            want: admitted(&["10.0.0.2"], true),
            ..Case::default()
        },
        Case {
            name: "another pod's address configured in the caller's namespace",
            table: table(vec![web(Holder::Open)]),
            netns: 200,
            pid: 501,
            netns_ips: ips(&["10.0.0.3", "10.0.0.2"]),
            claimed: vec![],
            want: Err(Refusal::IpOfAnotherPod {
                ip: ip("10.0.0.2"),
                pod: "shop/web".into(),
                netns_cookie: 100,
            }),
            ..Case::default()
        },
        Case {
            name: "another pod's address claimed and configured",
            table: table(vec![web(Holder::Adopted { alive: true })]),
            netns: 200,
            pid: 501,
            netns_ips: ips(&["10.0.0.3", "fd00::2"]),
            claimed: ips(&["fd00::2"]),
            want: Err(Refusal::IpOfAnotherPod {
                ip: ip("fd00::2"),
                pod: "shop/web".into(),
                netns_cookie: 100,
            }),
            ..Case::default()
        },
        Case {
            name: "a claimed address the namespace does not have",
            table: table(vec![web(Holder::Open)]),
            netns: 200,
            pid: 501,
            netns_ips: ips(&["10.0.0.3"]),
            claimed: ips(&["10.0.0.3", "10.0.0.2"]),
            want: Err(Refusal::IpNotInNetns {
                ip: ip("10.0.0.2"),
                have: ips(&["10.0.0.3"]),
            }),
            ..Case::default()
        },
        Case {
            name: "claimed addresses narrow the enrolment (a stolen one left unclaimed is not used)",
            table: table(vec![web(Holder::Open)]),
            netns: 200,
            pid: 501,
            netns_ips: ips(&["10.0.0.3", "10.0.0.2"]),
            claimed: ips(&["10.0.0.3", "10.0.0.3"]),
            want: admitted(&["10.0.0.3"], false),
            ..Case::default()
        },
        Case {
            name: "more claimed addresses than a pod holds",
            table: table(vec![]),
            netns: 200,
            pid: 501,
            netns_ips: ips(&["10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"]),
            claimed: ips(&["10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"]),
            want: Err(Refusal::TooManyClaimedIps { got: 5 }),
            ..Case::default()
        },
        Case {
            name: "the pods map is full",
            table: full.clone(),
            netns: 200,
            pid: 501,
            netns_ips: ips(&["10.0.0.3"]),
            claimed: vec![],
            want: Err(Refusal::PodsMapFull { capacity: 4 }),
            ..Case::default()
        },
        Case {
            name: "a proxy in the root cgroup",
            cgroup: ROOT_CGROUP_ID,
            want: Err(Refusal::ProxyInRootCgroup),
            ..Case::default()
        },
        Case {
            name: "a namespace without addresses (outbound capture only)",
            table: table(vec![]),
            netns: 200,
            pid: 501,
            netns_ips: vec![],
            claimed: vec![],
            want: admitted(&[], false),
            ..Case::default()
        },
    ];
    for c in cases {
        let who = Applicant {
            netns_cookie: c.netns,
            proxy_pid: c.pid,
            proxy_start_time: 7,
            netns_ips: &c.netns_ips,
            claimed_ips: &c.claimed,
            proxy_cgroup_id: c.cgroup,
        };
        assert_eq!(admit(&c.table, FORBIDDEN, &who), c.want, "{}", c.name);
    }
}

#[test]
fn unclaimed_addresses_beyond_the_limit_are_left_out() {
    let all = ips(&["10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"]);
    let who = Applicant {
        netns_cookie: 200,
        proxy_pid: 1,
        proxy_start_time: 1,
        netns_ips: &all,
        claimed_ips: &[],
        proxy_cgroup_id: 77,
    };
    let a = admit(&table(vec![]), FORBIDDEN, &who).unwrap();
    assert_eq!(a.ips, all[..MAX_POD_IPS]);
    assert_eq!(a.left_out, all[MAX_POD_IPS..]);
}

#[test]
fn refusals_read_as_reasons() {
    // (refusal, words the proxy's log must show)
    for (r, words) in [
        (Refusal::HostNetns, "node's own network namespace"),
        (
            Refusal::AlreadyEnrolled {
                netns_cookie: 5,
                pod: "a/b".into(),
                pid: 9,
            },
            "already enrolled by pod a/b (proxy pid 9)",
        ),
        (
            Refusal::IpOfAnotherPod {
                ip: ip("10.0.0.2"),
                pod: "a/b".into(),
                netns_cookie: 5,
            },
            "address 10.0.0.2 belongs to pod a/b",
        ),
        (
            Refusal::IpNotInNetns {
                ip: ip("10.0.0.2"),
                have: vec![],
            },
            "claimed address 10.0.0.2 is not configured",
        ),
        (
            Refusal::PodsMapFull { capacity: 1024 },
            "the pods map is full (1024 pods",
        ),
    ] {
        assert!(r.to_string().contains(words), "{r}");
    }
}
