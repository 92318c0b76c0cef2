//! The controller's gRPC contract (protobuf packages `conduit.destination.v1`,
//! `conduit.identity.v1` and `conduit.policy.v1`, compiled at build time by protox, no protoc
//! needed), conversions between wire and Rust types, and the client side
//! that proxies use: [`client::watch_destination`] follows one destination
//! over `Destination.Get`, reconnecting with backoff and keeping the last
//! known endpoints while the controller is away.

pub mod client;
pub mod codec;
mod convert;

pub use convert::AddressError;

/// `conduit.destination.v1`: endpoint discovery.
pub mod destination {
    pub mod v1 {
        #![allow(clippy::all, rust_2018_idioms)]
        tonic::include_proto!("conduit.destination.v1");
    }
}

/// `conduit.identity.v1`: certificate signing for workloads.
pub mod identity {
    pub mod v1 {
        #![allow(clippy::all, rust_2018_idioms)]
        tonic::include_proto!("conduit.identity.v1");
    }
}

/// `conduit.policy.v1`: inbound authorization policy for each workload.
pub mod policy {
    pub mod v1 {
        #![allow(clippy::all, rust_2018_idioms)]
        tonic::include_proto!("conduit.policy.v1");
    }
}

/// `conduit.authz.v1`: the contract of external authorization plugins.
pub mod authz {
    pub mod v1 {
        #![allow(clippy::all, rust_2018_idioms)]
        tonic::include_proto!("conduit.authz.v1");
    }
}
