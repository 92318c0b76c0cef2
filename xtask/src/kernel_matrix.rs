//! `cargo xtask kernel-matrix`: the eBPF programs on other kernels than the
//! host's. For each kernel (Debian packages, by default the release's
//! `linux-image-amd64`, 6.1 on Debian 12) it boots the kernel under qemu
//! (emulated; `--kvm` to use KVM) with an initramfs built here: busybox,
//! the host's `dash` and `ip`, the agent binary and the agent's smoke test binary with the
//! shared libraries they link. Inside, it runs `conduit-ebpf verify` (every
//! program through that kernel's verifier), the agent with a hook marked
//! missing (the refusal must name it), and the smoke test (the agent starts
//! and attaches, a proxy enrols a pod's network namespace, a connect from
//! it is captured with its original destination, capture survives an agent
//! restart, cleanup). Then it prints a table: kernel, program or test,
//! result. Not part of `cargo xtask test` (a boot per kernel).

use crate::util::{done, exec, output, root, step, target_dir};
use crate::{build_ebpf, setup};
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(clap::Args)]
pub struct Options {
    /// Debian kernel package to boot (repeatable); a metapackage such as
    /// `linux-image-amd64` is resolved to the image it depends on.
    #[arg(long = "package", default_value = "linux-image-amd64")]
    pub packages: Vec<String>,
    /// Longest time one guest may run, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Use KVM (`-enable-kvm -cpu host`). The default is qemu's emulation
    /// (TCG): where this runs, a virtual machine itself, /dev/kvm exists but
    /// qemu under it aborts (`failed to set MSR 0x10a`) or hangs in the BIOS;
    /// emulated, a guest run takes about 35 s.
    #[arg(long)]
    pub kvm: bool,
}

/// What the guest's init prints, one line each (see [`INIT`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GuestReport {
    pub kernel: String,
    /// (program, `verified` or the verifier's reason)
    pub programs: Vec<(String, String)>,
    /// The agent's refusal with `program sk_lookup` marked missing.
    pub refusal: String,
    /// The smoke test's result line.
    pub smoke: String,
}

