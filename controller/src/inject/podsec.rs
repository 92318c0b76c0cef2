//! The Pod Security Standards' `baseline` profile, as a checker: what the
//! API server's Pod Security admission (`enforce: baseline`) would refuse in
//! a pod spec. The tests run every injected workload (and the example app)
//! through it, so the sidecar can never again need a weaker level than the
//! application it protects. Rules follow
//! <https://kubernetes.io/docs/concepts/security/pod-security-standards/>
//! (baseline, policy version `latest` as of Kubernetes 1.31).

use k8s_openapi::api::core::v1::{
    ContainerPort, PodSpec, PodTemplateSpec, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// A baseline control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    HostProcess,
    HostNamespaces,
    Privileged,
    Capabilities,
    HostPathVolumes,
    HostPorts,
    AppArmor,
    SeLinux,
    ProcMount,
    Seccomp,
    Sysctls,
}

/// One field that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    /// Path of the field, e.g. `spec.containers[0].securityContext.privileged`.
    pub field: String,
    /// What it holds.
    pub value: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {} = {}", self.rule, self.field, self.value)
    }
}

/// Capabilities baseline lets containers add.
pub const ALLOWED_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls baseline allows (the "safe" set).
pub const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// SELinux types baseline allows (besides none).
pub const SELINUX_TYPES: [&str; 4] = [
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

const APPARMOR_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

struct Found(Vec<Violation>);

impl Found {
    fn add(&mut self, rule: Rule, field: impl Into<String>, value: impl std::fmt::Display) {
        self.0.push(Violation {
            rule,
            field: field.into(),
            value: value.to_string(),
        });
    }

    fn seccomp(&mut self, at: &str, p: Option<&SeccompProfile>) {
        if let Some(p) = p
            && p.type_ == "Unconfined"
        {
            self.add(Rule::Seccomp, format!("{at}.seccompProfile.type"), &p.type_);
        }
    }

    fn apparmor_type(&mut self, at: &str, t: Option<&str>) {
        if let Some(t) = t
            && !matches!(t, "RuntimeDefault" | "Localhost")
        {
            self.add(Rule::AppArmor, format!("{at}.appArmorProfile.type"), t);
        }
    }

    fn selinux(&mut self, at: &str, o: Option<&k8s_openapi::api::core::v1::SELinuxOptions>) {
        let Some(o) = o else { return };
        if let Some(t) = o.type_.as_deref().filter(|t| !t.is_empty())
            && !SELINUX_TYPES.contains(&t)
        {
            self.add(Rule::SeLinux, format!("{at}.seLinuxOptions.type"), t);
        }
        for (name, v) in [("user", &o.user), ("role", &o.role)] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                self.add(Rule::SeLinux, format!("{at}.seLinuxOptions.{name}"), v);
            }
        }
    }

    fn container(
        &mut self,
        at: &str,
        sc: Option<&SecurityContext>,
        ports: Option<&[ContainerPort]>,
    ) {
        for (i, p) in ports.into_iter().flatten().enumerate() {
            if let Some(h) = p.host_port.filter(|h| *h != 0) {
                self.add(Rule::HostPorts, format!("{at}.ports[{i}].hostPort"), h);
            }
        }
        let Some(sc) = sc else { return };
        let at = format!("{at}.securityContext");
        if sc.privileged == Some(true) {
            self.add(Rule::Privileged, format!("{at}.privileged"), true);
        }
        if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
            self.add(
                Rule::HostProcess,
                format!("{at}.windowsOptions.hostProcess"),
                true,
            );
        }
        let added = sc.capabilities.as_ref().and_then(|c| c.add.as_ref());
        for cap in added.into_iter().flatten() {
            let bare = cap.trim_start_matches("CAP_");
            if !ALLOWED_CAPABILITIES.contains(&bare) {
                self.add(Rule::Capabilities, format!("{at}.capabilities.add"), cap);
            }
        }
        if let Some(m) = sc.proc_mount.as_deref()
            && m != "Default"
        {
            self.add(Rule::ProcMount, format!("{at}.procMount"), m);
        }
        self.seccomp(&at, sc.seccomp_profile.as_ref());
        self.apparmor_type(&at, sc.app_armor_profile.as_ref().map(|p| p.type_.as_str()));
        self.selinux(&at, sc.se_linux_options.as_ref());
    }
}

