//! Filter plugins: may this pod run on this node? Each plugin is a pure function returning the
//! upstream failure reasons, which [`unschedulable_message`] folds into kube-scheduler's
//! `FitError` text ("0/3 nodes are available: 1 Insufficient cpu, …").
//!
//! Plugins run in the order of upstream's default profile and the first failing plugin decides a
//! node's reasons, as `RunFilterPlugins` does; one plugin may report several reasons
//! (NodeResourcesFit reports every insufficient resource).

use super::cache::{Cache, HostPort, NodeInfo};
use super::resources::Resources;
use super::{interpod, spread, volumes};
use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration};
use std::collections::BTreeMap;

/// Reasons as upstream spells them (`pkg/scheduler/framework/plugins/...`).
pub const ERR_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const ERR_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const ERR_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const ERR_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const ERR_NOT_READY: &str = "node(s) were not ready";
pub const ERR_TOO_MANY_PODS: &str = "Too many pods";

/// A plugin's verdict: `Err` carries the reasons this node was rejected.
pub type Verdict = Result<(), Vec<String>>;

/// What the filters need to know about the pod, computed once per scheduling attempt: its
/// requests and ports, and the cluster-wide counts of the plugins that have a PreFilter step
/// (`None` when the pod does not use them).
#[derive(Debug, Clone)]
pub struct PodInfo<'a> {
    pub pod: &'a Pod,
    pub requests: Resources,
    pub ports: Vec<HostPort>,
    pub volumes: Option<volumes::State>,
    pub spread: Option<spread::State>,
    pub interpod: Option<interpod::State>,
    /// The non-zero requests other than `pods`, cpu and memory first (upstream's order of
    /// "Insufficient …" reasons), sorted once rather than for every node tried.
    pub ordered_requests: Vec<(String, i128)>,
    /// Whether the pod tolerates `node.kubernetes.io/not-ready:NoSchedule` and
    /// `node.kubernetes.io/unschedulable:NoSchedule` (asked for every node tried).
    pub tolerates_not_ready: bool,
    pub tolerates_unschedulable: bool,
}

impl<'a> PodInfo<'a> {
    pub fn new(pod: &'a Pod) -> Self {
        let requests = super::resources::pod_requests(pod);
        let order = ["cpu", "memory", "ephemeral-storage"];
        let mut ordered_requests: Vec<(String, i128)> =
            requests.iter().filter(|(k, v)| k.as_str() != "pods" && **v > 0).map(|(k, v)| (k.clone(), *v)).collect();
        ordered_requests.sort_by(|(a, _), (b, _)| {
            let rank = |k: &str| order.iter().position(|o| *o == k).unwrap_or(order.len());
            (rank(a), a.as_str()).cmp(&(rank(b), b.as_str()))
        });
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or(&[]);
        let tolerated = |key: &str| {
            let taint = Taint { key: key.into(), effect: "NoSchedule".into(), ..Default::default() };
            tolerations.iter().any(|t| tolerates(t, &taint))
        };
        PodInfo {
            pod,
            ports: super::cache::host_ports(pod),
            volumes: None,
            spread: None,
            interpod: None,
            ordered_requests,
            tolerates_not_ready: tolerated("node.kubernetes.io/not-ready"),
            tolerates_unschedulable: tolerated("node.kubernetes.io/unschedulable"),
            requests,
        }
    }

    /// Runs the PreFilter steps against the cache; `Err` is a PreFilter rejection, which
    /// applies to every node (upstream reports it once instead of per node).
    pub fn prepare(pod: &'a Pod, cache: &Cache) -> Result<Self, String> {
        let mut info = PodInfo::new(pod);
        if volumes::relevant(pod) {
            info.volumes = Some(volumes::prepare(pod, cache)?);
        }
        if spread::relevant(pod) {
            info.spread = Some(spread::prepare(&info, cache));
        }
        if interpod::relevant(pod, cache) {
            info.interpod = Some(interpod::prepare(pod, cache));
        }
        Ok(info)
    }

    fn tolerations(&self) -> &[Toleration] {
        self.pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or(&[])
    }
}

fn fail(reason: impl Into<String>) -> Verdict {
    Err(vec![reason.into()])
}

