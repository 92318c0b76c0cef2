//! Adapting a state watch to another type (e.g. the proxy's `Destination`).

use tokio::sync::watch;

/// A receiver that always holds `f(latest state)`. A task (on the current
/// Tokio runtime) follows `source`; it ends when every returned receiver is
/// dropped or the source ends. Values equal to the previous one are not
/// re-announced.
pub fn map_watch<S, T, F>(mut source: watch::Receiver<S>, f: F) -> watch::Receiver<T>
where
    S: Send + Sync + 'static,
    T: PartialEq + Send + Sync + 'static,
    F: Fn(&S) -> T + Send + 'static,
{
    let (tx, rx) = watch::channel(f(&source.borrow_and_update()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                changed = source.changed() => if changed.is_err() { return },
            }
            let next = f(&source.borrow_and_update());
            tx.send_if_modified(|cur| {
                if *cur == next {
                    false
                } else {
                    *cur = next;
                    true
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn follows_and_skips_equal_values() {
        let (tx, rx) = watch::channel(1u32);
        let mut mapped = map_watch(rx, |v| v / 2);
        assert_eq!(*mapped.borrow_and_update(), 0);
        tx.send(4).unwrap();
        mapped.changed().await.unwrap();
        assert_eq!(*mapped.borrow_and_update(), 2);
        tx.send(5).unwrap(); // maps to 2 again: not announced
        tx.send(7).unwrap();
        mapped.changed().await.unwrap();
        assert_eq!(*mapped.borrow_and_update(), 3);
        drop(tx);
        assert!(mapped.changed().await.is_err(), "ends with the source");
    }
}
