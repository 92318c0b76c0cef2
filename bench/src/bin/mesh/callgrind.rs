//! `--callgrind DIR`: the proxies of the proxied paths run under valgrind's
//! callgrind (`conduit_tests::mesh::proxy::Launcher::Callgrind`), and each
//! measured slice is counted on its own: the proxies' counters are zeroed
//! before it (`callgrind_control --zero`, which leaves the warm-up and
//! everything before out) and dumped after it (`callgrind_control --dump`);
//! the dump's total is what the proxy executed for the slice's requests.
//! Dumps are incremental files `<profile>.<n>` that stay in DIR for
//! `callgrind_annotate`.
//!
//! `callgrind_control` reaches the process through `vgdb` (FIFOs in /tmp,
//! and ptrace to wake a process blocked in a system call). It runs as the
//! proxy's uid: valgrind's side checks that vgdb is alive with
//! `kill(vgdb, 0)`, which a uid-1337 process may not do to a root vgdb, and
//! a root `callgrind_control` then waits forever.

use crate::paths::Kind;
use anyhow::{Context, Result, bail, ensure};
use conduit_bench::cost::{callgrind_total, wait_for};
use conduit_tests::env::PROXY_UID;
use conduit_tests::mesh::proxy::Launcher;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long one `callgrind_control` may take (it answers in well under a
/// second, even from a busy proxy).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// The programs `--callgrind` runs.
const TOOLS: [&str; 2] = ["valgrind", "callgrind_control"];

/// Where the profiles go.
#[derive(Debug, Clone)]
pub struct Callgrind {
    dir: PathBuf,
}

impl Callgrind {
    /// Checks valgrind and callgrind_control are installed and that the
    /// proxies' uid can write into `dir`: created if missing (sticky and
    /// world-writable, like /tmp); an existing directory is never chmod'ed
    /// (`--callgrind /` or a source tree must not become world-writable),
    /// it must already let others write.
    pub fn prepare(dir: &Path) -> Result<Callgrind> {
        for tool in TOOLS {
            if find_in_path(tool).is_none() {
                bail!(
                    "--callgrind needs {tool}, which is not in PATH \
                     (apt-get install valgrind, or `cargo xtask setup`)"
                );
            }
        }
        Ok(Callgrind {
            dir: prepare_dir(dir)?,
        })
    }

    /// The directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How the proxies of `kind`'s mesh are started.
    pub fn launcher(&self, kind: Kind) -> Launcher {
        Launcher::Callgrind {
            dir: self.dir.clone(),
            prefix: kind.key().to_owned(),
        }
    }
}

/// Makes `dir` ready for the proxies' profiles (see [`Callgrind::prepare`]);
/// its absolute path.
fn prepare_dir(dir: &Path) -> Result<PathBuf> {
    let existed = dir.exists();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))?;
    if existed {
        let mode = std::fs::metadata(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .permissions()
            .mode();
        ensure!(
            others_may_write(mode),
            "--callgrind {}: the proxies (uid {PROXY_UID}) cannot write into it (mode {:o}), \
             and an existing directory is left as it is: give a directory that does not \
             exist yet (it is created sticky and world-writable, like /tmp)",
            dir.display(),
            mode & 0o7777
        );
    } else {
        // Sticky and world-writable, like /tmp: callgrind writes as uid 1337.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))
            .with_context(|| format!("making {} writable for the proxies", dir.display()))?;
    }
    for a in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(a)
            .with_context(|| format!("reading {}", a.display()))?
            .permissions()
            .mode();
        ensure!(
            others_may_enter(mode),
            "--callgrind {}: the proxies (uid {PROXY_UID}) cannot reach it: {} is mode {:o}; \
             choose a directory elsewhere (e.g. under /tmp)",
            dir.display(),
            a.display(),
            mode & 0o7777
        );
    }
    Ok(dir)
}

/// Whether a directory of mode `mode` lets other users through.
fn others_may_enter(mode: u32) -> bool {
    mode & 0o001 != 0
}

/// Whether a directory of mode `mode` lets other users create files in it.
fn others_may_write(mode: u32) -> bool {
    mode & 0o003 == 0o003
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// One proxy running under callgrind.
#[derive(Debug, Clone)]
pub struct Profiled {
    /// Its label in tables ("client proxy").
    pub label: &'static str,
    pub pid: u32,
    /// Its profile, the dumps' base name (`<dir>/<path>-<pod>.<pid>`).
    pub profile: PathBuf,
}

/// Runs `f` with the counters of `proxies` zeroed before and dumped after;
/// its result and the instructions each proxy executed meanwhile.
pub fn counted<T>(proxies: &[Profiled], f: impl FnOnce() -> Result<T>) -> Result<(T, Vec<u64>)> {
    for p in proxies {
        control("--zero", p.pid).with_context(|| format!("zeroing the {}'s counters", p.label))?;
    }
    let r = f()?;
    let totals = proxies
        .iter()
        .map(|p| dump(p).with_context(|| format!("dumping the {}'s counters", p.label)))
        .collect::<Result<_>>()?;
    Ok((r, totals))
}

/// Dumps `p`'s counters (they restart from zero) and reads the dump's total.
fn dump(p: &Profiled) -> Result<u64> {
    let before = newest_dump(&p.profile)?.map_or(0, |(n, _)| n);
    control("--dump", p.pid)?;
    // callgrind writes the file before it answers; wait a little anyway
    // rather than read a half-written one.
    let (_, file, text) = wait_for(
        &format!("callgrind's dump {}.<n>", p.profile.display()),
        Duration::from_secs(10),
        || {
            let (n, file) = newest_dump(&p.profile).ok().flatten()?;
            let text = std::fs::read_to_string(&file).ok()?;
            (n > before && is_complete(&text)).then_some((n, file, text))
        },
    )?;
    callgrind_total(&text).with_context(|| format!("no total in {}", file.display()))
}

/// The newest dump of `profile` (`<profile>.<n>`, largest `n`).
fn newest_dump(profile: &Path) -> Result<Option<(u32, PathBuf)>> {
    let dir = profile.parent().context("a profile has a directory")?;
    let base = profile
        .file_name()
        .context("a profile has a file name")?
        .to_string_lossy();
    let names = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok());
    Ok(newest_number(&base, names).map(|n| (n, dir.join(format!("{base}.{n}")))))
}

