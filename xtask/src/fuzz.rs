//! `cargo xtask fuzz [TARGET] [--time S]`: builds the fuzz targets in
//! `fuzz/` (cargo fuzz, libFuzzer, nightly) and runs each for a fixed time
//! on its committed seed corpus (`fuzz/corpus/<target>`), then prints one
//! line per target: executions, coverage (`cov:`, `ft:`) and corpus size.
//!
//! New inputs go to `target/fuzz/corpus/<target>` (the committed seeds stay
//! as they are); a crash fails the task naming the reproducer in
//! `target/fuzz/artifacts/<target>/` and the command that replays it.

use crate::setup;
use crate::util::{done, exec, root, step, target_dir};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Every target in `fuzz/fuzz_targets/`, in the order they run.
pub const TARGETS: [&str; 10] = [
    "detect",
    "transport_header",
    "register_wire",
    "http1_head",
    "proxy_discovery_yaml",
    "controller_discovery_yaml",
    "policy_yaml",
    "token_file",
    "certify_csr",
    "status_records",
];

/// Seconds per target in `cargo xtask test` (CI).
pub const CI_SECONDS: u64 = 5;

/// Largest input libFuzzer generates (bytes): above every parser's limit
/// that matters (a 64 KiB registration frame is reached through its length
/// prefix, not by a 64 KiB input).
const MAX_LEN: &str = "8192";

#[derive(clap::Args)]
pub struct Options {
    /// Run only this target (default: all of them).
    pub target: Option<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub time: u64,
}

/// One target's run, from libFuzzer's output.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub execs: u64,
    pub cov: u64,
    pub ft: u64,
    pub corpus: u64,
}

pub fn run(opts: &Options) -> Result<()> {
    setup::cargo_fuzz()?;
    let targets: Vec<&str> = match opts.target.as_deref() {
        None => TARGETS.to_vec(),
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}; targets: {}", TARGETS.join(", ")),
    };
    build()?;
    let mut rows = Vec::new();
    for t in targets {
        let stats = run_target(t, opts.time)?;
        rows.push((t, stats));
    }
    print!("{}", table(&rows, opts.time));
    Ok(())
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

fn fuzz_target_dir() -> PathBuf {
    target_dir().join("fuzz")
}

fn cargo_fuzz(sub: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+nightly",
        "fuzz",
        sub,
        "--sanitizer",
        "none",
        "--target-dir",
    ])
    .arg(fuzz_target_dir())
    .current_dir(fuzz_dir())
    // The workspace's settings must not leak into the fuzz build, nor
    // the stable toolchain `cargo xtask` runs under (cargo fuzz would
    // build with the cargo named by $CARGO).
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_BUILD_TARGET")
    .env_remove("CARGO")
    .env_remove("RUSTC")
    .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// Builds every target (once; cargo fuzz run reuses it).
pub fn build() -> Result<()> {
    let t = step("building the fuzz targets (cargo fuzz, nightly, libFuzzer)");
    exec(
        &mut cargo_fuzz("build"),
        "the fuzz targets do not build: see the compiler output above",
    )?;
    done("fuzz targets built", t);
    Ok(())
}

