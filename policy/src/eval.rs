//! Decisions. Deny rules first (deny wins), then allow rules, then the
//! server's default. In audit mode every refusal becomes [`Verdict::Audit`]:
//! let through, and reported.

use crate::compile::{Rule, Server};
use crate::matcher::{Client, Request, is_normalized};
use crate::spec::DefaultPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
    /// Allowed, but the policy would have refused it.
    Audit,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Audit => "audit",
        }
    }
    pub fn allowed(self) -> bool {
        self != Verdict::Deny
    }
}

/// A verdict and what it is attributed to (an index into
/// [`Policy::slots`](crate::Policy::slots)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub slot: usize,
    /// An allow that a plugin must confirm (index in
    /// [`Policy::plugins`](crate::Policy::plugins)).
    pub plugin: Option<usize>,
}

impl Server {
    /// A connection that will be forwarded as opaque bytes. Rules with HTTP
    /// matches cannot allow it; a deny rule whose clients match refuses it
    /// whatever its HTTP matches (they cannot be checked: fail closed).
    pub fn check_connection(&self, c: &Client<'_>) -> Decision {
        if let Some(r) = self.denies.iter().find(|r| r.body.clients.matches(c)) {
            return self.refuse(r.slot);
        }
        if let Some(r) = self
            .allows
            .iter()
            .find(|r| r.body.http.is_empty() && r.body.clients.matches(c))
        {
            // A plugin judges HTTP requests; it cannot judge a byte stream.
            if r.body.plugin.is_some() {
                return self.refuse(r.slot);
            }
            return self.allow(r.slot, None);
        }
        self.by_default(c)
    }

    /// One HTTP request on a connection from `c`.
    pub fn check_request(&self, c: &Client<'_>, req: &Request<'_>) -> Decision {
        if self.path_rules && !is_normalized(req.path) {
            return self.refuse(self.path_slot);
        }
        if let Some(r) = self.denies.iter().find(|r| rule_matches(r, c, req)) {
            return self.refuse(r.slot);
        }
        if let Some(r) = self.allows.iter().find(|r| rule_matches(r, c, req)) {
            return self.allow(r.slot, r.body.plugin);
        }
        self.by_default(c)
    }

    fn allow(&self, slot: usize, plugin: Option<usize>) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            slot,
            plugin,
        }
    }

    fn refuse(&self, slot: usize) -> Decision {
        let verdict = match self.default {
            DefaultPolicy::Audit => Verdict::Audit,
            _ => Verdict::Deny,
        };
        Decision {
            verdict,
            slot,
            plugin: None,
        }
    }

    fn by_default(&self, c: &Client<'_>) -> Decision {
        let verdict = match self.default {
            DefaultPolicy::AllUnauthenticated => Verdict::Allow,
            DefaultPolicy::AllAuthenticated if c.identity.is_some() => Verdict::Allow,
            DefaultPolicy::ClusterAuthenticated
                if c.identity.is_some()
                    && self.cluster_networks.iter().any(|n| n.contains(c.ip)) =>
            {
                Verdict::Allow
            }
            DefaultPolicy::Audit => Verdict::Audit,
            _ => Verdict::Deny,
        };
        Decision {
            verdict,
            slot: self.default_slot,
            plugin: None,
        }
    }
}

fn rule_matches(r: &Rule, c: &Client<'_>, req: &Request<'_>) -> bool {
    r.body.clients.matches(c)
        && (r.body.http.is_empty() || r.body.http.iter().any(|m| m.matches(req)))
}
