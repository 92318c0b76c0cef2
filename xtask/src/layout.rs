//! `cargo xtask proxy-layout`: writes `proxy/conduit-proxy.order`, the
//! functions a mesh proxy runs, hottest first, which `proxy/build.rs` hands
//! to the linker so that they sit together at the start of the release
//! binary's code (see that file for why this lowers the proxy's RSS).
//!
//! The training run is the mesh benchmark itself, short and slow: the
//! release binaries, with `conduit-proxy` replaced by a wrapper that runs
//! the real one under callgrind, so both proxies of a mesh (client side and
//! server side: mTLS both ways, discovery and certificates from the
//! controller, agent registration, HTTP/1.1 and HTTP/2, metrics scrapes)
//! record every function they execute, dumping their profile every few
//! million basic blocks, so each function's first dump says when in the
//! proxy's life it first ran. The functions found in the release binary
//! are written in the order they first ran (by dump; within one dump, most
//! instructions first): start-up first (arguments, certificates, the
//! controller's streams, registration, readiness), then what the first
//! requests needed, and so on. An idle proxy then has the start-up part
//! resident and little else; a busy one the whole list, and no more.
//!
//! [`check`] runs after every release build of the proxy and says how much
//! of the file the build still matches (symbol names change with the
//! dependencies' versions and features).

use crate::util::{exec, output, root, target_dir};
use crate::{build_ebpf, release, setup};
use anyhow::{Context, Result, bail, ensure};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The layout file, relative to the workspace root.
const ORDER_FILE: &str = "proxy/conduit-proxy.order";

/// The mesh benchmark's arguments for the training run: both protocols,
/// a fixed rate and a small closed loop, one short slice each.
const TRAINING: &[&str] = &[
    "--paths",
    "direct,ebpf",
    "--protocols",
    "http1,http2",
    "--rates",
    "200",
    "--concurrency",
    "8",
    "--duration",
    "2s",
    "--rounds",
    "1",
    "--warmup",
    "1s",
    "--no-write",
];

