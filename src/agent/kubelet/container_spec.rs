//! Pod → runtime specs: the sandbox (hostname, DNS, host aliases) and each container (image,
//! command and args with `$(VAR)` expansion, env from the downward API, ConfigMaps, Secrets and
//! resource fields, resources,
//! security settings, CRI log path). Pure, as the kubelet's `generateContainerConfig` and
//! `GeneratePodSandboxConfig` are in spirit.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Secret};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::objects::PodObjects;
use super::resources::{container_resources, parse_quantity};
use crate::agent::runtime::{ContainerSpec, DnsConfig, ImageRef, Mount, PodRef, PullPolicy, SandboxSpec};

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

/// What env resolution reads besides the pod: addresses, the service variables, the referenced
/// ConfigMaps and Secrets, and the node's allocatable resources (the default for a
/// `resourceFieldRef` limit the container does not set).
#[derive(Debug, Clone, Copy)]
pub struct EnvContext<'a> {
    pub pod_ip: Option<IpAddr>,
    pub host_ip: IpAddr,
    pub service_env: &'a [(String, String)],
    pub objects: &'a PodObjects,
    pub node_cpu_millis: u64,
    pub node_memory_bytes: u64,
}

/// Upstream `ExtractContainerResourceValue`: CPU is ceil(milli / divisor milli), memory and
/// storage ceil(bytes / divisor); an unset limit is the node's allocatable
/// (`MergeContainerResourceLimits`), an unset request 0.
pub fn resource_field(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_cpu_millis: u64,
    node_memory_bytes: u64,
) -> Result<String, SpecError> {
    let r = c.resources.clone().unwrap_or_default();
    let get =
        |m: &Option<std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
         k: &str| m.as_ref().and_then(|m| m.get(k)).and_then(|q| parse_quantity(&q.0));
    let div = match divisor.filter(|d| !d.is_empty()) {
        Some(d) => parse_quantity(d)
            .filter(|v| *v > 0.0)
            .ok_or_else(|| SpecError::Config(format!("resourceFieldRef {resource}: invalid divisor {d:?}")))?,
        None => 1.0,
    };
    let value = match resource {
        "limits.cpu" => get(&r.limits, "cpu").unwrap_or(node_cpu_millis as f64 / 1000.0),
        "requests.cpu" => get(&r.requests, "cpu").or_else(|| get(&r.limits, "cpu")).unwrap_or(0.0),
        "limits.memory" => get(&r.limits, "memory").unwrap_or(node_memory_bytes as f64),
        "requests.memory" => get(&r.requests, "memory").or_else(|| get(&r.limits, "memory")).unwrap_or(0.0),
        "limits.ephemeral-storage" => get(&r.limits, "ephemeral-storage").unwrap_or(0.0),
        "requests.ephemeral-storage" => get(&r.requests, "ephemeral-storage").unwrap_or(0.0),
        other => return Err(SpecError::Config(format!("unsupported container resource: {other}"))),
    };
    // CPU compares in millicores so 250m / 1m is exactly 250.
    let v = if resource.ends_with(".cpu") {
        ((value * 1000.0).round() / (div * 1000.0).round()).ceil()
    } else {
        (value / div).ceil()
    };
    Ok(format!("{}", v as i64))
}

/// Upstream `validateEnvVarName` in spirit (`IsEnvVarName`): printable ASCII, no `=`, not
/// starting with a digit.
fn is_env_var_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&v.0).into_owned());
    }
    s.string_data.as_ref().and_then(|d| d.get(key).cloned())
}

