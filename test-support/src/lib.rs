//! What the tests of every conduit crate share, so each helper exists once:
//! [`wait`] polls a condition with a deadline and reports the last state it
//! saw (no fixed sleeps, no hand-written poll loops), [`http`] probes an admin server's `/ready`, [`metrics`] parses the
//! Prometheus text of an admin `/metrics` page and asserts samples by label,
//! [`echo`] is the gRPC service (unary, both streaming kinds, bidi) that the
//! proxy's gRPC tests run behind the mesh, and [`ca`] mints test
//! certificates. A dev-dependency only: no production crate links it.

pub mod ca;
pub mod echo;
pub mod http;
pub mod metrics;
pub mod wait;

pub use metrics::Metrics;
pub use wait::{wait_until, wait_until_async};
