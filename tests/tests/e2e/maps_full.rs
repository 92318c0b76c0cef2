//! Maps under pressure: the kernel maps filled to capacity from userspace
//! (with `bpftool batch`, as any process on the node with CAP_BPF could),
//! then real traffic and a real registration.
//!
//! * Original-destination maps (LRU hashes) full: a captured connection
//!   still reaches the destination the application dialled (the least
//!   recently used records are evicted to make room, the new record is
//!   never refused), and is never sent where nothing listens.
//! * Pods map (a plain hash) full: a new pod's registration is refused with
//!   a reason naming the full map, its connections go to their original
//!   destination uncaptured, and nothing of it is left in the maps.
//! * In both cases `conduit-ebpf status` shows the fill level with a warning
//!   and `status --check` fails naming the map.

use anyhow::{Context, Result, ensure};
use conduit_tests::checks::{captured_outbound, direct};
use conduit_tests::status::StatusExt as _;
use conduit_tests::{Env, ProxyMode, TestProxy, TestServer, client};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Socket cookies and netns cookies of the fillers: far above the kernel's
/// counters, so they name no real socket or namespace.
const FILLER_BASE: u64 = 1 << 62;

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for b in bytes {
        let _ = write!(s, "{b:02x} ");
    }
    s
}

/// Updates `count` entries of the pinned map `map` with keys and values
/// from `entry(i)`, in one `bpftool batch` run.
fn fill(map: &Path, count: u64, entry: impl Fn(u64) -> (Vec<u8>, Vec<u8>)) -> Result<()> {
    let mut batch = String::new();
    for i in 0..count {
        let (k, v) = entry(i);
        let _ = writeln!(
            batch,
            "map update pinned {} key hex {}value hex {}",
            map.display(),
            hex(&k),
            hex(&v)
        );
    }
    let file = std::env::temp_dir().join(format!(
        "conduit-fill-{}-{}",
        std::process::id(),
        map.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&file, batch)?;
    let out = Command::new("bpftool")
        .arg("batch")
        .arg("file")
        .arg(&file)
        .output()
        .context("running bpftool batch");
    let _ = std::fs::remove_file(&file);
    let out = out?;
    // A full plain hash refuses the last updates: expected where we fill to
    // the brim; the caller checks the entry count.
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            err.contains("E2BIG") || err.contains("too long") || err.contains("No space"),
            "bpftool batch on {}: {err}",
            map.display()
        );
    }
    Ok(())
}

/// An original destination nobody listens at: 192.0.2.1:9 (TEST-NET-1).
fn filler_orig_dst() -> Vec<u8> {
    let mut v = vec![0u8; 20];
    // IpKey: ::ffff:192.0.2.1 in network order, then port (host order), family.
    v[10] = 0xff;
    v[11] = 0xff;
    v[12..16].copy_from_slice(&[192, 0, 2, 1]);
    v[16..18].copy_from_slice(&9u16.to_ne_bytes());
    v[18..20].copy_from_slice(&2u16.to_ne_bytes());
    v
}

fn map_entries(status: &serde_json::Value, name: &str) -> (u64, u64) {
    let m = status["maps"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == name))
        .cloned()
        .unwrap_or_default();
    (
        m["entries"].as_u64().unwrap_or(0),
        m["max_entries"].as_u64().unwrap_or(0),
    )
}

/// `status --check` must fail naming `map`; the table must warn about it.
fn check_warns(agent: &conduit_tests::Agent, map: &str) -> Result<()> {
    let out = Command::new(&agent.config.bin)
        .args(["status", "--check", "--pin-dir"])
        .arg(&agent.config.pin_dir)
        .env("NO_COLOR", "1")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains(&format!("map {map} is")) && err.contains("full"),
        "status --check with {map} full: {} {err}",
        out.status
    );
    let table = agent.config.status_text()?;
    ensure!(
        table.contains(&format!("WARNING: map {map} is")),
        "status table with {map} full:\n{table}"
    );
    Ok(())
}

