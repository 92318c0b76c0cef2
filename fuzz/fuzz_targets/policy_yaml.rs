//! Inbound policy YAML: the controller's policy file
//! (`controller/src/policy/file.rs`: parsed and validated into resources)
//! and the proxy's static policy file (`proxy/src/policy/file.rs`), which
//! is then compiled as the proxy compiles it (`conduit_policy::Policy`).
#![no_main]

use conduit_policy::{Context, DefaultPolicy, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let _ = conduit_controller::policy::file::parse(text, None);
    if let Ok(spec) = conduit_proxy::policy::file::parse(text) {
        let ctx = Context {
            namespace: "shop".into(),
            trust_domain: None,
            default_policy: DefaultPolicy::Deny,
            cluster_networks: vec!["10.0.0.0/8".parse().unwrap()],
        };
        if let Ok(policy) = Policy::compile(&spec, &ctx) {
            for port in [80, 8080, 5432] {
                let _ = policy.server(port).name();
            }
        }
    }
});
