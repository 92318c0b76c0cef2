//! The controller's discovery file (`controller/src/file/config.rs`): YAML
//! parsed, validated and indexed into a snapshot.
#![no_main]

use conduit_controller::file::config::{Settings, Snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let settings = Settings {
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
    };
    if let Ok(snap) = Snapshot::parse(text, &settings) {
        let _ = snap.services();
    }
});
