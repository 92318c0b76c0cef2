//! Proxies certified by the real controller's `Identity.Certify` (gRPC on
//! loopback, token file backend), then mTLS between them.

use crate::support;

use conduit_controller::identity::serving::ServingTls;
use conduit_controller::identity::{
    Certifier as ControllerCertifier, IdentityService, Issuer, TokenFileVerifier,
};
use conduit_controller::metrics::Metrics;
use conduit_controller_api::identity::v1::identity_server::IdentityServer;
use conduit_proxy_tls::{
    Alpn, CertifyError, ControlConnector, Credentials, GrpcCertifier, RefreshError, Refresher,
    SpiffeId, TlsAcceptor, TlsConnector, TokenFile, TrustAnchors,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use support::*;
use tokio::net::{TcpListener, TcpStream};

const TD: &str = "test.local";
const WEB: &str = "spiffe://test.local/ns/shop/sa/web";
const BOOKS: &str = "spiffe://test.local/ns/shop/sa/books";
const WEB_TOKEN: &str = "web-token-0123456789abcdef";
const BOOKS_TOKEN: &str = "books-token-0123456789abcdef";

struct Controller {
    addr: SocketAddr,
    anchors_pem: String,
    dir: tempfile::TempDir,
    _tls: Option<ServingTls>,
}

/// The controller's identity service with a generated issuer and a token
/// file, on a free loopback port.
async fn controller(leaf_lifetime: Duration) -> Controller {
    controller_with(leaf_lifetime, None).await
}

/// [`controller`], its gRPC port serving TLS as `tls_identity` when given.
async fn controller_with(leaf_lifetime: Duration, tls_identity: Option<&str>) -> Controller {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - token: {WEB_TOKEN}\n    namespace: shop\n    serviceAccount: web\n  - token: {BOOKS_TOKEN}\n    namespace: shop\n    serviceAccount: books\n"
        ),
    )
    .unwrap();
    let issuer = Issuer::generate(
        TD,
        SystemTime::now() - Duration::from_secs(60),
        Duration::from_secs(86400),
    )
    .unwrap();
    let anchors_pem = issuer.certificate_pem().to_owned();
    let certifier = Arc::new(ControllerCertifier::new(
        issuer,
        TokenFileVerifier::load(&tokens).unwrap(),
        TD.parse().unwrap(),
        leaf_lifetime,
    ));
    let service = IdentityService::new(certifier.clone(), Arc::new(Metrics::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tonic::transport::Server::builder().add_service(IdentityServer::new(service));
    let tls = tls_identity.map(|id| ServingTls::start(certifier, id.to_owned()).unwrap());
    match &tls {
        Some(tls) => tokio::spawn(router.serve_with_incoming(tls.incoming(listener))),
        None => tokio::spawn(
            router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        ),
    };
    Controller {
        addr,
        anchors_pem,
        dir,
        _tls: tls,
    }
}

impl Controller {
    fn proxy(&self, identity: &str, token: &str) -> (Credentials, Refresher<GrpcCertifier>) {
        let anchors = TrustAnchors::from_pem(self.anchors_pem.as_bytes()).unwrap();
        let credentials = Credentials::new(SpiffeId::parse(identity).unwrap(), anchors);
        let token_path = self
            .dir
            .path()
            .join(format!("token-{}", identity.rsplit('/').next().unwrap()));
        std::fs::write(&token_path, token).unwrap();
        let certifier = GrpcCertifier::connect_lazy(&format!("http://{}", self.addr)).unwrap();
        let refresher = Refresher::new(credentials.clone(), TokenFile::new(token_path), certifier);
        (credentials, refresher)
    }

    /// A proxy reaching Certify over TLS, requiring the controller to be `controller_id`.
    fn proxy_over_tls(
        &self,
        identity: &str,
        token: &str,
        controller_id: &str,
    ) -> Refresher<GrpcCertifier> {
        let anchors = TrustAnchors::from_pem(self.anchors_pem.as_bytes()).unwrap();
        let credentials = Credentials::new(SpiffeId::parse(identity).unwrap(), anchors.clone());
        let token_path = self.dir.path().join("token-tls");
        std::fs::write(&token_path, token).unwrap();
        let connector =
            ControlConnector::new(anchors, SpiffeId::parse(controller_id).unwrap()).unwrap();
        let channel = connector.channel(&self.addr.to_string()).unwrap();
        Refresher::new(
            credentials,
            TokenFile::new(token_path),
            GrpcCertifier::new(channel),
        )
    }
}

const CONTROLLER: &str = "spiffe://test.local/ns/conduit/sa/conduit-controller";

#[tokio::test]
async fn certify_over_tls_checks_the_controllers_identity() {
    let ctl = controller_with(Duration::from_secs(3600), Some(CONTROLLER)).await;
    // The right identity: certified over TLS.
    let cert = within(
        "certify over TLS",
        ctl.proxy_over_tls(WEB, WEB_TOKEN, CONTROLLER)
            .refresh_once(),
    )
    .await
    .unwrap();
    assert!(cert.not_after() > SystemTime::now());
    // Expecting another identity: refused before the token is sent.
    let err = within(
        "certify expecting another controller",
        ctl.proxy_over_tls(WEB, WEB_TOKEN, BOOKS).refresh_once(),
    )
    .await
    .unwrap_err();
    assert_unavailable(&err);
    assert!(err.to_string().contains("books"), "{err}");
    // A plaintext client gets nothing from the TLS port.
    let (_, plain) = ctl.proxy(WEB, WEB_TOKEN);
    let err = within("plaintext certify", plain.refresh_once())
        .await
        .unwrap_err();
    assert_unavailable(&err);
}

/// Runs each refresher in the background and waits (at most 20 s) until
/// all their credentials hold a certificate.
async fn run_until_ready<const N: usize>(proxies: [(&Credentials, Refresher<GrpcCertifier>); N]) {
    let mut waiting = Vec::new();
    for (creds, refresher) in proxies {
        tokio::spawn(refresher.run());
        waiting.push(creds);
    }
    within("certification", async {
        for creds in waiting {
            creds.ready().await;
        }
    })
    .await;
}

/// Asserts that the controller refused the certificate request with `code`.
fn assert_refused(err: &RefreshError, code: tonic::Code) {
    assert!(
        matches!(
            err,
            RefreshError::Certify(CertifyError::Refused { code: got, .. }) if *got == code
        ),
        "{err}"
    );
}

/// Asserts that the controller could not be reached or did not answer.
fn assert_unavailable(err: &RefreshError) {
    assert!(
        matches!(err, RefreshError::Certify(CertifyError::Unavailable(_))),
        "{err}"
    );
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within 20 s"))
}

#[tokio::test]
async fn proxies_certified_by_the_controller_talk_mtls() {
    let ctl = controller(Duration::from_secs(24 * 3600)).await;
    let (web, web_refresher) = ctl.proxy(WEB, WEB_TOKEN);
    let (books, books_refresher) = ctl.proxy(BOOKS, BOOKS_TOKEN);
    assert!(!web.is_ready());
    run_until_ready([(&web, web_refresher), (&books, books_refresher)]).await;
    assert!(web.is_ready() && books.is_ready());
    // The controller's 24 h leaf.
    let lifetime = web
        .expiry()
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        lifetime > Duration::from_secs(23 * 3600) && lifetime <= Duration::from_secs(24 * 3600),
        "{lifetime:?}"
    );
    assert_eq!(
        conduit_proxy_tls::certificate_identity(web.current().unwrap().leaf()).unwrap(),
        id(WEB)
    );

    let acceptor = TlsAcceptor::new(books.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (tls, peer) = acceptor.accept(tcp).await.unwrap();
        tokio::spawn(echo(tls));
        peer
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsConnector::new(web.clone())
        .connect(tcp, &id(BOOKS), Alpn::H2)
        .await
        .unwrap();
    assert_eq!(round_trip(&mut tls, b"GET /books").await, b"GET /books");
    let peer = server.await.unwrap();
    assert_eq!(peer.identity, id(WEB));
    assert_eq!(peer.alpn, Alpn::H2);
}

#[tokio::test]
async fn the_controller_refuses_a_bad_token() {
    let ctl = controller(Duration::from_secs(3600)).await;
    // A token the controller does not know.
    let (creds, refresher) = ctl.proxy(WEB, "not-a-known-token-at-all");
    let err = refresher.refresh_once().await.unwrap_err();
    assert_refused(&err, tonic::Code::Unauthenticated);
    // Another service account's token.
    let (_, refresher) = ctl.proxy(WEB, BOOKS_TOKEN);
    let err = refresher.refresh_once().await.unwrap_err();
    assert_refused(&err, tonic::Code::PermissionDenied);
    assert!(!creds.is_ready());
}

#[tokio::test]
async fn an_unreachable_controller_is_unavailable() {
    // A port with nothing listening.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let ctl = controller(Duration::from_secs(3600)).await;
    let ctl = Controller { addr, ..ctl };
    let (creds, refresher) = ctl.proxy(WEB, WEB_TOKEN);
    let err = within("the failed call", refresher.refresh_once())
        .await
        .unwrap_err();
    assert_unavailable(&err);
    assert!(!creds.is_ready());
}

#[tokio::test]
async fn a_controller_that_never_answers_times_out() {
    // Accepts connections and then says nothing.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            open.push(tcp);
        }
    });
    let ctl = controller(Duration::from_secs(3600)).await;
    let anchors = TrustAnchors::from_pem(ctl.anchors_pem.as_bytes()).unwrap();
    let creds = Credentials::new(id(WEB), anchors);
    let token = ctl.dir.path().join("token");
    std::fs::write(&token, WEB_TOKEN).unwrap();
    let certifier = GrpcCertifier::connect_lazy(&format!("http://{addr}"))
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let refresher = Refresher::new(creds.clone(), TokenFile::new(token), certifier);
    let err = within("the timeout", refresher.refresh_once())
        .await
        .unwrap_err();
    assert_unavailable(&err);
    assert!(!creds.is_ready());
    held.abort();
}

