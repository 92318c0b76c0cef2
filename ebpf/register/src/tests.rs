//! Registration over a real unix socket, with a real listener passed by
//! SCM_RIGHTS to a minimal agent written with the same wire module.

use super::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use tokio::net::UnixListener;

fn enrolled() -> Enrolled {
    Enrolled {
        netns_cookie: 4242,
        pod_ips: vec!["10.1.2.3".parse().unwrap()],
        proxy_uid: 1337,
    }
}

fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[tokio::test]
async fn passes_pod_and_a_working_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let agent = UnixListener::bind(&path).unwrap();
    let (tcp, addr) = listener();
    let mut pod = PodInfo::new("web-1", "default");
    pod.skip_inbound_ports = vec![9000];

    let server = tokio::spawn(async move {
        let (mut conn, _) = agent.accept().await.unwrap();
        let (req, fd) = wire::recv_request(&mut conn).await.unwrap();
        let fd = fd.expect("listener descriptor passed");
        // The received descriptor is the very same listening socket.
        let passed = TcpListener::from(fd);
        assert_eq!(passed.local_addr().unwrap(), addr);
        wire::write_frame(&mut conn, &wire::Response::Enrolled(enrolled()))
            .await
            .unwrap();
        // A client can be accepted through the passed descriptor.
        let client = std::thread::spawn(move || TcpStream::connect(addr).unwrap());
        let (_accepted, _) = passed.accept().unwrap();
        client.join().unwrap();
        // The proxy dropping its registration closes the connection.
        let eof = wire::read_frame::<wire::Response>(&mut conn).await.unwrap();
        assert!(eof.is_none());
        req
    });

    let reg = register(&path, &pod, tcp.as_fd()).await.unwrap();
    assert_eq!(reg.enrolled(), &enrolled());
    drop(reg);
    let req = server.await.unwrap();
    assert_eq!(req.version, wire::PROTOCOL_VERSION);
    assert_eq!(req.pod, pod);
}

#[tokio::test]
async fn closed_resolves_when_the_agent_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let agent = UnixListener::bind(&path).unwrap();
    let (tcp, _) = listener();
    let server = tokio::spawn(async move {
        let (mut conn, _) = agent.accept().await.unwrap();
        let _ = wire::recv_request(&mut conn).await.unwrap();
        wire::write_frame(&mut conn, &wire::Response::Enrolled(enrolled()))
            .await
            .unwrap();
        conn
    });
    let mut reg = register(&path, &PodInfo::new("a", "b"), tcp.as_fd())
        .await
        .unwrap();
    let conn = server.await.unwrap();
    drop(conn);
    reg.closed().await;
}

#[tokio::test]
async fn refusal_is_reported_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let agent = UnixListener::bind(&path).unwrap();
    let (tcp, _) = listener();
    tokio::spawn(async move {
        let (mut conn, _) = agent.accept().await.unwrap();
        let _ = wire::recv_request(&mut conn).await.unwrap();
        let refused = wire::Response::Refused {
            reason: "no network namespace".into(),
        };
        wire::write_frame(&mut conn, &refused).await.unwrap();
    });
    let err = register(&path, &PodInfo::new("a", "b"), tcp.as_fd())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegisterError::Refused(r) if r == "no network namespace"),
        "{err}"
    );
}

#[tokio::test]
async fn agent_hanging_up_without_answer_is_a_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let agent = UnixListener::bind(&path).unwrap();
    let (tcp, _) = listener();
    tokio::spawn(async move {
        let (mut conn, _) = agent.accept().await.unwrap();
        let _ = wire::recv_request(&mut conn).await.unwrap();
    });
    let err = register(&path, &PodInfo::new("a", "b"), tcp.as_fd())
        .await
        .unwrap_err();
    assert!(matches!(err, RegisterError::Protocol(_)), "{err}");
}

#[tokio::test]
async fn oversized_or_garbage_answers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let agent = UnixListener::bind(&path).unwrap();
    let (tcp, _) = listener();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for answer in [
            u32::MAX.to_be_bytes().to_vec(),
            [&3u32.to_be_bytes()[..], b"{x}"].concat(),
        ] {
            let (mut conn, _) = agent.accept().await.unwrap();
            let _ = wire::recv_request(&mut conn).await.unwrap();
            conn.write_all(&answer).await.unwrap();
        }
    });
    for _ in 0..2 {
        let err = register(&path, &PodInfo::new("a", "b"), tcp.as_fd())
            .await
            .unwrap_err();
        assert!(matches!(err, RegisterError::Protocol(_)), "{err}");
    }
}

