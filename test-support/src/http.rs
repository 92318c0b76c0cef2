//! Plain HTTP/1.1 probes of the admin servers the tests and benchmarks start.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether `GET /ready` on `127.0.0.1:port` answers 200 (false when
/// nothing listens or the answer is anything else).
pub async fn ready(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    s.read_to_string(&mut out).await.is_ok() && out.starts_with("HTTP/1.1 200")
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn nothing_listening_is_not_ready() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(!super::ready(port).await);
    }
}
