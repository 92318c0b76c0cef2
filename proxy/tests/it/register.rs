//! Registration with the node agent through `conduit-register`: a stand-in
//! agent on a real unix socket speaks the real wire protocol and receives
//! the proxy's inbound listener over SCM_RIGHTS.

use crate::support;

use conduit_register::Enrolled;
use conduit_register::wire::{Response, read_frame, recv_request, write_frame};
use support::{get_text, metrics, sample};
use tokio::net::{UnixListener, UnixStream};

#[tokio::test]
async fn registers_hands_over_the_inbound_listener_and_re_registers() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let agent = UnixListener::bind(&sock).unwrap();
    let app = support::apps::http_server().await;
    let proxy = support::plain_outbound(app, |c| {
        c.agent_socket = Some(sock.clone());
        c.pod_name = "web-1".into();
        c.pod_namespace = "shop".into();
        c.service_account = Some("web".into());
        c.skip_inbound_ports = vec![9090];
    })
    .await;

    let (mut conn, _) = agent.accept().await.unwrap();
    let (req, fd) = recv_request(&mut conn).await.unwrap();
    assert_eq!(
        (req.pod.name.as_str(), req.pod.namespace.as_str()),
        ("web-1", "shop")
    );
    assert_eq!(req.pod.service_account.as_deref(), Some("web"));
    assert_eq!(req.pod.inbound_port, proxy.inbound_addrs[0].port());
    assert_eq!(
        req.pod.outbound_port,
        proxy.outbound_addrs[0].port(),
        "bound ports, not :0"
    );
    assert_eq!(req.pod.admin_port, proxy.admin_addr.port());
    // The operator port is told as skipped: capture never steers it.
    assert_eq!(
        req.pod.skip_inbound_ports,
        vec![9090, proxy.control_addr.port()]
    );
    // The descriptor is the proxy's own inbound listener.
    let listener = std::net::TcpListener::from(fd.expect("listener fd attached"));
    assert_eq!(listener.local_addr().unwrap(), proxy.inbound_addrs[0]);

    enrol(&mut conn, 42).await;
    support::eventually("registered gauge", || async {
        sample(&metrics(&proxy).await, "conduit_agent_registered", &[]) == 1.0
    })
    .await;

    // The agent goes away: the gauge drops and the proxy registers again.
    drop(conn);
    support::eventually("unregistered gauge", || async {
        sample(&metrics(&proxy).await, "conduit_agent_registered", &[]) == 0.0
    })
    .await;
    let (mut again, _) = agent.accept().await.unwrap();
    let (req2, fd2) = recv_request(&mut again).await.unwrap();
    assert_eq!(req2.pod.name, "web-1");
    assert!(fd2.is_some());
    let refused: Response = Response::Refused {
        reason: "test".into(),
    };
    write_frame(&mut again, &refused).await.unwrap();
    // A refusal is not an enrolment.
    assert_eq!(
        sample(&metrics(&proxy).await, "conduit_agent_registered", &[]),
        0.0
    );
    let _: Option<Response> = read_frame(&mut again).await.unwrap_or(None);
}

/// Attack surface: a proxy reporting ready while its pod's traffic is not
/// captured would let the pod serve and send unmeshed. With an agent socket,
/// `/ready` is 503 until the agent enrolled the pod, and again when the
/// registration is lost.
#[tokio::test]
async fn ready_is_503_until_registered_with_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let agent = UnixListener::bind(&sock).unwrap();
    let app = support::apps::http_server().await;
    let proxy = support::plain_outbound(app, |c| {
        c.agent_socket = Some(sock.clone());
    })
    .await;
    let (mut conn, _) = agent.accept().await.unwrap();
    let _ = recv_request(&mut conn).await.unwrap();
    let (code, body) = get_text(proxy.admin_addr, "/ready").await;
    assert_eq!(code, 503, "ready before the agent answered: {body}");

    enrol(&mut conn, 7).await;
    support::eventually("ready once registered", || async {
        get_text(proxy.admin_addr, "/ready").await.0 == 200
    })
    .await;

    drop(conn);
    support::eventually("not ready once the registration is lost", || async {
        get_text(proxy.admin_addr, "/ready").await.0 == 503
    })
    .await;
}

/// Answers the proxy's registration as the agent does when it enrols the
/// pod (netns `cookie`).
async fn enrol(conn: &mut UnixStream, cookie: u64) {
    let enrolled = Enrolled {
        netns_cookie: cookie,
        pod_ips: vec![],
        proxy_uid: 0,
    };
    write_frame(conn, &Response::Enrolled(enrolled))
        .await
        .unwrap();
}