#[derive(clap::Args)]
pub struct Options {
    /// Where callgrind's files and the wrapper go (default:
    /// target/proxy-layout).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

pub fn run(opts: &Options) -> Result<()> {
    setup::deb_packages()?;
    build_ebpf::run(&build_ebpf::Options::default())?;
    release::build("the training run uses", release::MESH_BENCH)?;
    let release_dir = target_dir().join("release");
    let work = opts
        .work_dir
        .clone()
        .unwrap_or_else(|| target_dir().join("proxy-layout"));
    let bin_dir = work.join("bin");
    let out_dir = work.join("callgrind");
    for d in [&bin_dir, &out_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("emptying {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // The proxies run as uid 1337: callgrind's files must be writable.
    std::fs::set_permissions(&out_dir, std::fs::Permissions::from_mode(0o1777))?;
    for b in release::MESH_BENCH {
        let real = release_dir.join(b.name);
        let link = bin_dir.join(b.name);
        if b.name == "conduit-proxy" {
            std::fs::write(&link, wrapper(&real, &out_dir))?;
            std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o755))?;
        } else {
            std::os::unix::fs::symlink(&real, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    let t = crate::util::step("training run: the mesh benchmark with both proxies under callgrind");
    exec(
        crate::bench::program("conduit-mesh-bench")
            .args(TRAINING)
            .env("CONDUIT_BIN_DIR", &bin_dir)
            .current_dir(root()),
        "the training run failed: see its output above",
    )?;
    crate::util::done("training run", t);

    let mut ran: HashMap<String, Ran> = HashMap::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&out_dir)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let part = part(&text);
        for (name, ir) in self_costs(&text) {
            let r = ran.entry(name).or_insert(Ran {
                instructions: 0,
                first_part: part,
            });
            r.instructions += ir;
            r.first_part = r.first_part.min(part);
        }
        files += 1;
    }
    ensure!(
        files > 0,
        "callgrind wrote nothing into {}: did the proxies start?",
        out_dir.display()
    );
    let proxy = release_dir.join("conduit-proxy");
    let symbols = function_symbols(&proxy)?;
    let order = ordered(&ran, &symbols);
    let bytes: u64 = order.iter().map(|n| symbols[n]).sum();
    let total: u64 = symbols.values().sum();
    let mut text = order.join("\n");
    text.push('\n');
    let file = root().join(ORDER_FILE);
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    eprintln!(
        "    the proxies ran {} of the binary's {} functions ({} callgrind files), {:.2} of {:.2} MB of code: written to {ORDER_FILE}",
        order.len(),
        symbols.len(),
        files,
        bytes as f64 / 1e6,
        total as f64 / 1e6,
    );
    eprintln!("    the next release build of conduit-proxy links them first");
    Ok(())
}

/// After a release build: how much of the layout file the built proxy
/// still has. Prints one line; a stale file is a warning, never an error.
pub fn check() {
    let file = root().join(ORDER_FILE);
    let Ok(text) = std::fs::read_to_string(&file) else {
        return;
    };
    let proxy = target_dir().join("release").join("conduit-proxy");
    let Ok(symbols) = function_symbols(&proxy) else {
        return;
    };
    let listed: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let found = listed.iter().filter(|n| symbols.contains_key(**n)).count();
    let share = found as f64 / listed.len().max(1) as f64;
    eprintln!(
        "    proxy code layout: {found} of the {} functions in {ORDER_FILE} are in this build ({:.0}%){}",
        listed.len(),
        share * 100.0,
        if share < 0.8 {
            ": the file is stale (dependencies changed?); `cargo xtask proxy-layout` rewrites it"
        } else {
            ""
        }
    );
}

/// The script standing in for `conduit-proxy`: the real one under callgrind,
/// dumping every 2 million basic blocks (a few hundredths of a second of a
/// proxy's own run) and when it exits.
fn wrapper(real: &Path, out_dir: &Path) -> String {
    format!(
        "#!/bin/sh\nexec valgrind --tool=callgrind --demangle=no --dump-every-bb=2000000 \
         --callgrind-out-file={}/callgrind.%p {} \"$@\"\n",
        out_dir.display(),
        real.display()
    )
}

/// Function symbols of a binary (`nm`): name and size in bytes.
fn function_symbols(bin: &Path) -> Result<HashMap<String, u64>> {
    let text = output(Command::new("nm").args(["-S"]).arg(bin))
        .with_context(|| format!("nm {} failed (binutils installed?)", bin.display()))?;
    let symbols = parse_nm(&text);
    if symbols.is_empty() {
        bail!("{} has no function symbols (stripped?)", bin.display());
    }
    Ok(symbols)
}

/// `nm -S` lines `<addr> <size> <type> <name>`; text symbols only.
fn parse_nm(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_addr, size, kind, name) = (f.next()?, f.next()?, f.next()?, f.next()?);
            matches!(kind, "t" | "T" | "w" | "W")
                .then(|| Some((name.to_owned(), u64::from_str_radix(size, 16).ok()?)))?
        })
        .collect()
}

/// Instructions executed in each function itself (callgrind's self cost,
/// event `Ir`), from one callgrind output file. Names are compressed
/// (`fn=(7) name` once, `fn=(7)` after) and may first appear in a call
/// (`cfn=`); the cost line after `calls=` is the callee's inclusive cost and
/// is not the caller's own.
fn self_costs(text: &str) -> HashMap<String, u64> {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut costs: HashMap<String, u64> = HashMap::new();
    let mut current: Option<String> = None;
    let mut skip_next = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("fn=") {
            current = Some(resolve(&mut names, rest));
            continue;
        }
        if let Some(rest) = line.strip_prefix("cfn=") {
            resolve(&mut names, rest);
            continue;
        }
        if line.starts_with("calls=") {
            skip_next = true;
            continue;
        }
        let is_cost = line
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '*'));
        if !is_cost {
            continue;
        }
        if std::mem::take(&mut skip_next) {
            continue;
        }
        if let (Some(f), Some(ir)) = (
            &current,
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok()),
        ) {
            *costs.entry(f.clone()).or_default() += ir;
        }
    }
    costs
}

