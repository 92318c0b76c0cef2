//! The release binaries the demo and the mesh benchmarks run, and the cargo
//! commands that build exactly those. Not `--workspace --bins`: that also
//! builds the benchmark programs, the test binaries and their plotting
//! stack, which the demo never runs (most of a fresh machine's first
//! `cargo xtask demo`).
//!
//! The proxy is built by a cargo command of its own: built beside the test
//! crates, cargo unifies their dependencies' features into it (about 1 MB
//! more code), and its symbol names, which its code layout file
//! (`proxy/conduit-proxy.order`, [`crate::layout`]) lists, would differ from
//! the proxy built alone as a production image builds it.
//!
//! The proxy is also linked statically, glibc included, as a static PIE
//! (so its addresses stay randomized): as a shared library every proxy maps
//! libc's pages around each function it calls, about 2 MB of its resident
//! set at idle, of which it runs a small part; linked in, libc's functions
//! are laid out with the rest of the proxy's code. Idle RSS in the mesh
//! benchmark: 7.0 MB dynamic, 5.7 MB static (docs/benchmarks.md, "Proxy
//! memory"). Name resolution (the controller's address) keeps working:
//! glibc's `files` and `dns` sources are built into the static library.

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

/// Packages built by a cargo command of their own (see the module's
/// documentation).
const ALONE: &[&str] = &["conduit-proxy"];

/// Whether the packages of [`ALONE`] are linked statically: glibc targets
/// only (musl links statically anyway; others are left as they are).
const STATIC_LIBC: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// The flag that links a binary statically, libc included. Passed to the
/// binary's own compilation only (`cargo rustc ... -- <flag>`): the
/// dependencies are compiled as for any other build, so their symbol names,
/// which the code layout file lists, do not change; the flag acts where the
/// binary is linked.
const STATIC_FLAGS: [&str; 2] = ["-C", "target-feature=+crt-static"];

/// The `cargo build --release` commands building exactly `bins`: one for
/// each package of [`ALONE`] among them, then one for the others.
pub fn build_commands(bins: &[Bin]) -> Vec<Vec<String>> {
    let (alone, rest): (Vec<Bin>, Vec<Bin>) = bins.iter().partition(|b| ALONE.contains(&b.package));
    let mut commands: Vec<Vec<String>> = ALONE
        .iter()
        .map(|p| {
            alone
                .iter()
                .filter(|b| b.package == *p)
                .copied()
                .collect::<Vec<_>>()
        })
        .filter(|group| !group.is_empty())
        .flat_map(|group| alone_commands(&group, STATIC_LIBC))
        .collect();
    if !rest.is_empty() || commands.is_empty() {
        commands.push(build_args(&rest));
    }
    commands
}

/// `cargo build --release` arguments selecting exactly `bins`: each package
/// once (`-p`, in first-seen order), then each binary (`--bin`).
fn build_args(bins: &[Bin]) -> Vec<String> {
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

/// The commands building the binaries of one [`ALONE`] package: one
/// `cargo rustc` for each when linked statically (compiler flags after
/// `--` apply to exactly one target), else one `cargo build` for all.
fn alone_commands(bins: &[Bin], static_libc: bool) -> Vec<Vec<String>> {
    if !static_libc {
        return vec![build_args(bins)];
    }
    bins.iter()
        .map(|b| {
            let mut args = build_args(std::slice::from_ref(b));
            args[0] = "rustc".to_owned();
            args.push("--".to_owned());
            args.extend(STATIC_FLAGS.map(str::to_owned));
            args
        })
        .collect()
}

/// Builds `bins` in release mode, with a progress line naming `why`.
pub fn build(why: &str, bins: &[Bin]) -> Result<()> {
    let t = crate::util::step(&format!("building the release binaries {why}"));
    for args in build_commands(bins) {
        exec(
            Command::new("cargo").args(&args).current_dir(root()),
            "the workspace does not build",
        )?;
    }
    crate::util::done("release binaries built", t);
    if bins.iter().any(|b| b.name == "conduit-proxy") {
        crate::layout::check();
    }
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
    fn the_proxy_is_built_by_a_command_of_its_own() {
        let joined = |bins: &[Bin]| -> Vec<String> {
            build_commands(bins).iter().map(|c| c.join(" ")).collect()
        };
        assert_eq!(
            joined(MESH),
            [
                "rustc --release -p conduit-proxy --bin conduit-proxy -- -C target-feature=+crt-static",
                "build --release -p conduit-ebpf -p conduit-controller -p conduit-tests \
                 --bin conduit-ebpf --bin conduit-controller --bin conduit-mesh-app",
            ]
        );
        assert_eq!(
            joined(&[MESH[2]]),
            [
                "rustc --release -p conduit-proxy --bin conduit-proxy -- -C target-feature=+crt-static"
            ]
        );
        assert_eq!(
            joined(&[DEMO]),
            ["build --release -p conduit-tests --bin conduit-demo"]
        );
        assert_eq!(joined(&[]), ["build --release"]);
    }

    #[test]
    fn alone_packages_link_statically_one_binary_at_a_time() {
        let a = bin("p", "a");
        let b = bin("p", "b");
        let joined = |static_libc| -> Vec<String> {
            alone_commands(&[a, b], static_libc)
                .iter()
                .map(|c| c.join(" "))
                .collect()
        };
        assert_eq!(
            joined(true),
            [
                "rustc --release -p p --bin a -- -C target-feature=+crt-static",
                "rustc --release -p p --bin b -- -C target-feature=+crt-static",
            ]
        );
        assert_eq!(joined(false), ["build --release -p p --bin a --bin b"]);
    }

    #[test]
    fn the_demo_builds_no_benchmark_and_no_whole_workspace() {
        let mut bins = MESH.to_vec();
        bins.push(DEMO);
        let args = build_commands(&bins).concat().join(" ");
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
