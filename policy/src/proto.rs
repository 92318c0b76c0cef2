//! Conversions between [`InboundSpec`] and the wire (`conduit.policy.v1`).
//! The wire form is checked by compiling it, as any other spec.

use crate::spec::*;
use conduit_controller_api::policy::v1 as pb;

fn default_to(p: Option<DefaultPolicy>) -> i32 {
    (match p {
        None => pb::DefaultPolicy::Unspecified,
        Some(DefaultPolicy::AllUnauthenticated) => pb::DefaultPolicy::AllUnauthenticated,
        Some(DefaultPolicy::AllAuthenticated) => pb::DefaultPolicy::AllAuthenticated,
        Some(DefaultPolicy::ClusterAuthenticated) => pb::DefaultPolicy::ClusterAuthenticated,
        Some(DefaultPolicy::Deny) => pb::DefaultPolicy::Deny,
        Some(DefaultPolicy::Audit) => pb::DefaultPolicy::Audit,
    }) as i32
}

/// Why a message from the wire is not a policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what} has unknown value {value}")]
    Enum { what: &'static str, value: i32 },
    #[error("server {name:?} has port {port}, which is not 1-65535")]
    Port { name: String, port: u32 },
}

fn default_from(v: i32) -> Result<Option<DefaultPolicy>, WireError> {
    let p = pb::DefaultPolicy::try_from(v).map_err(|_| WireError::Enum {
        what: "default_policy",
        value: v,
    })?;
    Ok(match p {
        pb::DefaultPolicy::Unspecified => None,
        pb::DefaultPolicy::AllUnauthenticated => Some(DefaultPolicy::AllUnauthenticated),
        pb::DefaultPolicy::AllAuthenticated => Some(DefaultPolicy::AllAuthenticated),
        pb::DefaultPolicy::ClusterAuthenticated => Some(DefaultPolicy::ClusterAuthenticated),
        pb::DefaultPolicy::Deny => Some(DefaultPolicy::Deny),
        pb::DefaultPolicy::Audit => Some(DefaultPolicy::Audit),
    })
}

