//! PodTopologySpread: `topologySpreadConstraints` as a filter (`DoNotSchedule`) and a score
//! (`ScheduleAnyway`), after upstream `framework/plugins/podtopologyspread`.
//!
//! [`prepare`] counts, per constraint, the pods in the incoming pod's namespace matching the
//! constraint's selector in every topology domain of the eligible nodes (nodes with the
//! topology labels that pass `nodeAffinityPolicy` — Honor by default — and `nodeTaintsPolicy` —
//! Ignore by default). Pods are matched once per label group (see `cache::GroupKey`). The filter
//! then allows a node when `count(domain) + selfMatch - globalMin <= maxSkew`, where the global
//! minimum is 0 while fewer than `minDomains` domains exist. `matchLabelKeys` narrow the selector
//! to the incoming pod's values of those labels. Not done: the cluster-level default constraints.

use super::cache::Cache;
use super::filter::{self, PodInfo, Verdict};
use super::labels::{self, Labels};
use k8s_openapi::api::core::v1::{Node, Pod, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::HashMap;

pub const ERR_SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_SPREAD_LABEL: &str = "node(s) didn't match pod topology spread constraints (missing required label)";

#[derive(Debug, Clone)]
struct Constraint {
    max_skew: i64,
    key: String,
    min_domains: usize,
    selector: Option<LabelSelector>,
    self_match: bool,
    honor_affinity: bool,
    honor_taints: bool,
}

/// Counts for one set of constraints (the hard or the soft ones).
#[derive(Debug, Clone, Default)]
struct Counts {
    constraints: Vec<Constraint>,
    /// Per constraint: matching pods per domain; every eligible domain is present.
    per_domain: Vec<HashMap<String, i64>>,
}

/// The incoming pod's spreading state, computed once per attempt.
#[derive(Debug, Clone, Default)]
pub struct State {
    hard: Counts,
    soft: Counts,
}

fn constraints(pod: &Pod, when: &str) -> Vec<Constraint> {
    let empty = Labels::new();
    let own = pod.metadata.labels.as_ref().unwrap_or(&empty);
    pod.spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_deref())
        .unwrap_or(&[])
        .iter()
        .filter(|c| c.when_unsatisfiable == when)
        .map(|c: &TopologySpreadConstraint| {
            let selector = with_match_label_keys(c.label_selector.as_ref(), c.match_label_keys.as_deref(), own);
            Constraint {
                max_skew: c.max_skew.max(1) as i64,
                key: c.topology_key.clone(),
                min_domains: c.min_domains.unwrap_or(1).max(1) as usize,
                self_match: labels::matches(selector.as_ref(), own),
                selector,
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            }
        })
        .collect()
}

/// `matchLabelKeys`: each listed key the incoming pod has narrows the selector to pods with the
/// same value (`key in (value)`), so a rollout's new pods spread among themselves (the
/// `pod-template-hash` idiom). Keys the pod lacks are ignored, as upstream. Without a
/// labelSelector the constraint matches no pods, and the keys do not change that.
fn with_match_label_keys(sel: Option<&LabelSelector>, keys: Option<&[String]>, own: &Labels) -> Option<LabelSelector> {
    let mut sel = sel?.clone();
    for k in keys.unwrap_or(&[]) {
        if let Some(v) = own.get(k) {
            sel.match_expressions.get_or_insert_with(Vec::new).push(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: k.clone(),
                    operator: "In".into(),
                    values: Some(vec![v.clone()]),
                },
            );
        }
    }
    Some(sel)
}

fn count(pod: &Pod, info: &PodInfo<'_>, cache: &Cache, cs: Vec<Constraint>) -> Counts {
    if cs.is_empty() {
        return Counts::default();
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    // Eligible nodes: every topology key of the set present, inclusion policies passed.
    let mut domain_of: Vec<HashMap<&str, &str>> = vec![HashMap::new(); cs.len()];
    let mut per_domain: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
    for n in cache.nodes() {
        let Some(node) = n.node.as_deref() else { continue };
        let l = n.labels();
        if !cs.iter().all(|c| l.contains_key(&c.key)) {
            continue;
        }
        let (mut aff, mut taint) = (None, None);
        for (i, c) in cs.iter().enumerate() {
            if c.honor_affinity && !*aff.get_or_insert_with(|| filter::node_affinity(info, node).is_ok()) {
                continue;
            }
            if c.honor_taints && !*taint.get_or_insert_with(|| filter::taint_toleration(info, node).is_ok()) {
                continue;
            }
            if let Some(v) = l.get(&c.key) {
                domain_of[i].insert(n.name(), v.as_str());
                per_domain[i].entry(v.clone()).or_insert(0);
            }
        }
    }
    for (g, group) in cache.groups() {
        if g.terminating || g.namespace != ns {
            continue;
        }
        for (i, c) in cs.iter().enumerate() {
            if !labels::matches(c.selector.as_ref(), &g.labels) {
                continue;
            }
            for (node, &k) in &group.per_node {
                if let Some(v) = domain_of[i].get(node.as_str()) {
                    if let Some(e) = per_domain[i].get_mut(*v) {
                        *e += k as i64;
                    }
                }
            }
        }
    }
    Counts { constraints: cs, per_domain }
}

/// Whether the pod has spread constraints at all.
pub fn relevant(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_ref()).is_some_and(|c| !c.is_empty())
}