/// Runs one target for `seconds` and returns libFuzzer's final figures.
pub fn run_target(target: &str, seconds: u64) -> Result<Stats> {
    let t = step(&format!("fuzzing {target} for {seconds}s"));
    let seeds = seeds(target);
    let work = fuzz_target_dir().join("corpus").join(target);
    let artifacts = fuzz_target_dir().join("artifacts").join(target);
    for d in [&work, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    anyhow::ensure!(
        seeds.is_dir(),
        "no seed corpus at {}: commit a few inputs there",
        seeds.display()
    );
    let out = cargo_fuzz("run")
        .arg(target)
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={MAX_LEN}"))
        .arg("-print_final_stats=1")
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("could not start cargo fuzz run {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprintln!("{}", tail(&log, 60));
        bail!(
            "fuzz target {target} failed ({}): reproducer in {}; replay with `cd fuzz && cargo +nightly fuzz run --sanitizer none --target-dir {} {target} <file>`, then add it as a regression test beside the parser",
            out.status,
            artifacts.display(),
            fuzz_target_dir().display()
        );
    }
    let stats = parse_stats(&log)
        .with_context(|| format!("no libFuzzer statistics in the output of {target}"))?;
    done(
        &format!(
            "{target}: {} executions, cov {}, ft {}, corpus {}",
            stats.execs, stats.cov, stats.ft, stats.corpus
        ),
        t,
    );
    Ok(stats)
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The figures of libFuzzer's last status line (`#N DONE cov: C ft: F
/// corp: K/...`) and its final `stat::number_of_executed_units`.
pub fn parse_stats(log: &str) -> Option<Stats> {
    let mut s = Stats::default();
    let mut seen = false;
    for line in log.lines() {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            s.execs = n.trim().parse().ok()?;
            seen = true;
        }
        if line.starts_with('#') && line.contains(" cov: ") {
            let mut words = line.split_whitespace();
            while let Some(w) = words.next() {
                let next = || {
                    words
                        .clone()
                        .next()
                        .map(|v| v.split('/').next().unwrap_or(v))
                };
                let value = |v: Option<&str>| v.and_then(|v| v.parse::<u64>().ok());
                match w {
                    "cov:" => s.cov = value(next()).unwrap_or(s.cov),
                    "ft:" => s.ft = value(next()).unwrap_or(s.ft),
                    "corp:" => s.corpus = value(next()).unwrap_or(s.corpus),
                    _ => {}
                }
            }
        }
    }
    seen.then_some(s)
}

/// The summary table (Markdown, as docs/reliability.md shows it).
pub fn table(rows: &[(&str, Stats)], seconds: u64) -> String {
    let mut o = String::from(
        "\n| target | seconds | executions | execs/s | cov | ft | corpus |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (t, s) in rows {
        o.push_str(&format!(
            "| {t} | {seconds} | {} | {} | {} | {} | {} |\n",
            s.execs,
            s.execs / seconds.max(1),
            s.cov,
            s.ft,
            s.corpus
        ));
    }
    o
}

/// Used by `cargo xtask test`: every target for [`CI_SECONDS`].
pub fn ci() -> Result<()> {
    setup::cargo_fuzz()?;
    build()?;
    let mut rows = Vec::new();
    for t in TARGETS {
        rows.push((t, run_target(t, CI_SECONDS)?));
    }
    eprint!("{}", table(&rows, CI_SECONDS));
    Ok(())
}

/// The committed seed corpus of a target.
fn seeds(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_final_figures() {
        let log = "INFO: Seed: 1\n#2\tINITED cov: 10 ft: 11 corp: 3/40b exec/s: 0 rss: 30Mb\n\
                   #5000\tNEW    cov: 120 ft: 300 corp: 20/1000b lim: 4 exec/s: 2500 rss: 40Mb\n\
                   #9000\tDONE   cov: 130 ft: 310 corp: 22/1100b lim: 4 exec/s: 3000 rss: 41Mb\n\
                   Done 9000 runs in 3 second(s)\nstat::number_of_executed_units: 9000\n\
                   stat::peak_rss_mb: 41\n";
        assert_eq!(
            parse_stats(log),
            Some(Stats {
                execs: 9000,
                cov: 130,
                ft: 310,
                corpus: 22
            })
        );
        assert_eq!(parse_stats("#1 INITED cov: 1 ft: 1 corp: 1/1b\n"), None);
    }

    #[test]
    fn every_target_has_a_source_file_and_seeds() {
        for t in TARGETS {
            let src = fuzz_dir().join("fuzz_targets").join(format!("{t}.rs"));
            assert!(src.is_file(), "{}", src.display());
            let n = std::fs::read_dir(seeds(t)).map(|d| d.count()).unwrap_or(0);
            assert!(n > 0, "no seeds for {t}");
        }
        let on_disk = std::fs::read_dir(fuzz_dir().join("fuzz_targets"))
            .unwrap()
            .count();
        assert_eq!(on_disk, TARGETS.len(), "a target missing from TARGETS");
    }

    #[test]
    fn seed_corpora_stay_small() {
        let total: u64 = TARGETS
            .iter()
            .flat_map(|t| std::fs::read_dir(seeds(t)).unwrap())
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total < 256 * 1024, "seed corpora hold {total} bytes");
    }
}