impl From<&InboundSpec> for pb::InboundPolicy {
    fn from(s: &InboundSpec) -> Self {
        pb::InboundPolicy {
            default_policy: default_to(s.default_policy),
            servers: s
                .servers
                .iter()
                .map(|s| pb::Server {
                    name: s.name.clone(),
                    port: s.port.into(),
                    protocol: (match s.protocol {
                        ServerProtocol::Detect => pb::Protocol::Detect,
                        ServerProtocol::Http => pb::Protocol::Http,
                        ServerProtocol::Grpc => pb::Protocol::Grpc,
                        ServerProtocol::Opaque => pb::Protocol::Opaque,
                    }) as i32,
                    default_policy: default_to(s.default_policy),
                })
                .collect(),
            authorizations: s.authorizations.iter().map(authz_to).collect(),
            plugins: s
                .plugins
                .iter()
                .map(|p| pb::Plugin {
                    name: p.name.clone(),
                    address: p.address.clone(),
                    timeout_ms: p.timeout_ms,
                    failure: (match p.failure {
                        FailureMode::Closed => pb::FailureMode::Closed,
                        FailureMode::Open => pb::FailureMode::Open,
                    }) as i32,
                    headers: p.headers.clone(),
                    max_in_flight: p.max_in_flight,
                    identity: p.identity.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

fn authz_to(a: &AuthorizationSpec) -> pb::Authorization {
    pb::Authorization {
        name: a.name.clone(),
        plugin: a.plugin.clone().unwrap_or_default(),
        servers: a.servers.clone(),
        action: (match a.action {
            Action::Allow => pb::Action::Allow,
            Action::Deny => pb::Action::Deny,
        }) as i32,
        from: Some(pb::Clients {
            identities: a.from.identities.clone(),
            service_accounts: a.from.service_accounts.clone(),
            namespaces: a.from.namespaces.clone(),
            authenticated: a.from.authenticated,
            networks: a.from.networks.clone(),
        }),
        http: a
            .http
            .iter()
            .map(|m| pb::HttpMatch {
                methods: m.methods.clone(),
                path: m.path.as_ref().and_then(|p| {
                    let kind = match (&p.exact, &p.prefix) {
                        (Some(e), _) => pb::path_match::Kind::Exact(e.clone()),
                        (None, Some(p)) => pb::path_match::Kind::Prefix(p.clone()),
                        (None, None) => return None,
                    };
                    Some(pb::PathMatch { kind: Some(kind) })
                }),
                headers: m
                    .headers
                    .iter()
                    .map(|h| pb::HeaderMatch {
                        name: h.name.clone(),
                        value: h.value.clone(),
                    })
                    .collect(),
                grpc: m.grpc.as_ref().map(|g| pb::GrpcMatch {
                    service: g.service.clone(),
                    method: g.method.clone(),
                }),
            })
            .collect(),
    }
}

impl TryFrom<pb::InboundPolicy> for InboundSpec {
    type Error = WireError;
    fn try_from(p: pb::InboundPolicy) -> Result<Self, WireError> {
        let mut servers = Vec::new();
        for s in p.servers {
            let port = u16::try_from(s.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| WireError::Port {
                    name: s.name.clone(),
                    port: s.port,
                })?;
            let protocol = match pb::Protocol::try_from(s.protocol) {
                Ok(pb::Protocol::Detect) => ServerProtocol::Detect,
                Ok(pb::Protocol::Http) => ServerProtocol::Http,
                Ok(pb::Protocol::Grpc) => ServerProtocol::Grpc,
                Ok(pb::Protocol::Opaque) => ServerProtocol::Opaque,
                Err(_) => {
                    return Err(WireError::Enum {
                        what: "protocol",
                        value: s.protocol,
                    });
                }
            };
            servers.push(ServerSpec {
                name: s.name,
                port,
                protocol,
                default_policy: default_from(s.default_policy)?,
            });
        }
        let mut authorizations = Vec::new();
        for a in p.authorizations {
            let action = match pb::Action::try_from(a.action) {
                Ok(pb::Action::Allow) => Action::Allow,
                Ok(pb::Action::Deny) => Action::Deny,
                Err(_) => {
                    return Err(WireError::Enum {
                        what: "action",
                        value: a.action,
                    });
                }
            };
            let from = a.from.unwrap_or_default();
            authorizations.push(AuthorizationSpec {
                plugin: (!a.plugin.is_empty()).then_some(a.plugin),
                name: a.name,
                servers: a.servers,
                action,
                from: ClientsSpec {
                    identities: from.identities,
                    service_accounts: from.service_accounts,
                    namespaces: from.namespaces,
                    authenticated: from.authenticated,
                    networks: from.networks,
                },
                http: a
                    .http
                    .into_iter()
                    .map(|m| HttpMatchSpec {
                        methods: m.methods,
                        path: m.path.and_then(|p| p.kind).map(|k| match k {
                            pb::path_match::Kind::Exact(e) => PathMatchSpec {
                                exact: Some(e),
                                prefix: None,
                            },
                            pb::path_match::Kind::Prefix(p) => PathMatchSpec {
                                exact: None,
                                prefix: Some(p),
                            },
                        }),
                        headers: m
                            .headers
                            .into_iter()
                            .map(|h| HeaderMatchSpec {
                                name: h.name,
                                value: h.value,
                            })
                            .collect(),
                        grpc: m.grpc.map(|g| GrpcMatchSpec {
                            service: g.service,
                            method: g.method,
                        }),
                    })
                    .collect(),
            });
        }
        let mut plugins = Vec::new();
        for q in p.plugins {
            let failure = match pb::FailureMode::try_from(q.failure) {
                Ok(pb::FailureMode::Closed) => FailureMode::Closed,
                Ok(pb::FailureMode::Open) => FailureMode::Open,
                Err(_) => {
                    return Err(WireError::Enum {
                        what: "failure",
                        value: q.failure,
                    });
                }
            };
            plugins.push(PluginSpec {
                name: q.name,
                address: q.address,
                timeout_ms: q.timeout_ms,
                failure,
                headers: q.headers,
                max_in_flight: q.max_in_flight,
                identity: Some(q.identity).filter(|i| !i.is_empty()),
            });
        }
        Ok(InboundSpec {
            default_policy: default_from(p.default_policy)?,
            servers,
            authorizations,
            plugins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_wire() {
        let spec: InboundSpec = crate::yaml::from_str(
            r#"
defaultPolicy: cluster-authenticated
servers:
  - {name: web, port: 8080, protocol: grpc, defaultPolicy: audit}
authorizations:
  - name: a
    servers: [web]
    action: deny
    from: {identities: ["spiffe://td/ns/a/sa/b"], serviceAccounts: [x/y], namespaces: [n], authenticated: true, networks: [10.0.0.0/8]}
    http:
      - methods: [GET]
        path: {exact: /x}
        headers: [{name: a, value: b}, {name: c}]
        grpc: {service: p.S, method: M}
      - path: {prefix: /y/}
  - {name: p, plugin: ext}
plugins:
  - {name: ext, address: "10.0.0.1:9000", timeoutMs: 100, failure: open, headers: [x-a], maxInFlight: 5}
  - {name: meshed, address: "10.0.0.2:9000", identity: "spiffe://td/ns/a/sa/plugin"}
"#,
        )
        .unwrap();
        let wire = pb::InboundPolicy::from(&spec);
        assert_eq!(InboundSpec::try_from(wire).unwrap(), spec);
        let bad = pb::InboundPolicy {
            default_policy: 99,
            ..Default::default()
        };
        assert!(matches!(
            InboundSpec::try_from(bad),
            Err(WireError::Enum { value: 99, .. })
        ));
        let bad_port = pb::InboundPolicy {
            servers: vec![pb::Server {
                name: "s".into(),
                port: 70000,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(InboundSpec::try_from(bad_port).is_err());
    }
}
