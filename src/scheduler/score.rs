//! Score plugins: among feasible nodes, which suits the pod best? Pure functions giving each
//! node 0..=100 per plugin; [`total`] weighs them as upstream's default profile does
//! (TaintToleration 3, NodeAffinity 2, NodeResourcesFit 1, NodeResourcesBalancedAllocation 1).

use super::cache::{normalized_image, Cache, NodeInfo};
use super::filter::{term_matches, tolerates, PodInfo};
use super::{interpod, resources, spread};
use k8s_openapi::api::core::v1::{Node, Pod};
use std::collections::BTreeMap;

pub const MAX_NODE_SCORE: i64 = 100;

/// (cpu, memory) requested on the node once the pod is added, and the node's allocatable.
fn usage(pod_nonzero: (i128, i128), node: &NodeInfo) -> [(i128, i128); 2] {
    [
        (node.nonzero_requested.0 + pod_nonzero.0, node.facts.cpu),
        (node.nonzero_requested.1 + pod_nonzero.1, node.facts.memory),
    ]
}

/// NodeResourcesFit with the default LeastAllocated strategy: the share of cpu and memory left
/// free after placing the pod, averaged with equal weights (`leastRequestedScore`).
pub fn least_allocated(pod_nonzero: (i128, i128), node: &NodeInfo) -> i64 {
    let scores: Vec<i128> = usage(pod_nonzero, node)
        .iter()
        .map(|&(req, cap)| if cap == 0 || req > cap { 0 } else { (cap - req) * MAX_NODE_SCORE as i128 / cap })
        .collect();
    (scores.iter().sum::<i128>() / scores.len() as i128) as i64
}

/// NodeResourcesBalancedAllocation: nodes whose cpu and memory fractions stay close score high;
/// `(1 - standard deviation of the fractions) * 100`, fractions capped at 1.
pub fn balanced_allocation(pod_nonzero: (i128, i128), node: &NodeInfo) -> i64 {
    let fractions: Vec<f64> = usage(pod_nonzero, node)
        .iter()
        .map(|&(req, cap)| if cap == 0 { 1.0 } else { (req as f64 / cap as f64).min(1.0) })
        .collect();
    let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
    let var = fractions.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / fractions.len() as f64;
    ((1.0 - var.sqrt()) * MAX_NODE_SCORE as f64) as i64
}

/// TaintToleration's raw score: how many PreferNoSchedule taints the pod does not tolerate
/// (fewer is better; [`total`] reverses and normalises it).
pub fn intolerable_prefer_no_schedule(pod: &Pod, node: &Node) -> i64 {
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref()).unwrap_or(&[]);
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or(&[]);
    taints
        .iter()
        .filter(|t| t.effect == "PreferNoSchedule")
        .filter(|t| {
            !tolerations
                .iter()
                .filter(|x| x.effect.as_deref().is_none_or(|e| e == "PreferNoSchedule"))
                .any(|x| tolerates(x, t))
        })
        .count() as i64
}

/// NodeAffinity's raw score: the summed weights of the preferred terms the node matches.
pub fn preferred_affinity(pod: &Pod, node: &Node) -> i64 {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let name = node.metadata.name.as_deref().unwrap_or("");
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.preferred_during_scheduling_ignored_during_execution.as_ref())
        .into_iter()
        .flatten()
        .filter(|p| term_matches(&p.preference, labels, name))
        .map(|p| p.weight as i64)
        .sum()
}

/// Scales raw scores to 0..=100 by the highest one (upstream `DefaultNormalizeScore`), reversed
/// when lower raw scores are better.
pub fn normalize(raw: &[i64], reverse: bool) -> Vec<i64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    raw.iter()
        .map(|&r| {
            if max == 0 {
                if reverse {
                    MAX_NODE_SCORE
                } else {
                    0
                }
            } else {
                let s = r * MAX_NODE_SCORE / max;
                if reverse {
                    MAX_NODE_SCORE - s
                } else {
                    s
                }
            }
        })
        .collect()
}

/// Weighted total of every score plugin for each feasible node, in the order given, for a pod
/// without PreFilter state (see [`total_with`]).
pub fn total(pod: &Pod, pod_nonzero: (i128, i128), nodes: &[&NodeInfo]) -> Vec<i64> {
    let _ = pod_nonzero;
    total_with(&PodInfo::new(pod), None, nodes)
}

