//! The few places the harness must use `unsafe`: entering a pod between
//! `fork` and `exec`, and probing the `bpf` syscall. Everything else in the
//! crate is safe code.
#![allow(unsafe_code)]

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{Gid, Uid, setgid, setgroups, setuid};
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// What a child does before `exec`: everything is opened by the parent, so
/// the child only makes plain system calls (no allocation after `fork`).
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// `cgroup.procs` of the cgroup to join, opened for writing.
    pub cgroup_procs: Option<File>,
    /// `/run/netns/<name>` of the network namespace to enter.
    pub netns: Option<File>,
    /// Run as this uid and gid, with no supplementary groups (and so, for a
    /// non-zero uid, no capabilities).
    pub user: Option<(u32, u32)>,
}

/// Arranges for `cmd`'s child to join the cgroup, enter the network namespace
/// and drop to the user of `setup` (in this order: the first two need root),
/// to start with no blocked signals, and to be killed if the spawning thread
/// dies (a crashed test leaves no processes behind).
pub fn enter_on_exec(cmd: &mut Command, setup: ChildSetup) {
    let ChildSetup {
        cgroup_procs,
        netns,
        user,
    } = setup;
    let hook = move || -> io::Result<()> {
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
        if let Some(procs) = &cgroup_procs {
            // "0" moves the writing process itself.
            nix::unistd::write(procs, b"0")?;
        }
        if let Some(ns) = &netns {
            setns(ns, CloneFlags::CLONE_NEWNET)?;
        }
        if let Some((uid, gid)) = user {
            setgroups(&[])?;
            setgid(Gid::from_raw(gid))?;
            setuid(Uid::from_raw(uid))?;
        }
        // After setuid, which clears it.
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec; it only makes system calls
    // through nix on values opened before the fork, and does not allocate.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Checks that the `bpf` syscall works by creating (and closing) a
/// one-entry array map.
pub fn probe_bpf_syscall() -> io::Result<()> {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries; the rest must be zero.
    let mut attr = [0u32; 32];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    const BPF_MAP_CREATE: libc::c_long = 0;
    // SAFETY: attr is a valid, zero-padded bpf_attr that outlives the call;
    // the size passed is its size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}