/// PreFilter and PreScore.
pub fn prepare(info: &PodInfo<'_>, cache: &Cache) -> State {
    let pod = info.pod;
    State {
        hard: count(pod, info, cache, constraints(pod, "DoNotSchedule")),
        soft: count(pod, info, cache, constraints(pod, "ScheduleAnyway")),
    }
}

/// Filter: every `DoNotSchedule` constraint's skew stays within `maxSkew`.
pub fn filter(st: &State, node: &Node) -> Verdict {
    let empty = Labels::new();
    let l = node.metadata.labels.as_ref().unwrap_or(&empty);
    for (i, c) in st.hard.constraints.iter().enumerate() {
        let Some(v) = l.get(&c.key) else { return Err(vec![ERR_SPREAD_LABEL.into()]) };
        let counts = &st.hard.per_domain[i];
        let min = if counts.len() < c.min_domains { 0 } else { counts.values().copied().min().unwrap_or(0) };
        let here = counts.get(v).copied().unwrap_or(0);
        if here + c.self_match as i64 - min > c.max_skew {
            return Err(vec![ERR_SPREAD.into()]);
        }
    }
    Ok(())
}

/// Raw score for `ScheduleAnyway` constraints (more matching pods → higher → worse), or `None`
/// for a node lacking a topology key (upstream's ignored nodes).
pub fn raw_score(st: &State, node: &Node) -> Option<i64> {
    let empty = Labels::new();
    let l = node.metadata.labels.as_ref().unwrap_or(&empty);
    let mut score = 0.0;
    for (i, c) in st.soft.constraints.iter().enumerate() {
        let v = l.get(&c.key)?;
        let counts = &st.soft.per_domain[i];
        let weight = ((counts.len() + 2) as f64).ln();
        score += counts.get(v).copied().unwrap_or(0) as f64 * weight + (c.max_skew - 1) as f64;
    }
    Some(score.round() as i64)
}

pub fn has_soft(st: &State) -> bool {
    !st.soft.constraints.is_empty()
}

