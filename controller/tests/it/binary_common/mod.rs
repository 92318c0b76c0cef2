//! Shared pieces of the tests that run the real `conduit-controller`
//! binary: its path, a child process killed on drop, a free loopback port.
#![allow(dead_code)]

use std::process::Child;

/// The controller binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_conduit-controller");

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback TCP port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
