//! End-to-end test harness for conduit-ebpf: builds "pods" as network
//! namespaces joined by veth to a Linux bridge, places processes in a cgroup
//! tree of the test's own (optionally as an unprivileged user), runs the real
//! node agent against that cgroup, and provides the small test applications
//! (server, client, test proxy) whose JSON reports let tests assert exactly
//! what the kernel capture did. Everything a test creates is named after it
//! and removed on drop. Privileged tests skip visibly without root, cgroup v2
//! or bpf, and fail instead under `CONDUIT_REQUIRE_PRIVILEGED=1`.

pub mod agent;
pub mod apps;
pub mod bins;
pub mod bpf;
pub mod cgroup;
pub mod checks;
pub mod cmd;
pub mod demo;
pub mod env;
pub mod mesh;
pub mod names;

pub mod netns;
pub mod network;
pub mod privilege;
pub mod process;
pub mod report;
pub mod signals;
pub mod status;
mod sys;
pub mod topology;
pub use conduit_test_support::wait;
pub mod wire;

pub use agent::{Agent, AgentConfig};
pub use apps::{ProxyMode, TestProxy, TestServer, client, client_as, flood, flood_back};
pub use env::Env;
pub use wait::wait_until;

/// The name of the enclosing function (the test's name), for
/// [`Env::privileged`] and SKIPPED lines.
#[macro_export]
macro_rules! test_name {
    () => {{
        fn f() {}
        let name = ::std::any::type_name_of_val(&f);
        let name = name.strip_suffix("::f").unwrap_or(name);
        name.rsplit("::").next().unwrap_or(name)
    }};
}
