//! The eBPF object embedded at build time (see build.rs).

use anyhow::{Result, bail};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/conduit.bpf.o"));

/// The embedded object, or an error saying how to get one.
pub fn get() -> Result<&'static [u8]> {
    if OBJECT.is_empty() {
        bail!("built without the eBPF object: run `cargo xtask build-ebpf` and rebuild");
    }
    Ok(OBJECT)
}
