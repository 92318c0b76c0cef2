//! The policy paths of the mesh benchmark (`--paths policy,plugin`): the
//! server pod's proxy enforcing a 100-rule inbound policy from the
//! controller (99 rules that do not match the client, then the one that
//! allows it; default deny), and the same with the allowing rule asking the
//! example authorization plugin (`conduit-authz-plugin`, in the
//! controller's pod) about every request. Compared with the `ebpf` path (the
//! same mesh without a policy) in the summary.

use crate::paths::{Kind, SERVER_POD, SERVER_PORT};
use anyhow::Result;
use conduit_tests::mesh::Mesh;
use conduit_tests::names::Names;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The controller's policy file of the policy paths (written empty
/// before the mesh starts, filled once the plugin's address is known), in
/// a directory named after the path's mesh (`names`).
pub fn policy_file(kind: Kind, names: &Names) -> Option<PathBuf> {
    matches!(kind, Kind::Policy | Kind::Plugin).then(|| {
        std::env::temp_dir()
            .join(format!("conduit-{}", names.test))
            .join("policy.yaml")
    })
}

/// 99 rules that do not match the benchmark's client, then one that allows
/// it (through `plugin` when given).
fn hundred_rules(namespace: &str, client_sa: &str, plugin: Option<&str>) -> String {
    let mut y = format!(
        "defaults: [{{name: deny, namespace: {namespace}, defaultPolicy: deny}}]\n\
         servers: [{{name: bench, namespace: {namespace}, port: {SERVER_PORT}}}]\n"
    );
    if let Some(addr) = plugin {
        y.push_str(&format!(
            "plugins: [{{name: example, namespace: {namespace}, address: \"{addr}\", timeoutMs: 1000, failure: closed}}]\n"
        ));
    }
    y.push_str("authorizations:\n");
    for i in 0..99 {
        y.push_str(&format!(
            "  - {{name: r{i:02}, namespace: {namespace}, servers: [bench], from: {{serviceAccounts: [sa{i}]}}, http: [{{methods: [POST], path: {{prefix: /r{i}/}}}}]}}\n"
        ));
    }
    let via = plugin.map_or(String::new(), |_| ", plugin: example".into());
    y.push_str(&format!(
        "  - {{name: zz-bench, namespace: {namespace}, servers: [bench], from: {{serviceAccounts: [{client_sa}]}}{via}}}\n"
    ));
    y
}

/// Starts the plugin (for `plugin`), writes the 100 rules and waits until
/// the server pod's proxy has them.
pub fn install(
    kind: Kind,
    mesh: &Mesh,
    file: &Path,
) -> Result<Option<conduit_tests::process::Process>> {
    let mut plugin = None;
    let mut addr = None;
    if kind == Kind::Plugin {
        let a = format!("{}:9191", mesh.env.pod("controller").ipv4);
        let mut p = mesh
            .env
            .spawn(
                "controller",
                "plugin",
                conduit_tests::bins::find("conduit-authz-plugin")?,
            )?
            .args(["--listen", &a, "--window", "00:00-00:00", "--quiet"])
            .start()?;
        p.wait_for_line("listening", Duration::from_secs(10), |l| {
            l.contains("listening on")
        })?;
        plugin = Some(p);
        addr = Some(a);
    }
    let sa = mesh.spec.client_service_account.clone();
    std::fs::write(
        file,
        hundred_rules(&mesh.spec.namespace, &sa, addr.as_deref()),
    )?;
    conduit_tests::wait::wait_until(
        "the server's proxy to have the 100 rules",
        Duration::from_secs(20),
        || {
            let m = mesh.proxy(SERVER_POD).metrics()?;
            let rules = m.label_values(
                "conduit_inbound_authz_total",
                &[("server", "bench")],
                "rule",
            );
            anyhow::ensure!(rules.len() >= 100, "{} rules so far", rules.len());
            Ok(())
        },
    )?;
    Ok(plugin)
}