const MB: i64 = 1024 * 1024;
/// Upstream ImageLocality thresholds: images below 23 MB score nothing, and the score saturates
/// at 1000 MB per container.
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// ImageLocality: the sizes of the pod's images already on the node, each scaled by the share of
/// nodes holding it (so an image everywhere does not pull every pod to one node), mapped
/// between the thresholds to 0..=100 (`calculatePriority`).
pub fn image_locality(pod: &Pod, node: &NodeInfo, cache: &Cache, total_nodes: usize) -> i64 {
    image_locality_of(&pod_images(pod), node, cache, total_nodes)
}

/// The normalized image names of a pod's containers, init containers first.
fn pod_images(pod: &Pod) -> Vec<String> {
    let Some(spec) = pod.spec.as_ref() else { return vec![] };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| normalized_image(c.image.as_deref().unwrap_or("")))
        .collect()
}

/// [`image_locality`] with the pod's image names normalized once for all nodes.
fn image_locality_of(containers: &[String], node: &NodeInfo, cache: &Cache, total_nodes: usize) -> i64 {
    if containers.is_empty() || total_nodes == 0 {
        return 0;
    }
    let mut sum: i64 = 0;
    for name in containers {
        if let Some(size) = node.images.get(name) {
            let spread = cache.image_spread(name) as f64 / total_nodes as f64;
            sum += (*size as f64 * spread) as i64;
        }
    }
    let max = MAX_CONTAINER_THRESHOLD * containers.len() as i64;
    let sum = sum.clamp(MIN_THRESHOLD, max);
    MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
}

