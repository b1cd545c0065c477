//! The scheduler's picture of the cluster: every node with the pods placed on it, including pods
//! the scheduler has *assumed* onto a node before the watch shows the binding — upstream
//! `internal/cache`'s assume/confirm/forget cycle, which keeps a burst of pods from all landing
//! on the node that looked emptiest before any of them showed up.
//!
//! Pure data: fed by watch events in `mod.rs`, read by the filter and score plugins.

use super::resources::{self, Resources};
use k8s_openapi::api::core::v1::{Node, Pod};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A host port a pod claims: (protocol, host IP, port). An empty IP or `0.0.0.0` means all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Two claims collide when protocol and port match and either binds all addresses or both
    /// bind the same one (upstream `HostPortInfo.CheckConflict`).
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let wild = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.protocol == other.protocol
            && self.port == other.port
            && (wild(&self.ip) || wild(&other.ip) || self.ip == other.ip)
    }
}

/// The host ports a pod asks for (containers with a non-zero `hostPort`).
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else { return vec![] };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| HostPort {
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            ip: p.host_ip.clone().unwrap_or_default(),
            port: p.host_port.unwrap_or(0),
        })
        .collect()
}

/// What one pod takes from its node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodUsage {
    pub requests: Resources,
    /// (milli-cpu, milli-bytes) with upstream non-zero defaults, for scoring.
    pub nonzero: (i128, i128),
    pub ports: Vec<HostPort>,
}

impl PodUsage {
    pub fn of(pod: &Pod) -> PodUsage {
        PodUsage {
            requests: resources::pod_requests(pod),
            nonzero: resources::pod_nonzero_requests(pod),
            ports: host_ports(pod),
        }
    }
}

/// A node and the sum of what its pods take.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    /// `None` while pods name a node the node watch has not delivered yet.
    pub node: Option<Arc<Node>>,
    /// The node's allocatable, parsed once per node update rather than once per pod tried.
    pub allocatable: Resources,
    pub requested: Resources,
    pub nonzero_requested: (i128, i128),
    pub pod_count: usize,
    pub used_ports: Vec<HostPort>,
}

impl NodeInfo {
    pub fn name(&self) -> &str {
        self.node.as_ref().and_then(|n| n.metadata.name.as_deref()).unwrap_or("")
    }

    /// Allocatable resources in milli-units.
    pub fn allocatable(&self) -> &Resources {
        &self.allocatable
    }

    fn add(&mut self, u: &PodUsage) {
        resources::add(&mut self.requested, &u.requests);
        self.nonzero_requested.0 += u.nonzero.0;
        self.nonzero_requested.1 += u.nonzero.1;
        self.pod_count += 1;
        self.used_ports.extend(u.ports.iter().cloned());
    }

    fn remove(&mut self, u: &PodUsage) {
        for (k, v) in &u.requests {
            if let Some(e) = self.requested.get_mut(k) {
                *e -= v;
            }
        }
        self.nonzero_requested.0 -= u.nonzero.0;
        self.nonzero_requested.1 -= u.nonzero.1;
        self.pod_count = self.pod_count.saturating_sub(1);
        for p in &u.ports {
            if let Some(i) = self.used_ports.iter().position(|q| q == p) {
                self.used_ports.swap_remove(i);
            }
        }
    }
}

/// Allocatable resources in milli-units; capacity stands in when a (fake) node reports no
/// allocatable, since the kubelet would report allocatable = capacity minus reservations.
pub fn allocatable_of(node: &Node) -> Resources {
    let st = node.status.as_ref();
    match st.and_then(|s| s.allocatable.as_ref()) {
        Some(a) => resources::from_list(Some(a)),
        None => resources::from_list(st.and_then(|s| s.capacity.as_ref())),
    }
}

#[derive(Debug, Clone)]
struct PlacedPod {
    node: String,
    usage: PodUsage,
    assumed: bool,
}

/// Nodes and the pods placed on them.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeInfo>,
    pods: HashMap<String, PlacedPod>,
}

/// `namespace/name`, the key pods are tracked by.
pub fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""))
}

/// A pod in phase Succeeded or Failed no longer holds resources (upstream skips terminal pods).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

impl Cache {
    pub fn set_node(&mut self, node: Node) {
        let Some(name) = node.metadata.name.clone() else { return };
        let info = self.nodes.entry(name).or_default();
        info.allocatable = allocatable_of(&node);
        info.node = Some(Arc::new(node));
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.get_mut(name) {
            info.node = None;
            if info.pod_count == 0 {
                self.nodes.remove(name);
            }
        }
    }

