//! Inbound authorization policy, shared by the controller (which resolves
//! and serves it) and the proxy (which enforces it).
//!
//! * [`spec`]: the policy as written, plain serde data.
//! * [`compile`]: validation and compilation into a [`Policy`] of matchers.
//! * [`eval`]: decisions for a connection or an HTTP request; evaluation
//!   borrows the request and allocates nothing.
//!
//! See docs/policy.md for the model and examples.

pub mod cidr;
pub mod compile;
#[cfg(feature = "crd")]
pub mod crd;
pub mod eval;
pub mod matcher;
pub mod proto;
pub mod resources;
pub mod spec;
pub mod yaml;

pub use cidr::Cidr;
pub use compile::{CompileError, Context, Policy, Server, Slot};
pub use eval::{Decision, Verdict};
pub use matcher::{Client, Request};
pub use spec::{DefaultPolicy, InboundSpec};

#[cfg(test)]
mod tests;
