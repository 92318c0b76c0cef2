//! Build and development tasks for conduit-ebpf: `cargo xtask <task>`.
//!
//! Every task installs what it needs first (idempotently, one progress line a
//! step), so the README's commands work on a fresh machine.

mod bench;
mod build_ebpf;
mod demo;
mod fuzz;
mod kernel_matrix;
mod layout;
mod release;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "conduit-ebpf build and development tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the project needs (Debian packages, nightly rust-src, bpf-linker).
    Setup,
    /// Install the eBPF toolchain if missing, then build the kernel programs object.
    BuildEbpf(build_ebpf::Options),
    /// Run every test: unit tests, then the privileged end-to-end tests one at a time.
    Test(test::Options),
    /// Bring up the local mesh demo (needs root).
    Demo(demo::Options),
    /// Run a benchmark program and print its table.
    Bench(bench::Options),
    /// Rewrite proxy/conduit-proxy.order (the proxy's code layout) from a
    /// training run of the mesh benchmark under callgrind (needs root).
    ProxyLayout(layout::Options),
    /// Build the fuzz targets (cargo fuzz, libFuzzer) and run each for a while.
    Fuzz(fuzz::Options),
    /// Boot older kernels under qemu and load every program through their verifier.
    KernelMatrix(kernel_matrix::Options),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::all(),
        Task::BuildEbpf(opts) => build_ebpf::run(&opts).map(|_| ()),
        Task::Test(opts) => test::run(&opts),
        Task::Demo(opts) => demo::run(&opts),
        Task::Bench(opts) => bench::run(&opts),
        Task::Fuzz(opts) => fuzz::run(&opts),
        Task::ProxyLayout(opts) => layout::run(&opts),
        Task::KernelMatrix(opts) => kernel_matrix::run(&opts),
    }
}
