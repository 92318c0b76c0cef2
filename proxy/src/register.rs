//! Registration with the node agent (crate `conduit-register`) when
//! `--agent-socket` is set: the agent starts eBPF capture for the pod once
//! the proxy is listening, and stops it when the proxy goes away. The
//! registration is kept alive (re-registering after an agent restart); its
//! state is the `conduit_agent_registered` gauge. Without a socket the proxy
//! works on its own (behind iptables, or as an explicit proxy).

use crate::config::Config;
use anyhow::Context as _;
use conduit_register::PodInfo;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::os::fd::AsFd;
use tokio::net::TcpListener;
use tracing::info;

pub fn pod_info(cfg: &Config, inbound_port: u16) -> PodInfo {
    let mut pod = PodInfo::new(cfg.pod_name.clone(), cfg.pod_namespace.clone());
    pod.service_account = cfg.service_account.clone();
    if let Some(a) = cfg.outbound_addrs.first() {
        pod.outbound_port = a.port();
    }
    pod.inbound_port = inbound_port;
    pod.admin_port = cfg.admin_addr.port();
    pod.skip_inbound_ports = cfg.skip_inbound_ports.clone();
    pod.skip_outbound_ports = cfg.skip_outbound_ports.clone();
    pod
}

/// Starts the registration task when an agent socket is configured.
pub fn start(
    cfg: &Config,
    inbound: Option<&TcpListener>,
    registry: &mut Registry,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let gauge = Gauge::<i64>::default();
    registry.register(
        "conduit_agent_registered",
        "1 while the pod is registered with the node agent (capture on)",
        gauge.clone(),
    );
    let Some(socket) = cfg.agent_socket.clone() else {
        info!("no --agent-socket: not registering with a node agent");
        return Ok(None);
    };
    let listener = inbound.context("registration needs an inbound listener")?;
    let port = listener.local_addr()?.port();
    let fd = listener
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating the inbound listener for the agent")?;
    let pod = pod_info(cfg, port);
    pod.validate()
        .map_err(|e| anyhow::anyhow!("pod info for the agent: {e}"))?;
    info!(socket = %socket.display(), pod = %pod.name, namespace = %pod.namespace, "registering with the node agent");
    Ok(Some(conduit_register::maintain(
        socket,
        pod,
        fd,
        move |on| {
            gauge.set(on as i64);
        },
    )))
}
