//! `cargo xtask bench <what>`: benchmark programs that print tables.

use crate::util::{exec, root, target_dir};
use crate::{build_ebpf, release, setup};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::Command;

#[derive(clap::Args)]
pub struct Options {
    /// What to measure.
    #[arg(value_enum)]
    pub what: What,
    /// How long the soak runs (`soak` only), e.g. `30m`.
    #[arg(long)]
    pub duration: Option<String>,
    /// Arguments passed to the benchmark program.
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum What {
    /// One proxy against direct: latency at fixed rates, maximum rate, RSS.
    Proxy,
    /// Controller propagation latency with many watchers, and its RSS.
    Controller,
    /// The controller with the fake API server at cluster scale (10,000
    /// pods, 1,000 services, 1,000 watchers): time to ready, memory, change
    /// propagation, incremental updates against full rebuilds.
    ControllerScale,
    /// How one proxy's cost grows: latency and CPU against rate, RSS against
    /// idle connections, destinations and endpoints; tables and a plot.
    Scaling,
    /// Direct vs eBPF capture vs iptables, two proxies with mTLS.
    Mesh,
    /// Instructions per request of the client pod's and the server pod's
    /// proxies on the eBPF mesh path with mTLS: the mesh benchmark with
    /// those proxies under callgrind (`--callgrind target/mesh-cost`),
    /// counted over the measured slices only.
    MeshCost,
    /// Instructions per request through one release proxy under callgrind
    /// (HTTP/1.1 and HTTP/2 by default; `-- --cases none,listening,gone`
    /// for the tap's cost).
    Cost,
    /// The mesh under steady mixed load for a long time: proxies' RSS and
    /// descriptors, eBPF map entries, their slopes and a plot.
    Soak,
}

pub fn run(opts: &Options) -> Result<()> {
    setup::deb_packages()?;
    // Every benchmark program lives in the bench crate (bench/src/bin).
    let bin = match opts.what {
        What::Proxy => "conduit-proxy-bench",
        What::Controller => "conduit-controller-bench",
        What::Cost => {
            // The program runs the release proxy next to it.
            release::build("the cost benchmark runs", release::PROXY)?;
            "conduit-cost"
        }
        What::ControllerScale | What::Scaling => {
            // The benchmark runs the release controller or proxy binary.
            release::build("the benchmark runs", release::SCALE)?;
            match opts.what {
                What::Scaling => "conduit-scaling-bench",
                _ => "conduit-controller-scale-bench",
            }
        }
        What::Mesh | What::MeshCost | What::Soak => {
            build_ebpf::run(&build_ebpf::Options::default())?;
            // The mesh benchmark runs the agent, the controller, the proxies
            // and the mesh application as separate release binaries.
            release::build("the mesh benchmark runs", release::MESH_BENCH)?;
            match opts.what {
                What::Soak => "conduit-soak",
                _ => "conduit-mesh-bench",
            }
        }
    };
    let mut args = opts.args.clone();
    if let Some(d) = &opts.duration {
        args.extend(["--duration".to_owned(), d.clone()]);
    }
    if let What::MeshCost = opts.what {
        let dir = target_dir().join("mesh-cost");
        if !given(&args, "--callgrind") && dir.exists() {
            // Only the last run's profiles.
            std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        args = mesh_cost_args(&args, &dir);
    }
    exec(
        program(bin)
            .args(&args)
            .env("CONDUIT_BIN_DIR", target_dir().join("release"))
            .current_dir(root()),
        "the benchmark failed: see its output above",
    )
}

/// `bench mesh-cost`'s defaults: the eBPF path beside direct (which the
/// mesh benchmark compares everything with), a fixed rate and a closed
/// loop, one long slice each (callgrind slows the proxies some 50 times).
const MESH_COST_DEFAULTS: &[(&str, &str)] = &[
    ("--paths", "direct,ebpf"),
    ("--protocols", "http1,http2"),
    ("--rates", "100"),
    ("--concurrency", "32"),
    ("--duration", "20s"),
    ("--rounds", "1"),
];

/// The mesh benchmark's arguments for `bench mesh-cost`: `--callgrind
/// <dir>` and [`MESH_COST_DEFAULTS`], each unless `user` (the arguments
/// after `--`) gives it, then `user`.
fn mesh_cost_args(user: &[String], dir: &Path) -> Vec<String> {
    let mut args = Vec::new();
    if !given(user, "--callgrind") {
        args.extend(["--callgrind".to_owned(), dir.display().to_string()]);
    }
    for (flag, value) in MESH_COST_DEFAULTS {
        if !given(user, flag) {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    args.extend(user.iter().cloned());
    args
}

/// Whether `args` has option `flag` (`--flag value` or `--flag=value`).
fn given(args: &[String], flag: &str) -> bool {
    args.iter().any(|a| {
        a.strip_prefix(flag)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
    })
}

/// `cargo run` of benchmark program `bin` (bench crate, release), ready for
/// its arguments.
pub fn program(bin: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "run",
        "--release",
        "-p",
        "conduit-bench",
        "--bin",
        bin,
        "--",
    ]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn mesh_cost_defaults_give_way_to_the_users_arguments() {
        let dir = Path::new("/t/mesh-cost");
        assert_eq!(
            mesh_cost_args(&[], dir).join(" "),
            "--callgrind /t/mesh-cost --paths direct,ebpf --protocols http1,http2 --rates 100 \
             --concurrency 32 --duration 20s --rounds 1"
        );
        let user = strings(&[
            "--duration=5s",
            "--paths",
            "direct,sockmap",
            "--warmup",
            "2s",
        ]);
        assert_eq!(
            mesh_cost_args(&user, dir).join(" "),
            "--callgrind /t/mesh-cost --protocols http1,http2 --rates 100 --concurrency 32 \
             --rounds 1 --duration=5s --paths direct,sockmap --warmup 2s"
        );
        let user = strings(&["--callgrind", "/tmp/cg"]);
        assert_eq!(
            mesh_cost_args(&user, dir)[..2],
            strings(&["--paths", "direct,ebpf"])
        );
        // A longer option with the same start is another option.
        assert!(!given(&strings(&["--rates-x", "1"]), "--rates"));
    }
}