/// Everything in a pod (its metadata for the AppArmor annotations, and its
/// spec) that the baseline profile refuses; empty when it is allowed.
pub fn baseline(meta: Option<&ObjectMeta>, spec: &PodSpec) -> Vec<Violation> {
    let mut f = Found(Vec::new());
    for (name, on) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if on == Some(true) {
            f.add(Rule::HostNamespaces, format!("spec.{name}"), true);
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if let Some(h) = &v.host_path {
            f.add(
                Rule::HostPathVolumes,
                format!("spec.volumes[{i}] ({}).hostPath", v.name),
                &h.path,
            );
        }
    }
    if let Some(sc) = &spec.security_context {
        let at = "spec.securityContext";
        if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
            f.add(
                Rule::HostProcess,
                format!("{at}.windowsOptions.hostProcess"),
                true,
            );
        }
        f.seccomp(at, sc.seccomp_profile.as_ref());
        f.apparmor_type(at, sc.app_armor_profile.as_ref().map(|p| p.type_.as_str()));
        f.selinux(at, sc.se_linux_options.as_ref());
        for s in sc.sysctls.iter().flatten() {
            if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
                f.add(Rule::Sysctls, format!("{at}.sysctls"), &s.name);
            }
        }
    }
    for (i, c) in spec.containers.iter().enumerate() {
        f.container(
            &format!("spec.containers[{i}] ({})", c.name),
            c.security_context.as_ref(),
            c.ports.as_deref(),
        );
    }
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        f.container(
            &format!("spec.initContainers[{i}] ({})", c.name),
            c.security_context.as_ref(),
            c.ports.as_deref(),
        );
    }
    for (i, c) in spec.ephemeral_containers.iter().flatten().enumerate() {
        f.container(
            &format!("spec.ephemeralContainers[{i}] ({})", c.name),
            c.security_context.as_ref(),
            c.ports.as_deref(),
        );
    }
    let annotations = meta.and_then(|m| m.annotations.as_ref());
    for (k, v) in annotations.into_iter().flatten() {
        if k.starts_with(APPARMOR_PREFIX) && v != "runtime/default" && !v.starts_with("localhost/")
        {
            f.add(Rule::AppArmor, format!("metadata.annotations[{k}]"), v);
        }
    }
    f.0
}

