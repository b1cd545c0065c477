//! PodTopologySpread: `topologySpreadConstraints` as a filter (`DoNotSchedule`) and a score
//! (`ScheduleAnyway`), after upstream `framework/plugins/podtopologyspread`.
//!
//! [`prepare`] (PreFilter) counts, per hard constraint, the pods in the incoming pod's namespace
//! matching the constraint's selector in every topology domain of the eligible nodes (nodes with
//! the topology labels that pass `nodeAffinityPolicy` — Honor by default — and `nodeTaintsPolicy`
//! — Ignore by default). Pods are matched once per label group (see `cache::GroupKey`). The
//! filter then allows a node when `count(domain) + selfMatch - globalMin <= maxSkew`, where the
//! global minimum is 0 while fewer than `minDomains` domains exist. `matchLabelKeys` narrow the
//! selector to the incoming pod's values of those labels. [`update`] is the PreFilter extension
//! preemption uses to take victims out of (and put them back into) those counts.
//!
//! [`pre_score`] (PreScore) does the same for the soft constraints over the nodes that passed
//! the filters. A pod with no constraints of its own gets upstream's system defaults
//! (`defaultingType: System`): `maxSkew` 3 on `kubernetes.io/hostname` and 5 on
//! `topology.kubernetes.io/zone`, ScheduleAnyway, with the selector of the Services and the
//! controller that select it (`selectors::Selectors::default_selector`); nothing selects it, no
//! default spreading. Under the defaults a node without a zone label still spreads by hostname.

