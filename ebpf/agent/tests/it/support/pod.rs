//! What the helper processes run inside the test pods: a proxy's
//! registration with the agent, answered on stdout for the test to read.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::path::Path;

/// Blocks until stdin closes (the test ends the helper that way).
pub fn hold_until_stdin_closes() {
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
}

/// Registers `pod` with its `inbound` listener at the agent's `socket` once
/// and prints `ENROLLED <addresses>`, holding the registration until stdin
/// closes, or `REFUSED <reason>`.
pub fn register_and_hold(socket: &Path, pod: &conduit_register::PodInfo, inbound: &TcpListener) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(conduit_register::register(socket, pod, inbound.as_fd()));
    match result {
        Ok(reg) => {
            let ips: Vec<String> = reg
                .enrolled()
                .pod_ips
                .iter()
                .map(|i| i.to_string())
                .collect();
            println!("ENROLLED {}", ips.join(","));
            std::io::stdout().flush().unwrap();
            hold_until_stdin_closes();
            drop(reg);
        }
        Err(conduit_register::RegisterError::Refused(reason)) => println!("REFUSED {reason}"),
        Err(e) => println!("REFUSED (not by the agent) {e}"),
    }
    std::io::stdout().flush().unwrap();
}

/// Prints a registration's state change as `STATE enrolled=<up>`.
pub fn print_state(up: bool) {
    println!("STATE enrolled={up}");
    let _ = std::io::stdout().flush();
}