/// Runs every filter in upstream order; the first rejection wins.
pub fn run_filters(pod: &PodInfo<'_>, node: &NodeInfo) -> Verdict {
    let Some(n) = node.node.as_deref() else { return fail(ERR_NOT_READY) };
    if node.facts.unschedulable {
        node_unschedulable(pod, n)?;
    }
    node_name(pod, n)?;
    taint_toleration(pod, n)?;
    node_affinity(pod, n)?;
    node_ports(pod, node)?;
    node_resources_fit(pod, node)?;
    if let Some(v) = &pod.volumes {
        volumes::filter(v, node)?;
    }
    if let Some(s) = &pod.spread {
        spread::filter(s, n)?;
    }
    if let Some(i) = &pod.interpod {
        interpod::filter(i, node.labels())?;
    }
    if node.facts.ready || pod.tolerates_not_ready {
        Ok(())
    } else {
        fail(ERR_NOT_READY)
    }
}

/// Whether evicting pods cannot help with this reason (upstream's UnschedulableAndUnresolvable
/// statuses, for which preemption reports "Preemption is not helpful for scheduling").
pub fn is_unresolvable(reason: &str) -> bool {
    matches!(
        reason,
        ERR_NODE_NAME
            | ERR_UNSCHEDULABLE
            | ERR_AFFINITY
            | ERR_NOT_READY
            | interpod::ERR_AFFINITY
            | spread::ERR_SPREAD_LABEL
            | volumes::ERR_NODE_CONFLICT
            | volumes::ERR_BIND_CONFLICT
            | volumes::ERR_PV_NOT_EXIST
    ) || reason.starts_with("node(s) had untolerated taint")
}

/// NodeName: `spec.nodeName` pins a pod to one node. (The scheduler normally never sees such
/// pods, but a pod may name a node while still asking us to check it.)
pub fn node_name(pod: &PodInfo<'_>, node: &Node) -> Verdict {
    match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).filter(|n| !n.is_empty()) {
        Some(want) if Some(want) != node.metadata.name.as_deref() => fail(ERR_NODE_NAME),
        _ => Ok(()),
    }
}

/// NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes only pods tolerating
/// `node.kubernetes.io/unschedulable:NoSchedule`.
pub fn node_unschedulable(pod: &PodInfo<'_>, node: &Node) -> Verdict {
    if !node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false) {
        return Ok(());
    }
    if pod.tolerates_unschedulable {
        Ok(())
    } else {
        fail(ERR_UNSCHEDULABLE)
    }
}

/// Whether a toleration matches a taint (upstream `Toleration.ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        // An empty key with Equal is invalid; validation rejects it, treat it as no match.
        "Equal" | "" => !key.is_empty() && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// TaintToleration: every NoSchedule/NoExecute taint must be tolerated (PreferNoSchedule only
/// affects scoring). Upstream reports the first untolerated taint.
pub fn taint_toleration(pod: &PodInfo<'_>, node: &Node) -> Verdict {
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or(&[]);
    for taint in taints.iter().filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute") {
        if !pod.tolerations().iter().any(|t| tolerates(t, taint)) {
            return fail(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or("")
            ));
        }
    }
    Ok(())
}

/// NodeAffinity: `spec.nodeSelector` and required node affinity must both match.
pub fn node_affinity(pod: &PodInfo<'_>, node: &Node) -> Verdict {
    let Some(spec) = pod.pod.spec.as_ref() else { return Ok(()) };
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if let Some(sel) = &spec.node_selector {
        if !sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return fail(ERR_AFFINITY);
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    if let Some(req) = required {
        // Terms are ORed; an empty list matches nothing (upstream `nodeaffinity.NodeSelector`).
        let name = node.metadata.name.as_deref().unwrap_or("");
        if !req.node_selector_terms.iter().any(|t| term_matches(t, labels, name)) {
            return fail(ERR_AFFINITY);
        }
    }
    Ok(())
}

pub(crate) fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, node_name: &str) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    // A term with no requirements selects nothing.
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs.iter().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node_name)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    let num = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (value.and_then(num), values.first().and_then(|b| num(b))) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// NodePorts: the pod's host ports must be free on the node.
pub fn node_ports(pod: &PodInfo<'_>, node: &NodeInfo) -> Verdict {
    if pod.ports.iter().any(|p| node.used_ports.iter().any(|u| u.conflicts(p))) {
        fail(ERR_PORTS)
    } else {
        Ok(())
    }
}

