//! Processes started inside a pod (network namespace + cgroup, optionally
//! as another user), with their output collected line by line so tests can
//! wait for what a process says.

use crate::cgroup::Cgroup;
use crate::netns::Netns;
use crate::sys::{ChildSetup, enter_on_exec};
use crate::wait::{fatal, wait_cleanup, wait_until};
use anyhow::{Context, Result, anyhow};
use conduit_base::sync::Unpoisoned;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static ECHO: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether processes started from now on copy their output to stderr
/// (default yes: a failing test shows what its processes said; the demo
/// turns it off and prints what matters itself).
pub fn set_echo(on: bool) {
    ECHO.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// What to start and where.
#[derive(Debug)]
pub struct Spawn {
    label: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    setup: ChildSetup,
    echo: bool,
}

impl Spawn {
    /// `program`, labelled `label` in logs and errors.
    pub fn new(label: impl Into<String>, program: impl AsRef<Path>) -> Self {
        Self {
            label: label.into(),
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            setup: ChildSetup::default(),
            echo: ECHO.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Starts the process inside `ns`.
    pub fn netns(mut self, ns: &Netns) -> Result<Self> {
        self.setup.netns = Some(ns.open()?);
        Ok(self)
    }

    /// Starts the process in `cg` (before it runs any of its own code).
    pub fn cgroup(mut self, cg: &Cgroup) -> Result<Self> {
        self.setup.cgroup_procs = Some(cg.procs_file()?);
        Ok(self)
    }

    /// Runs the process as `uid`/`gid` with no capabilities.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.setup.user = Some((uid, gid));
        self
    }

    /// Do not copy the process's output to the test's stderr.
    pub fn quiet(mut self) -> Self {
        self.echo = false;
        self
    }

    /// Starts the process (in its own process group, so a Ctrl-C at the
    /// terminal reaches only the harness, which then stops it in order).
    pub fn start(self) -> Result<Process> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            // Logs are read by tests and people through pipes: no colours.
            .env("NO_COLOR", "1")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        enter_on_exec(&mut cmd, self.setup);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", self.label, self.program.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child
            .stdout
            .take()
            .map(|s| reader(&self.label, Stream::Stdout, s, &lines, self.echo));
        let err = child
            .stderr
            .take()
            .map(|s| reader(&self.label, Stream::Stderr, s, &lines, self.echo));
        let stdin = child.stdin.take();
        Ok(Process {
            label: self.label,
            child,
            lines,
            stdin,
            readers: [out, err].into_iter().flatten().collect(),
        })
    }

    /// Starts the process and waits (at most `timeout`) for it to exit.
    pub fn run(self, timeout: Duration) -> Result<Finished> {
        let mut p = self.start()?;
        p.stdin.take();
        let status = p.wait_exit(timeout)?;
        Ok(Finished {
            status,
            lines: p.lines(),
        })
    }
}

fn reader(
    label: &str,
    stream: Stream,
    src: impl Read + Send + 'static,
    lines: &Arc<Mutex<Vec<(Stream, String)>>>,
    echo: bool,
) -> std::thread::JoinHandle<()> {
    let (label, lines) = (label.to_owned(), Arc::clone(lines));
    std::thread::spawn(move || {
        for line in BufReader::new(src).lines() {
            let Ok(line) = line else { break };
            if echo {
                eprintln!("[{label}] {line}");
            }
            lines.locked().push((stream, line));
        }
    })
}

/// A process that exited, with its output.
#[derive(Debug)]
pub struct Finished {
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it printed, in order per stream.
    pub lines: Vec<(Stream, String)>,
}

impl Finished {
    /// Its standard output lines.
    pub fn stdout(&self) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, l)| l.as_str())
    }

    /// Its standard error, joined.
    pub fn stderr(&self) -> String {
        self.lines
            .iter()
            .filter(|(s, _)| *s == Stream::Stderr)
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A running process; terminated (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Child,
    lines: Arc<Mutex<Vec<(Stream, String)>>>,
    stdin: Option<ChildStdin>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Its label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line it printed so far (both streams).
    pub fn lines(&self) -> Vec<(Stream, String)> {
        self.lines.locked().clone()
    }

    /// Lines it printed on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, l)| l)
            .collect()
    }

    /// Waits until it prints a line (either stream) matching `pred`; fails
    /// early, with its output, if it exits first.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let label = self.label.clone();
        wait_until(&format!("{label} to say {what}"), timeout, || {
            if let Some((_, l)) = self.lines().into_iter().find(|(_, l)| pred(l)) {
                return Ok(l);
            }
            if let Some(status) = self.child.try_wait()? {
                // Its last lines may still be in the pipes.
                self.join_readers();
                if let Some((_, l)) = self.lines().into_iter().find(|(_, l)| pred(l)) {
                    return Ok(l);
                }
                return Err(fatal(format!(
                    "{label} exited ({status}); its output:\n{}",
                    self.output_text()
                )));
            }
            Err(anyhow!("not yet"))
        })
    }

    /// All output as one text (for error messages).
    pub fn output_text(&self) -> String {
        self.lines()
            .into_iter()
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Writes a line to its stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: stdin closed", self.label))?;
        writeln!(stdin, "{line}").with_context(|| format!("writing to {}", self.label))?;
        stdin.flush()?;
        Ok(())
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.child.id())?);
        kill(pid, sig).with_context(|| format!("sending {sig} to {}", self.label))
    }

    /// Its exit status, if it exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for it to exit by itself, killing it after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let label = self.label.clone();
        let res = wait_cleanup(&format!("{label} to exit"), timeout, || {
            self.child
                .try_wait()?
                .ok_or_else(|| anyhow!("still running"))
        });
        if res.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.join_readers();
        res
    }

    /// Waits for the output readers (after the process exited).
    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.child.try_wait()? {
            return Ok(s);
        }
        self.signal(Signal::SIGTERM)?;
        let label = self.label.clone();
        match wait_cleanup(&format!("{label} to stop"), grace, || {
            self.child
                .try_wait()?
                .ok_or_else(|| anyhow!("still running"))
        }) {
            Ok(s) => Ok(s),
            Err(_) => {
                self.child.kill()?;
                Ok(self.child.wait()?)
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.terminate(Duration::from_secs(5));
    }
}
