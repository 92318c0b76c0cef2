//! `cargo xtask demo`: the capture demo. Two pods on a bridge, the node
//! agent, a server in one pod and, in the other, the test proxy registered
//! with the agent. An application in the client pod dials the server; the
//! kernel captures the connection into the proxy, which recovers the
//! original destination with getsockopt(SO_ORIGINAL_DST) and relays it.
//! Then `conduit-ebpf status`. Cleans up on exit and on Ctrl-C.

use anyhow::{Result, bail};
use clap::Parser;
use conduit_tests::demo::{Node, Steps, check_machine};
use conduit_tests::names::Names;
use conduit_tests::report::{ProxyEvent, Reply};
use conduit_tests::{ProxyMode, TestProxy, TestServer, client, signals, wait_until};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "conduit-ebpf capture demo (needs root)")]
struct Cli {
    /// Keep everything running until Ctrl-C (to look around with
    /// `conduit-ebpf status`, bpftool, `ip netns exec`).
    #[arg(long)]
    keep: bool,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = signals::install() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    conduit_tests::process::set_echo(false);
    println!("conduit-ebpf capture demo\n");
    let mut steps = Steps::new(6);
    let machine = steps.run("checking the machine", || {
        println!("      {}", check_machine()?);
        Ok(())
    });
    if machine.is_err() {
        std::process::exit(1);
    }
    let result = run(&cli, &mut steps);
    println!("\ncleaned up: pods, bridge, cgroups, agent and its pinned BPF state are gone");
    if result.is_err() {
        if conduit_tests::wait::interrupted() {
            eprintln!("interrupted");
        } else {
            eprintln!("the demo failed (see above)");
        }
        std::process::exit(if conduit_tests::wait::interrupted() {
            130
        } else {
            1
        });
    }
}

fn run(cli: &Cli, steps: &mut Steps) -> Result<()> {
    let node = Node::up(Names::demo(), &["client", "server"], steps)?;
    let env = &node.env;
    let socket = node.agent.config.socket.clone();
    let (_server, proxy) = steps.run(
        "starting the server app in pod server (port 8080) and the proxy in pod client (uid 1337), which registers with the agent",
        || {
            let server = TestServer::start(env, "server", 8080, "server")?;
            let proxy = TestProxy::start(env, "client", ProxyMode::Relay, Some(&socket))?;
            println!("      the agent enrolled pod client: its connections are now captured");
            Ok((server, proxy))
        },
    )?;
    let server = env.pod("server");
    steps.run(
        "the client app in pod client dials the server, over IPv4 and IPv6",
        || {
            for (n, dst) in [server.v4(8080), server.v6(8080)].into_iter().enumerate() {
                show_connection(env, &proxy, n, dst)?;
            }
            Ok(())
        },
    )?;
    let status = steps.run(
        &format!(
            "conduit-ebpf status --pin-dir {}",
            node.agent.config.pin_dir.display()
        ),
        || node.agent.config.status_text(),
    )?;
    println!("{status}");
    if cli.keep {
        println!("everything keeps running; press Ctrl-C to stop and clean up");
        let _ = wait_until("Ctrl-C", Duration::MAX, || -> Result<()> {
            bail!("running")
        });
    }
    Ok(())
}

/// Dials `dst` from pod client and explains what happened, from the app's,
/// the proxy's and the server's reports. Fails if it was not captured.
fn show_connection(
    env: &conduit_tests::Env,
    proxy: &TestProxy,
    n: usize,
    dst: SocketAddr,
) -> Result<()> {
    println!("\n      app dials {dst}");
    let report = client(env, "client", dst)?;
    let (peer, reply) = report.reply()?;
    println!("        app's getpeername:       {peer} (the address it dialled)");
    let accepted = proxy.accepted();
    let Some((side, from, original)) = accepted.get(n) else {
        bail!("the connection was NOT captured: the proxy accepted nothing; the app got {reply:?}");
    };
    println!("        captured: the proxy accepted it ({side:?}, from {from}) and asked");
    println!("        getsockopt(SO_ORIGINAL_DST): {original}");
    let relayed = wait_until("the proxy to relay", Duration::from_secs(10), || {
        proxy
            .events()
            .into_iter()
            .filter_map(|e| match e {
                ProxyEvent::Relayed {
                    upstream_local,
                    upstream_peer,
                    ..
                } => Some((upstream_local, upstream_peer)),
                _ => None,
            })
            .nth(n)
            .ok_or_else(|| anyhow::anyhow!("no relay yet"))
    })?;
    println!(
        "        the proxy connected to {} from {} (its own connection is not captured)",
        relayed.1, relayed.0
    );
    if let Reply::Server {
        name,
        peer,
        received,
        ..
    } = reply
    {
        println!("        server {name:?} answered; it saw peer {peer} and received {received:?}");
    }
    Ok(())
}
