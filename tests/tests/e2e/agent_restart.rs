//! Restarting the agent does not interrupt capture: SIGTERM leaves the
//! pinned maps and links in place, connections made while no agent runs are
//! still captured, and the new agent adopts the pinned state (same maps,
//! links and programs; `status --json` shows the pod, with or without an agent)
//! and the proxy's new
//! registration.

use anyhow::{Result, anyhow, ensure};
use conduit_tests::bpf::BpfObjects;
use conduit_tests::checks::{captured_outbound, direct};
use conduit_tests::report::ClientReport;
use conduit_tests::status::StatusExt as _;
use conduit_tests::{Env, ProxyMode, TestProxy, TestServer, client, wait_until};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

/// Phases of the restart, recorded with every connection made meanwhile.
const OLD_AGENT: u8 = 0;
const NO_AGENT: u8 = 1;
const NEW_AGENT: u8 = 2;

#[test]
fn agent_restart_keeps_capture_and_adopts_pinned_state() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["app", "server"])? else {
        return Ok(());
    };
    let config = env.agent_config()?;
    let agent = config.start()?;
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let mut proxy = TestProxy::start(&env, "app", ProxyMode::Report, Some(&config.socket))?;
    let dst = env.pod("server").v4(8080);
    captured_outbound(&client(&env, "app", dst)?, dst)?;
    let before = env.bpf_objects(&config.pin_dir)?;

    let phase = AtomicU8::new(OLD_AGENT);
    let stop = AtomicBool::new(false);
    let seen: Mutex<Vec<(u8, ClientReport)>> = Mutex::new(Vec::new());
    let (after, _new_agent) =
        std::thread::scope(|s| -> Result<(BpfObjects, conduit_tests::Agent)> {
            let traffic = s.spawn(|| -> Result<()> {
                while !stop.load(Ordering::SeqCst) {
                    let p = phase.load(Ordering::SeqCst);
                    let r = client(&env, "app", dst)?;
                    seen.lock().unwrap().push((p, r));
                }
                Ok(())
            });
            // Whatever happens below, the traffic thread stops (or the scope would wait forever).
            let result = restart(&env, agent, &config, &mut proxy, &phase, &seen);
            stop.store(true, Ordering::SeqCst);
            traffic
                .join()
                .map_err(|_| anyhow!("traffic thread panicked"))??;
            result
        })?;

    for (phase, report) in seen.into_inner().unwrap() {
        captured_outbound(&report, dst).map_err(|e| e.context(format!("during phase {phase}")))?;
    }
    ensure!(
        before.maps == after.maps,
        "maps changed across the restart: {:?} -> {:?}",
        before.maps,
        after.maps
    );
    ensure!(
        before.links == after.links,
        "links changed: {:?} -> {:?}",
        before.links,
        after.links
    );
    ensure!(
        before.progs == after.progs,
        "programs reloaded: {:?} -> {:?}",
        before.progs,
        after.progs
    );

    // The new agent manages the adopted pod: closing the registration now
    // stops capture.
    proxy.unregister()?;
    proxy.wait_unregistered(2)?;
    let a = env.pod("app");
    wait_until(
        "capture to stop under the new agent",
        Duration::from_secs(5),
        || direct(&client(&env, "app", dst)?, "server", IpAddr::V4(a.ipv4)),
    )?;
    Ok(())
}

/// Stops the first agent, checks capture and status without an agent,
/// starts the second and waits for the proxy to re-register. Returns the
/// BPF objects afterwards and the new agent.
fn restart(
    env: &Env,
    agent: conduit_tests::Agent,
    config: &conduit_tests::AgentConfig,
    proxy: &mut TestProxy,
    phase: &AtomicU8,
    seen: &Mutex<Vec<(u8, ClientReport)>>,
) -> Result<(BpfObjects, conduit_tests::Agent)> {
    let count = |p: u8| seen.lock().unwrap().iter().filter(|(q, _)| *q == p).count();
    // At least three connections made in `phase`.
    let traffic_in = |phase: u8, what: &str| {
        wait_until(what, Duration::from_secs(10), || {
            if count(phase) >= 3 {
                Ok(())
            } else {
                Err(anyhow!("{} connections", count(phase)))
            }
        })
    };
    traffic_in(OLD_AGENT, "traffic with the first agent")?;

    agent.stop()?;
    phase.store(NO_AGENT, Ordering::SeqCst);
    proxy.wait_unregistered(1)?;
    ensure!(config.pin_dir.exists(), "SIGTERM removed the pin directory");
    traffic_in(NO_AGENT, "traffic while no agent runs")?;
    // The pinned state, read without an agent: still attached, pod still
    // enrolled with its (live) proxy.
    let status = config.status()?;
    let pod = status
        .pod("app")
        .ok_or_else(|| anyhow!("no agent: pod app not in status: {status:?}"))?;
    ensure!(
        status.attached && pod.proxy_alive && pod.proxy_pid == proxy.process.pid(),
        "{status:?}"
    );

    let agent = config.start()?;
    proxy.wait_registered(2)?;
    phase.store(NEW_AGENT, Ordering::SeqCst);
    traffic_in(NEW_AGENT, "traffic with the new agent")?;
    let status = config.status()?;
    let pod = status
        .pod("app")
        .ok_or_else(|| anyhow!("new agent: pod app not in status: {status:?}"))?;
    ensure!(
        status.attached && pod.proxy_pid == proxy.process.pid(),
        "{status:?}"
    );
    let objects = env.bpf_objects(&config.pin_dir)?;
    // What status reports is what bpftool sees.
    objects.ensure_covers(&status.programs, &status)?;
    Ok((objects, agent))
}
