//! `cargo xtask build-ebpf`: builds the kernel programs object with nightly.

use crate::setup;
use crate::util::{done, exec, root, step};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

#[derive(clap::Args, Default)]
pub struct Options {
    /// Skip the toolchain checks (rust-src, bpf-linker).
    #[arg(long)]
    pub no_setup: bool,
}

/// Where the object ends up; `ebpf/agent/build.rs` embeds it from here.
pub fn object_path() -> PathBuf {
    root().join("target/bpf/conduit.bpf.o")
}

/// Builds the object and returns its path.
pub fn run(opts: &Options) -> Result<PathBuf> {
    if !opts.no_setup {
        setup::ebpf_toolchain()?;
    }
    let t = step("building the eBPF programs (nightly, bpfel-unknown-none)");
    let dir = root().join("ebpf/programs");
    let target_dir = root().join("target/ebpf");
    exec(
        Command::new("cargo")
            .args([
                "+nightly",
                "build",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target_dir)
            // Userspace settings from the environment must not leak into the BPF build.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET"),
        "the eBPF build failed: see the compiler output above (run `cargo xtask setup` if a tool is missing)",
    )?;
    // The programs' own lints (ebpf/programs/Cargo.toml: every `unsafe`
    // documented), checked on the same build; a few seconds.
    exec(
        Command::new("cargo")
            .args([
                "+nightly",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_BUILD_TARGET"),
        "clippy rejected the eBPF programs: see its output above",
    )?;
    let built = target_dir.join("bpfel-unknown-none/release/conduit-ebpf-programs");
    let dest = object_path();
    std::fs::create_dir_all(dest.parent().expect("object path has a parent"))?;
    let fresh = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    // Rewrite only when changed, so the agent is not rebuilt for nothing.
    if std::fs::read(&dest).ok().as_deref() != Some(&fresh[..]) {
        std::fs::write(&dest, &fresh).with_context(|| format!("writing {}", dest.display()))?;
    }
    done(
        &format!("eBPF object at {} ({} bytes)", dest.display(), fresh.len()),
        t,
    );
    Ok(dest)
}
