//! Reading addresses out of the kernel contexts, normalised to [`IpKey`]
//! (16 bytes, IPv4-mapped) and host-order ports.

use conduit_ebpf_common::{AF_INET, AF_INET6, IpKey};
use core::ptr::read_volatile;

/// Reads four 4-byte context words one by one (the verifier rejects wider
/// loads of these fields, which LLVM would otherwise merge).
#[inline(always)]
pub fn ip6(words: *const [u32; 4]) -> [u32; 4] {
    let p = words as *const u32;
    // SAFETY: `words` points at a 16-byte context field.
    unsafe {
        [
            read_volatile(p),
            read_volatile(p.add(1)),
            read_volatile(p.add(2)),
            read_volatile(p.add(3)),
        ]
    }
}

/// An address from a context by family, or `None` for other families.
#[inline(always)]
pub fn by_family(family: u32, ip4: *const u32, ip6w: *const [u32; 4]) -> Option<IpKey> {
    if family == AF_INET as u32 {
        // SAFETY: context field pointer.
        Some(IpKey::v4(unsafe { read_volatile(ip4) }))
    } else if family == AF_INET6 as u32 {
        Some(IpKey::v6(ip6(ip6w)))
    } else {
        None
    }
}

#[inline(always)]
pub fn field<T>(p: *const T) -> T {
    // SAFETY: context field pointer.
    unsafe { read_volatile(p) }
}
