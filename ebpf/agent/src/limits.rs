//! How many registration connections one peer may hold (pure bookkeeping;
//! the agent calls it on accept, on answer and on close).
//!
//! Every connection takes a slot until it closes; an enrolled pod holds one
//! for its whole life, and admission allows one per network namespace. A
//! connection is *pending* from accept until the agent has answered it (the
//! request, the inspection of the proxy and, in a cluster, the pod claim
//! check: bounded by the request timeout and `--claim-timeout`). Pending
//! connections are limited per network namespace of the caller and per uid,
//! and all pending connections together may use at most the slots that
//! enrolled pods cannot: so neither one pod nor one uid can take the slots
//! other pods need to register.

use std::collections::HashMap;

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (pending and enrolled).
    pub total: usize,
    /// Pending connections at once, all callers together.
    pub pending: usize,
    /// Pending connections at once per uid.
    pub pending_per_uid: usize,
    /// Pending connections at once per caller network namespace.
    pub pending_per_netns: usize,
}

impl Limits {
    /// The agent's limits: room for every pod the maps hold, and as many
    /// again for registrations in progress.
    pub const AGENT: Limits = Limits {
        total: 2 * conduit_ebpf_common::MAX_PODS as usize,
        pending: conduit_ebpf_common::MAX_PODS as usize,
        pending_per_uid: 256,
        pending_per_netns: 4,
    };
}

/// The caller's network namespace as the agent can tell it at accept time
/// (the inode of `/proc/<pid>/ns/net`); `Unknown` when that cannot be read:
/// all such callers share one allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallerNetns {
    Inode(u64),
    Unknown,
}

/// Who holds a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller {
    pub uid: u32,
    pub netns: CallerNetns,
}

/// Why a connection is refused before its request is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitRefusal {
    #[error("the agent serves at most {0} registrations at once")]
    Total(usize),
    #[error("at most {0} registrations may be in progress at once on this node")]
    Pending(usize),
    #[error("uid {uid} has {max} registrations in progress already")]
    PerUid { uid: u32, max: usize },
    #[error("this network namespace has {max} registrations in progress already")]
    PerNetns { max: usize },
}

/// The slots in use.
#[derive(Debug, Default)]
pub struct Slots {
    total: usize,
    pending: usize,
    pending_by_uid: HashMap<u32, usize>,
    pending_by_netns: HashMap<CallerNetns, usize>,
}

impl Slots {
    /// A new connection from `who`: takes a slot, pending.
    pub fn open(&mut self, limits: &Limits, who: Caller) -> Result<(), LimitRefusal> {
        if self.total >= limits.total {
            return Err(LimitRefusal::Total(limits.total));
        }
        if self.pending >= limits.pending {
            return Err(LimitRefusal::Pending(limits.pending));
        }
        let by_netns = self.pending_by_netns.get(&who.netns).copied().unwrap_or(0);
        if by_netns >= limits.pending_per_netns {
            return Err(LimitRefusal::PerNetns {
                max: limits.pending_per_netns,
            });
        }
        let by_uid = self.pending_by_uid.get(&who.uid).copied().unwrap_or(0);
        if by_uid >= limits.pending_per_uid {
            return Err(LimitRefusal::PerUid {
                uid: who.uid,
                max: limits.pending_per_uid,
            });
        }
        self.total += 1;
        self.pending += 1;
        *self.pending_by_netns.entry(who.netns).or_default() += 1;
        *self.pending_by_uid.entry(who.uid).or_default() += 1;
        Ok(())
    }

    /// `who`'s pending connection was answered (it keeps its slot).
    pub fn answered(&mut self, who: Caller) {
        self.pending = self.pending.saturating_sub(1);
        decrement(&mut self.pending_by_netns, who.netns);
        decrement(&mut self.pending_by_uid, who.uid);
    }

    /// `who`'s connection closed; `pending`: it was never answered.
    pub fn close(&mut self, who: Caller, pending: bool) {
        if pending {
            self.answered(who);
        }
        self.total = self.total.saturating_sub(1);
    }

    /// Connections held: (all, pending).
    pub fn in_use(&self) -> (usize, usize) {
        (self.total, self.pending)
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, k: K) {
    if let Some(n) = map.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            map.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        total: 6,
        pending: 4,
        pending_per_uid: 3,
        pending_per_netns: 2,
    };

    fn c(uid: u32, ns: u64) -> Caller {
        Caller {
            uid,
            netns: CallerNetns::Inode(ns),
        }
    }

    #[test]
    fn one_caller_gets_its_allowance_and_no_more() {
        // (action, caller, expected result of `open`)
        enum A {
            Open(Caller, Result<(), LimitRefusal>),
            Answer(Caller),
            Close(Caller, bool),
        }
        use A::*;
        let steps = [
            Open(c(1, 10), Ok(())),
            Open(c(1, 10), Ok(())),
            // Third from the same namespace: refused.
            Open(c(1, 10), Err(LimitRefusal::PerNetns { max: 2 })),
            // Same uid, another namespace: allowed up to the uid's 3.
            Open(c(1, 11), Ok(())),
            Open(c(1, 12), Err(LimitRefusal::PerUid { uid: 1, max: 3 })),
            // Another uid elsewhere is not affected.
            Open(c(2, 20), Ok(())),
            // Pending total (4) reached.
            Open(c(3, 30), Err(LimitRefusal::Pending(4))),
            // Answering frees the pending allowance, not the slot.
            Answer(c(1, 10)),
            Open(c(1, 10), Ok(())),
            Answer(c(1, 10)),
            Answer(c(1, 10)),
            Open(c(3, 30), Ok(())),
            // 6 slots taken (3 enrolled, 3 pending): the total is reached.
            Open(c(4, 40), Err(LimitRefusal::Total(6))),
            Close(c(1, 10), false),
            Open(c(4, 40), Ok(())),
            // Unknown namespaces share one allowance.
            Close(c(4, 40), true),
            Close(c(3, 30), true),
        ];
        let mut s = Slots::default();
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Open(who, want) => assert_eq!(s.open(&L, who), want, "step {i}"),
                Answer(who) => s.answered(who),
                Close(who, pending) => s.close(who, pending),
            }
        }
        assert_eq!(s.in_use(), (4, 2));
        let unknown = Caller {
            uid: 9,
            netns: CallerNetns::Unknown,
        };
        let other_unknown = Caller {
            uid: 8,
            netns: CallerNetns::Unknown,
        };
        let mut s = Slots::default();
        assert_eq!(s.open(&L, unknown), Ok(()));
        assert_eq!(s.open(&L, other_unknown), Ok(()));
        assert_eq!(s.open(&L, unknown), Err(LimitRefusal::PerNetns { max: 2 }));
    }

    #[test]
    fn closing_everything_frees_everything() {
        let mut s = Slots::default();
        for ns in 0..2 {
            s.open(&L, c(1, ns)).unwrap();
        }
        s.answered(c(1, 0));
        s.close(c(1, 0), false);
        s.close(c(1, 1), true);
        assert_eq!(s.in_use(), (0, 0));
        assert!(s.pending_by_uid.is_empty() && s.pending_by_netns.is_empty());
    }

    #[test]
    fn the_agent_leaves_room_for_every_pod_whatever_is_pending() {
        let l = Limits::AGENT;
        assert!(l.total - l.pending >= conduit_ebpf_common::MAX_PODS as usize);
        assert!(l.pending_per_netns < l.pending_per_uid && l.pending_per_uid < l.pending);
    }
}
