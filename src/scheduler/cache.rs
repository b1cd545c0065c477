//! The scheduler's picture of the cluster: every node with the pods placed on it, including pods
//! the scheduler has *assumed* onto a node before the watch shows the binding — upstream
//! `internal/cache`'s assume/confirm/forget cycle, which keeps a burst of pods from all landing
//! on the node that looked emptiest before any of them showed up.
//!
//! Pure data: fed by watch events in `mod.rs`, read by the filter and score plugins.

use super::labels::Labels;
use super::resources::{self, Resources};
use super::selectors::Selectors;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod, PodAffinity, PodAntiAffinity};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::ObjectMeta;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Keys of the pods placed here (for preemption).
    pub pods: BTreeSet<String>,
    /// Normalised image name → size in bytes, from `status.images`.
    pub images: HashMap<String, i64>,
    /// What the filters and scores ask of every node for every pod, read once per node update
    /// (a scheduling attempt visits hundreds of nodes; chasing each one's strings and maps cost
    /// most of it).
    pub facts: NodeFacts,
    /// cpu and memory of `requested`, kept beside it for the same reason.
    pub requested_cpu_mem: (i128, i128),
}

/// See [`NodeInfo::facts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The `Ready` condition is `True`.
    pub ready: bool,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    /// Allocatable cpu and memory (milli-units) and pods (milli-pods), if the node lists them.
    pub cpu: i128,
    pub memory: i128,
    pub pods: Option<i128>,
}

impl NodeFacts {
    pub fn of(node: &Node, allocatable: &Resources) -> NodeFacts {
        NodeFacts {
            ready: super::filter::is_ready(node),
            unschedulable: node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false),
            cpu: allocatable.get("cpu").copied().unwrap_or(0),
            memory: allocatable.get("memory").copied().unwrap_or(0),
            pods: allocatable.get("pods").copied(),
        }
    }
}

impl NodeInfo {
    pub fn name(&self) -> &str {
        self.node.as_ref().and_then(|n| n.metadata.name.as_deref()).unwrap_or("")
    }

    /// Allocatable resources in milli-units.
    pub fn allocatable(&self) -> &Resources {
        &self.allocatable
    }

    /// The node's labels (empty while the node is unknown).
    pub fn labels(&self) -> &Labels {
        static EMPTY: Labels = Labels::new();
        self.node.as_ref().and_then(|n| n.metadata.labels.as_ref()).unwrap_or(&EMPTY)
    }

    /// What the node's pods request of `name` (milli-units).
    pub fn requested_of(&self, name: &str) -> i128 {
        match name {
            "cpu" => self.requested_cpu_mem.0,
            "memory" => self.requested_cpu_mem.1,
            _ => self.requested.get(name).copied().unwrap_or(0),
        }
    }

    /// What the node offers of `name` (milli-units).
    pub fn allocatable_of(&self, name: &str) -> i128 {
        match name {
            "cpu" => self.facts.cpu,
            "memory" => self.facts.memory,
            _ => self.allocatable.get(name).copied().unwrap_or(0),
        }
    }

    pub(crate) fn add(&mut self, u: &PodUsage) {
        resources::add(&mut self.requested, &u.requests);
        self.requested_cpu_mem.0 += u.requests.get("cpu").copied().unwrap_or(0);
        self.requested_cpu_mem.1 += u.requests.get("memory").copied().unwrap_or(0);
        self.nonzero_requested.0 += u.nonzero.0;
        self.nonzero_requested.1 += u.nonzero.1;
        self.pod_count += 1;
        self.used_ports.extend(u.ports.iter().cloned());
    }

    pub(crate) fn remove(&mut self, u: &PodUsage) {
        for (k, v) in &u.requests {
            if let Some(e) = self.requested.get_mut(k) {
                *e -= v;
            }
        }
        self.requested_cpu_mem.0 -= u.requests.get("cpu").copied().unwrap_or(0);
        self.requested_cpu_mem.1 -= u.requests.get("memory").copied().unwrap_or(0);
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

/// An image name as the kubelet reports it: a name without a tag or digest means `:latest`
/// (upstream ImageLocality's `normalizedImageName`).
pub fn normalized_image(name: &str) -> String {
    if name.rfind(':').unwrap_or(0) <= name.rfind('/').unwrap_or(0) && !name.contains('@') {
        format!("{name}:latest")
    } else {
        name.to_string()
    }
}

fn images_of(node: &Node) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for img in node.status.as_ref().and_then(|s| s.images.as_ref()).into_iter().flatten() {
        for n in img.names.iter().flatten() {
            out.insert(normalized_image(n), img.size_bytes.unwrap_or(0));
        }
    }
    out
}

/// Pods with the same namespace and labels are counted together, so affinity and spreading
/// match a selector once per group rather than once per pod (a Deployment's pods share one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub namespace: String,
    pub labels: Labels,
    /// Terminating pods still count for inter-pod affinity, not for topology spreading.
    pub terminating: bool,
}

