//! Counter numbering: one per-CPU `u64` per (program, outcome) pair, at
//! index `program * OUTCOMES + outcome` of [`crate::MAP_COUNTERS`].

/// Counted programs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Connect4 = 0,
    Connect6 = 1,
    Sockops = 2,
    Getsockopt = 3,
    Getpeername4 = 4,
    Getpeername6 = 5,
    SkLookup = 6,
    SkMsg = 7,
}

/// Outcomes, shared by all programs (each uses a subset, see [`VALID`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The program did its job: redirected, recorded, answered, rewritten, steered.
    Captured = 0,
    SkippedNotTcp = 1,
    SkippedNotEnrolled = 2,
    SkippedProxy = 3,
    SkippedLoopback = 4,
    SkippedPort = 5,
    SkippedExcluded = 6,
    SkippedNotPodIp = 7,
    SkippedFromPod = 8,
    SkippedNoRecord = 9,
    /// sockops: records of a closed connection deleted.
    Released = 10,
    FailedMapFull = 11,
    FailedNoListener = 12,
    FailedAssign = 13,
    FailedShortBuffer = 14,
    /// sockops: socket added to the fast-path sockhash.
    Fastpath = 15,
}

pub const PROGRAMS: usize = 8;
pub const OUTCOMES: usize = 16;
/// Length of the counters array.
pub const COUNTERS: u32 = (PROGRAMS * OUTCOMES) as u32;

#[inline(always)]
pub const fn index(program: Program, outcome: Outcome) -> u32 {
    program as u32 * OUTCOMES as u32 + outcome as u32
}

pub const PROGRAM_NAMES: [&str; PROGRAMS] = [
    "connect4",
    "connect6",
    "sockops",
    "getsockopt",
    "getpeername4",
    "getpeername6",
    "sk_lookup",
    "sk_msg",
];

pub const OUTCOME_NAMES: [&str; OUTCOMES] = [
    "captured",
    "skipped_not_tcp",
    "skipped_not_enrolled",
    "skipped_proxy",
    "skipped_loopback",
    "skipped_port",
    "skipped_excluded",
    "skipped_not_pod_ip",
    "skipped_from_pod",
    "skipped_no_record",
    "released",
    "failed_map_full",
    "failed_no_listener",
    "failed_assign",
    "failed_short_buffer",
    "fastpath",
];

use Outcome::*;
const CONNECT: &[Outcome] = &[
    Captured,
    SkippedNotTcp,
    SkippedNotEnrolled,
    SkippedProxy,
    SkippedLoopback,
    SkippedPort,
    SkippedExcluded,
    FailedMapFull,
];
const GETPEERNAME: &[Outcome] = &[Captured];

/// The outcomes each program can count, by [`Program`] number.
pub const VALID: [&[Outcome]; PROGRAMS] = [
    CONNECT,
    CONNECT,
    &[Captured, Released, Fastpath, FailedMapFull],
    &[Captured, SkippedNoRecord, FailedShortBuffer],
    GETPEERNAME,
    GETPEERNAME,
    &[
        Captured,
        SkippedNotTcp,
        SkippedNotPodIp,
        SkippedPort,
        SkippedFromPod,
        FailedNoListener,
        FailedAssign,
    ],
    &[Captured, SkippedNoRecord],
];