#[tokio::test]
async fn renewal_from_the_controller_keeps_connections_open() {
    // 3 s leaves: the Refresher renews after about 2 s.
    let ctl = controller(Duration::from_secs(3)).await;
    let (web, web_refresher) = ctl.proxy(WEB, WEB_TOKEN);
    let (books, books_refresher) = ctl.proxy(BOOKS, BOOKS_TOKEN);
    run_until_ready([(&web, web_refresher), (&books, books_refresher)]).await;
    let first_books_leaf = books.current().unwrap().leaf().clone();

    let acceptor = TlsAcceptor::new(books.clone()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tls, _) = acceptor.accept(tcp).await.unwrap();
            tokio::spawn(echo(tls));
        }
    });
    let connector = TlsConnector::new(web.clone());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut open = connector
        .connect(tcp, &id(BOOKS), Alpn::Opaque)
        .await
        .unwrap();
    assert_eq!(round_trip(&mut open, b"one").await, b"one");

    // Wait until both sides hold a renewed certificate.
    let (mut web_changes, mut books_changes) = (web.subscribe(), books.subscribe());
    let web_leaf = web.current().unwrap().leaf().clone();
    within("renewal", async {
        web_changes
            .wait_for(|c| c.as_ref().is_some_and(|c| *c.leaf() != web_leaf))
            .await
            .unwrap();
        books_changes
            .wait_for(|c| c.as_ref().is_some_and(|c| *c.leaf() != first_books_leaf))
            .await
            .unwrap();
    })
    .await;
    assert!(web.is_ready() && books.is_ready());

    // The connection made with the first certificates still carries data.
    assert_eq!(round_trip(&mut open, b"two").await, b"two");
    // A new one is made with the renewed ones.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut fresh = connector
        .connect(tcp, &id(BOOKS), Alpn::Opaque)
        .await
        .unwrap();
    assert_eq!(round_trip(&mut fresh, b"three").await, b"three");
    assert_ne!(
        fresh.get_ref().1.peer_certificates().unwrap()[0],
        first_books_leaf
    );
}
