//! The one entry point for enrolling a pod, whatever brought the proxy's
//! request (the unix socket in `register.rs`, discovery in `discover.rs`):
//! [`Registry::register`] inspects the proxy, checks its pod claim in a
//! cluster, asks [`admission::admit`] under the lock that also guards the
//! writes, enrols, and hands back a [`Lease`]; the pod stays enrolled until
//! the lease is dropped. Every refusal is logged here, with its reason.

use crate::admission::{self, Applicant, Forbidden, Holder, Refusal};
use crate::enrol::{self, Candidate, Node, Peer};
use crate::limits::{Caller, LimitRefusal, Limits, Slots};
use crate::netns;
use conduit_base::sync::Unpoisoned;
use conduit_register::{Enrolled, PodInfo};
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Who currently holds each enrolled netns.
#[derive(Default)]
struct Owners {
    next: u64,
    /// Open registrations: netns cookie -> lease token.
    by_netns: HashMap<u64, u64>,
    /// Pods adopted from a previous agent, waiting to re-register.
    pending: HashSet<u64>,
}

/// The maps and who holds what, under one lock: admission reads the table
/// and enrolment writes it without anything changing in between.
struct State {
    node: Node,
    owners: Owners,
}

pub struct Registry {
    state: Mutex<State>,
    /// In a cluster: checks each proxy's pod claim before enrolling.
    claims: Option<crate::claims::Claims>,
    forbidden: Forbidden,
    limits: Limits,
    slots: Mutex<Slots>,
    /// Connections turned away by the limits come in floods: one log line
    /// per second says how many.
    limit_log: Mutex<Throttle>,
}

/// At most one log line per [`Throttle::EVERY`], counting what it skipped.
#[derive(Default)]
struct Throttle {
    last: Option<std::time::Instant>,
    skipped: u64,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(1);

    /// `Some(lines skipped since the last one)` when a line may be logged now.
    fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < Self::EVERY => {
                self.skipped += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.skipped))
            }
        }
    }
}

impl Registry {
    /// `node` as loaded or adopted; enrolled pods whose proxy is dead are
    /// removed now, the live ones wait to re-register (see
    /// [`Registry::expire_adopted_after`]).
    pub fn new(
        mut node: Node,
        claims: Option<crate::claims::Claims>,
        forbidden: Forbidden,
        limits: Limits,
    ) -> Arc<Self> {
        let mut owners = Owners::default();
        let enrolled: Vec<u64> = node.pods().into_iter().map(|(c, _)| c).collect();
        for (cookie, pod) in node.pods() {
            if netns::alive(pod.proxy_pid, pod.proxy_start_time) {
                owners.pending.insert(cookie);
            } else {
                node.remove(cookie);
            }
        }
        for cookie in node.pins.pod_links() {
            if !enrolled.contains(&cookie) {
                node.remove(cookie);
            }
        }
        Arc::new(Self {
            state: Mutex::new(State { node, owners }),
            claims,
            forbidden,
            limits,
            slots: Mutex::new(Slots::default()),
            limit_log: Mutex::default(),
        })
    }

    /// Adopted pods waiting to re-register.
    pub fn adopted_waiting(&self) -> usize {
        self.state.locked().owners.pending.len()
    }

    /// Whether pod claims are checked against the API server.
    pub fn checks_claims(&self) -> bool {
        self.claims.is_some()
    }

