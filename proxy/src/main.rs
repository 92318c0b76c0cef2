//! The data-plane proxy.

fn main() {}