    /// Applies a pod from the watch. A bound, non-terminal pod is (re)placed on its node and an
    /// assumption about it is confirmed; a terminal pod is dropped. An unbound pod leaves an
    /// assumption alone: the watch may simply not have caught up with our binding yet.
    pub fn update_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
        match node {
            Some(node) if !is_terminal(pod) => {
                self.remove_key(&key);
                self.place(key, node, PodUsage::of(pod), false);
            }
            Some(_) => self.remove_key(&key),
            None => {
                if self.pods.get(&key).is_some_and(|p| !p.assumed) {
                    self.remove_key(&key);
                }
            }
        }
    }

    pub fn remove_pod(&mut self, pod: &Pod) {
        self.remove_key(&pod_key(pod));
    }

    /// Places `pod` on `node` before the binding is visible.
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        let key = pod_key(pod);
        self.remove_key(&key);
        self.place(key, node.to_string(), PodUsage::of(pod), true);
    }

    /// Undoes [`Cache::assume`] after a failed binding.
    pub fn forget(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        if self.pods.get(&key).is_some_and(|p| p.assumed) {
            self.remove_key(&key);
        }
    }

    pub fn is_assumed(&self, pod: &Pod) -> bool {
        self.pods.get(&pod_key(pod)).is_some_and(|p| p.assumed)
    }

    fn place(&mut self, key: String, node: String, usage: PodUsage, assumed: bool) {
        self.nodes.entry(node.clone()).or_default().add(&usage);
        self.pods.insert(key, PlacedPod { node, usage, assumed });
    }

    fn remove_key(&mut self, key: &str) {
        if let Some(p) = self.pods.remove(key) {
            if let Some(info) = self.nodes.get_mut(&p.node) {
                info.remove(&p.usage);
                if info.node.is_none() && info.pod_count == 0 {
                    self.nodes.remove(&p.node);
                }
            }
        }
    }

    /// Every node the node watch has delivered, with its pods' totals.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|n| n.node.is_some())
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name).filter(|n| n.node.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    fn pod(name: &str, node: Option<&str>, cpu: &str) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_string(), Quantity(cpu.into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(name: &str) -> Node {
        Node { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() }
    }

    #[test]
    fn assumed_pods_count_against_their_node_until_forgotten() {
        let mut c = Cache::default();
        c.set_node(node("n1"));
        let p = pod("a", None, "500m");
        c.assume(&p, "n1");
        assert_eq!(c.node("n1").map(|n| n.requested["cpu"]), Some(500));
        c.forget(&p);
        assert_eq!(c.node("n1").map(|n| n.requested["cpu"]), Some(0));
    }

    #[test]
    fn a_stale_unbound_pod_event_does_not_undo_an_assumption() {
        let mut c = Cache::default();
        c.set_node(node("n1"));
        let p = pod("a", None, "500m");
        c.assume(&p, "n1");
        c.update_pod(&p);
        assert!(c.is_assumed(&p));
        c.update_pod(&pod("a", Some("n1"), "500m"));
        assert!(!c.is_assumed(&p), "the bound pod from the watch confirms the assumption");
        assert_eq!(c.node("n1").map(|n| (n.requested["cpu"], n.pod_count)), Some((500, 1)));
    }

    #[test]
    fn terminal_and_deleted_pods_free_their_resources() {
        let mut c = Cache::default();
        c.set_node(node("n1"));
        let mut p = pod("a", Some("n1"), "1");
        c.update_pod(&p);
        p.status =
            Some(k8s_openapi::api::core::v1::PodStatus { phase: Some("Succeeded".into()), ..Default::default() });
        c.update_pod(&p);
        assert_eq!(c.node("n1").map(|n| n.pod_count), Some(0));
        let q = pod("b", Some("n1"), "1");
        c.update_pod(&q);
        c.remove_pod(&q);
        assert_eq!(c.node("n1").map(|n| n.requested["cpu"]), Some(0));
    }

    #[test]
    fn pods_seen_before_their_node_are_counted_once_it_arrives() {
        let mut c = Cache::default();
        c.update_pod(&pod("a", Some("n1"), "1"));
        assert!(c.node("n1").is_none());
        c.set_node(node("n1"));
        assert_eq!(c.node("n1").map(|n| n.pod_count), Some(1));
    }

    #[test]
    fn host_ports_conflict_on_wildcard_or_equal_addresses() {
        let hp = |ip: &str, port| HostPort { protocol: "TCP".into(), ip: ip.into(), port };
        assert!(hp("", 80).conflicts(&hp("10.0.0.1", 80)));
        assert!(hp("10.0.0.1", 80).conflicts(&hp("10.0.0.1", 80)));
        assert!(!hp("10.0.0.1", 80).conflicts(&hp("10.0.0.2", 80)));
        assert!(!hp("", 80).conflicts(&hp("", 81)));
        let udp = HostPort { protocol: "UDP".into(), ip: String::new(), port: 80 };
        assert!(!udp.conflicts(&hp("", 80)));
    }
}
