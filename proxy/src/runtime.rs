//! The async runtime the binary runs on (`--workers`): tokio's
//! current-thread runtime for one worker, its multi-threaded runtime for
//! more.

use tokio::runtime::{Builder, Runtime};

/// Builds the proxy's runtime with `workers` worker threads (1 or more; 0
/// is taken as 1). Timers and I/O are enabled either way.
pub fn build(workers: u16) -> std::io::Result<Runtime> {
    let mut builder = if workers <= 1 {
        Builder::new_current_thread()
    } else {
        let mut b = Builder::new_multi_thread();
        b.worker_threads(workers.into());
        b
    };
    builder.enable_all().thread_name("conduit-proxy").build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_worker_is_a_current_thread_runtime_and_more_are_workers() {
        for (workers, flavor, threads) in [
            (0, RuntimeFlavor::CurrentThread, 1),
            (1, RuntimeFlavor::CurrentThread, 1),
            (2, RuntimeFlavor::MultiThread, 2),
            (3, RuntimeFlavor::MultiThread, 3),
        ] {
            let rt = build(workers).unwrap();
            assert_eq!(rt.handle().runtime_flavor(), flavor, "{workers}");
            assert_eq!(rt.metrics().num_workers(), threads, "{workers}");
            // Timers and I/O work on it.
            rt.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                let (c, a) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
                c.unwrap();
                a.unwrap();
            });
        }
    }
}
