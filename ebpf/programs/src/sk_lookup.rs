//! `sk_lookup`, attached to each enrolled pod's network namespace: steers TCP
//! connections for the pod's own IPs on application ports to the proxy's
//! inbound listener (held in the listeners sockhash under the pod's netns
//! cookie). No NAT: the accepted socket's local address is the original one.

use crate::addr::{ctx_field, ip_of};
use crate::maps::{LISTENERS, POD_IPS, count, pod};
use aya_ebpf::{bindings::sk_action::SK_PASS, macros::sk_lookup, programs::SkLookupContext};
use conduit_ebpf_common::{MAX_POD_IPS, Outcome, Program};

const IPPROTO_TCP: u32 = 6;
const ENOENT: i32 = 2;

#[sk_lookup]
pub fn conduit_sk_lookup(ctx: SkLookupContext) -> u32 {
    match try_sk_lookup(&ctx) {
        Ok(o) | Err(o) => count(Program::SkLookup, o),
    }
    SK_PASS
}

fn try_sk_lookup(ctx: &SkLookupContext) -> Result<Outcome, Outcome> {
    let l = ctx.lookup;
    if ctx_field!(l, protocol) != IPPROTO_TCP {
        return Ok(Outcome::SkippedNotTcp);
    }
    let family = ctx_field!(l, family);
    let local = ip_of!(l, family, local_ip4, local_ip6).ok_or(Outcome::SkippedNotPodIp)?;
    // SAFETY: copied out at once.
    let netns = (unsafe { POD_IPS.get(local) })
        .copied()
        .ok_or(Outcome::SkippedNotPodIp)?;
    let pod = pod(netns).ok_or(Outcome::SkippedNotPodIp)?;
    let port = ctx_field!(l, local_port) as u16;
    if pod.skips_inbound(port) {
        return Ok(Outcome::SkippedPort);
    }
    let remote = ip_of!(l, family, remote_ip4, remote_ip6).ok_or(Outcome::SkippedNotPodIp)?;
    // The pod talking to itself: above all its proxy forwarding an inbound
    // connection to the application at the pod's own address (the source
    // address the kernel picks for a local destination is that address).
    // Steering it back to the proxy would loop; the application gets it,
    // and a service bound to loopback only is not reached this way.
    let mut i = 0;
    while i < MAX_POD_IPS {
        if i < pod.ips_len as usize && pod.ips[i] == remote {
            return Ok(Outcome::SkippedFromPod);
        }
        i += 1;
    }
    match LISTENERS.redirect_sk_lookup(ctx, netns, 0) {
        Ok(()) => Ok(Outcome::Captured),
        Err(e) if e == -ENOENT => Err(Outcome::FailedNoListener),
        Err(_) => Err(Outcome::FailedAssign),
    }
}
