//! Inbound authorization end to end in the local mesh: the controller
//! serves a policy file (`--policy-file`) that it re-reads, proxies follow
//! it over `InboundPolicies.Watch` and run with `--inbound-policy
//! all-authenticated` (issue 10's strict mode). Real pods, eBPF capture,
//! mTLS identities, curl.

use anyhow::{Context, Result, ensure};
use conduit_tests::mesh::spec::{HTTP_PORT, MeshSpec};
use conduit_tests::mesh::{Mesh, app};
use conduit_tests::wait::wait_until;
use std::path::Path;
use std::time::Duration;

fn write_policy(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).context("replacing the policy file")
}

/// curl's HTTP status for `url` from the client pod, once it is `want`
/// (a new policy reaches the proxy within the controller's poll interval).
fn wait_status(mesh: &Mesh, url: &str, want: u16) -> Result<()> {
    wait_until(
        &format!("{url} to answer {want}"),
        Duration::from_secs(15),
        || {
            let r = mesh.curl(url)?;
            ensure!(r.status == want, "HTTP {} ({})", r.status, r.stderr.trim());
            Ok(())
        },
    )
}

fn authz(mesh: &Mesh, pod: &str, rule: &str, decision: &str) -> Result<f64> {
    Ok(mesh.proxy(pod).metrics()?.sum(
        "conduit_inbound_authz_total",
        &[("rule", rule), ("decision", decision)],
    ))
}

const ONLY_FRONTEND: &str = r#"
defaults:
  - {name: default-deny, namespace: default, defaultPolicy: deny}
servers:
  - {name: web-http, namespace: default, port: 8080}
authorizations:
  - name: frontend-get-api
    namespace: default
    servers: [web-http]
    from: {serviceAccounts: [SA]}
    http:
      - methods: [GET]
        path: {prefix: /api/}
"#;

/// A one-server mesh whose controller serves policies from a file (empty
/// at first) in a directory of the test's own: (directory, file, spec).
fn policy_mesh(name: &str) -> Result<(std::path::PathBuf, std::path::PathBuf, MeshSpec)> {
    let dir = std::env::temp_dir().join(format!(
        "{name}-{}-{}",
        std::env::var("CONDUIT_TEST_PREFIX").unwrap_or_default(),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("policy.yaml");
    write_policy(&file, "")?;
    let mut spec = MeshSpec::with_servers(1);
    spec.controller_args = vec!["--policy-file".into(), file.display().to_string()];
    Ok((dir, file, spec))
}

#[test]
fn identities_allowed_denied_changed_live_opaque_closed_and_audit() -> Result<()> {
    let (dir, file, mut spec) = policy_mesh("conduit-policy")?;
    spec.proxy_args = vec!["--inbound-policy".into(), "all-authenticated".into()];
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), spec)? else {
        return Ok(());
    };
    let api = mesh.url_by_name("web", 80, "/api/items");

    // Strict mode: the meshed client passes; a non-meshed client (the
    // controller's pod has no proxy) calling the pod directly gets 403.
    wait_status(&mesh, &api, 200)?;
    let direct = format!(
        "http://{}:{HTTP_PORT}/api/items",
        mesh.env.pod("web-1").ipv4
    );
    let r = app::curl(&mesh.env, "controller", &direct, Duration::from_secs(5))?;
    ensure!(
        r.status == 403,
        "non-meshed client: HTTP {} {}",
        r.status,
        r.body
    );
    println!(
        "controller pod (not meshed): GET {direct} -> {} {}",
        r.status,
        r.body.trim()
    );

    // Only sa/frontend may GET /api/*: the client (sa/client) gets 403,
    // and the request never reaches the application.
    write_policy(&file, &ONLY_FRONTEND.replace("SA", "frontend"))?;
    wait_status(&mesh, &api, 403)?;
    let served = mesh.app("web-1").http_requests().len();
    let r = mesh.curl(&api)?;
    ensure!(
        r.status == 403 && r.body.contains("forbidden by inbound policy"),
        "{r:?}"
    );
    println!(
        "client (sa/client): GET {api} -> {} {}",
        r.status,
        r.body.trim()
    );
    ensure!(
        mesh.app("web-1").http_requests().len() == served,
        "a refused request reached the application"
    );

    // Changed live: now sa/client is the allowed one, for GET /api/* only.
    write_policy(&file, &ONLY_FRONTEND.replace("SA", "client"))?;
    wait_status(&mesh, &api, 200)?;
    let r = mesh.curl(&mesh.url_by_name("web", 80, "/other"))?;
    ensure!(r.status == 403, "GET /other: HTTP {}", r.status);
    ensure!(authz(&mesh, "web-1", "frontend-get-api", "allow")? >= 1.0);

    // Opaque bytes from the client: no connection-level rule allows them,
    // so the server's proxy closes the connection before the application
    // sees a byte (the application would have answered 400).
    let before = authz(&mesh, "web-1", "default", "deny")?;
    let done = app::in_pod(&mesh.env, "client", "bash")?
        .args([
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{}/80; printf '\\001\\002binary' >&3; timeout 5 cat <&3 | wc -c",
                mesh.service_ip("web")
            ),
        ])
        .run(Duration::from_secs(10))?;
    let bytes: String = done.stdout().collect();
    ensure!(
        bytes.trim() == "0",
        "the opaque client got {bytes:?} bytes back"
    );
    ensure!(
        authz(&mesh, "web-1", "default", "deny")? > before,
        "no connection-level denial counted"
    );

    // What docs/policy.md shows.
    print_authz(&mesh)?;

    // Audit: everything passes, what would be refused is counted.
    write_policy(
        &file,
        "defaults: [{name: audit, namespace: default, defaultPolicy: audit}]\n",
    )?;
    wait_status(&mesh, &mesh.url_by_name("web", 80, "/other"), 200)?;
    ensure!(authz(&mesh, "web-1", "default", "audit")? >= 1.0);
    print_authz(&mesh)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn print_authz(mesh: &Mesh) -> Result<()> {
    for s in mesh
        .proxy("web-1")
        .metrics()?
        .find("conduit_inbound_authz_total", &[])
    {
        if s.value > 0.0 {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            println!("web-1: {}{{{}}} {}", s.name, labels.join(","), s.value);
        }
    }
    Ok(())
}

