//! Watching the wire: `tcpdump` on a pod's veth (host side), to check what
//! actually travels between pods (plaintext or TLS).

use crate::process::{Process, Spawn};
use anyhow::{Context, Result};

use std::path::PathBuf;
use std::time::Duration;

/// A running packet capture, written to a pcap file.
#[derive(Debug)]
pub struct PacketCapture {
    process: Process,
    file: PathBuf,
}

impl PacketCapture {
    /// Starts `tcpdump -i <iface> -U -w <file> <filter>` and waits until it
    /// listens, so nothing sent afterwards is missed.
    pub fn start(iface: &str, file: PathBuf, filter: &str) -> Result<Self> {
        let mut process = Spawn::new(format!("tcpdump {iface}"), "tcpdump")
            .args([
                "-i",
                iface,
                "--immediate-mode",
                "-U",
                "-n",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .args(filter.split_whitespace())
            .start()
            .context("starting tcpdump (is it installed?)")?;
        process.wait_for_line("listening", Duration::from_secs(10), |l| {
            l.contains("listening on")
        })?;
        Ok(Self { process, file })
    }

    /// What was captured so far (the pcap file, written packet by packet).
    pub fn bytes(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.file).with_context(|| format!("reading {}", self.file.display()))
    }

    /// Waits until `needle` shows up in the capture (packets reach the file
    /// a moment after they cross the wire).
    pub fn wait_for(&self, needle: &[u8], timeout: Duration) -> Result<()> {
        crate::wait::wait_until("bytes on the wire", timeout, || {
            let b = self.bytes()?;
            if contains(&b, needle) {
                Ok(())
            } else {
                anyhow::bail!("not in {} captured bytes", b.len())
            }
        })
    }

    /// Stops the capture and returns the pcap file's bytes.
    pub fn stop(mut self) -> Result<Vec<u8>> {
        self.process.terminate(Duration::from_secs(5))?;
        std::fs::read(&self.file).with_context(|| format!("reading {}", self.file.display()))
    }
}

/// True if `needle` occurs anywhere in `haystack` (e.g. plaintext in a pcap).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// True if `bytes` hold a TLS handshake record carrying a ClientHello
/// (record type 22, version 3.x, then handshake type 1), as every TLS
/// connection starts.
pub fn has_tls_client_hello(bytes: &[u8]) -> bool {
    bytes
        .windows(6)
        .any(|w| w[0] == 0x16 && w[1] == 0x03 && w[2] <= 0x04 && w[5] == 0x01)
}

/// How many TLS ClientHello records `bytes` hold (one per TLS connection).
pub fn count_tls_client_hellos(bytes: &[u8]) -> usize {
    bytes
        .windows(6)
        .filter(|w| w[0] == 0x16 && w[1] == 0x03 && w[2] <= 0x04 && w[5] == 0x01)
        .count()
}

/// True if `bytes` hold a TLS handshake record carrying a ServerHello
/// (handshake type 2).
pub fn has_tls_server_hello(bytes: &[u8]) -> bool {
    bytes
        .windows(6)
        .any(|w| w[0] == 0x16 && w[1] == 0x03 && w[2] == 0x03 && w[5] == 0x02)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_tls_hellos() {
        assert!(super::has_tls_client_hello(&[9, 0x16, 3, 1, 0, 200, 1, 0]));
        assert!(super::has_tls_server_hello(&[0x16, 3, 3, 0, 90, 2]));
        assert!(!super::has_tls_client_hello(b"GET / HTTP/1.1"));
        assert_eq!(
            super::count_tls_client_hellos(&[0x16, 3, 1, 0, 9, 1, 0x16, 3, 1, 0, 9, 1]),
            2
        );
    }

    #[test]
    fn contains_finds_bytes() {
        assert!(super::contains(b"xxhello fromyy", b"hello from"));
        assert!(!super::contains(b"hello", b""));
        assert!(!super::contains(b"hel", b"hello"));
    }
}
