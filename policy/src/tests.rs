//! Table-driven tests of the matcher: one policy, many (client, request)
//! cases, each with the verdict and the rule it must be attributed to.

use crate::*;
use conduit_identity::{SpiffeId, TrustDomain};
use http::{HeaderMap, Method};
use std::net::IpAddr;

fn ctx(default: DefaultPolicy) -> Context {
    Context {
        namespace: "shop".into(),
        trust_domain: Some(TrustDomain::new("cluster.local").unwrap()),
        default_policy: default,
        cluster_networks: vec!["10.0.0.0/8".parse().unwrap()],
    }
}

fn compile(yaml: &str, default: DefaultPolicy) -> Policy {
    let spec: InboundSpec = crate::yaml::from_str(yaml).unwrap();
    Policy::compile(&spec, &ctx(default)).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{s}")).unwrap()
}

/// (who, ip, port, method, path, headers, verdict, rule)
type Case = (
    Option<&'static str>,
    &'static str,
    u16,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Verdict,
    &'static str,
);

fn run(policy: &Policy, cases: &[Case]) {
    for (i, (who, ip, port, method, path, hdrs, want, rule)) in cases.iter().enumerate() {
        let ident = who.map(id);
        let client = Client {
            identity: ident.as_ref(),
            ip: ip.parse::<IpAddr>().unwrap(),
        };
        let mut headers = HeaderMap::new();
        for (k, v) in *hdrs {
            headers.append(
                http::HeaderName::from_static(k),
                http::HeaderValue::from_static(v),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let server = policy.server(*port);
        let d = if path.is_empty() {
            server.check_connection(&client)
        } else {
            server.check_request(
                &client,
                &Request {
                    method: &method,
                    path,
                    headers: &headers,
                },
            )
        };
        let slot = &policy.slots()[d.slot];
        assert_eq!(
            (d.verdict, &*slot.rule),
            (*want, *rule),
            "case {i}: {who:?} from {ip} -> :{port} {method} {path:?}"
        );
    }
}

const WEB: &str = r#"
defaultPolicy: deny
servers:
  - {name: web-http, port: 8080, protocol: http}
  - {name: db, port: 5432, protocol: opaque}
  - {name: open, port: 9000, defaultPolicy: all-unauthenticated}
authorizations:
  - name: frontend-get-api
    servers: [web-http]
    from: {serviceAccounts: [frontend]}
    http:
      - methods: [GET]
        path: {prefix: /api/}
  - name: no-admin
    action: deny
    servers: [web-http]
    http:
      - path: {prefix: /api/admin}
  - name: ops-anything
    servers: [web-http]
    from: {serviceAccounts: [ops/tool], networks: [10.1.0.0/16]}
  - name: billing-db
    servers: [db]
    from: {namespaces: [billing]}
  - name: probe
    servers: [web-http]
    from: {networks: [192.168.0.0/16]}
    http:
      - {methods: [GET], path: {exact: /healthz}}
  - name: grpc-greeter
    servers: [web-http]
    from: {identities: ["spiffe://cluster.local/ns/other/sa/caller"]}
    http:
      - grpc: {service: pkg.Greeter, method: Hello}
      - headers: [{name: x-canary, value: "1"}, {name: x-present}]
"#;

#[test]
fn only_frontend_may_get_api() {
    use Verdict::*;
    let p = compile(WEB, DefaultPolicy::AllUnauthenticated);
    let fe = Some("cluster.local/ns/shop/sa/frontend");
    let other = Some("cluster.local/ns/shop/sa/backend");
    let foreign_td = Some("evil.example/ns/shop/sa/frontend");
    let ops = Some("cluster.local/ns/ops/sa/tool");
    let caller = Some("cluster.local/ns/other/sa/caller");
    let cases: &[Case] = &[
        (
            fe,
            "10.0.0.5",
            8080,
            "GET",
            "/api/users",
            &[],
            Allow,
            "frontend-get-api",
        ),
        (
            fe,
            "10.0.0.5",
            8080,
            "POST",
            "/api/users",
            &[],
            Deny,
            "default",
        ),
        (fe, "10.0.0.5", 8080, "GET", "/apix", &[], Deny, "default"),
        (
            fe,
            "10.0.0.5",
            8080,
            "GET",
            "/api/admin/x",
            &[],
            Deny,
            "no-admin",
        ),
        // Path tricks that would reach /api/admin or leave /api/.
        (
            fe,
            "10.0.0.5",
            8080,
            "GET",
            "/api/../admin",
            &[],
            Deny,
            "unnormalized_path",
        ),
        (
            fe,
            "10.0.0.5",
            8080,
            "GET",
            "/api//admin",
            &[],
            Deny,
            "unnormalized_path",
        ),
        (
            fe,
            "10.0.0.5",
            8080,
            "GET",
            "/api/%61dmin",
            &[],
            Deny,
            "unnormalized_path",
        ),
        (
            other,
            "10.0.0.5",
            8080,
            "GET",
            "/api/users",
            &[],
            Deny,
            "default",
        ),
        (
            foreign_td,
            "10.0.0.5",
            8080,
            "GET",
            "/api/users",
            &[],
            Deny,
            "default",
        ),
        (
            None,
            "10.0.0.5",
            8080,
            "GET",
            "/api/users",
            &[],
            Deny,
            "default",
        ),
        // Both identity and network are required when both are given.
        (
            ops,
            "10.1.2.3",
            8080,
            "DELETE",
            "/x",
            &[],
            Allow,
            "ops-anything",
        ),
        (ops, "10.2.0.1", 8080, "DELETE", "/x", &[], Deny, "default"),
        (None, "10.1.2.3", 8080, "DELETE", "/x", &[], Deny, "default"),
        (
            ops,
            "10.1.2.3",
            8080,
            "GET",
            "/api/admin",
            &[],
            Deny,
            "no-admin",
        ),
        // Networks for non-meshed clients.
        (
            None,
            "192.168.4.4",
            8080,
            "GET",
            "/healthz",
            &[],
            Allow,
            "probe",
        ),
        (
            None,
            "192.168.4.4",
            8080,
            "GET",
            "/healthz/",
            &[],
            Deny,
            "default",
        ),
        (
            None,
            "::ffff:192.168.4.4",
            8080,
            "GET",
            "/healthz",
            &[],
            Allow,
            "probe",
        ),
        // gRPC service/method, or headers (all of them).
        (
            caller,
            "10.0.0.9",
            8080,
            "POST",
            "/pkg.Greeter/Hello",
            &[],
            Allow,
            "grpc-greeter",
        ),
        (
            caller,
            "10.0.0.9",
            8080,
            "POST",
            "/pkg.Greeter/Bye",
            &[],
            Deny,
            "default",
        ),
        (
            caller,
            "10.0.0.9",
            8080,
            "GET",
            "/x",
            &[("x-canary", "1"), ("x-present", "")],
            Allow,
            "grpc-greeter",
        ),
        (
            caller,
            "10.0.0.9",
            8080,
            "GET",
            "/x",
            &[("x-canary", "1")],
            Deny,
            "default",
        ),
        (
            caller,
            "10.0.0.9",
            8080,
            "GET",
            "/x",
            &[("x-canary", "2"), ("x-present", "")],
            Deny,
            "default",
        ),
        // Connection level (opaque): only rules without HTTP matches.
        (
            Some("cluster.local/ns/billing/sa/api"),
            "10.0.0.7",
            5432,
            "GET",
            "",
            &[],
            Allow,
            "billing-db",
        ),
        (fe, "10.0.0.7", 5432, "GET", "", &[], Deny, "default"),
        // The L7 deny rule on web-http applies to any opaque connection.
        (ops, "10.1.2.3", 8080, "GET", "", &[], Deny, "no-admin"),
        // A port without a server gets the workload default; a server's own default wins.
        (fe, "10.0.0.5", 7000, "GET", "/", &[], Deny, "default"),
        (None, "1.2.3.4", 9000, "GET", "/", &[], Allow, "default"),
    ];
    run(&p, cases);
    assert_eq!(p.server(8080).name(), "web-http");
    assert_eq!(p.server(7000).name(), "default");
}

#[test]
fn default_policies() {
    use Verdict::*;
    let meshed = Some("cluster.local/ns/a/sa/b");
    let table: &[(DefaultPolicy, Option<&'static str>, &'static str, Verdict)] = &[
        (
            DefaultPolicy::AllUnauthenticated,
            None,
            "203.0.113.1",
            Allow,
        ),
        (DefaultPolicy::AllAuthenticated, None, "10.0.0.1", Deny),
        (
            DefaultPolicy::AllAuthenticated,
            meshed,
            "203.0.113.1",
            Allow,
        ),
        (
            DefaultPolicy::ClusterAuthenticated,
            meshed,
            "10.0.0.1",
            Allow,
        ),
        (
            DefaultPolicy::ClusterAuthenticated,
            meshed,
            "203.0.113.1",
            Deny,
        ),
        (DefaultPolicy::ClusterAuthenticated, None, "10.0.0.1", Deny),
        (DefaultPolicy::Deny, meshed, "10.0.0.1", Deny),
        (DefaultPolicy::Audit, None, "203.0.113.1", Audit),
    ];
    for (default, who, ip, want) in table {
        let p = Policy::defaults_only(&ctx(*default));
        run(&p, &[(*who, ip, 80, "GET", "/", &[], *want, "default")]);
        run(&p, &[(*who, ip, 80, "GET", "", &[], *want, "default")]);
    }
}

#[test]
fn audit_reports_what_would_be_refused() {
    use Verdict::*;
    let p = compile(
        r#"
defaultPolicy: audit
authorizations:
  - {name: fe, from: {serviceAccounts: [frontend]}}
  - {name: block, action: deny, http: [{path: {prefix: /secret}}]}
"#,
        DefaultPolicy::Deny,
    );
    let fe = Some("cluster.local/ns/shop/sa/frontend");
    run(
        &p,
        &[
            (fe, "10.0.0.1", 80, "GET", "/", &[], Allow, "fe"),
            (None, "10.0.0.1", 80, "GET", "/", &[], Audit, "default"),
            (fe, "10.0.0.1", 80, "GET", "/secret", &[], Audit, "block"),
        ],
    );
}

#[test]
fn bad_policies_name_the_place() {
    let cases: &[(&str, &str)] = &[
        ("servers: [{name: a, port: 0}]", "servers[0] (a).port"),
        (
            "servers: [{name: a, port: 1}, {name: b, port: 1}]",
            "servers[1] (b).port",
        ),
        ("servers: [{name: A, port: 1}]", "servers[0] (A).name"),
        (
            "servers: [{name: default, port: 1}]",
            "servers[0] (default).name",
        ),
        (
            "authorizations: [{name: x, servers: [nope]}]",
            "authorizations[0] (x).servers[0]",
        ),
        (
            "authorizations: [{name: x}, {name: x}]",
            "authorizations[1] (x)",
        ),
        (
            "authorizations: [{name: x, from: {identities: [\"spiffe://td/ns/a\"]}}]",
            "authorizations[0] (x).from.identities[0]",
        ),
        (
            "authorizations: [{name: x, from: {serviceAccounts: [Bad]}}]",
            "authorizations[0] (x).from.serviceAccounts[0]",
        ),
        (
            "authorizations: [{name: x, from: {networks: [10.0.0.1/8]}}]",
            "authorizations[0] (x).from.networks[0]",
        ),
        (
            "authorizations: [{name: x, http: [{methods: [get]}]}]",
            "authorizations[0] (x).http[0].methods[0]",
        ),
        (
            "authorizations: [{name: x, http: [{path: {prefix: api}}]}]",
            "authorizations[0] (x).http[0].path",
        ),
        (
            "authorizations: [{name: x, http: [{path: {prefix: /a, exact: /a}}]}]",
            "authorizations[0] (x).http[0].path",
        ),
        (
            "authorizations: [{name: x, http: [{path: {prefix: /a/../b}}]}]",
            "authorizations[0] (x).http[0].path",
        ),
        (
            "authorizations: [{name: x, http: [{grpc: {service: a/b}}]}]",
            "authorizations[0] (x).http[0].grpc.service",
        ),
        (
            "authorizations: [{name: x, http: [{headers: [{name: \"bad name\"}]}]}]",
            "authorizations[0] (x).http[0].headers[0].name",
        ),
        (
            "plugins: [{name: p, address: \"10.0.0.1:9\", identity: \"not-spiffe\"}]",
            "plugins[0] (p).identity",
        ),
    ];
    for (yaml, at) in cases {
        let spec: InboundSpec = crate::yaml::from_str(yaml).unwrap();
        let e = Policy::compile(&spec, &ctx(DefaultPolicy::Deny)).unwrap_err();
        assert_eq!(e.at, *at, "{yaml}: {e}");
    }
}

#[test]
fn sizes_are_bounded() {
    let mut spec = InboundSpec::default();
    for i in 0..=compile::MAX_AUTHORIZATIONS {
        spec.authorizations.push(spec::AuthorizationSpec {
            name: format!("r{i}"),
            ..Default::default()
        });
    }
    assert!(Policy::compile(&spec, &ctx(DefaultPolicy::Deny)).is_err());
}

#[test]
fn default_policy_names() {
    for p in DefaultPolicy::ALL {
        assert_eq!(p.as_str().parse::<DefaultPolicy>(), Ok(p));
    }
    let e = "strict".parse::<DefaultPolicy>().unwrap_err();
    assert!(e.to_string().contains("all-authenticated"));
}