    /// After `grace`, removes the adopted pods that did not re-register.
    pub fn expire_adopted_after(self: &Arc<Self>, grace: Duration) {
        let s = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let mut state = s.state.locked();
            let stale: Vec<u64> = state.owners.pending.drain().collect();
            for cookie in stale {
                tracing::warn!(netns_cookie = cookie, "proxy did not re-register in time");
                state.node.remove(cookie);
            }
        });
    }

    /// Takes a connection slot for `who` (see `limits.rs`); refused (and
    /// logged) when `who` holds its share already.
    pub fn open_slot(self: &Arc<Self>, who: Caller) -> Result<Slot, LimitRefusal> {
        let opened = self.slots.locked().open(&self.limits, who);
        match opened {
            Ok(()) => Ok(Slot {
                registry: self.clone(),
                who,
                pending: true,
            }),
            Err(e) => {
                let (all, pending) = self.slots.locked().in_use();
                let allowed = self.limit_log.locked().allow(std::time::Instant::now());
                if let Some(skipped) = allowed {
                    tracing::warn!(uid = who.uid, caller_netns = ?who.netns, connections = all, pending,
                        kind = "limit", reason = %e, refusals_not_logged = skipped, "registration refused");
                }
                Err(e)
            }
        }
    }

    /// Enrols the pod of the proxy `peer` (pid and uid as the kernel
    /// vouches for them: SO_PEERCRED, or a process the agent found itself),
    /// which passed `listener` as its inbound listener. The pod stays
    /// enrolled while the returned lease lives.
    pub async fn register(
        self: &Arc<Self>,
        peer: Peer,
        pod: PodInfo,
        listener: Option<OwnedFd>,
    ) -> Result<Lease, Refusal> {
        let claimed = format!("{}/{}", pod.namespace, pod.name);
        let result = self.try_register(peer, pod, listener).await;
        if let Err(r) = &result
            && !matches!(r, Refusal::Claim(_))
        {
            // (claims::check logged claim refusals, with the claim.)
            tracing::warn!(pid = peer.pid, uid = peer.uid, pod = %claimed, kind = r.kind(),
                reason = %r, "registration refused");
        }
        result
    }

    async fn try_register(
        self: &Arc<Self>,
        peer: Peer,
        pod: PodInfo,
        listener: Option<OwnedFd>,
    ) -> Result<Lease, Refusal> {
        let inspected = tokio::task::spawn_blocking(move || enrol::inspect(peer, pod, listener))
            .await
            .map_err(|e| Refusal::Invalid(format!("internal error: {e}")))?;
        let candidate = inspected.map_err(|e| Refusal::Invalid(format!("{e:#}")))?;
        // Before the (possibly slow) claim check: refuse what is refused anyway.
        self.admit(&self.state.locked(), &candidate)?;
        if let Some(claims) = &self.claims
            && !self.readopting(&candidate)
        {
            crate::claims::check(claims, &candidate)
                .await
                .map_err(Refusal::Claim)?;
        }
        let s = self.clone();
        let enrolled = tokio::task::spawn_blocking(move || {
            let mut state = s.state.locked();
            // Again, under the lock the writes take: the table may have
            // changed during the claim check.
            let admitted = s.admit(&state, &candidate)?;
            if !admitted.left_out.is_empty() {
                tracing::warn!(pod = %candidate.pod.name, left_out = ?admitted.left_out,
                    "more addresses than a pod holds: inbound capture covers the first ones");
            }
            let pod = candidate.pod.clone();
            let enrolled = state
                .node
                .enrol(candidate, admitted.ips)
                .map_err(|e| map_write_error(&state.node, e))?;
            let owners = &mut state.owners;
            owners.next += 1;
            let token = owners.next;
            owners.by_netns.insert(enrolled.netns_cookie, token);
            owners.pending.remove(&enrolled.netns_cookie);
            Ok::<_, Refusal>((enrolled, token, pod))
        })
        .await
        .map_err(|e| Refusal::Invalid(format!("internal error: {e}")))?;
        let (enrolled, token, pod) = enrolled?;
        Ok(Lease {
            registry: self.clone(),
            token,
            pod,
            enrolled,
        })
    }

    fn admit(&self, state: &State, c: &Candidate) -> Result<admission::Admitted, Refusal> {
        let owners = &state.owners;
        let table = state.node.table(|cookie, cfg| {
            if owners.pending.contains(&cookie) && !owners.by_netns.contains_key(&cookie) {
                Holder::Adopted {
                    alive: netns::alive(cfg.proxy_pid, cfg.proxy_start_time),
                }
            } else {
                // Held by an open registration (or, between enrolment and
                // bookkeeping, about to be): fail closed.
                Holder::Open
            }
        });
        admission::admit(
            &table,
            self.forbidden,
            &Applicant {
                netns_cookie: c.netns_cookie,
                proxy_pid: c.peer.pid,
                proxy_start_time: c.start_time,
                netns_ips: &c.ips,
                claimed_ips: &c.pod.pod_ips,
                proxy_cgroup_id: c.cgroup_id,
            },
        )
    }

    /// Whether process `pid` (started at `start`) is the proxy of a pod
    /// adopted from a previous agent and not re-registered yet: that agent
    /// checked it (discovery then skips its container check, as
    /// `readopting` skips the claim check).
    pub fn is_adopted_proxy(&self, pid: u32, start: u64) -> bool {
        let state = self.state.locked();
        state.owners.pending.iter().any(|c| {
            state
                .node
                .maps
                .pods
                .get(c, 0)
                .is_ok_and(|cfg| cfg.proxy_pid == pid && cfg.proxy_start_time == start)
        })
    }

    /// A proxy re-registering after an agent restart, exactly as the
    /// previous agent enrolled it (same process, same claim, same
    /// namespace): its claim was checked then, so it is not asked again,
    /// and an API server outage during an agent restart does not stop
    /// capture.
    fn readopting(&self, c: &Candidate) -> bool {
        let state = self.state.locked();
        if !state.owners.pending.contains(&c.netns_cookie) {
            return false;
        }
        let cfg = state.node.maps.pods.get(&c.netns_cookie, 0);
        let same = cfg.is_ok_and(|cfg| c.same_as(c.netns_cookie, &cfg));
        if same {
            tracing::info!(pod = %c.pod.name, namespace = %c.pod.namespace, "adopted pod re-registers unchanged: its claim was checked before");
        }
        same
    }

    fn release(&self, cookie: u64, token: u64) {
        let mut state = self.state.locked();
        if state.owners.by_netns.get(&cookie) == Some(&token) {
            state.owners.by_netns.remove(&cookie);
            state.node.remove(cookie);
        }
    }
}

