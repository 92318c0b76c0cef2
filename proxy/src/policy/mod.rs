//! Inbound authorization (crate `conduit-policy`): the policy in force
//! ([`PolicyStore`]), where it comes from (the configured default, a static
//! file in [`file`], the controller's stream in [`controller`]), and its
//! enforcement ([`enforce`]): opaque connections are checked once before the
//! application is dialled, HTTP requests one by one before they are
//! forwarded. A new policy applies to the next request of every open
//! connection.

pub mod controller;
pub mod enforce;
pub mod file;
pub mod plugin;

use crate::config::Config;
use conduit_policy::{CompileError, Context, InboundSpec, Policy, Verdict};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;
use tracing::info;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// Server name (bounded by the policy's size), or `default`.
    pub server: String,
    /// Authorization name, `default` or `unnormalized_path`.
    pub rule: String,
    /// `allow`, `deny` or `audit`.
    pub decision: &'static str,
}

const VERDICTS: [Verdict; 3] = [Verdict::Allow, Verdict::Deny, Verdict::Audit];

fn verdict_index(v: Verdict) -> usize {
    match v {
        Verdict::Allow => 0,
        Verdict::Deny => 1,
        Verdict::Audit => 2,
    }
}

/// A compiled policy with its counters made in advance, so that a decision
/// is counted without building a label set.
pub struct Installed {
    pub policy: Policy,
    counters: Vec<[Counter; 3]>,
    /// Where it came from (logs): `default`, `file`, `controller`.
    pub source: &'static str,
}

impl Installed {
    pub fn count(&self, d: conduit_policy::Decision) {
        self.counters[d.slot][verdict_index(d.verdict)].inc();
    }
}

/// The policy in force. Cheap to read per request (a read lock and an
/// `Arc` clone).
pub struct PolicyStore {
    ctx: Context,
    current: RwLock<Arc<Installed>>,
    family: Family<AuthzLabels, Counter>,
    /// Serialises installs (label bookkeeping).
    install: Mutex<()>,
    /// Bumped on every install (tests and the controller client follow it).
    version: watch::Sender<u64>,
    /// Connections to the authorization plugins.
    pub plugins: plugin::Plugins,
}

impl PolicyStore {
    /// Starts with the configured default on every port.
    pub fn new(ctx: Context, registry: &mut Registry) -> Arc<PolicyStore> {
        let family = Family::<AuthzLabels, Counter>::default();
        registry.sub_registry_with_prefix("conduit").register(
            "inbound_authz",
            "Inbound authorization decisions, by server, rule and decision (allow, deny, audit)",
            family.clone(),
        );
        let policy = Policy::defaults_only(&ctx);
        let installed = make_installed(&family, policy, "default");
        info!(default = %ctx.default_policy, "inbound policy: configured default on every port until a policy arrives");
        Arc::new(PolicyStore {
            ctx,
            current: RwLock::new(Arc::new(installed)),
            family,
            install: Mutex::new(()),
            version: watch::channel(0).0,
            plugins: plugin::Plugins::default(),
        })
    }

    pub fn current(&self) -> Arc<Installed> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Compiles and installs `spec`; on error the policy in force stays.
    pub fn install(&self, spec: &InboundSpec, source: &'static str) -> Result<(), CompileError> {
        let policy = Policy::compile(spec, &self.ctx)?;
        let _serial = self.install.lock().unwrap_or_else(|p| p.into_inner());
        let installed = Arc::new(make_installed(&self.family, policy, source));
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|p| p.into_inner()),
            installed.clone(),
        );
        // Forget the label sets only the old policy had (bounded metrics).
        for s in old.policy.slots() {
            let still = installed
                .policy
                .slots()
                .iter()
                .any(|n| n.server == s.server && n.rule == s.rule);
            if !still {
                for v in VERDICTS {
                    self.family.remove(&labels(s, v));
                }
            }
        }
        self.version.send_modify(|v| *v += 1);
        info!(
            source,
            servers = spec.servers.len(),
            authorizations = spec.authorizations.len(),
            default = %spec.default_policy.unwrap_or(self.ctx.default_policy),
            "inbound policy installed"
        );
        Ok(())
    }

    pub fn versions(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

fn labels(s: &conduit_policy::Slot, v: Verdict) -> AuthzLabels {
    AuthzLabels {
        server: s.server.to_string(),
        rule: s.rule.to_string(),
        decision: v.as_str(),
    }
}

fn make_installed(
    family: &Family<AuthzLabels, Counter>,
    policy: Policy,
    source: &'static str,
) -> Installed {
    let counters = policy
        .slots()
        .iter()
        .map(|s| VERDICTS.map(|v| family.get_or_create(&labels(s, v)).clone()))
        .collect();
    Installed {
        policy,
        counters,
        source,
    }
}

/// The compile context from the proxy's flags.
pub fn context(cfg: &Config) -> anyhow::Result<Context> {
    let trust_domain = crate::identity::spiffe_id(cfg)?
        .map(|id| id.trust_domain().clone())
        .or_else(|| {
            cfg.trust_domain
                .as_deref()
                .and_then(|t| conduit_proxy_tls::TrustDomain::new(t).ok())
        });
    Ok(Context {
        namespace: cfg.pod_namespace.clone(),
        trust_domain,
        default_policy: cfg.inbound_policy,
        // `cluster-authenticated` uses the same networks as discovery's
        // fail-closed rule (`--cluster-networks`).
        cluster_networks: cfg.cluster_networks.0.clone(),
    })
}
