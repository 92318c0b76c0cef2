//! conduit kernel programs: transparent capture of pod traffic.
//!
//! * `cgroup/connect4|6` redirect an enrolled pod's outbound TCP connects to
//!   its proxy on loopback and remember the original destination;
//! * `sockops` moves that record to the connection's 4-tuple once
//!   established (and deletes it on close), and feeds the optional fast path;
//! * `cgroup/getsockopt` answers `SO_ORIGINAL_DST` from the record;
//! * `cgroup/getpeername4|6` show the application the peer it dialled;
//! * `sk_lookup` (per pod netns) steers inbound connections to the proxy;
//! * `sk_msg` (fast path, off by default) splices app <-> proxy payload.
//!
//! Every program is a thin attribute function calling a `try_*` function;
//! outcomes are counted per CPU. Shared types live in `conduit-ebpf-common`.

#![no_std]
#![no_main]

mod addr;
mod connect;
mod maps;
mod sk_lookup;
mod sockops;
mod sockopt;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