/// NodeResourcesFit: the pod's requests must fit in allocatable minus what the node's pods
/// already request; the pod count must stay within allocatable `pods`. Reports every
/// insufficient resource, cpu and memory first, as upstream `fitsRequest` does.
pub fn node_resources_fit(pod: &PodInfo<'_>, node: &NodeInfo) -> Verdict {
    let mut reasons = vec![];
    if let Some(max_pods) = node.facts.pods {
        if (node.pod_count as i128 + 1) * 1000 > max_pods {
            reasons.push(ERR_TOO_MANY_PODS.to_string());
        }
    }
    // Zero requests never fail, even for resources the node does not have (they are not listed).
    for (name, want) in &pod.ordered_requests {
        let want = *want;
        let free = node.allocatable_of(name) - node.requested_of(name);
        if want > free {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// Node readiness: only nodes whose `Ready` condition is `True` take new pods. (Upstream now
/// expresses this through the `node.kubernetes.io/not-ready:NoSchedule` taint the node lifecycle
/// controller adds; checking the condition too keeps a node that has never reported from getting
/// pods.) As with that taint, a pod tolerating it — a DaemonSet's, say — may go there anyway.
pub fn node_ready(pod: &PodInfo<'_>, node: &Node) -> Verdict {
    if pod.tolerates_not_ready || is_ready(node) {
        Ok(())
    } else {
        fail(ERR_NOT_READY)
    }
}

/// Whether the node's `Ready` condition is `True`.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Upstream `FitError.Error()` without the preemption part: reasons counted over nodes, each
/// rendered "<count> <reason>", sorted as strings, joined with ", ", ended with a full stop.
pub fn unschedulable_message(total_nodes: usize, failures: &[Vec<String>]) -> String {
    fit_error(total_nodes, None, failures, None)
}

/// Upstream `FitError.Error()`: a PreFilter rejection replaces the per-node histogram, and the
/// preemption (PostFilter) outcome follows, e.g. `0/3 nodes are available: 3 Insufficient cpu.
/// preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod..`
/// (the doubled full stop is upstream's: the nested message ends in one already).
pub fn fit_error(
    total_nodes: usize,
    prefilter: Option<&str>,
    failures: &[Vec<String>],
    postfilter: Option<&str>,
) -> String {
    if total_nodes == 0 {
        // Upstream fails before filtering with `ErrNoNodesAvailable`.
        return "no nodes available to schedule pods".to_string();
    }
    let mut msg = format!("0/{total_nodes} nodes are available");
    match prefilter {
        Some(p) => msg.push_str(&format!(": {p}.")),
        None => {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for reasons in failures {
                for r in reasons {
                    *counts.entry(r.as_str()).or_default() += 1;
                }
            }
            let mut parts: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
            parts.sort();
            if parts.is_empty() {
                msg.push('.');
            } else {
                msg.push_str(&format!(": {}.", parts.join(", ")));
            }
        }
    }
    if let Some(p) = postfilter {
        msg.push_str(&format!(" {p}."));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::cache::Cache;
    use k8s_openapi::api::core::v1::{
        Affinity, Container, ContainerPort, NodeAffinity, NodeCondition, NodeSelector, NodeSpec, NodeStatus, PodSpec,
        ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    fn q(s: &str) -> Quantity {
        Quantity(s.into())
    }

    fn node(name: &str, cpu: &str, mem: &str) -> Node {
        Node {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(
                    [("cpu".to_string(), q(cpu)), ("memory".to_string(), q(mem)), ("pods".to_string(), q("110"))]
                        .into(),
                ),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod(cpu: &str, mem: &str) -> Pod {
        let mut req = BTreeMap::new();
        if !cpu.is_empty() {
            req.insert("cpu".to_string(), q(cpu));
        }
        if !mem.is_empty() {
            req.insert("memory".to_string(), q(mem));
        }
        Pod {
            metadata: ObjectMeta { name: Some("p".into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements { requests: Some(req), ..Default::default() }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn info(n: Node) -> NodeInfo {
        let mut c = Cache::default();
        let name = n.metadata.name.clone().unwrap_or_default();
        c.set_node(n);
        c.node(&name).cloned().unwrap_or_default()
    }

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some(value.into()).filter(|v: &String| !v.is_empty()),
            effect: effect.into(),
            ..Default::default()
        }
    }

    #[test]
    fn node_name_rejects_every_node_but_the_named_one() {
        let mut p = pod("", "");
        if let Some(s) = p.spec.as_mut() {
            s.node_name = Some("a".into());
        }
        let pi = PodInfo::new(&p);
        assert!(node_name(&pi, &node("a", "1", "1Gi")).is_ok());
        assert_eq!(node_name(&pi, &node("b", "1", "1Gi")), fail(ERR_NODE_NAME));
    }

    #[test]
    fn cordoned_nodes_take_only_pods_tolerating_unschedulable() {
        let mut n = node("a", "1", "1Gi");
        n.spec = Some(NodeSpec { unschedulable: Some(true), ..Default::default() });
        let p = pod("", "");
        assert_eq!(node_unschedulable(&PodInfo::new(&p), &n), fail(ERR_UNSCHEDULABLE));
        let mut tolerant = pod("", "");
        if let Some(s) = tolerant.spec.as_mut() {
            s.tolerations = Some(vec![Toleration {
                key: Some("node.kubernetes.io/unschedulable".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            }])
        }
        assert!(node_unschedulable(&PodInfo::new(&tolerant), &n).is_ok());
    }

    #[test]
    fn untolerated_no_schedule_taints_reject_with_the_taint_named() {
        let mut n = node("a", "1", "1Gi");
        n.spec = Some(NodeSpec {
            taints: Some(vec![
                taint("soft", "", "PreferNoSchedule"),
                taint("node-role.kubernetes.io/control-plane", "", "NoSchedule"),
            ]),
            ..Default::default()
        });
        let p = pod("", "");
        assert_eq!(
            taint_toleration(&PodInfo::new(&p), &n),
            fail("node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }")
        );
        let mut tolerant = pod("", "");
        if let Some(s) = tolerant.spec.as_mut() {
            s.tolerations = Some(vec![Toleration {
                key: Some("node-role.kubernetes.io/control-plane".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }])
        }
        assert!(taint_toleration(&PodInfo::new(&tolerant), &n).is_ok());
    }

    #[test]
    fn tolerations_match_by_key_value_and_effect() {
        let t = taint("k", "v", "NoExecute");
        let tol = |key: Option<&str>, op: &str, value: Option<&str>, effect: Option<&str>| Toleration {
            key: key.map(String::from),
            operator: Some(op.into()),
            value: value.map(String::from),
            effect: effect.map(String::from),
            ..Default::default()
        };
        assert!(tolerates(&tol(Some("k"), "Equal", Some("v"), None), &t));
        assert!(!tolerates(&tol(Some("k"), "Equal", Some("w"), None), &t));
        assert!(!tolerates(&tol(Some("k"), "Equal", Some("v"), Some("NoSchedule")), &t));
        assert!(tolerates(&tol(None, "Exists", None, None), &t), "an empty key with Exists tolerates everything");
        assert!(!tolerates(&tol(Some("other"), "Exists", None, None), &t));
    }

    #[test]
    fn node_selector_and_required_affinity_must_both_match() {
        let mut n = node("a", "1", "1Gi");
        n.metadata.labels =
            Some([("disk".to_string(), "ssd".to_string()), ("gen".to_string(), "5".to_string())].into());
        let mut p = pod("", "");
        if let Some(s) = p.spec.as_mut() {
            s.node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
        }
        assert!(node_affinity(&PodInfo::new(&p), &n).is_ok());
        if let Some(s) = p.spec.as_mut() {
            s.node_selector = Some([("disk".to_string(), "hdd".to_string())].into());
        }
        assert_eq!(node_affinity(&PodInfo::new(&p), &n), fail(ERR_AFFINITY));

        let term = |key: &str, op: &str, values: &[&str]| NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            ..Default::default()
        };
        let with_terms = |terms: Vec<NodeSelectorTerm>| {
            let mut p = pod("", "");
            if let Some(s) = p.spec.as_mut() {
                s.affinity = Some(Affinity {
                    node_affinity: Some(NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                            node_selector_terms: terms,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }
            p
        };
        let ok = |p: &Pod| node_affinity(&PodInfo::new(p), &n).is_ok();
        assert!(ok(&with_terms(vec![term("disk", "In", &["ssd", "nvme"])])));
        assert!(!ok(&with_terms(vec![term("disk", "NotIn", &["ssd"])])));
        assert!(ok(&with_terms(vec![term("disk", "NotIn", &["ssd"]), term("gen", "Gt", &["4"])])), "terms are ORed");
        assert!(!ok(&with_terms(vec![term("gen", "Lt", &["4"])])));
        assert!(ok(&with_terms(vec![term("zone", "DoesNotExist", &[])])));
        assert!(!ok(&with_terms(vec![])), "an empty term list matches nothing");
        let by_name = NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec!["a".into()]),
            }]),
            ..Default::default()
        };
        assert!(ok(&with_terms(vec![by_name])));
    }

    #[test]
    fn host_ports_already_taken_on_the_node_reject_the_pod() {
        let mut c = Cache::default();
        c.set_node(node("a", "1", "1Gi"));
        let with_port = |name: &str| {
            let mut p = pod("", "");
            p.metadata.name = Some(name.into());
            if let Some(s) = p.spec.as_mut() {
                s.containers[0].ports =
                    Some(vec![ContainerPort { container_port: 80, host_port: Some(8080), ..Default::default() }])
            }
            p
        };
        let first = with_port("first");
        let ni = c.node("a").cloned().unwrap_or_default();
        assert!(node_ports(&PodInfo::new(&first), &ni).is_ok());
        c.assume(&first, "a");
        let ni = c.node("a").cloned().unwrap_or_default();
        assert_eq!(node_ports(&PodInfo::new(&with_port("second")), &ni), fail(ERR_PORTS));
    }

    #[test]
    fn resources_fit_counts_the_requests_of_pods_already_on_the_node() {
        let mut c = Cache::default();
        c.set_node(node("a", "1", "1Gi"));
        let mut existing = pod("700m", "512Mi");
        existing.metadata.name = Some("existing".into());
        if let Some(s) = existing.spec.as_mut() {
            s.node_name = Some("a".into());
        }
        c.update_pod(&existing);
        let ni = c.node("a").cloned().unwrap_or_default();
        assert!(node_resources_fit(&PodInfo::new(&pod("300m", "512Mi")), &ni).is_ok());
        assert_eq!(node_resources_fit(&PodInfo::new(&pod("301m", "100Mi")), &ni), fail("Insufficient cpu"));
        assert_eq!(
            node_resources_fit(&PodInfo::new(&pod("2", "2Gi")), &ni),
            Err(vec!["Insufficient cpu".to_string(), "Insufficient memory".to_string()])
        );
    }

    #[test]
    fn resources_fit_rejects_extended_resources_the_node_lacks_and_full_pod_counts() {
        let mut p = pod("", "");
        if let Some(s) = p.spec.as_mut() {
            s.containers[0].resources = Some(ResourceRequirements {
                requests: Some([("example.com/gpu".to_string(), q("1"))].into()),
                ..Default::default()
            })
        }
        let ni = info(node("a", "1", "1Gi"));
        assert_eq!(node_resources_fit(&PodInfo::new(&p), &ni), fail("Insufficient example.com/gpu"));
        let mut full = node("b", "1", "1Gi");
        if let Some(a) = full.status.as_mut().and_then(|s| s.allocatable.as_mut()) {
            a.insert("pods".into(), q("0"));
        }
        assert_eq!(node_resources_fit(&PodInfo::new(&pod("", "")), &info(full)), fail(ERR_TOO_MANY_PODS));
    }

    #[test]
    fn nodes_that_are_not_ready_are_rejected_unless_the_pod_tolerates_not_ready() {
        let p = pod("", "");
        let pi = PodInfo::new(&p);
        let mut n = node("a", "1", "1Gi");
        assert!(node_ready(&pi, &n).is_ok());
        if let Some(c) = n.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].status = "Unknown".into();
        }
        assert_eq!(node_ready(&pi, &n), fail(ERR_NOT_READY));
        n.status = None;
        assert_eq!(node_ready(&pi, &n), fail(ERR_NOT_READY));
        let mut defaulted = pod("", "");
        if let Some(s) = defaulted.spec.as_mut() {
            // What admission adds to every pod: tolerating NoExecute for 300 s is not enough.
            s.tolerations = Some(vec![Toleration {
                key: Some("node.kubernetes.io/not-ready".into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(300),
                ..Default::default()
            }]);
        }
        assert_eq!(node_ready(&PodInfo::new(&defaulted), &n), fail(ERR_NOT_READY));
        let mut daemon = pod("", "");
        if let Some(s) = daemon.spec.as_mut() {
            s.tolerations = Some(vec![Toleration {
                key: Some("node.kubernetes.io/not-ready".into()),
                operator: Some("Exists".into()),
                ..Default::default()
            }]);
        }
        assert!(node_ready(&PodInfo::new(&daemon), &n).is_ok());
    }

    #[test]
    fn the_first_failing_plugin_decides_a_nodes_reasons() {
        let mut n = node("a", "1", "1Gi");
        n.spec = Some(NodeSpec { taints: Some(vec![taint("t", "", "NoSchedule")]), ..Default::default() });
        // Also too big, but the taint is checked first.
        assert_eq!(run_filters(&PodInfo::new(&pod("8", "")), &info(n)), fail("node(s) had untolerated taint {t: }"));
    }

    #[test]
    fn unschedulable_message_follows_upstream_fit_error_form() {
        let taint = "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }".to_string();
        let failures = vec![vec!["Insufficient cpu".to_string()], vec![taint.clone()], vec![taint.clone()]];
        assert_eq!(
            unschedulable_message(3, &failures),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }."
        );
        let both = vec![vec!["Insufficient cpu".to_string(), "Insufficient memory".to_string()]];
        assert_eq!(
            unschedulable_message(1, &both),
            "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory."
        );
        assert_eq!(unschedulable_message(0, &[]), "no nodes available to schedule pods");
    }
}
