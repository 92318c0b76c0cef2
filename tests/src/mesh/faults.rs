//! Faults a test can inject into a running [`Mesh`]: the node agent or the
//! controller killed (SIGKILL) and restarted, a proxy drained (SIGTERM) or
//! killed, an endpoint's application killed, a pod's link cut.

use super::Mesh;
use super::app::AppServer;
use super::spec;
use crate::wait::wait_until;
use anyhow::{Context, Result, anyhow};
use nix::sys::signal::Signal;
use std::time::Duration;

impl Mesh {
    /// SIGKILL to the node agent (its pinned state stays: capture goes on),
    /// `meanwhile` while no agent runs, then a new agent, and waits until
    /// every running proxy has re-registered with it.
    pub fn kill_and_restart_agent(&mut self, meanwhile: impl FnOnce() -> Result<()>) -> Result<()> {
        self.agent.process.signal(Signal::SIGKILL)?;
        self.agent.process.wait_exit(Duration::from_secs(5))?;
        meanwhile()?;
        let agent = self.agent.config.start().context("restarting the agent")?;
        // The killed agent's Process is dropped here (already gone).
        self.agent = agent;
        // The new agent lists the pods it adopted before their proxies have
        // registered again: wait for each proxy to say it is registered.
        for (pod, proxy) in &self.proxies {
            wait_until(
                &format!("the proxy of {pod} to register with the new agent"),
                Duration::from_secs(20),
                || {
                    let on = proxy.metrics()?.sum("conduit_agent_registered", &[]);
                    anyhow::ensure!(on == 1.0, "conduit_agent_registered {on}");
                    Ok(())
                },
            )?;
        }
        Ok(())
    }

    /// SIGKILL to the controller; [`Mesh::start_controller`] brings it back.
    pub fn kill_controller(&mut self) -> Result<()> {
        if let Some(mut c) = self.controller.take() {
            c.process.signal(Signal::SIGKILL)?;
            c.process.wait_exit(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// SIGTERM to `pod`'s proxy (a drain): waits until it has exited by
    /// itself (within its grace period) and the agent no longer lists the pod.
    pub fn drain_proxy(&mut self, pod: &str, grace: Duration) -> Result<()> {
        let mut proxy = self
            .proxies
            .remove(pod)
            .ok_or_else(|| anyhow!("no proxy running in {pod}"))?;
        proxy.process.signal(Signal::SIGTERM)?;
        let status = proxy.process.wait_exit(grace + Duration::from_secs(5))?;
        anyhow::ensure!(
            status.success(),
            "the proxy of {pod} exited with {status} after SIGTERM:\n{}",
            proxy.process.output_text()
        );
        self.wait_enrolled(pod, false)
    }

    /// SIGTERM to `pod`'s proxy, without waiting for anything.
    pub fn signal_proxy(&self, pod: &str, sig: Signal) -> Result<()> {
        self.proxy(pod).process.signal(sig)
    }

    /// SIGKILL to server `pod`'s application.
    pub fn kill_app(&mut self, pod: &str) -> Result<()> {
        let mut app = self
            .apps
            .remove(pod)
            .ok_or_else(|| anyhow!("no application in {pod}"))?;
        app.process.signal(Signal::SIGKILL)?;
        app.process.wait_exit(Duration::from_secs(5))?;
        Ok(())
    }

    /// Starts server `pod`'s application again.
    pub fn start_app(&mut self, pod: &str) -> Result<()> {
        let app = AppServer::start(
            &self.env,
            pod,
            spec::HTTP_PORT,
            spec::GRPC_PORT,
            self.spec.quiet_apps,
        )?;
        self.apps.insert(pod.to_owned(), app);
        Ok(())
    }

    /// Sets `pod`'s link (the host end of its veth) down or up: a network
    /// cut, packets silently lost.
    pub fn set_link(&self, pod: &str, up: bool) -> Result<()> {
        let veth = self.env.pod(pod).host_veth().to_owned();
        let state = if up { "up" } else { "down" };
        crate::cmd::run("ip", &["link", "set", &veth, state])?;
        if up {
            // Back on the bridge: wait until the pod answers again.
            let addr = self.env.pod(pod).v4(spec::INBOUND_PORT);
            wait_until(
                &format!("{pod} to be reachable again"),
                Duration::from_secs(10),
                || {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
                        .map(|_| ())
                        .map_err(|e| anyhow!("{addr}: {e}"))
                },
            )?;
        }
        Ok(())
    }
}