/// [`baseline`] of a workload's pod template.
pub fn baseline_template(t: &PodTemplateSpec) -> Vec<Violation> {
    let spec = t.spec.clone().unwrap_or_default();
    baseline(t.metadata.as_ref(), &spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> PodSpec {
        let mut spec = spec;
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "app", "image": "app"}]);
        }
        serde_json::from_value(spec).unwrap()
    }

    fn rules(meta: Option<serde_json::Value>, spec: serde_json::Value) -> Vec<(Rule, String)> {
        let meta: Option<ObjectMeta> = meta.map(|m| serde_json::from_value(m).unwrap());
        baseline(meta.as_ref(), &pod(spec))
            .into_iter()
            .map(|v| (v.rule, v.field))
            .collect()
    }

    fn container(sc: serde_json::Value) -> serde_json::Value {
        json!({"containers": [{"name": "app", "image": "app", "securityContext": sc}]})
    }

    #[test]
    fn allowed_pods_pass() {
        let ok = [
            json!({}),
            json!({"hostNetwork": false, "hostPID": false, "hostIPC": false}),
            json!({"volumes": [{"name": "t", "emptyDir": {}}]}),
            json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"},
                   "sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}],
                   "seLinuxOptions": {"type": "container_t", "level": "s0:c1"}}}),
            container(json!({"privileged": false, "procMount": "Default",
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "CAP_CHOWN"]},
                "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
                "appArmorProfile": {"type": "RuntimeDefault"},
                // Running as root is allowed by baseline (not by restricted).
                "runAsUser": 0})),
            json!({"containers": [{"name": "app", "image": "app",
                "ports": [{"containerPort": 80, "hostPort": 0}]}]}),
        ];
        for spec in ok {
            assert_eq!(rules(None, spec.clone()), vec![], "{spec}");
        }
        let meta = json!({"annotations": {
            "container.apparmor.security.beta.kubernetes.io/app": "runtime/default",
            "container.apparmor.security.beta.kubernetes.io/b": "localhost/x"}});
        assert_eq!(rules(Some(meta), json!({})), vec![]);
    }

    #[test]
    fn each_rule_is_caught_with_its_field() {
        let cases = [
            (
                json!({"hostNetwork": true}),
                Rule::HostNamespaces,
                "spec.hostNetwork",
            ),
            (
                json!({"hostPID": true}),
                Rule::HostNamespaces,
                "spec.hostPID",
            ),
            (
                json!({"hostIPC": true}),
                Rule::HostNamespaces,
                "spec.hostIPC",
            ),
            (
                json!({"volumes": [{"name": "sock", "hostPath": {"path": "/run/conduit"}}]}),
                Rule::HostPathVolumes,
                "spec.volumes[0] (sock).hostPath",
            ),
            (
                container(json!({"privileged": true})),
                Rule::Privileged,
                "spec.containers[0] (app).securityContext.privileged",
            ),
            (
                container(json!({"capabilities": {"add": ["NET_ADMIN"]}})),
                Rule::Capabilities,
                "spec.containers[0] (app).securityContext.capabilities.add",
            ),
            (
                container(json!({"capabilities": {"add": ["CAP_SYS_ADMIN"]}})),
                Rule::Capabilities,
                "spec.containers[0] (app).securityContext.capabilities.add",
            ),
            (
                json!({"containers": [{"name": "app", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
                Rule::HostPorts,
                "spec.containers[0] (app).ports[0].hostPort",
            ),
            (
                container(json!({"procMount": "Unmasked"})),
                Rule::ProcMount,
                "spec.containers[0] (app).securityContext.procMount",
            ),
            (
                json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
                Rule::Seccomp,
                "spec.securityContext.seccompProfile.type",
            ),
            (
                container(json!({"seccompProfile": {"type": "Unconfined"}})),
                Rule::Seccomp,
                "spec.containers[0] (app).securityContext.seccompProfile.type",
            ),
            (
                container(json!({"appArmorProfile": {"type": "Unconfined"}})),
                Rule::AppArmor,
                "spec.containers[0] (app).securityContext.appArmorProfile.type",
            ),
            (
                json!({"securityContext": {"sysctls": [{"name": "net.core.somaxconn", "value": "1"}]}}),
                Rule::Sysctls,
                "spec.securityContext.sysctls",
            ),
            (
                json!({"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}),
                Rule::SeLinux,
                "spec.securityContext.seLinuxOptions.type",
            ),
            (
                container(json!({"seLinuxOptions": {"user": "system_u"}})),
                Rule::SeLinux,
                "spec.containers[0] (app).securityContext.seLinuxOptions.user",
            ),
            (
                container(json!({"windowsOptions": {"hostProcess": true}})),
                Rule::HostProcess,
                "spec.containers[0] (app).securityContext.windowsOptions.hostProcess",
            ),
            (
                json!({"containers": [{"name": "app"}],
                       "initContainers": [{"name": "init", "securityContext": {"privileged": true}}]}),
                Rule::Privileged,
                "spec.initContainers[0] (init).securityContext.privileged",
            ),
        ];
        for (spec, rule, field) in cases {
            assert_eq!(
                rules(None, spec.clone()),
                vec![(rule, field.to_string())],
                "{spec}"
            );
        }
        let meta = json!({"annotations": {
            "container.apparmor.security.beta.kubernetes.io/app": "unconfined"}});
        assert_eq!(
            rules(Some(meta), json!({})),
            vec![(
                Rule::AppArmor,
                "metadata.annotations[container.apparmor.security.beta.kubernetes.io/app]".into()
            )]
        );
    }

    #[test]
    fn violations_say_where_and_what() {
        let v = &baseline(
            None,
            &pod(json!({"volumes": [{"name": "sock", "hostPath": {"path": "/run/conduit"}}]})),
        )[0];
        assert_eq!(
            v.to_string(),
            "HostPathVolumes: spec.volumes[0] (sock).hostPath = /run/conduit"
        );
    }
}
