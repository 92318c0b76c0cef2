//! The node agent's privileged tests, one binary: the real agent against a
//! cgroup and network namespace of the test's own (smoke, pod claims,
//! discovery, registration attacks, feature refusal). Each skips visibly
//! without root and fails under `CONDUIT_REQUIRE_PRIVILEGED=1`.

mod support;

mod discover_claims;
mod feature_refusal;
mod pod_claims;
mod security;
mod smoke;