use super::cache::{Cache, GroupKey, NodeInfo};
use super::filter::{self, PodInfo, Verdict};
use super::labels::{self, Labels};
use k8s_openapi::api::core::v1::{Node, Pod, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::{HashMap, HashSet};

pub const ERR_SPREAD: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_SPREAD_LABEL: &str = "node(s) didn't match pod topology spread constraints (missing required label)";

/// `v1.LabelHostname` and `v1.LabelTopologyZone`.
pub const HOSTNAME: &str = "kubernetes.io/hostname";
pub const ZONE: &str = "topology.kubernetes.io/zone";
/// Upstream `systemDefaultConstraints`: (topology key, maxSkew), both ScheduleAnyway.
pub const SYSTEM_DEFAULTS: [(&str, i64); 2] = [(HOSTNAME, 3), (ZONE, 5)];

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

impl Constraint {
    /// Whether the node's pods count for this constraint (`matchNodeInclusionPolicies`); the two
    /// checks are computed at most once per node and shared by the constraints.
    fn includes(&self, info: &PodInfo<'_>, node: &Node, aff: &mut Option<bool>, taint: &mut Option<bool>) -> bool {
        if self.honor_affinity && !*aff.get_or_insert_with(|| filter::node_affinity(info, node).is_ok()) {
            return false;
        }
        !self.honor_taints || *taint.get_or_insert_with(|| filter::taint_toleration(info, node).is_ok())
    }
}

/// Counts for the hard constraints.
#[derive(Debug, Clone, Default)]
struct Counts {
    constraints: Vec<Constraint>,
    /// Per constraint: matching pods per domain; every eligible domain is present.
    per_domain: Vec<HashMap<String, i64>>,
}

/// The incoming pod's filter state, computed once per attempt.
#[derive(Debug, Clone, Default)]
pub struct State {
    hard: Counts,
}

fn own_constraints(pod: &Pod) -> &[TopologySpreadConstraint] {
    pod.spec.as_ref().and_then(|s| s.topology_spread_constraints.as_deref()).unwrap_or(&[])
}

fn constraints(pod: &Pod, when: &str) -> Vec<Constraint> {
    let empty = Labels::new();
    let own = pod.metadata.labels.as_ref().unwrap_or(&empty);
    own_constraints(pod)
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
            if !c.includes(info, node, &mut aff, &mut taint) {
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

/// Whether the pod has constraints for the filter (`DoNotSchedule`) at all.
pub fn relevant(pod: &Pod) -> bool {
    own_constraints(pod).iter().any(|c| c.when_unsatisfiable == "DoNotSchedule")
}

/// PreFilter.
pub fn prepare(info: &PodInfo<'_>, cache: &Cache) -> State {
    let pod = info.pod;
    State { hard: count(pod, info, cache, constraints(pod, "DoNotSchedule")) }
}

/// PreFilter extension (upstream `preFilterState.updateWithPod`): counts `delta` more pods of
/// `group` on `node`, so preemption can see the spread without its victims.
pub fn update(st: &mut State, info: &PodInfo<'_>, node: &NodeInfo, group: &GroupKey, delta: i64) {
    let ns = info.pod.metadata.namespace.as_deref().unwrap_or("");
    // Terminating pods were never counted (upstream skips them since #87621).
    if group.terminating || group.namespace != ns {
        return;
    }
    let Some(n) = node.node.as_deref() else { return };
    let l = node.labels();
    let cs = &st.hard.constraints;
    if !cs.iter().all(|c| l.contains_key(&c.key)) {
        return;
    }
    let (mut aff, mut taint) = (None, None);
    for (i, c) in cs.iter().enumerate() {
        if !labels::matches(c.selector.as_ref(), &group.labels) || !c.includes(info, n, &mut aff, &mut taint) {
            continue;
        }
        if let Some(e) = l.get(&c.key).and_then(|v| st.hard.per_domain[i].get_mut(v)) {
            *e += delta;
        }
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

/// One soft constraint, counted and weighted for scoring.
#[derive(Debug, Clone)]
struct Soft {
    c: Constraint,
    /// Matching pods per domain; for the hostname key per node name, as upstream counts a
    /// node's own pods there.
    counts: HashMap<String, i64>,
    /// `ln(domains + 2)` over the feasible nodes (upstream `topologyNormalizingWeight`), so a
    /// key with few domains is not drowned by one with many.
    weight: f64,
}

/// PreScore state: the soft constraints (the pod's own or the system defaults) with their counts.
#[derive(Debug, Clone)]
pub struct Scoring {
    soft: Vec<Soft>,
    /// Nodes lacking a topology key are left out of scoring (score 0) for the pod's own
    /// constraints; under the system defaults they just skip that constraint.
    require_all: bool,
}

/// The soft constraints this pod is scored by, and whether nodes need all their keys.
fn soft_constraints(info: &PodInfo<'_>, cache: &Cache) -> (Vec<Constraint>, bool) {
    if !own_constraints(info.pod).is_empty() {
        return (constraints(info.pod, "ScheduleAnyway"), true);
    }
    let Some(selector) = cache.selectors.default_selector(info.pod) else { return (vec![], false) };
    let defaults = SYSTEM_DEFAULTS
        .iter()
        .map(|(key, max_skew)| Constraint {
            max_skew: *max_skew,
            key: key.to_string(),
            min_domains: 1,
            selector: Some(selector.clone()),
            self_match: false,
            honor_affinity: true,
            honor_taints: false,
        })
        .collect();
    (defaults, false)
}

/// PreScore, once per attempt over the `feasible` nodes; `None` when there is nothing to score
/// (upstream's Skip). Costs one pass over the feasible nodes for the weights and one over the
/// label groups matching the selector (and the nodes holding them) for the counts.
pub fn pre_score(info: &PodInfo<'_>, cache: &Cache, feasible: &[&NodeInfo]) -> Option<Scoring> {
    let (cs, require_all) = soft_constraints(info, cache);
    if cs.is_empty() || feasible.is_empty() {
        return None;
    }
    let has_all = |l: &Labels| cs.iter().all(|c| l.contains_key(&c.key));
    // Weights over the feasible nodes that are not ignored. Under the defaults a node without
    // the key lands in the "" domain, which upstream counts too.
    let mut scored = 0usize;
    let mut values: Vec<HashSet<&str>> = vec![HashSet::new(); cs.len()];
    for n in feasible {
        let l = n.labels();
        if require_all && !has_all(l) {
            continue;
        }
        scored += 1;
        for (i, c) in cs.iter().enumerate() {
            if c.key != HOSTNAME {
                values[i].insert(l.get(&c.key).map_or("", String::as_str));
            }
        }
    }
    let mut soft: Vec<Soft> = cs
        .into_iter()
        .zip(values)
        .map(|(c, v)| {
            let domains = if c.key == HOSTNAME { scored } else { v.len() };
            Soft { c, counts: HashMap::new(), weight: ((domains + 2) as f64).ln() }
        })
        .collect();
    let ns = info.pod.metadata.namespace.as_deref().unwrap_or("");
    let mut matched = vec![false; soft.len()];
    for (g, group) in cache.groups() {
        if g.terminating || g.namespace != ns {
            continue;
        }
        for (m, s) in matched.iter_mut().zip(&soft) {
            *m = labels::matches(s.c.selector.as_ref(), &g.labels);
        }
        if !matched.iter().any(|m| *m) {
            continue;
        }
        for (name, &k) in &group.per_node {
            let Some(n) = cache.node(name) else { continue };
            let Some(node) = n.node.as_deref() else { continue };
            let l = n.labels();
            if require_all && !soft.iter().all(|s| l.contains_key(&s.c.key)) {
                continue;
            }
            let (mut aff, mut taint) = (None, None);
            for (s, _) in soft.iter_mut().zip(&matched).filter(|(_, m)| **m) {
                if !s.c.includes(info, node, &mut aff, &mut taint) {
                    continue;
                }
                let Some(v) = l.get(&s.c.key) else { continue };
                let domain = if s.c.key == HOSTNAME { name } else { v };
                match s.counts.get_mut(domain) {
                    Some(e) => *e += k as i64,
                    None => {
                        s.counts.insert(domain.clone(), k as i64);
                    }
                }
            }
        }
    }
    Some(Scoring { soft, require_all })
}

impl Scoring {
    /// Raw score (more matching pods → higher → worse), or `None` for a node left out.
    pub fn raw_score(&self, node: &NodeInfo) -> Option<i64> {
        let l = node.labels();
        if self.require_all && !self.soft.iter().all(|s| l.contains_key(&s.c.key)) {
            return None;
        }
        let mut score = 0.0;
        for s in &self.soft {
            let Some(v) = l.get(&s.c.key) else { continue };
            let domain = if s.c.key == HOSTNAME { node.name() } else { v.as_str() };
            let n = s.counts.get(domain).copied().unwrap_or(0);
            // `scoreForCount`: maxSkew-1 waters down differences the constraint tolerates.
            score += n as f64 * s.weight + (s.c.max_skew - 1) as f64;
        }
        Some(score.round() as i64)
    }
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

    fn scores(c: &Cache, p: &Pod, names: &[&str]) -> Option<Vec<Option<i64>>> {
        let nodes: Vec<&NodeInfo> = names.iter().filter_map(|n| c.node(n)).collect();
        let st = pre_score(&PodInfo::new(p), c, &nodes)?;
        Some(nodes.iter().map(|n| st.raw_score(n)).collect())
    }

    #[test]
    fn schedule_anyway_scores_emptier_zones_higher() {
        let mut c = cluster();
        c.set_node(node("d", None));
        c.update_pod(&pod("p1", Some("a"), "ScheduleAnyway", 1));
        let p = pod("p2", None, "ScheduleAnyway", 1);
        let st = prepare(&PodInfo::new(&p), &c);
        assert!(filter(&st, &node("b", Some("z1"))).is_ok(), "soft constraints never filter");
        let raw = scores(&c, &p, &["b", "c", "d"]).expect("soft constraints score");
        assert_eq!(raw[2], None, "a node without the pod's own topology key is left out");
        let s = normalize(&raw);
        assert!(s[1] > s[0], "{s:?}");
        assert_eq!(s[2], 0);
    }

    /// A pod of the ReplicaSet `default/web-1` (selector app=web), bound to `node` if given.
    fn replica(name: &str, node: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(labels(&[("app", "web"), ("pod-template-hash", "1")])),
                owner_references: Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: "web-1".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: node.map(String::from), ..Default::default() }),
            ..Default::default()
        }
    }

    /// h1 and h2 in zone A, h3 in zone B, h4 without a zone; the ReplicaSet known to the cache.
    fn zoned() -> Cache {
        let mut c = Cache::default();
        for (n, z) in [("h1", Some("A")), ("h2", Some("A")), ("h3", Some("B")), ("h4", None)] {
            let mut l = labels(&[(HOSTNAME, n)]);
            if let Some(z) = z {
                l.insert(ZONE.into(), z.into());
            }
            c.set_node(Node {
                metadata: ObjectMeta { name: Some(n.into()), labels: Some(l), ..Default::default() },
                ..Default::default()
            });
        }
        let rs = k8s_openapi::api::apps::v1::ReplicaSet {
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                selector: sel(&[("app", "web"), ("pod-template-hash", "1")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        c.selectors.set_replica_set("default/web-1", Some(&rs));
        c
    }

    #[test]
    fn a_pod_without_constraints_spreads_by_its_controllers_selector_over_hosts_and_zones() {
        let mut c = zoned();
        c.update_pod(&replica("r1", Some("h1")));
        c.update_pod(&replica("r2", Some("h1")));
        c.update_pod(&replica("r3", Some("h3")));
        // Another app's pods do not count.
        let mut other = replica("x", Some("h2"));
        other.metadata.labels = Some(labels(&[("app", "db")]));
        c.update_pod(&other);
        // Upstream's arithmetic: hostname weight ln(3+2), zone weight ln(2+2);
        // h1: 2·1.609+2 + 2·1.386+4 = 12, h2: 2 + 6.77 = 9, h3: 1.609+2 + 1.386+4 = 9.
        let raw = scores(&c, &replica("new", None), &["h1", "h2", "h3"]).expect("default constraints");
        assert_eq!(raw, vec![Some(12), Some(9), Some(9)]);
        assert_eq!(normalize(&raw), vec![75, 100, 100]);
    }

    #[test]
    fn under_the_defaults_a_node_without_a_zone_still_spreads_by_hostname() {
        let mut c = zoned();
        c.update_pod(&replica("r1", Some("h4")));
        let raw = scores(&c, &replica("new", None), &["h1", "h3", "h4"]).expect("default constraints");
        // Zone domains A, B and h4's "" (upstream counts it): weight ln(5); hostname ln(5).
        // h1, h3: 2 + 4; h4: 1.609 + 2, and no zone part.
        assert_eq!(raw, vec![Some(6), Some(6), Some(4)]);
    }

    #[test]
    fn a_pod_nothing_selects_or_with_constraints_of_its_own_gets_no_default_spreading() {
        let mut c = zoned();
        c.update_pod(&replica("r1", Some("h1")));
        let mut orphan = replica("new", None);
        orphan.metadata.owner_references = None;
        assert_eq!(scores(&c, &orphan, &["h1", "h2"]), None);
        // Its own hard constraint replaces the defaults, and it has no soft one.
        let mut hard = replica("new", None);
        if let (Some(s), Some(t)) = (hard.spec.as_mut(), pod("t", None, "DoNotSchedule", 1).spec) {
            s.topology_spread_constraints = t.topology_spread_constraints;
        }
        assert_eq!(scores(&c, &hard, &["h1", "h2"]), None);
        assert!(scores(&c, &replica("new", None), &["h1", "h2"]).is_some());
    }

    #[test]
    fn taking_a_pod_out_of_the_counts_lets_the_filter_pass_and_putting_it_back_does_not() {
        let mut c = cluster();
        c.update_pod(&pod("p1", Some("a"), "DoNotSchedule", 1));
        let p = pod("p2", None, "DoNotSchedule", 1);
        let info = PodInfo::new(&p);
        let mut st = prepare(&info, &c);
        let group = c.pod("default/p1").map(|v| v.group.clone()).expect("placed");
        let a = c.node("a").cloned().expect("node a");
        assert!(filter(&st, &node("b", Some("z1"))).is_err());
        update(&mut st, &info, &a, &group, -1);
        assert!(filter(&st, &node("b", Some("z1"))).is_ok());
        update(&mut st, &info, &a, &group, 1);
        assert_eq!(filter(&st, &node("b", Some("z1"))), Err(vec![ERR_SPREAD.into()]));
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
