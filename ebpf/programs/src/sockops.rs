//! `sockops`: files a captured connection's original destination under its
//! 4-tuple once established, deletes both records on close, and (fast path,
//! when enabled) puts the app's and the proxy's loopback sockets in a
//! sockhash. `sk_msg`: hands payload between such a pair directly.

use crate::addr::{ctx_field, ip_of};
use crate::maps::{FASTPATH, ORIG_BY_COOKIE, ORIG_BY_TUPLE, config_flags, count, pod};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE, sk_action::SK_PASS,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use conduit_ebpf_common::{
    CONFIG_FASTPATH, IpKey, Outcome, Program, SIDE_CLIENT, SIDE_SERVER, TupleKey,
};

#[sock_ops]
pub fn conduit_sockops(ctx: SockOpsContext) -> u32 {
    match try_sockops(&ctx) {
        Ok(Some(o)) | Err(o) => count(Program::Sockops, o),
        Ok(None) => {}
    }
    1
}

/// The socket's (local, remote) addresses and ports (host order).
fn endpoints(ctx: &SockOpsContext) -> Option<(IpKey, u16, IpKey, u16)> {
    let so = ctx.ops;
    let family = ctx_field!(so, family);
    let local = ip_of!(so, family, local_ip4, local_ip6)?;
    let remote = ip_of!(so, family, remote_ip4, remote_ip6)?;
    let local_port = ctx_field!(so, local_port) as u16;
    // remote_port holds the network-order port in its upper 16 bits.
    let remote_port = u16::from_be((ctx_field!(so, remote_port) >> 16) as u16);
    Some((local, local_port, remote, remote_port))
}

fn try_sockops(ctx: &SockOpsContext) -> Result<Option<Outcome>, Outcome> {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_STATE_CB
    {
        return Ok(None);
    }
    let Some((local, local_port, remote, remote_port)) = endpoints(ctx) else {
        return Ok(None);
    };
    // SAFETY: helper taking the program's context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if op == BPF_SOCK_OPS_STATE_CB {
        if ctx.arg(1) != BPF_TCP_CLOSE {
            return Ok(None);
        }
        // Only captured sockets asked for state callbacks.
        let key = TupleKey {
            netns_cookie,
            client: local,
            server: remote,
            client_port: local_port,
            server_port: remote_port,
            side: SIDE_CLIENT,
        };
        let _ = ORIG_BY_TUPLE.remove(key);
        let _ = ORIG_BY_COOKIE.remove(cookie);
        return Ok(Some(Outcome::Released));
    }
    let fastpath = config_flags() & CONFIG_FASTPATH != 0;
    if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        // The proxy accepting a captured connection: fast path only.
        if !fastpath || !remote.is_loopback() {
            return Ok(None);
        }
        let Some(pod) = pod(netns_cookie) else {
            return Ok(None);
        };
        if local_port != pod.outbound_port {
            return Ok(None);
        }
        let mut key = TupleKey {
            netns_cookie,
            client: remote,
            server: local,
            client_port: remote_port,
            server_port: local_port,
            side: SIDE_SERVER,
        };
        // SAFETY: `ctx.ops` is the program's context (a valid, exclusive
        // bpf_sock_ops for this run), as the sockhash update helper wants.
        let ops = unsafe { &mut *ctx.ops };
        return match FASTPATH.update(&mut key, ops, BPF_ANY as u64) {
            Ok(()) => Ok(Some(Outcome::Fastpath)),
            Err(_) => Err(Outcome::FailedMapFull),
        };
    }
    // Active side: is this one of our captured sockets?
    // SAFETY: copied out at once.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(cookie) }).copied() else {
        return Ok(None);
    };
    let mut key = TupleKey {
        netns_cookie,
        client: local,
        server: remote,
        client_port: local_port,
        server_port: remote_port,
        side: SIDE_CLIENT,
    };
    ORIG_BY_TUPLE
        .insert(key, orig, 0)
        .map_err(|_| Outcome::FailedMapFull)?;
    // Ask for the close callback, so both records go with the connection.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    if fastpath {
        // SAFETY: `ctx.ops` is the program's context (a valid, exclusive
        // bpf_sock_ops for this run), as the sockhash update helper wants.
        let ops = unsafe { &mut *ctx.ops };
        if FASTPATH.update(&mut key, ops, BPF_ANY as u64).is_ok() {
            count(Program::Sockops, Outcome::Fastpath);
        }
    }
    Ok(Some(Outcome::Captured))
}

#[sk_msg]
pub fn conduit_sk_msg(ctx: SkMsgContext) -> u32 {
    match try_sk_msg(&ctx) {
        Ok(o) | Err(o) => count(Program::SkMsg, o),
    }
    SK_PASS
}

/// Redirects the message to the ingress of the other socket of the pair:
/// the proxy's if this is the application's socket, else the application's.
fn try_sk_msg(ctx: &SkMsgContext) -> Result<Outcome, Outcome> {
    let m = ctx.msg;
    let family = ctx_field!(m, family);
    let local = ip_of!(m, family, local_ip4, local_ip6);
    let remote = ip_of!(m, family, remote_ip4, remote_ip6);
    let (Some(local), Some(remote)) = (local, remote) else {
        return Err(Outcome::SkippedNoRecord);
    };
    let local_port = ctx_field!(m, local_port) as u16;
    let remote_port = u16::from_be((ctx_field!(m, remote_port) >> 16) as u16);
    // SAFETY: helper taking the program's context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let mut to_proxy = TupleKey {
        netns_cookie,
        client: local,
        server: remote,
        client_port: local_port,
        server_port: remote_port,
        side: SIDE_SERVER,
    };
    if FASTPATH.redirect_msg(ctx, &mut to_proxy, BPF_F_INGRESS as u64) == SK_PASS as i64 {
        return Ok(Outcome::Captured);
    }
    let mut to_app = TupleKey {
        netns_cookie,
        client: remote,
        server: local,
        client_port: remote_port,
        server_port: local_port,
        side: SIDE_CLIENT,
    };
    if FASTPATH.redirect_msg(ctx, &mut to_app, BPF_F_INGRESS as u64) == SK_PASS as i64 {
        return Ok(Outcome::Captured);
    }
    Err(Outcome::SkippedNoRecord)
}
