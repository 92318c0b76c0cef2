//! The Refresher's schedule, run on tokio's paused clock: a certifier that
//! signs with an rcgen CA (in-process, so failures can be scripted), a
//! wall clock that follows tokio's, and no real waiting.

use crate::support;

use conduit_proxy_tls::{
    Certified, Certifier, CertifyError, CertifyRequest, Clock, Credentials, RefreshPolicy,
    Refresher, TokenFile, TokioClock,
};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use support::*;
use tokio::sync::mpsc;

const ME: &str = "spiffe://cluster.local/ns/shop/sa/web";
const LIFETIME: Duration = Duration::from_secs(1000);

/// One `certify` call as the certifier saw it.
#[derive(Debug)]
struct Call {
    at: SystemTime,
    token: String,
}

struct ScriptedCertifier {
    ca: Ca,
    clock: Arc<dyn Clock>,
    /// Outcomes to give, in order; `None` (or an empty script) signs.
    script: Mutex<VecDeque<Option<CertifyError>>>,
    calls: mpsc::UnboundedSender<Call>,
}

impl Certifier for ScriptedCertifier {
    async fn certify(&self, request: CertifyRequest) -> Result<Certified, CertifyError> {
        let at = self.clock.now();
        assert_eq!(request.identity.to_string(), ME);
        self.calls
            .send(Call {
                at,
                token: request.token.clone(),
            })
            .unwrap();
        if let Some(error) = self.script.lock().unwrap().pop_front().flatten() {
            return Err(error);
        }
        let leaf = self.ca.sign_csr(&request.csr_der, at, at + LIFETIME);
        Ok(Certified {
            leaf,
            intermediates: vec![self.ca.cert.clone()],
            valid_until: Some(at + LIFETIME),
        })
    }
}

struct Setup {
    credentials: Credentials,
    calls: mpsc::UnboundedReceiver<Call>,
    token_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn unavailable() -> Option<CertifyError> {
    Some(CertifyError::Unavailable(
        "controller down (scripted)".into(),
    ))
}

/// Starts a Refresher whose certifier follows `script`.
fn start(script: Vec<Option<CertifyError>>, token: Option<&str>) -> Setup {
    let ca = Ca::new("mesh");
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new(SystemTime::now()));
    let credentials = Credentials::with_clock(id(ME), ca.anchors(), clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    if let Some(t) = token {
        std::fs::write(&token_path, t).unwrap();
    }
    let (tx, calls) = mpsc::unbounded_channel();
    let certifier = ScriptedCertifier {
        ca,
        clock,
        script: Mutex::new(script.into()),
        calls: tx,
    };
    let refresher = Refresher::new(credentials.clone(), TokenFile::new(&token_path), certifier)
        .with_policy(RefreshPolicy::default());
    tokio::spawn(refresher.run());
    Setup {
        credentials,
        calls,
        token_path,
        _dir: dir,
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[tokio::test(start_paused = true)]
async fn renews_at_about_seventy_percent_rereading_the_token() {
    let mut s = start(vec![], Some("token-1"));
    let first = s.calls.recv().await.unwrap();
    assert_eq!(first.token, "token-1");
    s.credentials.ready().await;
    assert!(s.credentials.is_ready());
    let mut previous = first.at;
    let mut gaps = Vec::new();
    for round in 2..=6 {
        // Kubernetes rotates the projected token in place.
        std::fs::write(&s.token_path, format!("token-{round}\n")).unwrap();
        let call = s.calls.recv().await.unwrap();
        assert_eq!(
            call.token,
            format!("token-{round}"),
            "the token is read again for each request"
        );
        let gap = secs(call.at.duration_since(previous).unwrap());
        // 65%..75% of the lifetime, measured from notBefore (whole seconds).
        assert!(
            (649.0..=750.0).contains(&gap),
            "renewal {round} after {gap} s"
        );
        assert!(s.credentials.is_ready());
        gaps.push(gap);
        previous = call.at;
    }
    // Jitter: five renewals did not all land on the same second.
    assert!(gaps.iter().any(|g| (g - gaps[0]).abs() > 1.0), "{gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn retries_with_jittered_backoff_and_becomes_ready() {
    let script = vec![
        unavailable(),
        unavailable(),
        unavailable(),
        unavailable(),
        None,
    ];
    let mut s = start(script, Some("token"));
    let mut at = vec![s.calls.recv().await.unwrap().at];
    assert!(
        !s.credentials.is_ready(),
        "not ready before the first certificate"
    );
    for _ in 0..4 {
        at.push(s.calls.recv().await.unwrap().at);
    }
    s.credentials.ready().await;
    let gaps: Vec<f64> = at
        .windows(2)
        .map(|w| secs(w[1].duration_since(w[0]).unwrap()))
        .collect();
    // Retry n waits between half and all of 1 s * 2^n.
    for (n, gap) in gaps.iter().enumerate() {
        let ceiling = f64::from(1u32 << n);
        assert!(
            *gap >= ceiling / 2.0 && *gap <= ceiling,
            "retry {n} after {gap} s, ceiling {ceiling} s"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_renewal_keeps_the_certificate_and_backs_off_afresh() {
    // Certify, then two failed renewals, then success.
    let script = vec![None, unavailable(), unavailable(), None];
    let mut s = start(script, Some("token"));
    s.calls.recv().await.unwrap();
    s.credentials.ready().await;
    let held = s.credentials.current().unwrap();
    let renew = s.calls.recv().await.unwrap().at;
    let retry1 = s.calls.recv().await.unwrap().at;
    // Still serving the certificate it has while the controller is away.
    assert!(s.credentials.is_ready());
    assert_eq!(s.credentials.current().unwrap().leaf(), held.leaf());
    let retry2 = s.calls.recv().await.unwrap().at;
    let g1 = secs(retry1.duration_since(renew).unwrap());
    let g2 = secs(retry2.duration_since(retry1).unwrap());
    assert!((0.5..=1.0).contains(&g1), "{g1}");
    assert!((1.0..=2.0).contains(&g2), "{g2}");
    // The success after them installs a new certificate.
    let mut changes = s.credentials.subscribe();
    changes
        .wait_for(|c| c.as_ref().is_some_and(|c| c.leaf() != held.leaf()))
        .await
        .unwrap();
    assert!(s.credentials.expiry().unwrap() > held.not_after());
}

#[tokio::test(start_paused = true)]
async fn waits_for_a_token_file() {
    let mut s = start(vec![], None);
    // A minute of (virtual) time without a token: no requests, not ready.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(s.calls.try_recv().is_err());
    assert!(!s.credentials.is_ready());
    std::fs::write(&s.token_path, "late-token").unwrap();
    assert_eq!(s.calls.recv().await.unwrap().token, "late-token");
    s.credentials.ready().await;
}
