//! The iptables nat OUTPUT rule the single-proxy benchmarks use to send a
//! benchmark destination to the proxy's outbound port (as a pod's capture
//! would): tagged with a comment naming the benchmark, removed on drop, and
//! stale rules of an interrupted run removed before a new one is added.

use anyhow::{Context, Result, bail};
use std::process::Command;

/// One installed REDIRECT rule; removed when dropped.
#[derive(Debug)]
pub struct Redirect {
    args: Vec<String>,
}

impl Redirect {
    /// Sends TCP to `dst` (an address or CIDR) port `dport` to local port
    /// `to_port`, tagged `comment`. Needs root.
    pub fn install(dst: &str, dport: u16, to_port: u16, comment: &str) -> Result<Redirect> {
        remove_stale(comment);
        let args = rule(dst, dport, to_port, comment);
        iptables(&["-w", "-t", "nat", "-A", "OUTPUT"], &args)
            .context("installing the iptables REDIRECT rule (needs root)")?;
        Ok(Redirect { args })
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        if let Err(e) = iptables(&["-w", "-t", "nat", "-D", "OUTPUT"], &self.args) {
            eprintln!("[bench] warning: could not remove the iptables rule: {e:#}");
        }
    }
}

fn rule(dst: &str, dport: u16, to_port: u16, comment: &str) -> Vec<String> {
    let (dport, to_port) = (dport.to_string(), to_port.to_string());
    [
        "-p",
        "tcp",
        "-d",
        dst,
        "--dport",
        &dport,
        "-m",
        "comment",
        "--comment",
        comment,
        "-j",
        "REDIRECT",
        "--to-ports",
        &to_port,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Removes the OUTPUT rules tagged `comment` (left by an interrupted run).
pub fn remove_stale(comment: &str) {
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", "OUTPUT"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.contains(comment)
            && let Some(rest) = line.strip_prefix("-A OUTPUT ")
        {
            let args: Vec<String> = rest
                .split_whitespace()
                .map(|s| s.trim_matches('"').to_string())
                .collect();
            let _ = iptables(&["-w", "-t", "nat", "-D", "OUTPUT"], &args);
        }
    }
}

fn iptables(pre: &[&str], args: &[String]) -> Result<()> {
    let out = Command::new("iptables")
        .args(pre)
        .args(args)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {} {}: {}",
            pre.join(" "),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rule_names_its_destination_port_and_comment() {
        assert_eq!(
            super::rule("10.123.0.0/16", 80, 4140, "conduit-scaling-bench").join(" "),
            "-p tcp -d 10.123.0.0/16 --dport 80 -m comment --comment conduit-scaling-bench \
             -j REDIRECT --to-ports 4140"
        );
    }
}