#[tokio::test]
async fn request_without_descriptor_is_seen_as_such() {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let req = wire::Request {
        version: 1,
        pod: PodInfo::new("a", "b"),
    };
    wire::write_frame(&mut a, &req).await.unwrap();
    let (got, fd) = wire::recv_request(&mut b).await.unwrap();
    assert_eq!(got, req);
    assert!(fd.is_none());
}

#[tokio::test]
async fn missing_socket_is_a_connect_error_naming_the_path() {
    let (tcp, _) = listener();
    let err = register(
        Path::new("/nonexistent/conduit.sock"),
        &PodInfo::new("a", "b"),
        tcp.as_fd(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RegisterError::Connect { .. }));
    assert!(err.to_string().contains("/nonexistent/conduit.sock"));
}

#[test]
fn invalid_pods_are_rejected_before_connecting() {
    let mut pod = PodInfo::new("", "ns");
    assert!(pod.validate().is_err());
    pod.name = "p".into();
    assert!(pod.validate().is_ok());
    pod.inbound_port = pod.outbound_port;
    assert!(pod.validate().is_err());
    pod.inbound_port = 0;
    assert!(pod.validate().is_err());
    let mut pod = PodInfo::new("p", "ns");
    pod.skip_outbound_ports = vec![0];
    assert!(pod.validate().is_err());
}

#[test]
fn claimed_pod_ips_are_checked_and_travel_only_when_given() {
    // (claimed addresses, valid?)
    let many: Vec<std::net::IpAddr> = (0..=crate::MAX_CLAIMED_IPS as u8)
        .map(|i| std::net::IpAddr::from([10, 0, 0, i + 1]))
        .collect();
    for (ips, ok) in [
        (vec![], true),
        (vec!["10.1.2.3", "fd00::3"], true),
        (vec!["127.0.0.1"], false),
        (vec!["::1"], false),
        (vec!["0.0.0.0"], false),
        (vec!["224.0.0.1"], false),
    ] {
        let mut pod = PodInfo::new("p", "ns");
        pod.pod_ips = ips.iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(pod.validate().is_ok(), ok, "{ips:?}");
    }
    let mut pod = PodInfo::new("p", "ns");
    pod.pod_ips = many;
    assert!(pod.validate().unwrap_err().contains("at most"));
    // Absent from the JSON when empty, so older agents see the same request;
    // a request without the field means "no claim".
    let json = serde_json::to_string(&PodInfo::new("p", "ns")).unwrap();
    assert!(!json.contains("pod_ips"), "{json}");
    let back: PodInfo = serde_json::from_str(&json).unwrap();
    assert!(back.pod_ips.is_empty());
    let mut pod = PodInfo::new("p", "ns");
    pod.pod_ips = vec!["10.1.2.3".parse().unwrap()];
    let json = serde_json::to_string(&pod).unwrap();
    assert!(json.contains(r#""pod_ips":["10.1.2.3"]"#), "{json}");
}

#[tokio::test]
async fn maintain_reregisters_after_the_agent_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let (tcp, _) = listener();
    let changes = Arc::new(Mutex::new(Vec::new()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let seen = changes.clone();
    let task = maintain(
        path.clone(),
        PodInfo::new("a", "b"),
        OwnedFd::from(tcp),
        move |up| {
            seen.lock().unwrap().push(up);
            let _ = tx.send(up);
        },
    );

    for round in 0..2 {
        // The agent is not there yet: maintain keeps retrying until it is.
        let agent = UnixListener::bind(&path).unwrap();
        let (mut conn, _) = agent.accept().await.unwrap();
        let (_, fd) = wire::recv_request(&mut conn).await.unwrap();
        assert!(fd.is_some());
        wire::write_frame(&mut conn, &wire::Response::Enrolled(enrolled()))
            .await
            .unwrap();
        assert_eq!(rx.recv().await, Some(true), "round {round}");
        // Agent "restarts".
        drop(conn);
        drop(agent);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(rx.recv().await, Some(false), "round {round}");
    }
    task.abort();
    assert_eq!(*changes.lock().unwrap(), vec![true, false, true, false]);
}