/// How many pods of one [`GroupKey`] each node holds.
#[derive(Debug, Clone, Default)]
pub struct LabelGroup {
    pub per_node: HashMap<String, u32>,
}

/// Pods sharing namespace, labels and pod (anti-)affinity terms, per node: the existing pods
/// whose terms the incoming pod is checked against (upstream's `PodsWithAffinity` and
/// `PodsWithRequiredAntiAffinity`).
#[derive(Debug, Clone)]
pub struct AffinityGroup {
    pub namespace: String,
    pub labels: Labels,
    pub pod_affinity: Option<PodAffinity>,
    pub pod_anti_affinity: Option<PodAntiAffinity>,
    pub per_node: HashMap<String, u32>,
}

/// A pod placed on a node.
#[derive(Debug, Clone)]
pub struct PlacedPod {
    pub node: String,
    pub usage: PodUsage,
    pub assumed: bool,
    pub name: String,
    pub uid: String,
    pub priority: i32,
    pub group: Arc<GroupKey>,
    pub affinity: Option<Arc<str>>,
    /// `status.startTime`; `None` until the kubelet starts it, which preemption orders as
    /// "now", the latest (upstream `GetPodStartTime`).
    pub start: Option<k8s_openapi::jiff::Timestamp>,
}

/// A pod that preempted others and waits for room on `node` (`status.nominatedNodeName`).
#[derive(Debug, Clone)]
pub struct Nominated {
    pub node: String,
    pub priority: i32,
    pub usage: PodUsage,
}

/// Nodes and the pods placed on them, and the other objects the plugins read.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeInfo>,
    pods: HashMap<String, PlacedPod>,
    groups: HashMap<Arc<GroupKey>, LabelGroup>,
    affinity: HashMap<Arc<str>, AffinityGroup>,
    image_nodes: HashMap<String, usize>,
    pub namespaces: HashMap<String, Labels>,
    pub pvcs: HashMap<String, PersistentVolumeClaim>,
    pub pvs: HashMap<String, PersistentVolume>,
    pub classes: HashMap<String, StorageClass>,
    pub pdbs: HashMap<String, PodDisruptionBudget>,
    /// What selects pods, for default topology spreading.
    pub selectors: Selectors,
    nominated: HashMap<String, Nominated>,
}

/// `namespace/name`, the key pods are tracked by.
pub fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""))
}

/// `namespace/name` for any namespaced object.
pub fn meta_key(meta: &ObjectMeta) -> String {
    format!("{}/{}", meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""))
}

/// A pod in phase Succeeded or Failed no longer holds resources (upstream skips terminal pods).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// `spec.priority`, set by the Priority admission step (0 when absent).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// The identity of a pod's (anti-)affinity group, `None` for pods without pod affinity terms.
fn affinity_signature(pod: &Pod) -> Option<(Arc<str>, AffinityGroup)> {
    let a = pod.spec.as_ref()?.affinity.as_ref()?;
    if a.pod_affinity.is_none() && a.pod_anti_affinity.is_none() {
        return None;
    }
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let sig = serde_json::to_string(&(&namespace, &labels, &a.pod_affinity, &a.pod_anti_affinity)).ok()?;
    Some((
        Arc::from(sig),
        AffinityGroup {
            namespace,
            labels,
            pod_affinity: a.pod_affinity.clone(),
            pod_anti_affinity: a.pod_anti_affinity.clone(),
            per_node: HashMap::new(),
        },
    ))
}