/// Weighted total of every score plugin for each feasible node, as upstream's default profile
/// weighs them: TaintToleration 3, NodeAffinity 2, PodTopologySpread 2, InterPodAffinity 2,
/// NodeResourcesFit 1, NodeResourcesBalancedAllocation 1, ImageLocality 1.
pub fn total_with(info: &PodInfo<'_>, cache: Option<&Cache>, nodes: &[&NodeInfo]) -> Vec<i64> {
    let pod = info.pod;
    let pod_nonzero = resources::pod_nonzero_requests(pod);
    let raw_taint: Vec<i64> =
        nodes.iter().map(|n| n.node.as_deref().map_or(0, |node| intolerable_prefer_no_schedule(pod, node))).collect();
    let raw_aff: Vec<i64> =
        nodes.iter().map(|n| n.node.as_deref().map_or(0, |node| preferred_affinity(pod, node))).collect();
    let taint = normalize(&raw_taint, true);
    let aff = normalize(&raw_aff, false);
    // PreScore once per attempt; then a few map look-ups per node.
    let spread = match cache.and_then(|c| spread::pre_score(info, c, nodes)) {
        Some(st) => spread::normalize(&nodes.iter().map(|n| st.raw_score(n)).collect::<Vec<_>>()),
        None => vec![0; nodes.len()],
    };
    let inter = match &info.interpod {
        Some(st) => interpod::normalize(&nodes.iter().map(|n| interpod::raw_score(st, n.labels())).collect::<Vec<_>>()),
        None => vec![0; nodes.len()],
    };
    let total_nodes = cache.map_or(0, |c| c.node_count());
    let images = pod_images(pod);
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let image = cache.map_or(0, |c| image_locality_of(&images, n, c, total_nodes));
            3 * taint[i]
                + 2 * aff[i]
                + 2 * spread[i]
                + 2 * inter[i]
                + least_allocated(pod_nonzero, n)
                + balanced_allocation(pod_nonzero, n)
                + image
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::cache::Cache;
    use k8s_openapi::api::core::v1::{
        Affinity, Container, NodeAffinity, NodeSelectorRequirement, NodeSelectorTerm, NodeSpec, NodeStatus, PodSpec,
        PreferredSchedulingTerm, ResourceRequirements, Taint,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    const GI: i128 = 1 << 30;

    fn node_info(name: &str, cpu: &str, mem: &str, used: Option<(&str, &str)>) -> NodeInfo {
        let mut c = Cache::default();
        c.set_node(Node {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            status: Some(NodeStatus {
                allocatable: Some(
                    [("cpu".to_string(), Quantity(cpu.into())), ("memory".to_string(), Quantity(mem.into()))].into(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        });
        if let Some((ucpu, umem)) = used {
            let p = Pod {
                metadata: ObjectMeta { name: Some("u".into()), namespace: Some("d".into()), ..Default::default() },
                spec: Some(PodSpec {
                    node_name: Some(name.into()),
                    containers: vec![Container {
                        name: "c".into(),
                        resources: Some(ResourceRequirements {
                            requests: Some(
                                [
                                    ("cpu".to_string(), Quantity(ucpu.into())),
                                    ("memory".to_string(), Quantity(umem.into())),
                                ]
                                .into(),
                            ),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            };
            c.update_pod(&p);
        }
        c.node(name).cloned().unwrap_or_default()
    }

    #[test]
    fn least_allocated_prefers_the_emptier_node() {
        let empty = node_info("a", "4", "8Gi", None);
        let busy = node_info("b", "4", "8Gi", Some(("3", "6Gi")));
        let pod = (1000, GI * 1000);
        // empty: cpu (4-1)/4 = 75, mem (8-1)/8 = 87 → 81; busy: cpu 0, mem 12 → 6.
        assert_eq!(least_allocated(pod, &empty), 81);
        assert_eq!(least_allocated(pod, &busy), 6);
    }

    #[test]
    fn least_allocated_gives_zero_for_overcommitted_resources() {
        let small = node_info("a", "1", "1Gi", None);
        assert_eq!(least_allocated((2000, 2 * GI * 1000), &small), 0);
    }

    #[test]
    fn balanced_allocation_prefers_even_cpu_and_memory_use() {
        let n = node_info("a", "4", "4Gi", None);
        assert_eq!(balanced_allocation((2000, 2 * GI * 1000), &n), 100, "50% and 50%");
        // 100% cpu and 25% memory: std = 0.375 → 62.
        assert_eq!(balanced_allocation((4000, GI * 1000), &n), 62);
    }

    #[test]
    fn prefer_no_schedule_taints_lower_a_nodes_score() {
        let tainted = Node {
            spec: Some(NodeSpec {
                taints: Some(vec![Taint { key: "k".into(), effect: "PreferNoSchedule".into(), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = Pod::default();
        assert_eq!(intolerable_prefer_no_schedule(&pod, &tainted), 1);
        assert_eq!(intolerable_prefer_no_schedule(&pod, &Node::default()), 0);
        assert_eq!(normalize(&[1, 0], true), vec![0, 100]);
    }

    #[test]
    fn preferred_node_affinity_sums_matching_weights() {
        let node = Node {
            metadata: ObjectMeta { labels: Some([("zone".to_string(), "a".to_string())].into()), ..Default::default() },
            ..Default::default()
        };
        let pref = |w: i32, v: &str| PreferredSchedulingTerm {
            weight: w,
            preference: NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: "zone".into(),
                    operator: "In".into(),
                    values: Some(vec![v.into()]),
                }]),
                ..Default::default()
            },
        };
        let pod = Pod {
            spec: Some(PodSpec {
                affinity: Some(Affinity {
                    node_affinity: Some(NodeAffinity {
                        preferred_during_scheduling_ignored_during_execution: Some(vec![pref(10, "a"), pref(5, "b")]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(preferred_affinity(&pod, &node), 10);
        assert_eq!(normalize(&[10, 5, 0], false), vec![100, 50, 0]);
    }

    #[test]
    fn total_ranks_an_empty_node_above_a_busy_one() {
        let empty = node_info("a", "4", "8Gi", None);
        let busy = node_info("b", "4", "8Gi", Some(("3", "2Gi")));
        let s = total(&Pod::default(), (100, 200 * 1024 * 1024 * 1000), &[&empty, &busy]);
        assert!(s[0] > s[1], "{s:?}");
    }

    #[test]
    fn image_locality_favours_nodes_holding_big_images_that_few_nodes_have() {
        use k8s_openapi::api::core::v1::{Container, ContainerImage, NodeStatus};
        let with_image = |name: &str, size: i64| Node {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            status: Some(NodeStatus {
                images: Some(vec![ContainerImage {
                    names: Some(vec!["docker.io/app/big:1".into()]),
                    size_bytes: Some(size),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = Cache::default();
        c.set_node(with_image("a", 500 * MB));
        c.set_node(Node {
            metadata: ObjectMeta { name: Some("b".into()), ..Default::default() },
            ..Default::default()
        });
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("docker.io/app/big:1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let a = c.node("a").cloned().unwrap_or_default();
        let b = c.node("b").cloned().unwrap_or_default();
        // 500 MB on 1 of 2 nodes scales to 250 MB: (250-23)/(1000-23) of 100.
        assert_eq!(image_locality(&pod, &a, &c, 2), 23);
        assert_eq!(image_locality(&pod, &b, &c, 2), 0);
        assert_eq!(normalized_image("busybox"), "busybox:latest");
        assert_eq!(normalized_image("localhost:5000/busybox"), "localhost:5000/busybox:latest");
    }
}
