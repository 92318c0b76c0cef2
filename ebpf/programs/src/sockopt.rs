//! `cgroup/getsockopt`: answers `SO_ORIGINAL_DST` (SOL_IP) and
//! `IP6T_SO_ORIGINAL_DST` (SOL_IPV6) on the proxy's accepted sockets from the
//! record sockops filed under the connection's 4-tuple.
//!
//! The answer's family is the one the application dialled: a `sockaddr_in`
//! (16 bytes) for IPv4, a `sockaddr_in6` (28 bytes) for IPv6, whatever the
//! level asked; a buffer too short for it leaves the kernel's answer alone.

use crate::addr::{ctx_field, ip_of};
use crate::maps::{ORIG_BY_TUPLE, count};
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_netns_cookie, macros::cgroup_sockopt, programs::SockoptContext,
};
use conduit_ebpf_common::{
    AF_INET, AF_INET6, Outcome, Program, SIDE_CLIENT, SO_ORIGINAL_DST, SOL_IP, SOL_IPV6, TupleKey,
};
use core::ptr::{addr_of_mut, write_volatile};

#[cgroup_sockopt(getsockopt)]
pub fn conduit_getsockopt(ctx: SockoptContext) -> i32 {
    if let Some(outcome) = match try_getsockopt(&ctx) {
        Ok(o) => o,
        Err(o) => Some(o),
    } {
        count(Program::Getsockopt, outcome);
    }
    1
}

#[repr(C)]
struct SockaddrIn {
    family: u16,
    port_be: u16,
    addr_be: u32,
    zero: [u8; 8],
}

#[repr(C)]
struct SockaddrIn6 {
    family: u16,
    port_be: u16,
    flowinfo: u32,
    addr: [u32; 4],
    scope_id: u32,
}

/// `Ok(None)`: not an original-destination query, nothing to count.
fn try_getsockopt(ctx: &SockoptContext) -> Result<Option<Outcome>, Outcome> {
    let so = ctx.sockopt;
    let level = ctx_field!(so, level);
    let optname = ctx_field!(so, optname);
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return Ok(None);
    }
    let sk = ctx_field!(so, __bindgen_anon_1.sk);
    if sk.is_null() {
        return Ok(Some(Outcome::SkippedNoRecord));
    }
    // SAFETY: `sk` is the context's non-null socket pointer.
    let family = ctx_field!(sk, family);
    let local = ip_of!(sk, family, src_ip4, src_ip6);
    let remote = ip_of!(sk, family, dst_ip4, dst_ip6);
    let (Some(local), Some(remote)) = (local, remote) else {
        return Ok(Some(Outcome::SkippedNoRecord));
    };
    let key = TupleKey {
        // SAFETY: helper taking the program's context.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        client: remote,
        server: local,
        client_port: u16::from_be(ctx_field!(sk, dst_port)),
        server_port: ctx_field!(sk, src_port) as u16,
        side: SIDE_CLIENT,
    };
    // SAFETY: copied out at once.
    let Some(orig) = (unsafe { ORIG_BY_TUPLE.get(key) }).copied() else {
        return Ok(Some(Outcome::SkippedNoRecord));
    };
    let optval = ctx_field!(so, __bindgen_anon_2.optval) as *mut u8;
    let optval_end = ctx_field!(so, __bindgen_anon_3.optval_end) as *mut u8;
    let len = if orig.family == AF_INET {
        let size = core::mem::size_of::<SockaddrIn>();
        if optval as usize + size > optval_end as usize {
            return Err(Outcome::FailedShortBuffer);
        }
        let out = SockaddrIn {
            family: AF_INET,
            port_be: orig.port.to_be(),
            addr_be: orig.ip.v4_be(),
            zero: [0; 8],
        };
        // SAFETY: bounds checked against optval_end just above.
        unsafe { core::ptr::write_unaligned(optval as *mut SockaddrIn, out) };
        size
    } else {
        let size = core::mem::size_of::<SockaddrIn6>();
        if optval as usize + size > optval_end as usize {
            return Err(Outcome::FailedShortBuffer);
        }
        let out = SockaddrIn6 {
            family: AF_INET6,
            port_be: orig.port.to_be(),
            flowinfo: 0,
            addr: orig.ip.words,
            scope_id: 0,
        };
        // SAFETY: bounds checked against optval_end just above.
        unsafe { core::ptr::write_unaligned(optval as *mut SockaddrIn6, out) };
        size
    };
    // SAFETY: two adjacent 4-byte context fields, written separately (a
    // merged 8-byte store is rejected by the verifier).
    unsafe {
        write_volatile(addr_of_mut!((*so).optlen), len as i32);
        write_volatile(addr_of_mut!((*so).retval), 0);
    }
    Ok(Some(Outcome::Captured))
}
