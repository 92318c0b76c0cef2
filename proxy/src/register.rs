//! Registration with the node agent (crate `conduit-register`) when
//! `--agent-socket` is set: the agent starts eBPF capture for the pod once
//! the proxy is listening, and stops it when the proxy goes away. The
//! registration is kept alive (re-registering after an agent restart); its
//! state is the `conduit_agent_registered` gauge and, with a socket, part of
//! `/ready` (a pod whose traffic is not captured is not ready). Without a
//! socket the proxy works on its own (behind iptables, or as an explicit
//! proxy).

use crate::config::Config;
use anyhow::Context as _;
use conduit_register::PodInfo;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tracing::info;

/// The ports told to the agent are the ones actually bound.
pub struct BoundPorts {
    pub outbound: u16,
    pub inbound: u16,
    pub admin: u16,
}

pub fn pod_info(cfg: &Config, ports: &BoundPorts) -> PodInfo {
    let mut pod = PodInfo::new(cfg.pod_name.clone(), cfg.pod_namespace.clone());
    pod.service_account = cfg.service_account.clone();
    pod.outbound_port = ports.outbound;
    pod.inbound_port = ports.inbound;
    pod.admin_port = ports.admin;
    pod.skip_inbound_ports = cfg.skip_inbound_ports.clone();
    pod.skip_outbound_ports = cfg.skip_outbound_ports.clone();
    pod
}

/// A running registration.
pub struct Registration {
    pub task: tokio::task::JoinHandle<()>,
    /// True while the agent holds the registration (capture on).
    pub registered: Arc<AtomicBool>,
}

/// Starts the registration task when an agent socket is configured.
pub fn start(
    cfg: &Config,
    inbound: Option<&TcpListener>,
    outbound_port: u16,
    admin_port: u16,
    registry: &mut Registry,
) -> anyhow::Result<Option<Registration>> {
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
    let ports = BoundPorts {
        outbound: outbound_port,
        inbound: port,
        admin: admin_port,
    };
    let pod = pod_info(cfg, &ports);
    pod.validate()
        .map_err(|e| anyhow::anyhow!("pod info for the agent: {e}"))?;
    info!(socket = %socket.display(), pod = %pod.name, namespace = %pod.namespace, "registering with the node agent");
    let registered = Arc::new(AtomicBool::new(false));
    let flag = registered.clone();
    let task = conduit_register::maintain(socket, pod, fd, move |on| {
        gauge.set(on as i64);
        flag.store(on, Ordering::Relaxed);
    });
    Ok(Some(Registration { task, registered }))
}
