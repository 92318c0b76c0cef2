//! Embeds the eBPF object (`target/bpf/conduit.bpf.o`, or the file named by
//! `$CONDUIT_EBPF_OBJECT`) into the agent. When it is missing, an empty
//! object is embedded so the workspace still builds on stable without the
//! nightly toolchain; `conduit-ebpf agent` then says how to build it.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=CONDUIT_EBPF_OBJECT");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = std::env::var_os("CONDUIT_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../../target/bpf/conduit.bpf.o"));
    println!("cargo:rerun-if-changed={}", object.display());
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("conduit.bpf.o");
    let bytes = std::fs::read(&object).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=eBPF object {} not found: the agent is built without it (run `cargo xtask build-ebpf` and rebuild)",
            object.display()
        );
    }
    std::fs::write(&out, bytes).expect("writing the embedded object copy");
}
