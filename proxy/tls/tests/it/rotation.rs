//! Certificate rotation under live connections, and what `install` accepts.

use crate::support;

use conduit_proxy_tls::{Alpn, Credentials, CredentialsError, TlsAcceptor, TlsConnector};
use std::time::SystemTime;
use support::*;
use tokio::net::{TcpListener, TcpStream};

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/web";
const SERVER: &str = "spiffe://cluster.local/ns/shop/sa/books";

#[tokio::test]
async fn rotation_keeps_established_connections() {
    let ca = Ca::new("mesh");
    let (client, server) = (certified(&ca, CLIENT), certified(&ca, SERVER));
    let acceptor = TlsAcceptor::new(server.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (peers_tx, mut peers) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, peers_tx) = (acceptor.clone(), peers_tx.clone());
            tokio::spawn(async move {
                let (tls, _peer) = acceptor.accept(tcp).await.unwrap();
                // The client certificate this connection was made with.
                let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                peers_tx.send(leaf).unwrap();
                echo(tls).await;
            });
        }
    });
    let connector = TlsConnector::new(client.clone());
    let open = |expected: &'static str| {
        let connector = connector.clone();
        async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            connector
                .connect(tcp, &id(expected), Alpn::Opaque)
                .await
                .unwrap()
        }
    };

    let mut first = open(SERVER).await;
    assert_eq!(round_trip(&mut first, b"before").await, b"before");
    let old_server_leaf = first.get_ref().1.peer_certificates().unwrap()[0].clone();
    let old_client_leaf = peers.recv().await.unwrap();
    assert_eq!(&old_client_leaf, client.current().unwrap().leaf());

    // Both sides rotate (new keys, new certificates).
    let (chain, key) = ca.issue(SERVER);
    let new_server_leaf = chain[0].clone();
    server.install(chain, key).unwrap();
    let (chain, key) = ca.issue(CLIENT);
    let new_client_leaf = chain[0].clone();
    client.install(chain, key).unwrap();
    assert_ne!(old_server_leaf, new_server_leaf);

    // New handshakes present the new certificates...
    let mut second = open(SERVER).await;
    assert_eq!(round_trip(&mut second, b"after").await, b"after");
    assert_eq!(
        second.get_ref().1.peer_certificates().unwrap()[0],
        new_server_leaf
    );
    assert_eq!(peers.recv().await.unwrap(), new_client_leaf);

    // ...and the connection made before the rotation still carries data.
    for i in 0..10 {
        let msg = format!("still open {i}");
        assert_eq!(round_trip(&mut first, msg.as_bytes()).await, msg.as_bytes());
    }
    assert_eq!(
        first.get_ref().1.peer_certificates().unwrap()[0],
        old_server_leaf
    );
}

#[tokio::test]
async fn install_checks_the_certificate_and_signals_changes() {
    let (ca, rogue) = (Ca::new("mesh"), Ca::new("rogue"));
    let creds = Credentials::new(id(CLIENT), ca.anchors());
    let mut changes = creds.subscribe();
    assert!(changes.borrow().is_none());

    // Someone else's identity.
    let (chain, key) = ca.issue(SERVER);
    assert!(matches!(
        creds.install(chain, key),
        Err(CredentialsError::NotOurs { .. })
    ));
    // From a CA we do not trust.
    let (chain, key) = rogue.issue(CLIENT);
    assert!(matches!(
        creds.install(chain, key),
        Err(CredentialsError::Untrusted(_))
    ));
    // Expired.
    let now = SystemTime::now();
    let (chain, key) = ca.issue_between(CLIENT, now - 3 * HOUR, now - 2 * HOUR);
    assert!(matches!(
        creds.install(chain, key),
        Err(CredentialsError::Untrusted(_))
    ));
    // A key that is not the certificate's.
    let (chain, _) = ca.issue(CLIENT);
    let (_, other_key) = ca.issue(CLIENT);
    assert!(matches!(
        creds.install(chain, other_key),
        Err(CredentialsError::Key(_))
    ));
    // Nothing at all.
    let (_, key) = ca.issue(CLIENT);
    assert!(matches!(
        creds.install(vec![], key),
        Err(CredentialsError::EmptyChain)
    ));
    // None of that touched the state.
    assert!(!creds.is_ready());
    assert!(!changes.has_changed().unwrap());

    let (chain, key) = ca.issue_between(CLIENT, now - HOUR, now + 2 * HOUR);
    creds.install(chain, key).unwrap();
    assert!(creds.is_ready());
    changes.changed().await.unwrap();
    let expiry = changes.borrow_and_update().as_ref().unwrap().not_after();
    assert_eq!(Some(expiry), creds.expiry());
    // Certificates carry whole seconds.
    let want = now + 2 * HOUR;
    assert!(expiry <= want && want.duration_since(expiry).unwrap().as_secs() < 1);
    creds.ready().await;

    // Readiness follows the clock: once expired, not ready.
    let clock = std::sync::Arc::new(SettableClock::new(now));
    let moving = Credentials::with_clock(id(CLIENT), ca.anchors(), clock.clone());
    let (chain, key) = ca.issue_between(CLIENT, now - HOUR, now + HOUR);
    moving.install(chain, key).unwrap();
    assert!(moving.is_ready());
    clock.set(now + 2 * HOUR);
    assert!(!moving.is_ready());
    assert!(
        moving.current().is_some(),
        "the expired certificate is still reported"
    );
}
