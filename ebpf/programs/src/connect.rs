//! `cgroup/connect4|6`: outbound capture; `cgroup/getpeername4|6`: the
//! application sees the peer it dialled.

use crate::addr::ctx_field;
use crate::maps::{EXCLUDE, ORIG_BY_COOKIE, count, pod};
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use conduit_ebpf_common::{AF_INET, AF_INET6, IpKey, OrigDst, Outcome, Program};
use core::ptr::{addr_of_mut, write_volatile};

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// 127.0.0.1 in network byte order.
const LOOPBACK4_BE: u32 = u32::from_be_bytes([127, 0, 0, 1]).to_be();

#[cgroup_sock_addr(connect4)]
pub fn conduit_connect4(ctx: SockAddrContext) -> i32 {
    let outcome = match try_connect::<false>(&ctx) {
        Ok(o) | Err(o) => o,
    };
    count(Program::Connect4, outcome);
    1
}

#[cgroup_sock_addr(connect6)]
pub fn conduit_connect6(ctx: SockAddrContext) -> i32 {
    let outcome = match try_connect::<true>(&ctx) {
        Ok(o) | Err(o) => o,
    };
    count(Program::Connect6, outcome);
    1
}

/// Decides whether to capture this connect; on capture records the original
/// destination under the socket cookie and rewrites the destination to the
/// pod's proxy on loopback (`::ffff:127.0.0.1` for IPv6 sockets).
fn try_connect<const V6: bool>(ctx: &SockAddrContext) -> Result<Outcome, Outcome> {
    let sa = ctx.sock_addr;
    if ctx_field!(sa, type_) != SOCK_STREAM || ctx_field!(sa, protocol) != IPPROTO_TCP {
        return Ok(Outcome::SkippedNotTcp);
    }
    // SAFETY: helper taking the program's context.
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let Some(pod) = pod(netns) else {
        return Ok(Outcome::SkippedNotEnrolled);
    };
    // The proxy's own sockets, by its cgroup only: an application running
    // under the proxy's uid is captured like any other.
    // SAFETY: helper without arguments.
    if pod.is_proxy_cgroup(unsafe { bpf_get_current_cgroup_id() }) {
        return Ok(Outcome::SkippedProxy);
    }
    let dst = if V6 {
        IpKey::v6([
            ctx_field!(sa, user_ip6[0]),
            ctx_field!(sa, user_ip6[1]),
            ctx_field!(sa, user_ip6[2]),
            ctx_field!(sa, user_ip6[3]),
        ])
    } else {
        IpKey::v4(ctx_field!(sa, user_ip4))
    };
    let port = u16::from_be(ctx_field!(sa, user_port) as u16);
    if dst.is_loopback() {
        return Ok(Outcome::SkippedLoopback);
    }
    if pod.skips_outbound(port) || port == 0 {
        return Ok(Outcome::SkippedPort);
    }
    if EXCLUDE.get(Key::new(128, dst.words)).is_some() {
        return Ok(Outcome::SkippedExcluded);
    }
    let family = if dst.is_v4() { AF_INET } else { AF_INET6 };
    let orig = OrigDst {
        ip: dst,
        port,
        family,
    };
    // SAFETY: helper taking the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ORIG_BY_COOKIE
        .insert(cookie, orig, 0)
        .map_err(|_| Outcome::FailedMapFull)?;
    let proxy_port = (pod.outbound_port.to_be()) as u32;
    // SAFETY: writes of 4-byte context fields, one store each (see toolchain
    // notes: merged stores are rejected by the verifier).
    unsafe {
        if V6 {
            let p = addr_of_mut!((*sa).user_ip6) as *mut u32;
            let mapped = IpKey::v4(LOOPBACK4_BE).words;
            write_volatile(p, mapped[0]);
            write_volatile(p.add(1), mapped[1]);
            write_volatile(p.add(2), mapped[2]);
            write_volatile(p.add(3), mapped[3]);
        } else {
            write_volatile(addr_of_mut!((*sa).user_ip4), LOOPBACK4_BE);
        }
        write_volatile(addr_of_mut!((*sa).user_port), proxy_port);
    }
    debug!(
        ctx,
        "conduit: captured connect, netns {} port {} -> proxy {}", netns, port, pod.outbound_port
    );
    Ok(Outcome::Captured)
}

#[cgroup_sock_addr(getpeername4)]
pub fn conduit_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Ok(o) = try_getpeername::<false>(&ctx) {
        count(Program::Getpeername4, o);
    }
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn conduit_getpeername6(ctx: SockAddrContext) -> i32 {
    if let Ok(o) = try_getpeername::<true>(&ctx) {
        count(Program::Getpeername6, o);
    }
    1
}

/// Rewrites the peer address of a captured socket to its original
/// destination. `Err(())` for sockets that were never captured (not counted).
fn try_getpeername<const V6: bool>(ctx: &SockAddrContext) -> Result<Outcome, ()> {
    let sa = ctx.sock_addr;
    // SAFETY: helper taking the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only copy of the record.
    let orig = *unsafe { ORIG_BY_COOKIE.get(cookie) }.ok_or(())?;
    if !V6 && orig.family != AF_INET {
        return Err(());
    }
    // SAFETY: 4-byte context stores, one each.
    unsafe {
        if V6 {
            let p = addr_of_mut!((*sa).user_ip6) as *mut u32;
            write_volatile(p, orig.ip.words[0]);
            write_volatile(p.add(1), orig.ip.words[1]);
            write_volatile(p.add(2), orig.ip.words[2]);
            write_volatile(p.add(3), orig.ip.words[3]);
        } else {
            write_volatile(addr_of_mut!((*sa).user_ip4), orig.ip.v4_be());
        }
        write_volatile(addr_of_mut!((*sa).user_port), orig.port.to_be() as u32);
    }
    Ok(Outcome::Captured)
}
