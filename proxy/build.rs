//! Code layout of the release `conduit-proxy`: the functions a running
//! mesh proxy executes are linked first and together (`conduit-proxy.order`,
//! written by `cargo xtask proxy-layout` from a callgrind run of the mesh
//! benchmark), so the pages of code a proxy touches are few and adjacent.
//! The kernel maps file pages around each one touched (fault-around), so
//! with the executed functions scattered over the whole text nearly all of
//! it ends up resident; laid out together, the resident code is about the
//! size of the code run. See docs/benchmarks.md, "Proxy memory: code layout".
//!
//! Only for release builds on x86_64 Linux (GNU), whose default linker is
//! rust-lld (`--symbol-ordering-file`); skipped when the rustflags choose the
//! linker or its features, or when `CONDUIT_PROXY_NO_ORDER_FILE` is set.
//! Symbols the file names that a build does not have are ignored, so a
//! stale file costs only locality, never the build.

use std::path::Path;

const ORDER_FILE: &str = "conduit-proxy.order";

fn main() {
    println!("cargo::rerun-if-changed={ORDER_FILE}");
    println!("cargo::rerun-if-env-changed=CONDUIT_PROXY_NO_ORDER_FILE");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let rustflags = var("CARGO_ENCODED_RUSTFLAGS");
    let applies = var("PROFILE") == "release"
        && var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && !rustflags.contains("linker")
        && std::env::var_os("CONDUIT_PROXY_NO_ORDER_FILE").is_none();
    let file = Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER_FILE);
    if applies && file.is_file() {
        let arg = |a: &str| println!("cargo::rustc-link-arg-bin=conduit-proxy={a}");
        arg(&format!("-Wl,--symbol-ordering-file={}", file.display()));
        arg("-Wl,--no-warn-symbol-ordering");
    }
}