/// A failed map write, as the proxy is told: a full pods map is said so.
fn map_write_error(node: &Node, e: anyhow::Error) -> Refusal {
    // (The failed enrolment was rolled back, so a full map still counts
    // every other pod.)
    if node.pods().len() >= conduit_ebpf_common::MAX_PODS as usize {
        Refusal::PodsMapFull {
            capacity: conduit_ebpf_common::MAX_PODS as usize,
        }
    } else {
        Refusal::Invalid(format!("{e:#}"))
    }
}

/// An enrolled pod: capture lasts until this is dropped.
pub struct Lease {
    registry: Arc<Registry>,
    token: u64,
    pod: PodInfo,
    enrolled: Enrolled,
}

impl Lease {
    /// What was enrolled (the answer for the proxy).
    pub fn enrolled(&self) -> &Enrolled {
        &self.enrolled
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let cookie = self.enrolled.netns_cookie;
        tracing::info!(pod = %self.pod.name, namespace = %self.pod.namespace, netns_cookie = cookie, "registration closed");
        self.registry.release(cookie, self.token);
    }
}

/// A connection's share of the limits, given back on drop.
pub struct Slot {
    registry: Arc<Registry>,
    who: Caller,
    pending: bool,
}

impl Slot {
    /// The connection was answered: it keeps its slot, not its pending share.
    pub fn answered(&mut self) {
        if std::mem::take(&mut self.pending) {
            self.registry.slots.locked().answered(self.who);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.slots.locked().close(self.who, self.pending);
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;
    use std::time::{Duration, Instant};

    #[test]
    fn the_limit_log_says_once_a_second_how_many_it_skipped() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        // (time since t0 in ms, expected answer)
        for (ms, want) in [
            (0, Some(0)),
            (10, None),
            (999, None),
            (1000, Some(2)),
            (1500, None),
            (2100, Some(1)),
            (5000, Some(0)),
        ] {
            assert_eq!(t.allow(t0 + Duration::from_millis(ms)), want, "at {ms} ms");
        }
    }
}
