//! `conduit-ebpf cleanup` leaves nothing behind: none of the agent's
//! programs, maps or links exist any more (checked with bpftool, by ID), the
//! pin directory is gone, nothing is attached at the cgroup, and traffic
//! flows uncaptured.

use anyhow::{Result, anyhow, ensure};
use conduit_tests::bpf::cgroup_attachments;
use conduit_tests::checks::{captured_outbound, direct};
use conduit_tests::{Env, ProxyMode, TestProxy, TestServer, client, wait_until};
use std::net::IpAddr;
use std::time::Duration;

#[test]
fn cleanup_leaves_nothing_behind() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["app", "server"])? else {
        return Ok(());
    };
    let agent = env.agent_config()?.start()?;
    let config = agent.config.clone();
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let _proxy = TestProxy::start(&env, "app", ProxyMode::Report, Some(&config.socket))?;
    let dst = env.pod("server").v4(8080);
    captured_outbound(&client(&env, "app", dst)?, dst)?;

    let ours = env.bpf_objects(&config.pin_dir)?;
    ensure!(
        !ours.progs.is_empty(),
        "no programs attached at the test's cgroup: {ours:?}"
    );
    ensure!(
        !ours.maps.is_empty() && !ours.pinned.is_empty(),
        "nothing pinned: {ours:?}"
    );

    // Everything the agent reports is among what bpftool found (so the
    // check below covers it), sk_lookup in the pod's namespace included.
    let status = config.status()?;
    ensure!(
        status
            .programs
            .iter()
            .any(|p| p.attach_type == "sk_lookup" && p.link_id.is_some()),
        "{status:?}"
    );
    ours.ensure_covers(
        status.programs.iter().filter(|p| p.link_id.is_some()),
        &status,
    )?;

    agent.stop()?;
    config.cleanup()?;
    wait_until(
        "the agent's BPF objects to be freed",
        Duration::from_secs(10),
        || {
            let left = ours.still_present()?;
            if left.is_empty() {
                Ok(())
            } else {
                Err(anyhow!("still present: {left:?}"))
            }
        },
    )?;
    ensure!(
        !config.pin_dir.exists(),
        "pin dir {} left",
        config.pin_dir.display()
    );
    let attached = cgroup_attachments(env.cgroup().path())?;
    ensure!(
        attached.is_empty(),
        "still attached at the cgroup: {attached:?}"
    );
    // No capture any more: the app reaches the server itself.
    direct(
        &client(&env, "app", dst)?,
        "server",
        IpAddr::V4(env.pod("app").ipv4),
    )?;
    // Cleaning up again is harmless.
    config.cleanup()?;
    Ok(())
}
