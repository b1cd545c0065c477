//! Pod → runtime specs: the sandbox (hostname, DNS, host aliases) and each container (image,
//! command and args with `$(VAR)` expansion, env with the downward-API `fieldRef`s, resources,
//! security settings, CRI log path). Pure, as the kubelet's `generateContainerConfig` and
//! `GeneratePodSandboxConfig` are in spirit.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::resources::container_resources;
use crate::agent::runtime::{ContainerSpec, DnsConfig, ImageRef, PodRef, PullPolicy, SandboxSpec};

/// Where the kubelet keeps pod logs unless told otherwise (`podLogsRootDirectory`).
pub const DEFAULT_LOG_ROOT: &str = "/var/log/pods";
/// The cluster's DNS domain (kubelet `--cluster-domain`, k3s default).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    /// The pod lacks a field every stored pod has (uid, namespace, spec).
    #[error("pod has no {0}")]
    Incomplete(&'static str),
    /// An env var refers to something the kubelet cannot resolve yet; the container waits with
    /// reason CreateContainerConfigError, as upstream does for a missing ConfigMap key.
    #[error("{0}")]
    Config(String),
}

/// Identifies the pod for the runtime.
pub fn pod_ref(pod: &Pod) -> Result<PodRef, SpecError> {
    Ok(PodRef {
        uid: pod.metadata.uid.clone().ok_or(SpecError::Incomplete("metadata.uid"))?,
        namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.clone().ok_or(SpecError::Incomplete("metadata.name"))?,
    })
}

/// `/var/log/pods/<namespace>_<name>_<uid>` (kubelet `BuildPodLogsDirectory`).
pub fn pod_log_dir(root: &Path, pod: &PodRef) -> PathBuf {
    root.join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid))
}

/// `<pod log dir>/<container>/<restartCount>.log` (kubelet `BuildContainerLogsDirectory`).
pub fn container_log_path(root: &Path, pod: &PodRef, container: &str, restart_count: u32) -> PathBuf {
    pod_log_dir(root, pod).join(container).join(format!("{restart_count}.log"))
}

/// The container's pull policy; when unset, API defaulting's rule: `:latest` or no tag means
/// Always, anything else IfNotPresent.
pub fn pull_policy(c: &Container) -> PullPolicy {
    match c.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let image = c.image.as_deref().unwrap_or_default();
            let last = image.rsplit('/').next().unwrap_or(image);
            if image.contains('@') {
                PullPolicy::IfNotPresent
            } else {
                match last.split_once(':') {
                    Some((_, tag)) if tag != "latest" => PullPolicy::IfNotPresent,
                    _ => PullPolicy::Always,
                }
            }
        }
    }
}

