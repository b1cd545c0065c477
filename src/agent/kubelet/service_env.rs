//! Service environment variables (`KUBERNETES_SERVICE_HOST`, `WEB_PORT_80_TCP_ADDR`, …), as
//! the kubelet's `pkg/kubelet/envvars` builds them: for every service of the pod's namespace
//! when `enableServiceLinks` is true (the default), and always for the `kubernetes` service of
//! the `default` namespace, which in-cluster API clients find through them. Pure.

use k8s_openapi::api::core::v1::{Pod, Service};
use std::collections::BTreeMap;

fn env_name(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

/// The variables one service contributes (envvars.FromServices).
fn one_service(svc: &Service, out: &mut BTreeMap<String, String>) {
    let Some(spec) = &svc.spec else { return };
    let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty() && *ip != "None") else { return };
    let ports = spec.ports.clone().unwrap_or_default();
    let Some(first) = ports.first() else { return };
    let name = env_name(svc.metadata.name.as_deref().unwrap_or_default());
    out.insert(format!("{name}_SERVICE_HOST"), ip.to_string());
    out.insert(format!("{name}_SERVICE_PORT"), first.port.to_string());
    for p in &ports {
        if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.insert(format!("{name}_SERVICE_PORT_{}", env_name(pn)), p.port.to_string());
        }
    }
    // Docker-link compatible variables.
    let proto = |p: &k8s_openapi::api::core::v1::ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
    out.insert(format!("{name}_PORT"), format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port));
    for p in &ports {
        let pr = proto(p);
        let prefix = format!("{name}_PORT_{}_{}", p.port, pr.to_uppercase());
        out.insert(prefix.clone(), format!("{}://{ip}:{}", pr.to_lowercase(), p.port));
        out.insert(format!("{prefix}_PROTO"), pr.to_lowercase());
        out.insert(format!("{prefix}_PORT"), p.port.to_string());
        out.insert(format!("{prefix}_ADDR"), ip.to_string());
    }
}

/// The service variables for `pod`, sorted by name, from every service the kubelet knows.
pub fn service_env(pod: &Pod, services: &[impl AsRef<Service>]) -> Vec<(String, String)> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
    let mut out = BTreeMap::new();
    for svc in services.iter().map(AsRef::as_ref) {
        let svc_ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let master = svc_ns == "default" && name == "kubernetes";
        if (links && svc_ns == ns) || master {
            one_service(svc, &mut out);
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": ip, "ports": ports}}),
        )
        .unwrap()
    }

    #[test]
    fn services_of_the_pods_namespace_and_the_kubernetes_service_become_env_vars() {
        let services: Vec<std::sync::Arc<Service>> = vec![
            svc("default", "kubernetes", "10.43.0.1", json!([{"name": "https", "port": 443, "protocol": "TCP"}])),
            svc(
                "shop",
                "web-front",
                "10.43.0.20",
                json!([{"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}]),
            ),
            svc("other", "db", "10.43.0.30", json!([{"port": 5432}])),
            svc("shop", "headless", "None", json!([{"port": 1}])),
        ]
        .into_iter()
        .map(std::sync::Arc::new)
        .collect();
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": []}}))
                .unwrap();
        let env: BTreeMap<String, String> = service_env(&pod, &services).into_iter().collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.43.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT"], "tcp://10.43.0.1:443");
        assert_eq!(env["WEB_FRONT_SERVICE_HOST"], "10.43.0.20");
        assert_eq!(env["WEB_FRONT_PORT_53_UDP_PROTO"], "udp");
        assert_eq!(env["WEB_FRONT_PORT_80_TCP_ADDR"], "10.43.0.20");
        assert!(!env.contains_key("DB_SERVICE_HOST"), "other namespaces are not linked");
        assert!(!env.keys().any(|k| k.starts_with("HEADLESS")), "headless services have no variables");

        let mut no_links = pod.clone();
        no_links.spec.as_mut().unwrap().enable_service_links = Some(false);
        let env: BTreeMap<String, String> = service_env(&no_links, &services).into_iter().collect();
        assert!(env.contains_key("KUBERNETES_SERVICE_HOST") && !env.contains_key("WEB_FRONT_SERVICE_HOST"));
    }
}
