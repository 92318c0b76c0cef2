//! The controller's gRPC contract.
