//! The end-to-end tests, one binary (target `e2e`): pods as network
//! namespaces, the real agent, proxies and controller, see docs/testing.md.
//! They share kernel state and run one at a time (`--test-threads=1`):
//! `cargo test --workspace --test e2e -- --test-threads=1`.

mod agent_restart;
mod cleanup;
mod enrolment;
mod fastpath;
mod faults;
mod harness;
mod inbound_capture;
mod maps_full;
mod mesh_failures;
mod mesh_traffic;
mod no_loop;
mod observe;
mod outbound_capture;
mod podsec_enrolment;
mod policy;
mod registration;
mod security_identity;
mod security_inbound;