/// The largest `n` among `names` of the form `<base>.<n>`.
fn newest_number(base: &str, names: impl IntoIterator<Item = String>) -> Option<u32> {
    names
        .into_iter()
        .filter_map(|name| {
            let n = name.strip_prefix(base)?.strip_prefix('.')?;
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            n.parse().ok()
        })
        .max()
}

/// Whether a dump is written to its end (the `totals:` line is last).
fn is_complete(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("totals:"))
}

/// Runs `callgrind_control <arg> <pid>` as the proxy's uid and checks it
/// reached the process.
fn control(arg: &str, pid: u32) -> Result<()> {
    let mut child = Command::new("callgrind_control")
        .arg(arg)
        .arg(pid.to_string())
        .uid(PROXY_UID)
        .gid(PROXY_UID)
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting callgrind_control (apt-get install valgrind)")?;
    let waited = wait_for(
        &format!("callgrind_control {arg} {pid}"),
        CONTROL_TIMEOUT,
        || child.try_wait().ok().flatten(),
    );
    if let Err(e) = waited {
        // It and its vgdb.
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        return Err(e);
    }
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "callgrind_control {arg} {pid}: {}: {text}",
        out.status
    );
    answered(&text, pid).with_context(|| format!("callgrind_control {arg} {pid}"))
}

/// Whether `callgrind_control`'s output says it reached `pid` (it exits 0
/// even when it found no such process).
fn answered(text: &str, pid: u32) -> Result<()> {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with(&format!("PID {pid}:")));
    ensure!(
        lines.next().is_some() && lines.any(|l| l.trim() == "OK."),
        "no answer from the process: {}",
        text.trim()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An existing directory the proxies cannot write into is refused and
    /// left as it was; a new one is created for them.
    #[test]
    fn an_existing_directory_is_never_opened_up() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let existing = tmp.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = prepare_dir(&existing).unwrap_err().to_string();
        assert!(err.contains("cannot write into it"), "{err}");
        let mode = std::fs::metadata(&existing).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
        let fresh = tmp.path().join("fresh");
        prepare_dir(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o1777);
    }

    #[test]
    fn directory_modes() {
        // (mode, others may enter, others may write)
        for (mode, enter, write) in [
            (0o755, true, false),
            (0o700, false, false),
            (0o1777, true, true),
            (0o777, true, true),
            (0o772, false, false),
        ] {
            assert_eq!(
                (others_may_enter(mode), others_may_write(mode)),
                (enter, write),
                "{mode:o}"
            );
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_newest_dump_is_the_largest_number_of_this_profile() {
        let files = names(&[
            "ebpf-client.42",
            "ebpf-client.42.2",
            "ebpf-client.42.10",
            "ebpf-client.42.9",
            // Another pid, another proxy, not dumps.
            "ebpf-client.421.30",
            "ebpf-web-1.42.40",
            "ebpf-client.42.11.tmp",
            "ebpf-client.42.",
            "ebpf-client.42.-3",
        ]);
        assert_eq!(newest_number("ebpf-client.42", files), Some(10));
        assert_eq!(
            newest_number("ebpf-client.42", names(&["ebpf-client.42"])),
            None
        );
        assert_eq!(newest_number("x.1", Vec::new()), None);
    }

    #[test]
    fn a_dump_is_complete_with_its_totals_line() {
        assert!(is_complete(
            "version: 1\nsummary: 300279\nfn=main\n1 5\ntotals: 300279\n"
        ));
        assert!(!is_complete("version: 1\nsummary: 300279\nfn=main\n"));
    }

    #[test]
    fn callgrind_control_answers() {
        let ok = "\nPID 17276: /work/target/release/conduit-proxy --admin-addr 0.0.0.0:4191\n  OK.\n\
                  sending command zero to pid 17276\n";
        assert!(answered(ok, 17276).is_ok());
        assert!(answered(ok, 1727).is_err());
        let missing = "Error: Callgrind task with PID/name '99' not detected.\nSee '/usr/bin/callgrind_control -h' for help.\n";
        assert!(answered(missing, 99).is_err());
        assert!(answered("No active callgrind runs detected.\n", 99).is_err());
        assert!(answered("PID 99: x\n", 99).is_err());
    }

    #[test]
    fn directories_others_may_enter() {
        assert!(others_may_enter(0o40755));
        assert!(others_may_enter(0o1777));
        assert!(!others_may_enter(0o40700));
        assert!(!others_may_enter(0o750));
    }
}