fn secret_entries(s: &Secret) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        s.data.iter().flatten().map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned())).collect();
    out.extend(s.string_data.iter().flatten().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// The container's environment (kubelet `makeEnvironmentVariables`): first `envFrom` sources
/// in order (each key with its prefix; invalid names are skipped, as upstream does with an
/// event), then `env` in declaration order, each value expanded against the ones before it
/// and the service variables, then the service variables nothing overrode. A missing
/// ConfigMap/Secret or key fails with upstream's message (`configmap "x" not found`,
/// `couldn't find key k in ConfigMap ns/x`) unless the reference is `optional`.
pub fn resolve_env(pod: &Pod, c: &Container, cx: &EnvContext<'_>) -> Result<Vec<(String, String)>, SpecError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out: Vec<(String, String)> = Vec::new();
    let mut known: HashMap<String, String> = cx.service_env.iter().cloned().collect();
    let set = |out: &mut Vec<(String, String)>, known: &mut HashMap<String, String>, name: &str, v: String| {
        known.insert(name.to_string(), v.clone());
        // A later definition of the same name wins, in place (as a map would).
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = v,
            None => out.push((name.to_string(), v)),
        }
    };
    for src in c.env_from.iter().flatten() {
        let prefix = src.prefix.clone().unwrap_or_default();
        let entries: Vec<(String, String)> = if let Some(r) = &src.config_map_ref {
            match cx.objects.config_maps.get(&r.name).cloned().flatten() {
                Some(cm) => cm.data.into_iter().flatten().collect(),
                None if r.optional == Some(true) => continue,
                None => return Err(SpecError::Config(format!("configmap {:?} not found", r.name))),
            }
        } else if let Some(r) = &src.secret_ref {
            match cx.objects.secrets.get(&r.name).cloned().flatten() {
                Some(s) => secret_entries(&s),
                None if r.optional == Some(true) => continue,
                None => return Err(SpecError::Config(format!("secret {:?} not found", r.name))),
            }
        } else {
            continue;
        };
        for (k, v) in entries {
            let name = format!("{prefix}{k}");
            if is_env_var_name(&name) {
                set(&mut out, &mut known, &name, v);
            }
        }
    }
    for EnvVar { name, value, value_from } in c.env.iter().flatten() {
        let v = match (value, value_from) {
            (Some(v), _) => expand(v, &|n| known.get(n).cloned()),
            (None, Some(from)) => {
                if let Some(f) = &from.field_ref {
                    field_ref(pod, &f.field_path, cx.pod_ip, cx.host_ip)?
                } else if let Some(r) = &from.resource_field_ref {
                    resource_field(
                        c,
                        &r.resource,
                        r.divisor.as_ref().map(|d| d.0.as_str()),
                        cx.node_cpu_millis,
                        cx.node_memory_bytes,
                    )?
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match cx.objects.config_maps.get(&r.name).cloned().flatten() {
                        None if optional => continue,
                        None => return Err(SpecError::Config(format!("configmap {:?} not found", r.name))),
                        Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)).cloned().or_else(|| {
                            cm.binary_data
                                .as_ref()
                                .and_then(|d| d.get(&r.key))
                                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        }) {
                            Some(v) => v,
                            None if optional => continue,
                            None => {
                                return Err(SpecError::Config(format!(
                                    "couldn't find key {} in ConfigMap {ns}/{}",
                                    r.key, r.name
                                )))
                            }
                        },
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match cx.objects.secrets.get(&r.name).cloned().flatten() {
                        None if optional => continue,
                        None => return Err(SpecError::Config(format!("secret {:?} not found", r.name))),
                        Some(s) => match secret_value(&s, &r.key) {
                            Some(v) => v,
                            None if optional => continue,
                            None => {
                                return Err(SpecError::Config(format!(
                                    "couldn't find key {} in Secret {ns}/{}",
                                    r.key, r.name
                                )))
                            }
                        },
                    }
                } else {
                    String::new()
                }
            }
            (None, None) => String::new(),
        };
        set(&mut out, &mut known, name, v);
    }
    for (k, v) in cx.service_env {
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
    cx: &EnvContext<'_>,
    restart_count: u32,
    log_root: &Path,
    mounts: Vec<Mount>,
) -> Result<ContainerSpec, SpecError> {
    let r = pod_ref(pod)?;
    let spec = pod.spec.as_ref().ok_or(SpecError::Incomplete("spec"))?;
    let env = resolve_env(pod, c, cx)?;
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
        mounts,
        resources: container_resources(c),
        tty: c.tty.unwrap_or(false),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
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
        let svc = [("KUBERNETES_SERVICE_HOST".into(), "10.43.0.1".into()), ("NAME".into(), "svc".into())];
        let objects = PodObjects::default();
        let cx = EnvContext { pod_ip: Some("10.42.0.5".parse().unwrap()), service_env: &svc, ..cx(&objects) };
        let s = container_spec(&p, c, image(), &cx, 3, Path::new("/logs"), vec![]).unwrap();
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

    fn cx(objects: &PodObjects) -> EnvContext<'_> {
        EnvContext {
            pod_ip: None,
            host_ip: "192.0.2.1".parse().unwrap(),
            service_env: &[],
            objects,
            node_cpu_millis: 2000,
            node_memory_bytes: 4 << 30,
        }
    }

    fn with_env(env: serde_json::Value, env_from: serde_json::Value) -> (Pod, Container) {
        let mut p = pod();
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        c.env = serde_json::from_value(env).unwrap();
        c.env_from = serde_json::from_value(env_from).unwrap();
        let c = c.clone();
        (p, c)
    }

    fn objects() -> PodObjects {
        let mut o = PodObjects::default();
        o.config_maps.insert(
            "cfg".into(),
            Some(serde_json::from_value(json!({"data": {"mode": "fast", "LEVEL": "3", "bad key": "x"}})).unwrap()),
        );
        o.config_maps.insert("gone".into(), None);
        o.secrets.insert(
            "creds".into(),
            Some(serde_json::from_value(json!({"data": {"password": "aHVudGVyMg=="}})).unwrap()),
        );
        o.secrets.insert("nope".into(), None);
        o
    }

    #[test]
    fn config_map_and_secret_references_resolve_and_env_overrides_env_from() {
        let (p, c) = with_env(
            json!([
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "CFG_LEVEL", "value": "override"},
                {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                {"name": "OPTKEY", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "missing", "optional": true}}}
            ]),
            json!([{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}},
                   {"configMapRef": {"name": "gone", "optional": true}}]),
        );
        let o = objects();
        let env = resolve_env(&p, &c, &cx(&o)).unwrap();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            vec!["CFG_LEVEL", "CFG_mode", "password", "MODE", "PW"],
            "invalid names and optionals skipped"
        );
        let m: HashMap<_, _> = env.into_iter().collect();
        assert_eq!(m["MODE"], "fast");
        assert_eq!(m["PW"], "hunter2");
        assert_eq!(m["CFG_LEVEL"], "override");
    }

    #[test]
    fn missing_objects_and_keys_fail_with_upstream_messages() {
        let o = objects();
        let err = |env: serde_json::Value, from: serde_json::Value| {
            let (p, c) = with_env(env, from);
            match resolve_env(&p, &c, &cx(&o)) {
                Err(SpecError::Config(m)) => m,
                other => panic!("expected a config error, got {other:?}"),
            }
        };
        assert_eq!(
            err(json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}]), json!(null)),
            "configmap \"gone\" not found"
        );
        assert_eq!(
            err(json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]), json!(null)),
            "secret \"nope\" not found"
        );
        assert_eq!(
            err(json!([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]), json!(null)),
            "couldn't find key k in Secret shop/creds"
        );
        assert_eq!(err(json!(null), json!([{"secretRef": {"name": "nope"}}])), "secret \"nope\" not found");
        // A name never fetched (API error) counts as not found for this attempt.
        assert_eq!(
            err(json!([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "unread", "key": "k"}}}]), json!(null)),
            "configmap \"unread\" not found"
        );
    }

    #[test]
    fn resource_fields_use_divisors_and_default_limits_to_the_node() {
        let (p, c) = with_env(
            json!([
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "REQ_MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory"}}}
            ]),
            json!(null),
        );
        let o = PodObjects::default();
        let m: HashMap<_, _> = resolve_env(&p, &c, &cx(&o)).unwrap().into_iter().collect();
        assert_eq!(m["CPU"], "1", "250m rounds up to one core");
        assert_eq!(m["CPU_M"], "250");
        assert_eq!(m["MEM_MI"], "32");
        assert_eq!(m["REQ_MEM"], "33554432", "requests default to limits");
        let mut c2 = c.clone();
        c2.resources = None;
        let m: HashMap<_, _> = resolve_env(&p, &c2, &cx(&o)).unwrap().into_iter().collect();
        assert_eq!(m["CPU"], "2", "no limit: the node's allocatable");
        assert_eq!(m["MEM_MI"], "4096");
    }

    #[test]
    fn downward_api_field_paths_resolve() {
        let (mut p, c) = with_env(
            json!([
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}}}
            ]),
            json!(null),
        );
        p.metadata.annotations = Some([("team".to_string(), "blue".to_string())].into());
        p.spec.as_mut().unwrap().service_account_name = Some("robot".into());
        let o = PodObjects::default();
        let m: HashMap<_, _> = resolve_env(&p, &c, &cx(&o)).unwrap().into_iter().collect();
        assert_eq!((m["UID"].as_str(), m["HOST"].as_str()), ("u-1", "192.0.2.1"));
        assert_eq!((m["SA"].as_str(), m["NOTE"].as_str()), ("robot", "blue"));
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
