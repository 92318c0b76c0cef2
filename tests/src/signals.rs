//! Ctrl-C for long-running harness programs (the demo): SIGINT, SIGTERM and
//! SIGHUP are taken by a thread of their own, which interrupts every wait
//! (see [`crate::wait::interrupt`]) so the program unwinds and its drops
//! clean up. A second signal exits at once.

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use std::io::Write;

/// Installs the handling. Call first thing in `main`, before any other
/// thread starts: the signals are blocked in the calling thread and so in
/// every thread started afterwards (children unblock them before `exec`).
pub fn install() -> Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .context("blocking SIGINT/SIGTERM/SIGHUP")?;
    std::thread::spawn(move || {
        let mut seen = 0;
        while let Ok(sig) = set.wait() {
            seen += 1;
            if seen > 1 {
                let _ = writeln!(
                    std::io::stderr(),
                    "\n{sig} again: exiting without cleaning up"
                );
                std::process::exit(130);
            }
            let _ = writeln!(
                std::io::stderr(),
                "\n{sig}: stopping and cleaning up (again to exit at once)"
            );
            crate::wait::interrupt();
        }
    });
    Ok(())
}
