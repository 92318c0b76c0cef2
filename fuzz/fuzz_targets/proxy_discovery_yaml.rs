//! The proxy's discovery file (`proxy/src/discovery/config.rs`): YAML
//! parsed, validated, then indexed into the lookup table.
#![no_main]

use conduit_proxy::discovery::config::{Table, parse_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(services) = parse_file(text)
        && let Ok(table) = Table::build(&services)
    {
        for svc in &services {
            for addr in &svc.addresses {
                assert!(table.by_addr.contains_key(addr));
            }
        }
    }
});
