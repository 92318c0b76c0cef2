//! Names of everything a test creates, derived from the test's name, so that
//! leftovers of a crashed run are found (and removed) by the next run.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Names and addresses for one test (or the demo).
#[derive(Debug, Clone)]
pub struct Names {
    /// Sanitised test name: lowercase ASCII letters, digits and `-`.
    pub test: String,
    /// Six hex digits derived from the name, for kernel names limited to 15 bytes.
    pub tag: String,
    /// Third octet of the test's IPv4 subnet `10.77.<n>.0/24` (and `fd77:0:0:<n>::/64`).
    pub subnet: u8,
    netns_base: String,
    base: String,
}

impl Names {
    /// Names for the test `name`; its subnet is derived from the name.
    pub fn new(name: &str) -> Self {
        let hash = fnv1a(name.as_bytes());
        Self::with_subnet(name, (hash % 200) as u8 + 20)
    }

    /// Names for the running test `name`: `CONDUIT_TEST_PREFIX`, when set,
    /// is put before the name, so that two checkouts on one machine can run
    /// the same test at once.
    pub fn for_test(name: &str) -> Self {
        match std::env::var("CONDUIT_TEST_PREFIX") {
            Ok(p) if !p.is_empty() => Self::new(&format!("{p}-{name}")),
            _ => Self::new(name),
        }
    }

    /// Names for `name` on the given subnet (the demo uses a fixed one).
    pub fn with_subnet(name: &str, subnet: u8) -> Self {
        let test: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let tag = format!("{:06x}", fnv1a(name.as_bytes()) & 0xff_ffff);
        let netns_base = format!("ct-{test}");
        let base = format!("conduit-tests/{test}");
        Self {
            test,
            tag,
            subnet,
            netns_base,
            base,
        }
    }

    /// Names for the demo: namespaces `conduit-demo-<pod>`, cgroup
    /// `conduit-demo`, pins under `/sys/fs/bpf/conduit-demo`, socket in
    /// `/run/conduit-demo`, subnet `10.77.0.0/24` and `fd77::/64`.
    pub fn demo() -> Self {
        let mut n = Self::with_subnet("conduit-demo", 0);
        n.netns_base = "conduit-demo".into();
        n.base = "conduit-demo".into();
        n
    }

    /// Network namespace of a pod.
    pub fn netns(&self, pod: &str) -> String {
        format!("{}-{}", self.netns_base, pod)
    }

    /// The bridge joining the pods (at most 15 bytes).
    pub fn bridge(&self) -> String {
        format!("cb{}", self.tag)
    }

    /// Host side of the veth of the pod with index `index` (at most 15 bytes).
    pub fn host_veth(&self, index: usize) -> String {
        format!("cv{}x{}", self.tag, index)
    }

    /// IPv4 address `10.77.<subnet>.<host>`; the bridge is host 1.
    pub fn ipv4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, host)
    }

    /// IPv6 address `fd77:0:0:<subnet>::<host>`; the bridge is host 1.
    pub fn ipv6(&self, host: u8) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd77,
            0,
            0,
            u16::from(self.subnet),
            0,
            0,
            0,
            u16::from(host),
        )
    }

    /// Directory of the test's agent socket and scratch files.
    pub fn run_dir(&self) -> std::path::PathBuf {
        std::path::Path::new("/run").join(&self.base)
    }

    /// Where the test's agent pins its maps and links: directly under
    /// `/sys/fs/bpf` (`conduit-tests-<test>`), which the agent mounts if needed.
    pub fn pin_dir(&self) -> std::path::PathBuf {
        std::path::Path::new("/sys/fs/bpf").join(self.base.replace('/', "-"))
    }

    /// The test's cgroup, relative to the cgroup v2 mount.
    pub fn cgroup(&self) -> String {
        self.base.clone()
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_fit_in_fifteen_bytes() {
        let n = Names::new("a_very_long_test_name_that_goes_on_and_on");
        assert!(n.bridge().len() <= 15);
        assert!(n.host_veth(99).len() <= 15);
        assert_eq!(n.test, "a-very-long-test-name-that-goes-on-and-on");
    }

    #[test]
    fn addresses_follow_the_subnet() {
        let n = Names::with_subnet("demo", 0);
        assert_eq!(n.ipv4(1).to_string(), "10.77.0.1");
        assert_eq!(n.ipv6(2).to_string(), "fd77::2");
        let d = Names::demo();
        assert_eq!(d.netns("client"), "conduit-demo-client");
        assert_eq!(
            d.pin_dir(),
            std::path::Path::new("/sys/fs/bpf/conduit-demo")
        );
        let m = Names::new("x");
        assert_eq!(m.netns("a"), "ct-x-a");
        assert_eq!(m.cgroup(), "conduit-tests/x");
        assert_eq!(
            m.pin_dir(),
            std::path::Path::new("/sys/fs/bpf/conduit-tests-x")
        );
        assert!((20..220).contains(&m.subnet));
    }
}
