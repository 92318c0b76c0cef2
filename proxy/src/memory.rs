//! Giving freed heap memory back to the kernel after a burst.
//!
//! glibc's allocator keeps freed memory in its arenas; it returns only the
//! free top of each heap, so after thousands of short-lived connections the
//! freed buffers, interleaved with live ones, stay resident: a deliberate
//! overload left the proxy at ~300 MB RSS long after the load stopped.
//! [`reclaim`] runs on the proxy's periodic sweep: when the allocator holds
//! more than a threshold of free bytes it calls `malloc_trim(0)`, which
//! releases the free pages inside every arena (`MADV_DONTNEED`), not only at
//! the tops. Under steady load little is free and nothing happens.
//!
//! Other allocators (musl's, or a global allocator swapped in) need nothing:
//! the functions below do nothing there.

/// Trim when the allocator holds at least this many free bytes.
pub const DEFAULT_THRESHOLD: usize = 4 << 20;

/// What one [`reclaim`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    /// Free bytes the allocator held before trimming.
    pub free_before: usize,
    /// Resident set size before and after the trim, when /proc could say.
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
}

/// Releases the allocator's free memory when it holds more than `threshold`
/// free bytes; returns what it did, or `None` when it left things alone.
pub fn reclaim(threshold: usize) -> Option<Reclaimed> {
    let free_before = glibc::free_heap_bytes()?;
    if free_before < threshold {
        return None;
    }
    let rss_before = rss_bytes();
    glibc::trim();
    let rss_after = rss_bytes();
    Some(Reclaimed {
        free_before,
        rss_before,
        rss_after,
    })
}

/// This process's resident set size (`VmRSS` of `/proc/self/status`, in
/// kB there, so the page size does not matter).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    /// Bytes in free chunks held by all arenas (`mallinfo2().fordblks`).
    pub fn free_heap_bytes() -> Option<usize> {
        // SAFETY: mallinfo2 takes no arguments, only reads the allocator's
        // statistics under its own locks, and returns a plain struct.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }

    /// `malloc_trim(0)`: releases free pages of every arena to the kernel.
    pub fn trim() {
        // SAFETY: malloc_trim only hands free, unused pages back to the
        // kernel (madvise) under the allocator's locks; no memory that Rust
        // code owns is touched, and the return value is only informative.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub fn free_heap_bytes() -> Option<usize> {
        None
    }
    pub fn trim() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_counted_and_released() {
        // Many small, interleaved allocations: freeing every other one leaves
        // free chunks the heap top cannot give back on its own.
        let mut blocks: Vec<Vec<u8>> = (0..20_000).map(|i| vec![i as u8; 1024]).collect();
        let keep: Vec<Vec<u8>> = blocks
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, b)| b.clone())
            .collect();
        blocks.clear();
        blocks.shrink_to_fit();
        let Some(free) = glibc::free_heap_bytes() else {
            eprintln!("SKIP: not glibc");
            return;
        };
        assert!(free >= 8 << 20, "expected >= 8 MiB free, got {free}");
        let done = reclaim(4 << 20).expect("above the threshold, so it trims");
        assert!(done.free_before >= 8 << 20);
        // About 20 MB were freed and were resident (written): most must go.
        let (Some(before), Some(after)) = (done.rss_before, done.rss_after) else {
            panic!("no RSS from /proc/self/statm");
        };
        assert!(
            after + (8 << 20) <= before,
            "RSS {before} -> {after}: the trim released less than 8 MiB"
        );
        assert!(
            reclaim(usize::MAX).is_none(),
            "below the threshold: left alone"
        );
        drop(keep);
    }

    #[test]
    fn rss_is_read() {
        assert!(rss_bytes().unwrap_or(0) > 0);
    }
}
