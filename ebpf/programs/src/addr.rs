//! Reading addresses out of the kernel contexts, normalised to
//! `IpKey` (16 bytes, IPv4-mapped) and host-order ports.
//!
//! Context and socket fields must be read with a constant offset from the
//! context register (the verifier rejects computed pointers), so these are
//! macros expanding to direct field loads in each branch.

use core::ptr::read_volatile;

/// Reads a context field once, as a single load of its own size.
///
/// `p` must point into the program's context; the verifier rejects any
/// other pointer, so this cannot read arbitrary memory.
#[inline(always)]
pub fn field<T>(p: *const T) -> T {
    // SAFETY: callers pass a pointer to a context field (see above).
    unsafe { read_volatile(p) }
}

/// `ctx_field!(ptr, field.path)`: one field of a kernel context (or of a
/// kernel structure the context points to), read in place with a single
/// load of its own size.
macro_rules! ctx_field {
    ($base:expr, $($f:tt)+) => {{
        // SAFETY: `$base` is a pointer the kernel handed the program (its
        // context, or a non-null socket in it), valid for the whole run;
        // only the field's address is taken (no reference is made), then
        // read once, volatile; the verifier checks the offset.
        let p = unsafe { core::ptr::addr_of!((*$base).$($f)+) };
        $crate::addr::field(p)
    }};
}
pub(crate) use ctx_field;

/// `ip_of!(ptr, family, ip4_field, ip6_field)`: the address by family, or
/// `None` for other families. Both fields are read unconditionally with
/// volatile loads, so LLVM cannot fold them into one load at a computed
/// offset (which the verifier rejects); the family then picks a value.
macro_rules! ip_of {
    ($base:expr, $family:expr, $f4:ident, $f6:ident) => {{
        let family = $family;
        // SAFETY: fields of the program's context, one 4-byte load each.
        let (v4, w) = unsafe {
            (
                $crate::addr::field(core::ptr::addr_of!((*$base).$f4)),
                [
                    $crate::addr::field(core::ptr::addr_of!((*$base).$f6[0])),
                    $crate::addr::field(core::ptr::addr_of!((*$base).$f6[1])),
                    $crate::addr::field(core::ptr::addr_of!((*$base).$f6[2])),
                    $crate::addr::field(core::ptr::addr_of!((*$base).$f6[3])),
                ],
            )
        };
        if family == conduit_ebpf_common::AF_INET as u32 {
            Some(conduit_ebpf_common::IpKey::v4(v4))
        } else if family == conduit_ebpf_common::AF_INET6 as u32 {
            Some(conduit_ebpf_common::IpKey::v6(w))
        } else {
            None
        }
    }};
}
pub(crate) use ip_of;
