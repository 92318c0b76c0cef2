//! Idempotent installation of what the project needs on a fresh machine.

use crate::util::{done, exec, is_root, output, step};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// Debian packages the tests, the demo and the benchmarks use.
const DEB_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "nftables",
    "tcpdump",
    "bpftool",
    "curl",
    "openssl",
    "wrk",
    "nghttp2-client",
    "protobuf-compiler",
    "python3-pip",
    "fonts-dejavu-core",
    // The dashboard's end-to-end test renders the page in headless chromium.
    "chromium",
    // conduit-tap-cost and profiling count instructions under callgrind.
    "valgrind",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Everything: Debian packages, the eBPF toolchain, cargo fuzz.
pub fn all() -> Result<()> {
    deb_packages()?;
    ebpf_toolchain()?;
    cargo_fuzz()
}

/// Installs cargo-fuzz (the libFuzzer driver `cargo xtask fuzz` and the
/// test run use) from crates.io when it is missing or another version.
pub fn cargo_fuzz() -> Result<()> {
    let t = step(&format!("checking cargo-fuzz {CARGO_FUZZ_VERSION}"));
    let have =
        output(Command::new("cargo").args(["+nightly", "fuzz", "--version"])).unwrap_or_default();
    if have.contains(CARGO_FUZZ_VERSION) {
        done(&format!("cargo-fuzz present ({have})"), t);
        return Ok(());
    }
    eprintln!("    installing cargo-fuzz {CARGO_FUZZ_VERSION} from crates.io (about a minute)");
    exec(
        Command::new("cargo").args([
            "+stable",
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
            "--force",
        ]),
        "cargo install cargo-fuzz failed: see the lines above (is crates.io reachable?)",
    )?;
    done("cargo-fuzz installed", t);
    Ok(())
}

/// Installs Debian packages that are missing (needs root when any is).
pub fn deb(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages missing: {}; install them as root: apt-get install {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("    installing {}", missing.join(" "));
    exec(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update failed: check the network and /etc/apt/sources.list",
    )?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install failed: see the lines above",
    )
}

/// Installs the Debian packages that are missing (needs root when any is).
pub fn deb_packages() -> Result<()> {
    let t = step("checking Debian packages");
    deb(DEB_PACKAGES)?;
    done("Debian packages present", t);
    Ok(())
}

/// Installs rust-src for the nightly toolchain and bpf-linker linked against
/// the nightly's own LLVM.
pub fn ebpf_toolchain() -> Result<()> {
    let t = step("checking the nightly toolchain and its rust-src");
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("no nightly toolchain: install it with `rustup toolchain install nightly`")?;
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        done("rust-src present", t);
    } else {
        exec(
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
            "could not add rust-src to the nightly toolchain",
        )?;
        done("rust-src installed", t);
    }

    let t = step(&format!("checking bpf-linker {BPF_LINKER_VERSION}"));
    // bpf-linker finds the nightly's libLLVM only in the nightly's environment.
    let have = output(Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"]))
        .unwrap_or_default();
    if have.contains(BPF_LINKER_VERSION) {
        done(&format!("bpf-linker present ({have})"), t);
        return Ok(());
    }
    // bpf-linker must use the nightly's LLVM; link it against the libLLVM the
    // nightly ships (there is no Debian package of that LLVM version).
    let libllvm = std::fs::read_dir(PathBuf::from(&sysroot).join("lib"))
        .context("reading the nightly sysroot")?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .context("the nightly toolchain ships no libLLVM.so.*: reinstall the nightly")?;
    let llvm_major = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split('.').next())
        .context("cannot read the LLVM version from the libLLVM file name")?
        .to_string();
    let prefix = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
        .join(".local/conduit-llvm");
    std::fs::create_dir_all(prefix.join("lib")).context("creating the LLVM prefix")?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link).context("linking libLLVM.so")?;
    eprintln!(
        "    building bpf-linker against {} (about a minute)",
        libllvm.display()
    );
    exec(
        Command::new("cargo")
            .args([
                "+stable",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
        "cargo install bpf-linker failed: see the lines above",
    )?;
    done("bpf-linker installed", t);
    Ok(())
}