impl Cache {
    pub fn set_node(&mut self, node: Node) {
        let Some(name) = node.metadata.name.clone() else { return };
        let images = images_of(&node);
        let info = self.nodes.entry(name).or_default();
        for img in info.images.keys() {
            if let Some(n) = self.image_nodes.get_mut(img) {
                *n = n.saturating_sub(1);
            }
        }
        for img in images.keys() {
            *self.image_nodes.entry(img.clone()).or_default() += 1;
        }
        info.images = images;
        info.allocatable = allocatable_of(&node);
        info.facts = NodeFacts::of(&node, &info.allocatable);
        info.node = Some(Arc::new(node));
    }

    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.get_mut(name) {
            for img in info.images.keys() {
                if let Some(n) = self.image_nodes.get_mut(img) {
                    *n = n.saturating_sub(1);
                }
            }
            info.images.clear();
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
                self.nominated.remove(&key);
                self.remove_key(&key);
                self.place(key, node, pod, false);
            }
            Some(_) => {
                self.nominated.remove(&key);
                self.remove_key(&key)
            }
            None => {
                if self.pods.get(&key).is_some_and(|p| !p.assumed) {
                    self.remove_key(&key);
                }
            }
        }
    }

    pub fn remove_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        self.nominated.remove(&key);
        self.remove_key(&key);
    }

    /// Places `pod` on `node` before the binding is visible.
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        let key = pod_key(pod);
        self.nominated.remove(&key);
        self.remove_key(&key);
        self.place(key, node.to_string(), pod, true);
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

    /// Records that `pod` preempted pods on `node` and waits for them to go.
    pub fn nominate(&mut self, pod: &Pod, node: &str) {
        self.nominated.insert(
            pod_key(pod),
            Nominated { node: node.to_string(), priority: priority(pod), usage: PodUsage::of(pod) },
        );
    }

    /// The node `pod` was nominated to, by us or in its status.
    pub fn nominated_node(&self, pod: &Pod) -> Option<String> {
        self.nominated
            .get(&pod_key(pod))
            .map(|n| n.node.clone())
            .or_else(|| pod.status.as_ref().and_then(|s| s.nominated_node_name.clone()).filter(|n| !n.is_empty()))
    }

    /// Pods other than `key` nominated to `node` with at least `priority`: their room is
    /// reserved (upstream `addNominatedPods`).
    pub fn nominated_on<'a>(
        &'a self,
        node: &'a str,
        key: &'a str,
        priority: i32,
    ) -> impl Iterator<Item = &'a Nominated> {
        self.nominated
            .iter()
            .filter(move |(k, n)| n.node == node && k.as_str() != key && n.priority >= priority)
            .map(|(_, n)| n)
    }

    pub fn has_nominations(&self) -> bool {
        !self.nominated.is_empty()
    }

    fn place(&mut self, key: String, node: String, pod: &Pod, assumed: bool) {
        let usage = PodUsage::of(pod);
        let group = Arc::new(GroupKey {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        });
        let group = match self.groups.get_key_value(&group) {
            Some((k, _)) => k.clone(),
            None => group,
        };
        *self.groups.entry(group.clone()).or_default().per_node.entry(node.clone()).or_default() += 1;
        let affinity = affinity_signature(pod).map(|(sig, g)| {
            let e = self.affinity.entry(sig.clone()).or_insert(g);
            *e.per_node.entry(node.clone()).or_default() += 1;
            sig
        });
        let info = self.nodes.entry(node.clone()).or_default();
        info.add(&usage);
        info.pods.insert(key.clone());
        let placed = PlacedPod {
            node,
            usage,
            assumed,
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            priority: priority(pod),
            group,
            affinity,
            start: pod.status.as_ref().and_then(|s| s.start_time.as_ref()).map(|t| t.0),
        };
        self.pods.insert(key, placed);
    }

    fn remove_key(&mut self, key: &str) {
        let Some(p) = self.pods.remove(key) else { return };
        fn dec<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, k: &K) -> bool {
            if let Some(n) = map.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(k);
                }
            }
            map.is_empty()
        }
        if let Some(g) = self.groups.get_mut(&p.group) {
            if dec(&mut g.per_node, &p.node) {
                self.groups.remove(&p.group);
            }
        }
        if let Some(sig) = &p.affinity {
            if let Some(g) = self.affinity.get_mut(sig) {
                if dec(&mut g.per_node, &p.node) {
                    self.affinity.remove(sig);
                }
            }
        }
        if let Some(info) = self.nodes.get_mut(&p.node) {
            info.remove(&p.usage);
            info.pods.remove(key);
            if info.node.is_none() && info.pod_count == 0 {
                self.nodes.remove(&p.node);
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

    pub fn pod(&self, key: &str) -> Option<&PlacedPod> {
        self.pods.get(key)
    }

    /// Placed pods grouped by namespace and labels.
    pub fn groups(&self) -> impl Iterator<Item = (&GroupKey, &LabelGroup)> {
        self.groups.iter().map(|(k, g)| (k.as_ref(), g))
    }

    /// Placed pods that carry pod affinity or anti-affinity terms, grouped.
    pub fn affinity_groups(&self) -> impl Iterator<Item = &AffinityGroup> {
        self.affinity.values()
    }

    /// The (anti-)affinity group a placed pod belongs to ([`PlacedPod::affinity`]).
    pub fn affinity_group(&self, sig: &str) -> Option<&AffinityGroup> {
        self.affinity.get(sig)
    }

    /// On how many nodes an image (normalised name) is present.
    pub fn image_spread(&self, image: &str) -> usize {
        self.image_nodes.get(image).copied().unwrap_or(0)
    }

    pub fn node_count(&self) -> usize {
        self.nodes().count()
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
