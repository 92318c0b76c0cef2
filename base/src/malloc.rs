//! The allocator setting every `conduit-proxy` runs with.
//!
//! glibc's malloc keeps a per-thread cache of freed chunks, 7 per size class
//! by default. A proxy forwarding many HTTP/2 streams at once frees more
//! same-sized chunks than that between two allocations of that size, so the
//! rest go through malloc's shared bins (`_int_free`, and
//! `malloc_consolidate` on the next large allocation). With 32 per size
//! class they stay in the cache: callgrind counts 3.1% fewer instructions
//! per HTTP/2 request, HTTP/1.1 within the rounds' spread
//! (docs/benchmarks.md, "Allocator cache"). The cache is bounded (32 chunks
//! of each size up to 1 KB per thread, about 1 MB at the very most; the
//! proxy runs one thread by default).
//!
//! glibc reads this only from the environment when a process starts, so
//! whatever starts a proxy sets it: the sidecar injector
//! (`conduit-controller inject`), the local mesh and every benchmark that
//! starts one (`conduit-mesh-bench`, `conduit-proxy-bench`,
//! `conduit-scaling-bench`, `conduit-cost`). A proxy
//! started without it runs correctly with glibc's default cache.

/// The variable glibc reads its tunables from.
pub const TUNABLES_VAR: &str = "GLIBC_TUNABLES";

/// The proxy's value of [`TUNABLES_VAR`].
pub const PROXY_TUNABLES: &str = "glibc.malloc.tcache_count=32";
