//! `conduit-ebpf status --check`: the verdict probes need. Exit status 0
//! only when every cgroup program is attached through its pinned link,
//! every map is pinned and, with `--socket`, the agent accepts connections
//! there; otherwise each problem is named and the exit status is 1.

use crate::loader::CGROUP_PROGRAMS;
use crate::status::Status;
use conduit_ebpf_common as common;
use std::path::Path;

/// What is wrong with the node's capture, empty when healthy.
pub fn problems(s: &Status, socket: Option<&Path>) -> Vec<String> {
    let mut out = Vec::new();
    if s.programs.is_empty() && s.maps.is_empty() {
        out.push(format!(
            "nothing is pinned under {} (has the agent started?)",
            s.pin_dir
        ));
    } else {
        for (name, _) in CGROUP_PROGRAMS {
            if !s
                .programs
                .iter()
                .any(|p| p.name == name && p.link_id.is_some())
            {
                out.push(format!("program {name} is not attached"));
            }
        }
        for name in common::PINNED_MAPS {
            if !s.maps.iter().any(|m| m.name == name) {
                out.push(format!("map {name} is not pinned"));
            }
        }
    }
    if let Some(path) = socket
        && let Err(e) = std::os::unix::net::UnixStream::connect(path)
    {
        // Connecting and hanging up is all: the agent logs that at debug level.
        out.push(format!(
            "the agent does not accept registrations at {}: {e}",
            path.display()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{MapStatus, ProgramStatus};

    fn status(attached: &[&str], maps: &[&str]) -> Status {
        Status {
            pin_dir: "/sys/fs/bpf/x".into(),
            attached: false,
            cgroup: None,
            fastpath: false,
            features: vec![],
            programs: CGROUP_PROGRAMS
                .iter()
                .map(|(n, _)| ProgramStatus {
                    name: (*n).into(),
                    kind: "k".into(),
                    attach_type: "a".into(),
                    attach_point: None,
                    id: 1,
                    link_id: attached.contains(n).then_some(2),
                })
                .collect(),
            maps: maps
                .iter()
                .map(|m| MapStatus {
                    name: (*m).into(),
                    id: 1,
                    entries: 0,
                    max_entries: 1,
                })
                .collect(),
            pods: vec![],
            counters: vec![],
        }
    }

    #[test]
    fn healthy_when_everything_is_attached_and_pinned() {
        let all: Vec<&str> = CGROUP_PROGRAMS.iter().map(|(n, _)| *n).collect();
        assert!(problems(&status(&all, &common::PINNED_MAPS), None).is_empty());
    }

    #[test]
    fn names_what_is_missing() {
        let all: Vec<&str> = CGROUP_PROGRAMS.iter().map(|(n, _)| *n).collect();
        let p = problems(&status(&all[1..], &common::PINNED_MAPS[1..]), None);
        assert_eq!(
            p,
            vec![
                format!("program {} is not attached", all[0]),
                format!("map {} is not pinned", common::PINNED_MAPS[0]),
            ]
        );
        let mut empty = status(&[], &[]);
        empty.programs.clear();
        let p = problems(&empty, None);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("nothing is pinned"), "{p:?}");
    }

    #[test]
    fn checks_the_socket_accepts() {
        let all: Vec<&str> = CGROUP_PROGRAMS.iter().map(|(n, _)| *n).collect();
        let s = status(&all, &common::PINNED_MAPS);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let p = problems(&s, Some(&path));
        assert!(p.len() == 1 && p[0].contains("does not accept"), "{p:?}");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(problems(&s, Some(&path)).is_empty());
    }
}
