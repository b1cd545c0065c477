//! The load-balancer duty of upstream's cloud-controller-manager, done the way k3s's ServiceLB
//! does it on clusters without a cloud: a Service of `type: LoadBalancer` (with no
//! `loadBalancerClass`, which names some other implementation) gets the addresses of the
//! cluster's ready nodes as `status.loadBalancer.ingress`, so `kubectl get svc` shows an
//! EXTERNAL-IP instead of `<pending>`. Traffic to those addresses reaches the Service through
//! its node ports, which the service proxy serves on every node.
//!
//! Like ServiceLB, nodes labelled `svccontroller.k3s.cattle.io/enablelb=true` are the only
//! ones used once any node has that label. A node's ExternalIP addresses are preferred to its
//! InternalIP ones, and only the Service's IP families are offered. A Service that stops being
//! a LoadBalancer loses the ingress this controller gave it.

use super::events::{object_ref, Recorder};
use super::passes;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The node label that restricts which nodes carry load-balancer traffic (k3s's name).
pub const ENABLE_LB_LABEL: &str = "svccontroller.k3s.cattle.io/enablelb";

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The addresses to offer: of the ready nodes (those with the enable label, if any node has
/// it), ExternalIP addresses if there are any, else InternalIP ones; sorted, without repeats.
pub fn node_addresses(nodes: &[Arc<Node>]) -> Vec<IpAddr> {
    let labelled = |n: &Node| n.labels().get(ENABLE_LB_LABEL).map(String::as_str) == Some("true");
    let any_labelled = nodes.iter().any(|n| labelled(n));
    let eligible: Vec<&Arc<Node>> = nodes
        .iter()
        .filter(|n| node_ready(n) && n.metadata.deletion_timestamp.is_none() && (!any_labelled || labelled(n)))
        .collect();
    let of_type = |t: &str| -> BTreeSet<IpAddr> {
        eligible
            .iter()
            .filter_map(|n| n.status.as_ref()?.addresses.as_ref())
            .flatten()
            .filter(|a| a.type_ == t)
            .filter_map(|a| a.address.parse().ok())
            .collect()
    };
    let external = of_type("ExternalIP");
    let chosen = if external.is_empty() { of_type("InternalIP") } else { external };
    chosen.into_iter().collect()
}

/// Whether this controller serves `svc` (a LoadBalancer with no other implementation named).
pub fn served(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| s.type_.as_deref() == Some("LoadBalancer") && s.load_balancer_class.is_none())
}

/// The ingress IPs `svc` should show: the node addresses of its IP families.
pub fn wanted_ingress(svc: &Service, addrs: &[IpAddr]) -> Vec<String> {
    if !served(svc) {
        return vec![];
    }
    let families: Vec<String> = svc.spec.as_ref().and_then(|s| s.ip_families.clone()).unwrap_or_default();
    let v4 = families.is_empty() || families.iter().any(|f| f == "IPv4");
    let v6 = families.iter().any(|f| f == "IPv6");
    addrs.iter().filter(|a| (a.is_ipv4() && v4) || (a.is_ipv6() && v6)).map(|a| a.to_string()).collect()
}

fn current_ingress(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect()
}

/// Runs the controller until `shutdown` fires.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let notify = Arc::new(Notify::new());
    let services = passes::cache(Api::<Service>::all(client.clone()), notify.clone(), shutdown.clone(), "servicelb");
    let nodes = passes::cache(Api::<Node>::all(client.clone()), notify.clone(), shutdown.clone(), "servicelb");
    if !passes::ready(&shutdown, vec![passes::when_ready(&services), passes::when_ready(&nodes)]).await {
        return;
    }
    let recorder = Recorder::new(client.clone(), "service-lb-controller", shutdown.clone());
    loop {
        let addrs = node_addresses(&nodes.state());
        for svc in services.state() {
            let (want, have) = (wanted_ingress(&svc, &addrs), current_ingress(&svc));
            // A Service this controller does not serve keeps whatever another put there, unless
            // it stopped being a LoadBalancer: then its ingress goes, as upstream clears it.
            let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
            if want == have || (!served(&svc) && (is_lb || have.is_empty())) {
                continue;
            }
            let ns = svc.namespace().unwrap_or_default();
            let api: Api<Service> = Api::namespaced(client.clone(), &ns);
            let ingress: Vec<_> = want.iter().map(|ip| json!({"ip": ip, "ipMode": "VIP"})).collect();
            let body = if ingress.is_empty() {
                json!({"status": {"loadBalancer": {"ingress": null}}})
            } else {
                json!({"status": {"loadBalancer": {"ingress": ingress}}})
            };
            match api.patch_status(&svc.name_any(), &PatchParams::default(), &Patch::Merge(&body)).await {
                Ok(_) if served(&svc) && !want.is_empty() => recorder.normal(
                    object_ref(&*svc),
                    "EnsuredLoadBalancer",
                    format!("Ensured load balancer on {}", want.join(", ")),
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, service = %svc.name_any(), namespace = %ns, "servicelb: status update failed")
                }
            }
        }
        if !passes::next(&notify, Duration::from_secs(30), &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool, labels: serde_json::Value, addrs: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": labels},
                "status": {
                    "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                    "addresses": addrs,
                },
            }))
            .unwrap(),
        )
    }

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "default"}, "spec": spec})).unwrap()
    }

    fn ips(v: &[IpAddr]) -> Vec<String> {
        v.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn ready_nodes_give_their_addresses_external_ones_first() {
        let internal = |ip: &str| json!([{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": "h"}]);
        let nodes = vec![
            node("a", true, json!({}), internal("10.0.0.2")),
            node("b", true, json!({}), internal("10.0.0.1")),
            node("c", false, json!({}), internal("10.0.0.3")),
            node("d", true, json!({}), internal("10.0.0.1")),
        ];
        assert_eq!(ips(&node_addresses(&nodes)), ["10.0.0.1", "10.0.0.2"], "ready nodes, sorted, no repeats");
        let mut with_ext = nodes.clone();
        with_ext.push(node("e", true, json!({}), json!([{"type": "ExternalIP", "address": "203.0.113.7"}])));
        assert_eq!(ips(&node_addresses(&with_ext)), ["203.0.113.7"]);
        let mut labelled = nodes.clone();
        labelled.push(node("f", true, json!({ENABLE_LB_LABEL: "true"}), internal("10.0.0.9")));
        assert_eq!(ips(&node_addresses(&labelled)), ["10.0.0.9"], "only labelled nodes once any is labelled");
    }

    #[test]
    fn only_plain_load_balancers_get_ingress_of_their_families() {
        let addrs: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
        assert_eq!(wanted_ingress(&svc(json!({"type": "LoadBalancer"})), &addrs), ["10.0.0.1"]);
        let dual = svc(json!({"type": "LoadBalancer", "ipFamilies": ["IPv4", "IPv6"]}));
        assert_eq!(wanted_ingress(&dual, &addrs), ["10.0.0.1", "fd00::1"]);
        let v6 = svc(json!({"type": "LoadBalancer", "ipFamilies": ["IPv6"]}));
        assert_eq!(wanted_ingress(&v6, &addrs), ["fd00::1"]);
        assert!(wanted_ingress(&svc(json!({"type": "ClusterIP"})), &addrs).is_empty());
        let other = svc(json!({"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}));
        assert!(!served(&other) && wanted_ingress(&other, &addrs).is_empty());
    }
}
