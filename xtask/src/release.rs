//! The release binaries the demo and the mesh benchmarks run, and the one
//! cargo command that builds exactly those. Not `--workspace --bins`: that
//! also builds the benchmark programs, the test binaries and their plotting
//! stack, which the demo never runs (most of a fresh machine's first
//! `cargo xtask demo`).

use crate::util::{exec, root};
use anyhow::Result;
use std::process::Command;

/// One binary: its package and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bin {
    pub package: &'static str,
    pub name: &'static str,
}

const fn bin(package: &'static str, name: &'static str) -> Bin {
    Bin { package, name }
}

/// What the local mesh runs (tests/src/mesh, tests/src/demo.rs): the node
/// agent, the controller, the proxy and the mesh application.
pub const MESH: &[Bin] = &[
    bin("conduit-ebpf", "conduit-ebpf"),
    bin("conduit-controller", "conduit-controller"),
    bin("conduit-proxy", "conduit-proxy"),
    bin("conduit-tests", "conduit-mesh-app"),
];

/// What the mesh benchmark and the soak run: the mesh, and the example
/// authorization plugin of the `plugin` path.
pub const MESH_BENCH: &[Bin] = &[
    bin("conduit-ebpf", "conduit-ebpf"),
    bin("conduit-controller", "conduit-controller"),
    bin("conduit-proxy", "conduit-proxy"),
    bin("conduit-tests", "conduit-mesh-app"),
    bin("conduit-tests", "conduit-authz-plugin"),
];

/// What the cost benchmark runs: one proxy.
pub const PROXY: &[Bin] = &[bin("conduit-proxy", "conduit-proxy")];

/// What the scaling benchmarks run: one proxy, or the controller.
pub const SCALE: &[Bin] = &[
    bin("conduit-proxy", "conduit-proxy"),
    bin("conduit-controller", "conduit-controller"),
];

/// The demo program itself, which runs [`MESH`].
pub const DEMO: Bin = bin("conduit-tests", "conduit-demo");

/// `cargo build --release` arguments selecting exactly `bins`: each package
/// once (`-p`, in first-seen order), then each binary (`--bin`).
pub fn build_args(bins: &[Bin]) -> Vec<String> {
    let mut args = vec!["build".to_owned(), "--release".to_owned()];
    let mut packages: Vec<&str> = Vec::new();
    for b in bins {
        if !packages.contains(&b.package) {
            packages.push(b.package);
        }
    }
    for p in packages {
        args.extend(["-p".to_owned(), p.to_owned()]);
    }
    for b in bins {
        args.extend(["--bin".to_owned(), b.name.to_owned()]);
    }
    args
}

/// Builds `bins` in release mode, with a progress line naming `why`.
pub fn build(why: &str, bins: &[Bin]) -> Result<()> {
    let t = crate::util::step(&format!("building the release binaries {why}"));
    exec(
        Command::new("cargo")
            .args(build_args(bins))
            .current_dir(root()),
        "the workspace does not build",
    )?;
    crate::util::done("release binaries built", t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_name_each_package_once_and_every_binary() {
        let cases: &[(&[Bin], &str)] = &[
            (&[], "build --release"),
            (
                &[DEMO],
                "build --release -p conduit-tests --bin conduit-demo",
            ),
            (
                &[MESH[3], DEMO, MESH[2]],
                "build --release -p conduit-tests -p conduit-proxy \
                 --bin conduit-mesh-app --bin conduit-demo --bin conduit-proxy",
            ),
        ];
        for (bins, want) in cases {
            assert_eq!(build_args(bins).join(" "), *want, "{bins:?}");
        }
    }

    #[test]
    fn the_demo_builds_no_benchmark_and_no_whole_workspace() {
        let mut bins = MESH.to_vec();
        bins.push(DEMO);
        let args = build_args(&bins).join(" ");
        for unwanted in [
            "--workspace",
            "--bins",
            "conduit-bench",
            "-bench",
            "conduit-soak",
        ] {
            assert!(!args.contains(unwanted), "{unwanted} in {args}");
        }
        for b in &bins {
            assert!(args.contains(&format!("--bin {}", b.name)), "{args}");
        }
    }
}
