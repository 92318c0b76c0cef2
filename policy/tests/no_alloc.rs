//! Evaluation of an allowed request allocates nothing: a counting global
//! allocator around the system one watches this thread while a 100-rule
//! policy decides connections and requests.
#![allow(unsafe_code)]

use conduit_identity::{SpiffeId, TrustDomain};
use conduit_policy::{Client, Context, DefaultPolicy, InboundSpec, Policy, Request, Verdict};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a thread-local Cell (no allocation, no locking).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

#[test]
fn an_allowed_request_allocates_nothing() {
    // 99 rules that do not match the caller, then the one that does.
    let mut yaml =
        String::from("defaultPolicy: deny\nservers: [{name: web, port: 8080}]\nauthorizations:\n");
    for i in 0..99 {
        yaml.push_str(&format!(
            "  - {{name: r{i}, servers: [web], from: {{serviceAccounts: [sa{i}], networks: [10.{i}.0.0/16]}}, http: [{{methods: [POST], path: {{prefix: /r{i}/}}, headers: [{{name: x-r, value: \"{i}\"}}]}}]}}\n"
        ));
    }
    yaml.push_str("  - {name: frontend, servers: [web], from: {serviceAccounts: [frontend]}, http: [{methods: [GET], path: {prefix: /api/}}]}\n");
    let spec: InboundSpec = conduit_policy::yaml::from_str(&yaml).unwrap();
    let ctx = Context {
        namespace: "shop".into(),
        trust_domain: Some(TrustDomain::new("cluster.local").unwrap()),
        default_policy: DefaultPolicy::Deny,
        cluster_networks: vec![],
    };
    let policy = Policy::compile(&spec, &ctx).unwrap();
    let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").unwrap();
    let client = Client {
        identity: Some(&id),
        ip: "10.200.0.1".parse().unwrap(),
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("x-r", http::HeaderValue::from_static("5"));
    let method = http::Method::GET;
    let server = policy.server(8080);
    let before = allocations();
    let mut allowed = 0;
    for _ in 0..1000 {
        let d = server.check_request(
            &client,
            &Request {
                method: &method,
                path: "/api/items",
                headers: &headers,
            },
        );
        allowed += usize::from(d.verdict == Verdict::Allow);
        let _ = server.check_connection(&client);
    }
    let used = allocations() - before;
    // The counter does see allocations on this thread.
    let probe = allocations();
    let v = std::hint::black_box(vec![1u8; 16]);
    assert!(
        allocations() > probe && v.len() == 16,
        "the allocator counts"
    );
    assert_eq!(allowed, 1000);
    assert_eq!(used, 0, "evaluation allocated {used} times");
    assert_eq!(
        &*policy.slots()[server
            .check_request(
                &client,
                &Request {
                    method: &method,
                    path: "/api/items",
                    headers: &headers
                }
            )
            .slot]
            .rule,
        "frontend"
    );
}