/// curl from the client pod with one extra header: (status, body).
fn curl_with(mesh: &Mesh, url: &str, header: &str) -> Result<(u16, String)> {
    let done = app::in_pod(&mesh.env, "client", "curl")?
        .args(["--http1.1", "-sS", "--max-time", "5", "-H", header])
        .args(["-w", "\n@@%{http_code}", url])
        .run(Duration::from_secs(10))?;
    let out: Vec<&str> = done.stdout().collect();
    let status = out
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("@@"))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .iter()
        .filter(|l| !l.starts_with("@@"))
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    Ok((status, body))
}

#[test]
fn an_authorization_plugin_allows_by_header_and_denies_the_rest() -> Result<()> {
    let (dir, file, spec) = policy_mesh("conduit-policy-plugin")?;
    let Some(mesh) = Mesh::privileged(conduit_tests::test_name!(), spec)? else {
        return Ok(());
    };
    // The example plugin, in the (non-meshed) controller pod.
    let plugin_addr = format!("{}:9191", mesh.env.pod("controller").ipv4);
    let mut plugin = mesh
        .env
        .spawn(
            "controller",
            "plugin",
            conduit_tests::bins::find("conduit-authz-plugin")?,
        )?
        .args(["--listen", &plugin_addr, "--allow-header", "x-allow=yes"])
        .args([
            "--add-header",
            "x-authorized-by=example-plugin",
            "--deny-status",
            "451",
        ])
        .start()?;
    plugin.wait_for_line("listening", Duration::from_secs(10), |l| {
        l.contains("listening on")
    })?;
    write_policy(
        &file,
        &format!(
            r#"
servers:
  - {{name: web-http, namespace: default, port: 8080}}
plugins:
  - {{name: example, namespace: default, address: "{plugin_addr}", timeoutMs: 500, failure: closed, headers: [x-allow]}}
authorizations:
  - {{name: via-plugin, namespace: default, servers: [web-http], from: {{serviceAccounts: [client]}}, plugin: example}}
"#
        ),
    )?;
    let api = mesh.url_by_name("web", 80, "/api/items");
    wait_until("the plugin to decide", Duration::from_secs(15), || {
        let (status, body) = curl_with(&mesh, &api, "x-allow: no")?;
        ensure!(status == 451, "HTTP {status} {body}");
        ensure!(body.contains("denied by conduit-authz-plugin"), "{body}");
        println!(
            "client: GET {api} (x-allow: no) -> {status} {}",
            body.trim()
        );
        Ok(())
    })?;
    let (status, body) = curl_with(&mesh, &api, "x-allow: yes")?;
    ensure!(status == 200, "allowed by the plugin: HTTP {status} {body}");
    println!("client: GET {api} (x-allow: yes) -> {status}");
    let lines = plugin.stdout_lines();
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with("allow GET /api/items") && l.contains("sa/client")),
        "the plugin's log: {lines:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
