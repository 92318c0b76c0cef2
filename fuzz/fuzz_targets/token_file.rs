//! The controller's token file (`controller/src/identity/token_file.rs`):
//! loaded through its public entry point from a file (in memory-backed
//! /dev/shm when there is one), then asked about a token.
#![no_main]

use conduit_controller::identity::TokenFileVerifier;
use conduit_controller::model::TokenVerifier;
use conduit_fuzz::runtime;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = ["/dev/shm", "/tmp"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        dir.join(format!("conduit-fuzz-tokens-{}.yaml", std::process::id()))
    })
}

fuzz_target!(|input: &[u8]| {
    let path = path();
    std::fs::write(path, input).expect("writing the token file");
    if let Ok(v) = TokenFileVerifier::load(path) {
        let _ = runtime().block_on(v.verify("0123456789abcdef0123", "default", "web"));
    }
});
