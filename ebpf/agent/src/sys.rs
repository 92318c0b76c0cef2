//! The agent's raw system calls, the only module allowed `unsafe`: nix and
//! aya offer no safe wrapper for these.
//!
//! * two bpf(2) commands aya 0.14 does not offer for every program type:
//!   creating a cgroup bpf_link for `cgroup/getsockopt` (aya cannot turn
//!   that link into a pinnable `FdLink`) and pinning a descriptor;
//! * `pidfd_open` and `pidfd_getfd` (discovery takes a proxy's listener);
//! * `getsockopt(SO_NETNS_COOKIE)` (the network namespace of a socket);
//! * `getrlimit`/`setrlimit(RLIMIT_NOFILE)` (one descriptor per registration).
//!
//! Each `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`: BPF_CGROUP_GETSOCKOPT.
pub const BPF_CGROUP_GETSOCKOPT: u32 = 21;

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 6],
}

#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of the size
    // passed, for the command given; the kernel reads at most that size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `BPF_LINK_CREATE`: attaches `prog` to `target` and returns the link.
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> std::io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        ..Default::default()
    };
    owned_fd(bpf(BPF_LINK_CREATE, &mut attr)?)
}

/// `BPF_OBJ_PIN`: pins a bpf object at `path` (on a bpffs).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut attr = ObjPinAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_OBJ_PIN, &mut attr)?;
    Ok(())
}

/// A descriptor number the kernel just returned (or -1 and errno).
fn owned_fd(rc: libc::c_long) -> std::io::Result<OwnedFd> {
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(rc).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_open(2)`: a descriptor referring to process `pid`.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; no memory is passed.
    owned_fd(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) })
}

/// `pidfd_getfd(2)`: a duplicate, in our table, of descriptor `target` of
/// the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: &OwnedFd, target: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes two descriptor numbers and flags and returns
    // a new descriptor (a duplicate in our table) or -1; no memory is passed.
    owned_fd(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) })
}

/// `SO_NETNS_COOKIE` (include/uapi/asm-generic/socket.h).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the network namespace a socket belongs to.
pub fn socket_netns_cookie(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `fd` is a valid descriptor for the call; `cookie` and `len`
    // are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Raises the soft limit of open descriptors to the hard one: each
/// registration holds a connection.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill and then read.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 || lim.rlim_cur >= lim.rlim_max {
        return;
    }
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    lim.rlim_cur = hard;
    // SAFETY: as above; only the soft limit changes, up to the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, soft, hard, "could not raise the open-descriptor limit");
    }
}
