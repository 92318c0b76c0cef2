//! `conduit-ebpf`: the conduit node agent and node CLI.
//!
//! * `agent` loads the kernel programs embedded in this binary, attaches them
//!   at the node's cgroup v2 root, pins maps and links under the pin dir (so
//!   a restart does not interrupt capture) and enrols pods whose proxies
//!   register on its unix socket;
//! * `status` shows, from the pinned state, what is attached, the maps, the
//!   enrolled pods and the counters (`--json` for machines; `--check` exits
//!   non-zero when capture is not attached, for probes);
//! * `cleanup` detaches and removes everything pinned, and the agent socket;
//! * `stat`, `tap`, `top` and `dashboard` show the enrolled pods' traffic
//!   (docs/observability.md).

// `unsafe` is denied everywhere but in `sys`, the agent's raw system calls.

mod admission;
mod agent;
mod cgroup;
mod claims;
mod cleanup;
mod dashboard;
mod discover;
mod enrol;
mod features;
mod health;
mod limits;
mod loader;
mod netns;
mod object;
mod pins;
mod proxies;
mod register;
mod registry;
mod stat;
mod status;
mod sys;
mod tap;
mod top;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Default pin directory (maps, programs, links).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/conduit";

#[derive(Parser)]
#[command(
    name = "conduit-ebpf",
    version,
    about = "conduit node agent: eBPF traffic capture for meshed pods"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: conduit_base::logging::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the capture programs, then enrol pods whose proxies register.
    Agent(agent::Options),
    /// Show what is attached, maps, enrolled pods and counters.
    Status {
        /// Machine-readable output (schema in docs/ebpf.md).
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Exit with status 1 (naming the problems) unless every cgroup
        /// program is attached and every map pinned; for probes.
        #[arg(long)]
        check: bool,
        /// With --check: also require the agent to accept connections on
        /// this socket.
        #[arg(long, requires = "check")]
        socket: Option<PathBuf>,
    },
    /// Per pod and destination: request rate, success rate, latency
    /// percentiles, mTLS share, TCP; from the enrolled proxies' metrics
    /// over a window (docs/observability.md).
    Stat(stat::Options),
    /// Stream the requests the selected pods' proxies see.
    Tap(tap::Options),
    /// The busiest paths, live (built on tap).
    Top(top::Options),
    /// A live web page: the node's service graph and latency.
    Dashboard(dashboard::Options),
    /// Load every program through this kernel's verifier (nothing is pinned
    /// or attached) and print one line per program; exit 1 if any is rejected.
    Verify,
    /// Detach and remove everything pinned (stop the agent first), and the
    /// agent socket (with its directory when empty).
    Cleanup {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, default_value = conduit_register::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    cli.log.init()?;
    match cli.command {
        Command::Agent(opts) => agent::run(opts),
        Command::Status {
            json,
            pin_dir,
            check,
            socket,
        } => status::run(&pin_dir, json, check, socket.as_deref()),
        Command::Cleanup { pin_dir, socket } => cleanup::run(&pin_dir, &socket),
        Command::Stat(o) => stat::run(o),
        Command::Tap(o) => tap::run(o),
        Command::Top(o) => top::run(o),
        Command::Dashboard(o) => dashboard::run(o),
        Command::Verify => features::run_verify(),
    }
}