/// The guest's /init (busybox sh). `@AGENT@` and `@SMOKE@` are replaced by
/// the binaries' paths (the same as on the host: the test binary runs the
/// agent by the path it was built with).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /sys/fs/cgroup /sys/fs/bpf /tmp /run
mount -t cgroup2 none /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/netns /var
ln -s /run /var/run
for m in /lib/modules/extra/*.ko; do insmod "$m"; done
ip link set lo up
echo "KM KERNEL $(uname -r)"
@AGENT@ verify 2>&1 | sed 's/^/KM /'
CONDUIT_EBPF_MISSING_FEATURES="program sk_lookup" @AGENT@ agent --pin-dir /sys/fs/bpf/km-refusal 2>&1 | grep -i "lacks" | head -1 | sed 's/^/KM REFUSAL /'
cd /tmp
if CONDUIT_REQUIRE_PRIVILEGED=1 @SMOKE@ --exact agent_captures_enrolled_pod_and_survives_restart --test-threads=1 > /tmp/smoke.log 2>&1; then
  echo "KM SMOKE passed"
else
  tail -30 /tmp/smoke.log
  echo "KM SMOKE FAILED (output above)"
fi
poweroff -f
"#;

pub fn run(opts: &Options) -> Result<()> {
    setup::deb(&["qemu-system-x86", "busybox-static", "cpio"])?;
    build_ebpf::run(&build_ebpf::Options::default())?;
    let t = step("building the agent and its smoke test");
    exec(
        Command::new("cargo")
            .args(["build", "--workspace", "--all-targets"])
            .current_dir(root()),
        "the workspace does not build",
    )?;
    let agent = target_dir().join("debug/conduit-ebpf");
    let smoke = smoke_test_binary()?;
    done("binaries built", t);

    let mut reports = Vec::new();
    let t = step("the host kernel");
    let host = host_report(&agent)?;
    done(&format!("host kernel {}", host.kernel), t);
    reports.push(host);
    for package in &opts.packages {
        let image = resolve_image(package)?;
        let t = step(&format!("booting {image} under qemu"));
        let dir = target_dir().join("kernel-matrix").join(&image);
        let (vmlinuz, modules) = unpack_kernel(&image, &dir)?;
        let initrd = initramfs(&dir, &agent, &smoke, &modules)?;
        let console = boot(&vmlinuz, &initrd, opts.timeout, opts.kvm)?;
        let report = parse_console(&console);
        if report.kernel.is_empty() {
            eprintln!("{}", tail(&console, 40));
            bail!("the guest running {image} printed no report (console above)");
        }
        done(&format!("{image}: kernel {}", report.kernel), t);
        reports.push(report);
    }
    print!("{}", table(&reports));
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.smoke.starts_with("passed") && !r.smoke.starts_with("not run"))
        .map(|r| r.kernel.clone())
        .collect();
    if !failed.is_empty() {
        bail!("capture failed on {}", failed.join(", "));
    }
    Ok(())
}

/// The verifier on the running kernel (no smoke test: `cargo xtask test`
/// runs the capture tests here).
fn host_report(agent: &Path) -> Result<GuestReport> {
    let out = Command::new(agent)
        .arg("verify")
        .output()
        .with_context(|| format!("running {} verify", agent.display()))?;
    let mut console = String::new();
    let uname = output(Command::new("uname").arg("-r")).unwrap_or_default();
    let _ = writeln!(console, "KM KERNEL {uname}");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = writeln!(console, "KM {line}");
    }
    let refusal = Command::new(agent)
        .args(["agent", "--pin-dir", "/sys/fs/bpf/km-refusal"])
        .env("CONDUIT_EBPF_MISSING_FEATURES", "program sk_lookup")
        .output()
        .context("running the agent with a hook marked missing")?;
    if let Some(l) = String::from_utf8_lossy(&refusal.stderr)
        .lines()
        .find(|l| l.contains("lacks"))
    {
        let _ = writeln!(console, "KM REFUSAL {l}");
    }
    let _ = writeln!(
        console,
        "KM SMOKE not run here (cargo xtask test runs the capture tests on this kernel)"
    );
    Ok(parse_console(&console))
}

/// The smoke test's executable, from cargo's JSON messages.
fn smoke_test_binary() -> Result<PathBuf> {
    let out = Command::new("cargo")
        .args([
            "test",
            "--workspace",
            "--test",
            "smoke",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root())
        .output()
        .context("cargo test --no-run")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains(r#""name":"smoke""#) && l.contains(r#""test":true"#))
        .find_map(|l| {
            let start = l.find(r#""executable":""#)? + r#""executable":""#.len();
            let end = l[start..].find('"')? + start;
            Some(PathBuf::from(&l[start..end]))
        })
        .context("cargo did not name the smoke test's executable")
}

/// `linux-image-amd64` -> `linux-image-6.1.0-57-amd64`; an image package is
/// returned as is.
fn resolve_image(package: &str) -> Result<String> {
    let deps = output(Command::new("apt-cache").args(["depends", package]))
        .with_context(|| format!("apt-cache depends {package} failed: run apt-get update"))?;
    Ok(deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_string)
        .unwrap_or_else(|| package.to_string()))
}

/// Downloads (once) and unpacks the image package; returns the kernel and
/// the modules the guest loads (veth, for the pod's link).
fn unpack_kernel(image: &str, dir: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    let debs = dir.join("deb");
    std::fs::create_dir_all(&debs)?;
    let has_deb = |d: &Path| {
        std::fs::read_dir(d)
            .ok()
            .and_then(|mut e| {
                e.find(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "deb"))
                })
            })
            .and_then(|e| e.ok())
            .map(|e| e.path())
    };
    let deb = match has_deb(&debs) {
        Some(d) => d,
        None => {
            exec(
                Command::new("apt-get")
                    .args(["download", image])
                    .current_dir(&debs),
                "apt-get download of the kernel failed (is the Debian mirror reachable?)",
            )?;
            has_deb(&debs).context("apt-get download left no .deb")?
        }
    };
    let unpacked = dir.join("root");
    if !unpacked.join("boot").is_dir() {
        std::fs::create_dir_all(&unpacked)?;
        exec(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
            "dpkg-deb -x failed",
        )?;
    }
    let version = image.trim_start_matches("linux-image-");
    let vmlinuz = unpacked.join(format!("boot/vmlinuz-{version}"));
    anyhow::ensure!(vmlinuz.is_file(), "no {} in the package", vmlinuz.display());
    let veth = unpacked.join(format!("lib/modules/{version}/kernel/drivers/net/veth.ko"));
    let modules = if veth.is_file() { vec![veth] } else { vec![] };
    Ok((vmlinuz, modules))
}

/// Copies `file` into `staging` at the same absolute path.
fn stage(staging: &Path, file: &Path) -> Result<()> {
    let dest = staging.join(file.strip_prefix("/").unwrap_or(file));
    std::fs::create_dir_all(dest.parent().context("a file has a parent")?)?;
    std::fs::copy(file, &dest)
        .with_context(|| format!("copying {} into the initramfs", file.display()))?;
    Ok(())
}

/// The shared libraries `ldd` lists for `bin` (and the loader).
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = output(Command::new("ldd").arg(bin))
        .with_context(|| format!("ldd {} failed", bin.display()))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Builds `initrd.gz` in `dir` and returns its path.
fn initramfs(dir: &Path, agent: &Path, smoke: &Path, modules: &[PathBuf]) -> Result<PathBuf> {
    let staging = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&staging);
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "proc",
        "sys",
        "dev",
        "lib/modules/extra",
    ] {
        std::fs::create_dir_all(staging.join(d))?;
    }
    std::fs::copy("/bin/busybox", staging.join("bin/busybox"))
        .context("copying busybox (Debian package busybox-static)")?;
    // The tests run `sh -c "... ip netns ..."`: busybox's sh would run its
    // own `ip` applet (no netns support) whatever PATH says, so /bin/sh is
    // the host's dash and `ip` is iproute2's.
    std::fs::copy("/usr/bin/dash", staging.join("bin/sh")).context("copying dash")?;
    let ip = PathBuf::from("/usr/sbin/ip");
    let dash = PathBuf::from("/usr/bin/dash");
    let mut bins = vec![agent.to_path_buf(), smoke.to_path_buf(), ip.clone(), dash];
    let mut libs = Vec::new();
    for b in &bins {
        libs.extend(libraries(b)?);
    }
    libs.sort();
    libs.dedup();
    bins.extend(libs);
    for b in &bins {
        stage(&staging, b)?;
    }
    for m in modules {
        let name = m.file_name().context("module name")?;
        std::fs::copy(m, staging.join("lib/modules/extra").join(name))?;
    }
    let init = INIT
        .replace("@AGENT@", &agent.display().to_string())
        .replace("@SMOKE@", &smoke.display().to_string());
    let init_path = staging.join("init");
    std::fs::write(&init_path, init)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init_path, std::fs::Permissions::from_mode(0o755))?;
    // The tests call `ip` by name: iproute2's (netns support) comes first in
    // the guest's PATH, before busybox's applet.
    let initrd = dir.join("initrd.gz");
    exec(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find . | cpio -o -H newc --quiet | gzip -1 > {}",
                initrd.display()
            ))
            .current_dir(&staging),
        "packing the initramfs failed",
    )?;
    Ok(initrd)
}

/// Boots the kernel with the initramfs; returns the console output.
fn boot(vmlinuz: &Path, initrd: &Path, timeout: u64, kvm: bool) -> Result<String> {
    if kvm && !Path::new("/dev/kvm").exists() {
        bail!("--kvm given but /dev/kvm does not exist");
    }
    let mut cmd = Command::new("timeout");
    cmd.arg(timeout.to_string())
        .arg("qemu-system-x86_64")
        .args([
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-net",
            "none",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"]);
    if kvm {
        cmd.args(["-enable-kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg"]);
    }
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .context("running qemu-system-x86_64")?;
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    if !out.status.success() && !console.contains("KM SMOKE") {
        eprintln!("{}", tail(&console, 40));
        bail!("qemu ended with {} before the guest finished", out.status);
    }
    Ok(console)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads the `KM ...` lines the guest printed.
pub fn parse_console(console: &str) -> GuestReport {
    let mut r = GuestReport::default();
    for line in console.lines() {
        // The console may put terminal escapes before the guest's first line.
        let Some(at) = line.find("KM ") else {
            continue;
        };
        let rest = &line[at + 3..];
        if let Some(k) = rest.strip_prefix("KERNEL ") {
            r.kernel = k.trim().to_string();
        } else if let Some(p) = rest.strip_prefix("PROGRAM ") {
            let (name, result) = p.split_once(' ').unwrap_or((p, ""));
            let result = result.strip_prefix("rejected: ").unwrap_or(result);
            r.programs.push((name.to_string(), result.to_string()));
        } else if let Some(x) = rest.strip_prefix("REFUSAL ") {
            r.refusal = x.trim().to_string();
        } else if let Some(x) = rest.strip_prefix("SMOKE ") {
            r.smoke = x.trim().to_string();
        }
    }
    r
}

/// The Markdown table docs/reliability.md shows.
pub fn table(reports: &[GuestReport]) -> String {
    let mut o = String::from("\n| kernel | program or test | result |\n|---|---|---|\n");
    for r in reports {
        for (p, res) in &r.programs {
            let _ = writeln!(o, "| {} | {p} | {res} |", r.kernel);
        }
        let refusal = if r.refusal.is_empty() {
            "NO REFUSAL PRINTED".to_string()
        } else {
            r.refusal.clone()
        };
        let _ = writeln!(
            o,
            "| {} | agent with `program sk_lookup` marked missing | {refusal} |",
            r.kernel
        );
        let _ = writeln!(
            o,
            "| {} | smoke test (attach, enrol, capture a connect, restart, cleanup) | {} |",
            r.kernel, r.smoke
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_guest_report() {
        let console = "[    0.1] booting\r\nBooting from ROM..\x1bc\x1b[?7l\x1b[2JKM KERNEL 6.1.0-57-amd64\nKM PROGRAM conduit_connect4 verified\n\
                       KM PROGRAM conduit_sk_msg rejected: Permission denied: R1 invalid mem access\n\
                       KM REFUSAL Error: this kernel lacks what capture needs: program sk_lookup\n\
                       noise\nKM SMOKE passed\n";
        let r = parse_console(console);
        assert_eq!(r.kernel, "6.1.0-57-amd64");
        assert_eq!(
            r.programs,
            vec![
                ("conduit_connect4".to_string(), "verified".to_string()),
                (
                    "conduit_sk_msg".to_string(),
                    "Permission denied: R1 invalid mem access".to_string()
                ),
            ]
        );
        assert!(r.refusal.contains("program sk_lookup"));
        assert_eq!(r.smoke, "passed");
        let t = table(&[r]);
        assert!(
            t.contains("| 6.1.0-57-amd64 | conduit_connect4 | verified |"),
            "{t}"
        );
        assert!(t.contains("smoke test"), "{t}");
        assert_eq!(parse_console("nothing"), GuestReport::default());
    }
}