/// The sandbox of a pod: hostname (`spec.hostname` or the pod name, cut to 63 characters as
/// the kubelet's `GeneratePodHostNameAndDomain` does), DNS per `dnsPolicy`, host aliases.
pub fn sandbox_spec(pod: &Pod, cluster_dns: IpAddr, cluster_domain: &str) -> Result<SandboxSpec, SpecError> {
    let r = pod_ref(pod)?;
    let spec = pod.spec.as_ref().ok_or(SpecError::Incomplete("spec"))?;
    let host_network = spec.host_network.unwrap_or(false);
    let mut hostname = spec.hostname.clone().unwrap_or_else(|| r.name.clone());
    hostname.truncate(63);
    let hostname = hostname.trim_end_matches(['-', '.']).to_string();

    // pkg/kubelet/network/dns: ClusterFirst (the default) uses cluster DNS, except that host-
    // network pods fall back to the host's resolv.conf unless ClusterFirstWithHostNet; Default
    // means the host's resolv.conf (left empty here: the runtime copies the host's); None uses
    // only `dnsConfig`.
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut dns = DnsConfig::default();
    if cluster {
        dns.nameservers = vec![cluster_dns.to_string()];
        dns.searches = vec![
            format!("{}.svc.{cluster_domain}", r.namespace),
            format!("svc.{cluster_domain}"),
            cluster_domain.to_string(),
        ];
        dns.options = vec!["ndots:5".into()];
    }
    if let Some(extra) = &spec.dns_config {
        dns.nameservers.extend(extra.nameservers.iter().flatten().cloned());
        dns.searches.extend(extra.searches.iter().flatten().cloned());
        for o in extra.options.iter().flatten() {
            let Some(name) = o.name.clone() else { continue };
            // A dnsConfig option replaces a default one of the same name.
            dns.options.retain(|x| x.split(':').next() != Some(name.as_str()));
            dns.options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    let host_aliases =
        spec.host_aliases.iter().flatten().map(|a| (a.ip.clone(), a.hostnames.clone().unwrap_or_default())).collect();
    Ok(SandboxSpec { pod: r, hostname, host_network, dns, host_aliases })
}

/// Kubernetes `$(VAR)` expansion (third_party/forked/golang/expansion): `$(NAME)` becomes the
/// value when NAME is known and stays as written otherwise; `$$` is an escaped `$`.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(') {
            match r.find(')') {
                Some(end) => {
                    let name = &r[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &r[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = r;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Downward API field paths (`env[].valueFrom.fieldRef.fieldPath`) the kubelet resolves.
fn field_ref(pod: &Pod, path: &str, pod_ip: Option<IpAddr>, host_ip: IpAddr) -> Result<String, SpecError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let key_of = |prefix: &str| path.strip_prefix(prefix).and_then(|s| s.strip_suffix("']")).map(str::to_string);
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.map(|i| i.to_string()).unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        _ => {
            if let Some(k) = key_of("metadata.labels['") {
                meta.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else if let Some(k) = key_of("metadata.annotations['") {
                meta.annotations.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else {
                return Err(SpecError::Config(format!("unsupported fieldRef fieldPath {path:?}")));
            }
        }
    })
}

/// The container's environment in declaration order, each value expanded against the ones
/// before it and the service variables, then the service variables it did not override
/// (kubelet `makeEnvironmentVariables`). ConfigMap, Secret and resource references need API
/// reads this kubelet does not do yet: they fail with a message saying so.
pub fn resolve_env(
    pod: &Pod,
    c: &Container,
    pod_ip: Option<IpAddr>,
    host_ip: IpAddr,
    service_env: &[(String, String)],
) -> Result<Vec<(String, String)>, SpecError> {
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(SpecError::Config("envFrom is not supported by this kubelet yet".into()));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    let mut known: HashMap<String, String> = service_env.iter().cloned().collect();
    for EnvVar { name, value, value_from } in c.env.iter().flatten() {
        let v = match (value, value_from) {
            (Some(v), _) => expand(v, &|n| known.get(n).cloned()),
            (None, Some(from)) => match &from.field_ref {
                Some(f) => field_ref(pod, &f.field_path, pod_ip, host_ip)?,
                None => {
                    return Err(SpecError::Config(format!(
                        "env {name}: only fieldRef valueFrom is supported by this kubelet yet"
                    )))
                }
            },
            (None, None) => String::new(),
        };
        known.insert(name.clone(), v.clone());
        // A later definition of the same name wins, in place (as a map would).
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = v,
            None => out.push((name.clone(), v)),
        }
    }
    for (k, v) in service_env {
        if !out.iter().any(|(n, _)| n == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

/// Everything the runtime needs to start one container of the pod.
#[allow(clippy::too_many_arguments)]
pub fn container_spec(
    pod: &Pod,
    c: &Container,
    image: ImageRef,
    pod_ip: Option<IpAddr>,
    host_ip: IpAddr,
    restart_count: u32,
    log_root: &Path,
    service_env: &[(String, String)],
) -> Result<ContainerSpec, SpecError> {
    let r = pod_ref(pod)?;
    let spec = pod.spec.as_ref().ok_or(SpecError::Incomplete("spec"))?;
    let env = resolve_env(pod, c, pod_ip, host_ip, service_env)?;
    let lookup = |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let command = c.command.iter().flatten().map(|s| expand(s, &lookup)).collect();
    let args = c.args.iter().flatten().map(|s| expand(s, &lookup)).collect();
    let csc = c.security_context.as_ref();
    let psc = spec.security_context.as_ref();
    let run_as_user = csc.and_then(|s| s.run_as_user).or(psc.and_then(|s| s.run_as_user));
    let run_as_group = csc.and_then(|s| s.run_as_group).or(psc.and_then(|s| s.run_as_group));
    Ok(ContainerSpec {
        log_path: container_log_path(log_root, &r, &c.name, restart_count),
        pod: r,
        name: c.name.clone(),
        image,
        command,
        args,
        env,
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        // Volumes are not implemented yet: volumeMounts are ignored rather than refused, so pods
        // with the service-account volume still run.
        mounts: Vec::new(),
        resources: container_resources(c),
        tty: c.tty.unwrap_or(false),
        stdin: c.stdin.unwrap_or(false),
        privileged: csc.and_then(|s| s.privileged).unwrap_or(false),
        run_as_user: run_as_user.and_then(|u| u32::try_from(u).ok()),
        run_as_group: run_as_group.and_then(|g| u32::try_from(g).ok()),
        restart_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {
                "nodeName": "n1",
                "containers": [{
                    "name": "main",
                    "image": "localhost/busybox:latest",
                    "command": ["sh", "-c"],
                    "args": ["echo $(GREETING) $(MISSING) $$(HOME) from $(POD)"],
                    "workingDir": "/tmp",
                    "env": [
                        {"name": "NAME", "value": "world"},
                        {"name": "GREETING", "value": "hello $(NAME)"},
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}
                    ],
                    "resources": {"limits": {"cpu": "250m", "memory": "32Mi"}},
                    "securityContext": {"runAsUser": 1000}
                }],
                "securityContext": {"runAsUser": 1, "runAsGroup": 2}
            }
        }))
        .unwrap()
    }

    fn image() -> ImageRef {
        ImageRef { name: "localhost/busybox:latest".into(), id: "sha256:abc".into() }
    }

    #[test]
    fn a_container_spec_carries_command_args_env_resources_and_log_path() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let s = container_spec(
            &p,
            c,
            image(),
            Some("10.42.0.5".parse().unwrap()),
            "192.0.2.1".parse().unwrap(),
            3,
            Path::new("/logs"),
            &[("KUBERNETES_SERVICE_HOST".into(), "10.43.0.1".into()), ("NAME".into(), "svc".into())],
        )
        .unwrap();
        assert_eq!(s.command, vec!["sh", "-c"]);
        assert_eq!(s.args, vec!["echo hello world $(MISSING) $(HOME) from web"]);
        let env: HashMap<_, _> = s.env.iter().cloned().collect();
        assert_eq!(env["GREETING"], "hello world");
        assert_eq!(env["NS"], "shop");
        assert_eq!(env["IP"], "10.42.0.5");
        assert_eq!(env["NODE"], "n1");
        assert_eq!(env["APP"], "web");
        assert_eq!(
            s.env[0],
            ("NAME".to_string(), "world".to_string()),
            "declaration order; the container's value wins"
        );
        assert_eq!(s.env.last().unwrap().0, "KUBERNETES_SERVICE_HOST", "service variables come after");
        assert_eq!(s.resources.cpu_limit_millis, Some(250));
        assert_eq!(s.resources.memory_limit_bytes, Some(32 << 20));
        assert_eq!(s.log_path, PathBuf::from("/logs/shop_web_u-1/main/3.log"));
        assert_eq!((s.run_as_user, s.run_as_group), (Some(1000), Some(2)));
        assert_eq!(s.working_dir.as_deref(), Some("/tmp"));
        assert_eq!(s.restart_count, 3);
    }

    #[test]
    fn secret_references_fail_with_a_config_error() {
        let mut p = pod();
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        c.env = Some(vec![serde_json::from_value(
            json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
        )
        .unwrap()]);
        let c = c.clone();
        assert!(matches!(resolve_env(&p, &c, None, "192.0.2.1".parse().unwrap(), &[]), Err(SpecError::Config(_))));
    }

    #[test]
    fn expansion_keeps_unknown_references_and_unescapes_dollars() {
        let look = |n: &str| (n == "A").then(|| "1".to_string());
        assert_eq!(expand("$(A)-$(B)-$$(A)-$A-$(", &look), "1-$(B)-$(A)-$A-$(");
    }

    #[test]
    fn pull_policy_defaults_by_tag() {
        let c = |image: &str| Container { name: "c".into(), image: Some(image.into()), ..Default::default() };
        assert_eq!(pull_policy(&c("busybox")), PullPolicy::Always);
        assert_eq!(pull_policy(&c("busybox:latest")), PullPolicy::Always);
        assert_eq!(pull_policy(&c("localhost:5000/busybox")), PullPolicy::Always);
        assert_eq!(pull_policy(&c("busybox:1.36")), PullPolicy::IfNotPresent);
        let mut never = c("busybox");
        never.image_pull_policy = Some("Never".into());
        assert_eq!(pull_policy(&never), PullPolicy::Never);
    }

    #[test]
    fn sandbox_uses_cluster_dns_unless_host_network() {
        let mut p = pod();
        let s = sandbox_spec(&p, "10.43.0.10".parse().unwrap(), CLUSTER_DOMAIN).unwrap();
        assert_eq!(s.hostname, "web");
        assert_eq!(s.dns.nameservers, vec!["10.43.0.10"]);
        assert_eq!(s.dns.searches[0], "shop.svc.cluster.local");
        assert_eq!(s.dns.options, vec!["ndots:5"]);
        p.spec.as_mut().unwrap().host_network = Some(true);
        let s = sandbox_spec(&p, "10.43.0.10".parse().unwrap(), CLUSTER_DOMAIN).unwrap();
        assert!(s.host_network);
        assert!(s.dns.nameservers.is_empty());
    }
}