/// Upstream NormalizeScore: fewer matching pods score higher; ignored nodes score 0.
pub fn normalize(raw: &[Option<i64>]) -> Vec<i64> {
    let present = raw.iter().flatten();
    let min = present.clone().copied().min().unwrap_or(0);
    let max = present.copied().max().unwrap_or(0);
    raw.iter()
        .map(|r| match r {
            None => 0,
            Some(_) if max == 0 => 100,
            Some(s) => 100 * (max + min - s) / max,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::labels::tests::{labels, sel};
    use k8s_openapi::api::core::v1::PodSpec;
    use kube::api::ObjectMeta;

    fn node(name: &str, zone: Option<&str>) -> Node {
        let mut l = labels(&[("kubernetes.io/hostname", name)]);
        if let Some(z) = zone {
            l.insert("zone".into(), z.into());
        }
        Node {
            metadata: ObjectMeta { name: Some(name.into()), labels: Some(l), ..Default::default() },
            ..Default::default()
        }
    }

    fn pod(name: &str, node: Option<&str>, when: &str, skew: i32) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(labels(&[("app", "web")])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                    max_skew: skew,
                    topology_key: "zone".into(),
                    when_unsatisfiable: when.into(),
                    label_selector: Some(sel(&[("app", "web")])),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cluster() -> Cache {
        let mut c = Cache::default();
        for (n, z) in [("a", "z1"), ("b", "z1"), ("c", "z2")] {
            c.set_node(node(n, Some(z)));
        }
        c
    }

    #[test]
    fn do_not_schedule_keeps_zones_within_max_skew() {
        let mut c = cluster();
        c.update_pod(&pod("p1", Some("a"), "DoNotSchedule", 1));
        let p = pod("p2", None, "DoNotSchedule", 1);
        let st = prepare(&PodInfo::new(&p), &c);
        // z1 has 1, z2 has 0: another in z1 would make the skew 2.
        assert_eq!(filter(&st, &node("b", Some("z1"))), Err(vec![ERR_SPREAD.into()]));
        assert!(filter(&st, &node("c", Some("z2"))).is_ok());
        assert_eq!(filter(&st, &node("d", None)), Err(vec![ERR_SPREAD_LABEL.into()]));
        c.update_pod(&pod("p2", Some("c"), "DoNotSchedule", 1));
        let st = prepare(&PodInfo::new(&pod("p3", None, "DoNotSchedule", 1)), &c);
        assert!(filter(&st, &node("b", Some("z1"))).is_ok(), "1 and 1: either zone");
    }

    #[test]
    fn min_domains_holds_the_global_minimum_at_zero() {
        let mut c = Cache::default();
        c.set_node(node("a", Some("z1")));
        c.update_pod(&pod("p1", Some("a"), "DoNotSchedule", 1));
        let mut p = pod("p2", None, "DoNotSchedule", 1);
        let st = prepare(&PodInfo::new(&p), &c);
        assert!(filter(&st, &node("a", Some("z1"))).is_ok(), "one domain: its own minimum");
        if let Some(tsc) = p.spec.as_mut().and_then(|s| s.topology_spread_constraints.as_mut()) {
            tsc[0].min_domains = Some(2);
        }
        let st = prepare(&PodInfo::new(&p), &c);
        assert_eq!(filter(&st, &node("a", Some("z1"))), Err(vec![ERR_SPREAD.into()]));
    }

    #[test]
    fn nodes_failing_node_affinity_do_not_count_as_domains() {
        let mut c = cluster();
        c.update_pod(&pod("p1", Some("a"), "DoNotSchedule", 1));
        let mut p = pod("p2", None, "DoNotSchedule", 1);
        if let Some(s) = p.spec.as_mut() {
            s.node_selector = Some(labels(&[("zone", "z1")]));
        }
        let st = prepare(&PodInfo::new(&p), &c);
        assert!(filter(&st, &node("b", Some("z1"))).is_ok(), "z2 is not eligible, so z1 is the minimum");
    }

    #[test]
    fn schedule_anyway_scores_emptier_zones_higher() {
        let mut c = cluster();
        c.update_pod(&pod("p1", Some("a"), "ScheduleAnyway", 1));
        let p = pod("p2", None, "ScheduleAnyway", 1);
        let st = prepare(&PodInfo::new(&p), &c);
        assert!(filter(&st, &node("b", Some("z1"))).is_ok(), "soft constraints never filter");
        let raw: Vec<Option<i64>> =
            [node("b", Some("z1")), node("c", Some("z2")), node("d", None)].iter().map(|n| raw_score(&st, n)).collect();
        assert_eq!(raw[2], None);
        let s = normalize(&raw);
        assert!(s[1] > s[0], "{s:?}");
        assert_eq!(s[2], 0);
    }
    #[test]
    fn match_label_keys_spread_only_among_pods_with_the_same_values() {
        let mut c = cluster();
        let with_hash = |name: &str, node: Option<&str>, hash: &str| {
            let mut p = pod(name, node, "DoNotSchedule", 1);
            p.metadata.labels = Some(labels(&[("app", "web"), ("pod-template-hash", hash)]));
            if let Some(tsc) = p.spec.as_mut().and_then(|s| s.topology_spread_constraints.as_mut()) {
                tsc[0].match_label_keys = Some(vec!["pod-template-hash".into(), "absent".into()]);
            }
            p
        };
        // The old revision's pod sits in z1; the new revision's first pod may go there too.
        c.update_pod(&with_hash("old", Some("a"), "v1"));
        let st = prepare(&PodInfo::new(&with_hash("new1", None, "v2")), &c);
        assert!(filter(&st, &node("b", Some("z1"))).is_ok(), "pods of another revision do not count");
        // Without matchLabelKeys the old pod counts and z1 is full.
        let st = prepare(&PodInfo::new(&pod("plain", None, "DoNotSchedule", 1)), &c);
        assert_eq!(filter(&st, &node("b", Some("z1"))), Err(vec![ERR_SPREAD.into()]));
        // Once a v2 pod is in z1, the next v2 pod must go to z2.
        c.update_pod(&with_hash("new1", Some("a"), "v2"));
        let st = prepare(&PodInfo::new(&with_hash("new2", None, "v2")), &c);
        assert_eq!(filter(&st, &node("b", Some("z1"))), Err(vec![ERR_SPREAD.into()]));
        assert!(filter(&st, &node("c", Some("z2"))).is_ok());
    }
}
