//! Clocks and loopback TLS plumbing; the test CA is test-support's.
#![allow(dead_code)]

use conduit_proxy_tls::Clock;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use conduit_test_support::ca::{Ca, HOUR, certified, id};

/// A clock stuck at one moment.
#[derive(Debug)]
pub struct FixedClock(pub SystemTime);

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}

/// A clock the test moves.
#[derive(Debug)]
pub struct SettableClock(std::sync::Mutex<SystemTime>);

impl SettableClock {
    pub fn new(t: SystemTime) -> Self {
        SettableClock(std::sync::Mutex::new(t))
    }

    pub fn set(&self, t: SystemTime) {
        *self.0.lock().unwrap() = t;
    }
}

impl Clock for SettableClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

pub fn fixed_clock(t: SystemTime) -> Arc<dyn Clock> {
    Arc::new(FixedClock(t))
}

/// Writes `msg` and reads the same number of bytes back (the other side
/// echoes).
pub async fn round_trip<S>(stream: &mut S, msg: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(msg).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = vec![0; msg.len()];
    stream.read_exact(&mut buf).await.unwrap();
    buf
}

/// Echoes until EOF.
pub async fn echo<S>(mut stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}
