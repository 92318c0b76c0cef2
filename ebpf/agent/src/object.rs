//! The eBPF object embedded at build time (see build.rs).

use anyhow::{Result, bail};

/// Embedded 8-byte aligned (ELF64 headers and eBPF instructions are 8-byte
/// units), so the object can be parsed in place.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/conduit.bpf.o"));

/// The embedded object, or an error saying how to get one.
pub fn get() -> Result<&'static [u8]> {
    if OBJECT.is_empty() {
        bail!("built without the eBPF object: run `cargo xtask build-ebpf` and rebuild");
    }
    Ok(OBJECT)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_object_is_embedded_aligned() {
        assert_eq!(super::OBJECT.as_ptr().align_offset(8), 0);
    }
}