/// Which dump of its process a callgrind file is (`part: 3`; 1 when the
/// process dumped only once).
fn part(text: &str) -> u32 {
    text.lines()
        .take_while(|l| !l.starts_with("fn="))
        .find_map(|l| l.strip_prefix("part:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(1)
}

/// What the training run saw of one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ran {
    /// Instructions executed in it (self cost), over every proxy and dump.
    instructions: u64,
    /// The first dump (of any proxy) in which it ran.
    first_part: u32,
}

/// `(7) name` defines id 7, `(7)` refers to it, a bare name is itself.
fn resolve(names: &mut HashMap<String, String>, spec: &str) -> String {
    let spec = spec.trim();
    let Some(rest) = spec.strip_prefix('(') else {
        return spec.to_owned();
    };
    let Some((id, name)) = rest.split_once(')') else {
        return spec.to_owned();
    };
    let name = name.trim();
    if name.is_empty() {
        names.get(id).cloned().unwrap_or_else(|| spec.to_owned())
    } else {
        names.insert(id.to_owned(), name.to_owned());
        name.to_owned()
    }
}

/// The functions of `symbols` that ran, in the order they first ran (by
/// dump); within one dump most instructions first (ties by name, so the
/// file is stable).
fn ordered(ran: &HashMap<String, Ran>, symbols: &HashMap<String, u64>) -> Vec<String> {
    let mut list: Vec<(&String, Ran)> = ran
        .iter()
        .filter(|(n, r)| r.instructions > 0 && symbols.contains_key(*n))
        .map(|(n, r)| (n, *r))
        .collect();
    list.sort_by(|a, b| {
        (a.1.first_part.cmp(&b.1.first_part))
            .then(b.1.instructions.cmp(&a.1.instructions))
            .then_with(|| a.0.cmp(b.0))
    });
    let mut seen = HashSet::new();
    list.into_iter()
        .filter(|(n, _)| seen.insert(*n))
        .map(|(n, _)| n.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLGRIND: &str = "\
version: 1
creator: callgrind-3.19.0
events: Ir
ob=(1) /bin/conduit-proxy
fl=(1) ???
fn=(1) _ZN5proxy4main17h0123456789abcdefE
0 10
cfn=(2) _ZN5proxy7forward17h0123456789abcdefE
calls=3 0
0 1000
+2 5
fn=(2)
0 400
fn=(3) memcpy
0 70
fn=(2)
* 100
totals: 1585
";

    #[test]
    fn self_cost_leaves_out_what_a_call_costs_the_callee() {
        let c = self_costs(CALLGRIND);
        assert_eq!(c["_ZN5proxy4main17h0123456789abcdefE"], 15);
        assert_eq!(c["_ZN5proxy7forward17h0123456789abcdefE"], 500);
        assert_eq!(c["memcpy"], 70);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn only_functions_of_the_binary_are_ordered_hottest_first() {
        let ran: HashMap<String, Ran> = self_costs(CALLGRIND)
            .into_iter()
            .map(|(n, instructions)| {
                (
                    n,
                    Ran {
                        instructions,
                        first_part: 1,
                    },
                )
            })
            .collect();
        let symbols = parse_nm(
            "0000000000001000 0000000000000040 t _ZN5proxy4main17h0123456789abcdefE\n\
             0000000000001040 0000000000000200 T _ZN5proxy7forward17h0123456789abcdefE\n\
             0000000000002000 0000000000000008 D some_data\n\
             0000000000003000 0000000000000010 t never_ran\n\
             0000000000004000 U memcpy\n",
        );
        assert_eq!(symbols.len(), 3, "{symbols:?}");
        assert_eq!(
            ordered(&ran, &symbols),
            [
                "_ZN5proxy7forward17h0123456789abcdefE",
                "_ZN5proxy4main17h0123456789abcdefE"
            ]
        );
    }

    #[test]
    fn functions_come_in_the_order_they_first_ran() {
        let r = |instructions, first_part| Ran {
            instructions,
            first_part,
        };
        let ran = HashMap::from([
            ("parse_args".to_owned(), r(100, 1)),
            ("forward".to_owned(), r(9_000, 5)),
            ("encode".to_owned(), r(700, 5)),
            ("poll".to_owned(), r(20_000, 1)),
        ]);
        let symbols = ran.keys().map(|k| (k.clone(), 16)).collect();
        assert_eq!(
            ordered(&ran, &symbols),
            ["poll", "parse_args", "forward", "encode"]
        );
    }

    #[test]
    fn part_reads_the_dump_number() {
        assert_eq!(part(CALLGRIND), 1);
        assert_eq!(part("version: 1\npart: 3\nevents: Ir\nfn=(1) f\n0 1\n"), 3);
    }

    #[test]
    fn resolve_reads_compressed_names() {
        let mut names = HashMap::new();
        assert_eq!(resolve(&mut names, "(4) f"), "f");
        assert_eq!(resolve(&mut names, "(4)"), "f");
        assert_eq!(resolve(&mut names, "g"), "g");
        assert_eq!(resolve(&mut names, "(9)"), "(9)");
    }
}