#[test]
fn orig_dst_maps_full_still_capture_to_the_dialled_destination() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["app", "server"])? else {
        return Ok(());
    };
    let agent = env.agent_config()?.start()?;
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let _proxy = TestProxy::start(&env, "app", ProxyMode::Report, Some(&agent.config.socket))?;
    let pin = &agent.config.pin_dir;
    let (_, max) = map_entries(&agent.config.status_json()?, "CONDUIT_ORIG_SK");
    ensure!(max >= 1024, "CONDUIT_ORIG_SK holds {max}");
    fill(&pin.join("CONDUIT_ORIG_SK"), max, |i| {
        ((FILLER_BASE + i).to_ne_bytes().to_vec(), filler_orig_dst())
    })?;
    fill(&pin.join("CONDUIT_ORIG_TP"), max, |i| {
        let mut k = vec![0u8; 48];
        k[..8].copy_from_slice(&(FILLER_BASE + i).to_ne_bytes());
        (k, filler_orig_dst())
    })?;
    let status = agent.config.status_json()?;
    for map in ["CONDUIT_ORIG_SK", "CONDUIT_ORIG_TP"] {
        let (n, max) = map_entries(&status, map);
        ensure!(n * 10 >= max * 9, "{map} filled to {n}/{max} only");
        check_warns(&agent, map)?;
    }

    // Every new connection is still captured to the destination dialled.
    for port in [8080, 8081, 8082] {
        let dst = env.pod("server").v4(port);
        captured_outbound(&client(&env, "app", dst)?, dst)?;
    }
    let st = agent.config.status()?;
    ensure!(
        st.counter("connect4", "captured") == 3 && st.counter("getsockopt", "captured") == 3,
        "{:?}",
        st.counters
    );
    ensure!(
        st.counter("connect4", "failed_map_full") == 0
            && st.counter("sockops", "failed_map_full") == 0,
        "{:?}",
        st.counters
    );
    Ok(())
}

#[test]
fn pods_map_full_refuses_registration_and_leaves_traffic_uncaptured() -> Result<()> {
    let Some(env) = Env::privileged(conduit_tests::test_name!(), &["app", "server"])? else {
        return Ok(());
    };
    let mut agent = env.agent_config()?.start()?;
    let _server = TestServer::start(&env, "server", 8080, "server")?;
    let pin = agent.config.pin_dir.clone();
    let (_, max) = map_entries(&agent.config.status_json()?, "CONDUIT_PODS");
    ensure!(max >= 16, "CONDUIT_PODS holds {max}");
    fill(&pin.join("CONDUIT_PODS"), max, |i| {
        let mut v = vec![0u8; 312];
        // name (offset 184): "filler-<i>"
        let name = format!("filler-{i}");
        v[184..184 + name.len()].copy_from_slice(name.as_bytes());
        ((FILLER_BASE + i).to_ne_bytes().to_vec(), v)
    })?;
    let (n, _) = map_entries(&agent.config.status_json()?, "CONDUIT_PODS");
    ensure!(n == max, "CONDUIT_PODS filled to {n}/{max}");
    check_warns(&agent, "CONDUIT_PODS")?;

    // The registration is refused, saying why.
    let proxy = TestProxy::start_unenrolled(&env, "app", &agent.config.socket)?;
    let line =
        agent
            .process
            .wait_for_line("registration refused", Duration::from_secs(30), |l| {
                l.contains("registration refused")
            })?;
    ensure!(
        line.contains("pods map"),
        "refusal does not name the map: {line}"
    );
    ensure!(
        !proxy
            .events()
            .contains(&conduit_tests::report::ProxyEvent::Registered),
        "the proxy was enrolled: {:?}",
        proxy.events()
    );

    // Its traffic goes where it was going, uncaptured.
    let app = env.pod("app");
    direct(
        &client(&env, "app", env.pod("server").v4(8080))?,
        "server",
        IpAddr::V4(app.ipv4),
    )?;
    ensure!(proxy.accepted().is_empty(), "{:?}", proxy.accepted());

    // Nothing of the refused pod is left behind: no address, no listener,
    // no sk_lookup link (only the fillers in the pods map).
    let status = agent.config.status_json()?;
    for map in ["CONDUIT_POD_IPS", "CONDUIT_LISTEN"] {
        let (n, _) = map_entries(&status, map);
        ensure!(n == 0, "{map} holds {n} entries of a refused pod");
    }
    let pod_links: Vec<_> = std::fs::read_dir(&pin)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("pod_"))
        .map(|e| e.file_name())
        .collect();
    ensure!(pod_links.is_empty(), "sk_lookup links left: {pod_links:?}");
    Ok(())
}
