//! Keeping a certificate: certify at start, renew at about 70% of each
//! certificate's (remaining) lifetime, retry failures with jittered exponential
//! backoff. The schedule is two pure functions ([`refresh_delay`],
//! [`retry_delay`]) so it can be tested without waiting.

use crate::certify::{Certifier, CertifyError, CertifyRequest, TokenError, TokenFile, key_and_csr};
use crate::credentials::{Credentials, CredentialsError, CurrentCert};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// When to renew and how to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshPolicy {
    /// Renew after this fraction of the certificate's lifetime.
    pub renew_at: f64,
    /// Spread `renew_at` by up to this much either way, so that proxies
    /// started together do not renew together.
    pub jitter: f64,
    /// The first retry waits about this long (between half and all of it)...
    pub retry_initial: Duration,
    /// ...and each further one twice as long, up to this.
    pub retry_max: Duration,
    /// Never renew sooner than this after a success (a controller handing
    /// out very short certificates, e.g. near its issuer's expiry, must
    /// not make the proxy spin).
    pub min_renew_delay: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            renew_at: 0.7,
            jitter: 0.05,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            min_renew_delay: Duration::from_secs(1),
        }
    }
}

/// How long to wait, from `now` (when the certificate was received), before
/// renewing a certificate valid from `not_before` to `not_after`: at
/// `renew_at ± jitter` of its lifetime, where `unit` (in `[0, 1]`, random in
/// use) picks the point in the jitter range. The lifetime counts from
/// `now` if `not_before` is earlier: issuers backdate `not_before` for clock
/// skew, and that past time is not usable lifetime. At least
/// `min_renew_delay`.
pub fn refresh_delay(
    policy: &RefreshPolicy,
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    unit: f64,
) -> Duration {
    if not_after <= not_before {
        return policy.min_renew_delay;
    }
    let start = not_before.max(now);
    let lifetime = not_after.duration_since(start).unwrap_or(Duration::ZERO);
    let unit = unit.clamp(0.0, 1.0);
    let fraction = (policy.renew_at + policy.jitter * (2.0 * unit - 1.0)).clamp(0.0, 1.0);
    let at = start + lifetime.mul_f64(fraction);
    at.duration_since(now)
        .unwrap_or(Duration::ZERO)
        .max(policy.min_renew_delay)
}

