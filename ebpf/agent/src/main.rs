//! The node agent and node CLI.

fn main() {}