/// How long to wait before retry number `attempt` (0 for the first retry
/// after a failure): `retry_initial * 2^attempt`, capped at `retry_max`,
/// then jittered into its upper half by `unit` (in `[0, 1]`).
pub fn retry_delay(policy: &RefreshPolicy, attempt: u32, unit: f64) -> Duration {
    let factor = 2u32.saturating_pow(attempt.min(31));
    let ceiling = policy
        .retry_initial
        .saturating_mul(factor)
        .min(policy.retry_max);
    let half = ceiling / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// Why one certify round failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("generating the key and CSR failed: {0}")]
    Key(#[from] rcgen::Error),
    #[error(transparent)]
    Certify(#[from] CertifyError),
    #[error("the controller's certificate was not installed: {0}")]
    Install(#[from] CredentialsError),
}

/// Obtains and renews the proxy's certificate into [`Credentials`].
#[derive(Debug)]
pub struct Refresher<C> {
    credentials: Credentials,
    token: TokenFile,
    certifier: C,
    policy: RefreshPolicy,
}

impl<C: Certifier> Refresher<C> {
    pub fn new(credentials: Credentials, token: TokenFile, certifier: C) -> Self {
        Refresher {
            credentials,
            token,
            certifier,
            policy: RefreshPolicy::default(),
        }
    }

    pub fn with_policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// One round: a new key and CSR, the token as it is now, `Certify`,
    /// and install (which checks the certificate first).
    pub async fn refresh_once(&self) -> Result<Arc<CurrentCert>, RefreshError> {
        let identity = self.credentials.identity().clone();
        let token = self.token.read()?;
        let (key, csr_der) = key_and_csr(&identity)?;
        let certified = self
            .certifier
            .certify(CertifyRequest {
                identity,
                token,
                csr_der,
            })
            .await?;
        let mut chain = Vec::with_capacity(1 + certified.intermediates.len());
        chain.push(certified.leaf);
        chain.extend(certified.intermediates);
        Ok(self.credentials.install(chain, key)?)
    }

    /// Certifies, then renews forever. Run it as a task; it ends only when
    /// dropped.
    pub async fn run(self) {
        let mut failures: u32 = 0;
        loop {
            let delay = match self.refresh_once().await {
                Ok(cert) => {
                    failures = 0;
                    let now = self.credentials.clock().now();
                    let delay = refresh_delay(
                        &self.policy,
                        cert.not_before(),
                        cert.not_after(),
                        now,
                        rand::random(),
                    );
                    tracing::info!(identity = %self.credentials.identity(), renew_in = ?delay, "certified");
                    delay
                }
                Err(error) => {
                    let delay = retry_delay(&self.policy, failures, rand::random());
                    failures = failures.saturating_add(1);
                    let still_valid = self.credentials.is_ready();
                    tracing::warn!(
                        identity = %self.credentials.identity(),
                        %error,
                        attempt = failures,
                        retry_in = ?delay,
                        still_valid,
                        "certify failed"
                    );
                    delay
                }
            };
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[track_caller]
    fn assert_near(a: Duration, b: Duration) {
        let diff = a.abs_diff(b);
        assert!(diff < Duration::from_millis(1), "{a:?} != {b:?}");
    }

    #[test]
    fn renews_at_seventy_percent_with_jitter() {
        let p = RefreshPolicy::default();
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + 24 * HOUR;
        // Middle of the jitter range: exactly 70%.
        let mid = refresh_delay(&p, nb, na, nb, 0.5);
        assert_near(mid, (24 * HOUR).mul_f64(0.7));
        // Ends of the range: 65% and 75%.
        assert_near(
            refresh_delay(&p, nb, na, nb, 0.0),
            (24 * HOUR).mul_f64(0.65),
        );
        assert_near(
            refresh_delay(&p, nb, na, nb, 1.0),
            (24 * HOUR).mul_f64(0.75),
        );
        // A backdated certificate: the lifetime counts from now.
        let later = nb + 10 * HOUR;
        assert_near(
            refresh_delay(&p, nb, na, later, 0.5),
            (14 * HOUR).mul_f64(0.7),
        );
        // Not valid yet: from notBefore.
        assert_near(
            refresh_delay(&p, nb, na, nb - HOUR, 0.5),
            HOUR + (24 * HOUR).mul_f64(0.7),
        );
        // Short, expired or empty validity: never sooner than the floor.
        assert_near(
            refresh_delay(&p, nb, nb + Duration::from_millis(10), nb, 0.5),
            p.min_renew_delay,
        );
        assert_near(refresh_delay(&p, nb, na, na + HOUR, 1.0), p.min_renew_delay);
        assert_near(refresh_delay(&p, na, nb, nb, 0.5), p.min_renew_delay);
        // Out-of-range units are clamped.
        assert_near(
            refresh_delay(&p, nb, na, nb, 7.0),
            (24 * HOUR).mul_f64(0.75),
        );
        // Random units stay inside the range.
        for _ in 0..1000 {
            let d = refresh_delay(&p, nb, na, nb, rand::random());
            let slack = Duration::from_millis(1);
            assert!(
                d + slack >= (24 * HOUR).mul_f64(0.65) && d <= (24 * HOUR).mul_f64(0.75) + slack,
                "{d:?}"
            );
        }
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter() {
        let p = RefreshPolicy::default();
        let secs = |s: f64| Duration::from_secs_f64(s);
        // Ceilings 1, 2, 4, ... 32, then 60 for ever; jitter in the upper half.
        let ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0];
        for (attempt, ceiling) in ceilings.into_iter().enumerate() {
            let attempt = attempt as u32;
            assert_eq!(retry_delay(&p, attempt, 1.0), secs(ceiling));
            assert_eq!(retry_delay(&p, attempt, 0.0), secs(ceiling / 2.0));
        }
        assert_eq!(retry_delay(&p, u32::MAX, 1.0), secs(60.0));
        for attempt in 0..10 {
            for _ in 0..100 {
                let d = retry_delay(&p, attempt, rand::random());
                assert!(d >= retry_delay(&p, attempt, 0.0) && d <= retry_delay(&p, attempt, 1.0));
            }
        }
    }
}
