//! InterPodAffinity: required pod affinity and anti-affinity as a filter (including the
//! symmetric rule that an existing pod's required anti-affinity keeps matching pods out of its
//! topology domain), and preferred terms as a score, after upstream
//! `framework/plugins/interpodaffinity`.
//!
//! [`prepare`] is upstream's PreFilter/PreScore: one pass over the cache's pod groups (pods
//! sharing namespace and labels are matched once, see `cache::GroupKey`) counting matches per
//! topology domain. [`filter`] and [`score`] then cost a few map look-ups per node.

use super::cache::{AffinityGroup, Cache, GroupKey, NodeInfo};
use super::filter::Verdict;
use super::labels::{self, Labels};
use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, WeightedPodAffinityTerm};
use std::collections::HashMap;

pub const ERR_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ERR_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const ERR_EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";

/// Counts per topology key, then per topology value.
pub type TopoCounts = HashMap<String, HashMap<String, i64>>;

/// Adds `by` to a domain's count. A count that drops to zero is removed (so is a key left
/// with no domains), as upstream's `topologyToMatchedTermCount.update` does: whether any domain
/// is counted at all decides the first pod of an affinity group, and preemption takes counts
/// away.
fn bump(c: &mut TopoCounts, key: &str, value: &str, by: i64) {
    let values = c.entry(key.to_string()).or_default();
    let n = values.entry(value.to_string()).or_default();
    *n += by;
    if *n == 0 {
        values.remove(value);
        if values.is_empty() {
            c.remove(key);
        }
    }
}

fn get(c: &TopoCounts, key: &str, value: &str) -> i64 {
    c.get(key).and_then(|m| m.get(value)).copied().unwrap_or(0)
}

/// Whether a term of a pod in `owner_ns` selects a pod in namespace `ns` (whose namespace has
/// `ns_labels`) with `labels`: upstream `AffinityTerm.Matches`. Listed namespaces and the
/// namespace selector are ORed; with neither, the term's own namespace is meant.
pub fn term_matches(t: &PodAffinityTerm, owner_ns: &str, ns: &str, ns_labels: &Labels, labels: &Labels) -> bool {
    let listed = t.namespaces.as_deref().unwrap_or(&[]);
    let ns_ok = match (&t.namespace_selector, listed.is_empty()) {
        (None, true) => ns == owner_ns,
        (sel, _) => {
            listed.iter().any(|n| n == ns) || sel.as_ref().is_some_and(|s| labels::selector_matches(s, ns_labels))
        }
    };
    ns_ok && labels::matches(t.label_selector.as_ref(), labels)
}

/// The incoming pod's view of the cluster, computed once per scheduling attempt.
#[derive(Debug, Default, Clone)]
pub struct State {
    required_affinity: Vec<PodAffinityTerm>,
    required_anti_affinity: Vec<PodAffinityTerm>,
    /// Domains holding pods that match *all* required affinity terms.
    affinity_counts: TopoCounts,
    /// Domains holding pods matching each required anti-affinity term (by the term's key).
    anti_affinity_counts: TopoCounts,
    /// Domains whose existing pods' required anti-affinity selects the incoming pod.
    existing_anti_affinity_counts: TopoCounts,
    /// Whether the pod matches its own required affinity terms (the first of a group).
    self_matches: bool,
    /// Preferred-term weights per domain (upstream `scoreMap`).
    scores: TopoCounts,
}

fn terms(
    pod: &Pod,
) -> (Vec<PodAffinityTerm>, Vec<PodAffinityTerm>, Vec<WeightedPodAffinityTerm>, Vec<WeightedPodAffinityTerm>) {
    let a = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let pa = a.and_then(|a| a.pod_affinity.as_ref());
    let paa = a.and_then(|a| a.pod_anti_affinity.as_ref());
    (
        pa.and_then(|p| p.required_during_scheduling_ignored_during_execution.clone()).unwrap_or_default(),
        paa.and_then(|p| p.required_during_scheduling_ignored_during_execution.clone()).unwrap_or_default(),
        pa.and_then(|p| p.preferred_during_scheduling_ignored_during_execution.clone()).unwrap_or_default(),
        paa.and_then(|p| p.preferred_during_scheduling_ignored_during_execution.clone()).unwrap_or_default(),
    )
}

/// Whether the pod has anything for this plugin to do at all.
pub fn relevant(pod: &Pod, cache: &Cache) -> bool {
    let own = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some());
    own || cache.affinity_groups().next().is_some()
}

/// PreFilter and PreScore: counts per topology domain from every placed pod.
pub fn prepare(pod: &Pod, cache: &Cache) -> State {
    let (req_aff, req_anti, pref_aff, pref_anti) = terms(pod);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let empty = Labels::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let ns_labels = |n: &str| cache.namespaces.get(n).unwrap_or(&empty);
    let pod_ns_labels = ns_labels(ns);
    let mut st = State {
        self_matches: req_aff.iter().all(|t| term_matches(t, ns, ns, pod_ns_labels, labels)),
        ..Default::default()
    };
    let node_labels = |name: &str| cache.node(name).map(NodeInfo::labels).filter(|l| !l.is_empty());

    if !req_aff.is_empty() || !req_anti.is_empty() || !pref_aff.is_empty() || !pref_anti.is_empty() {
        for (g, group) in cache.groups() {
            let gns = ns_labels(&g.namespace);
            let m = |t: &PodAffinityTerm| term_matches(t, ns, &g.namespace, gns, &g.labels);
            let all_aff = !req_aff.is_empty() && req_aff.iter().all(m);
            let anti: Vec<&PodAffinityTerm> = req_anti.iter().filter(|t| m(t)).collect();
            let pa: Vec<&WeightedPodAffinityTerm> = pref_aff.iter().filter(|t| m(&t.pod_affinity_term)).collect();
            let pn: Vec<&WeightedPodAffinityTerm> = pref_anti.iter().filter(|t| m(&t.pod_affinity_term)).collect();
            if !all_aff && anti.is_empty() && pa.is_empty() && pn.is_empty() {
                continue;
            }
            for (node, &n) in &group.per_node {
                let Some(nl) = node_labels(node) else { continue };
                let n = n as i64;
                if all_aff {
                    for t in &req_aff {
                        if let Some(v) = nl.get(&t.topology_key) {
                            bump(&mut st.affinity_counts, &t.topology_key, v, n);
                        }
                    }
                }
                for t in &anti {
                    if let Some(v) = nl.get(&t.topology_key) {
                        bump(&mut st.anti_affinity_counts, &t.topology_key, v, n);
                    }
                }
                for (terms, sign) in [(&pa, 1), (&pn, -1)] {
                    for t in terms.iter() {
                        let k = &t.pod_affinity_term.topology_key;
                        if let Some(v) = nl.get(k) {
                            bump(&mut st.scores, k, v, sign * t.weight as i64 * n);
                        }
                    }
                }
            }
        }
    }

    // The symmetric part: existing pods' terms that select the incoming pod.
    for g in cache.affinity_groups() {
        let m = |t: &PodAffinityTerm| term_matches(t, &g.namespace, ns, pod_ns_labels, labels);
        let pa = g.pod_affinity.as_ref();
        let paa = g.pod_anti_affinity.as_ref();
        let anti: Vec<&PodAffinityTerm> = paa
            .and_then(|p| p.required_during_scheduling_ignored_during_execution.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| m(t))
            .collect();
        // Upstream's hardPodAffinityWeight (1) for existing pods' required affinity terms.
        let mut weighted: Vec<(&str, i64)> = vec![];
        for t in pa.and_then(|p| p.required_during_scheduling_ignored_during_execution.as_ref()).into_iter().flatten() {
            if m(t) {
                weighted.push((&t.topology_key, 1));
            }
        }
        for (list, sign) in [
            (pa.and_then(|p| p.preferred_during_scheduling_ignored_during_execution.as_ref()), 1),
            (paa.and_then(|p| p.preferred_during_scheduling_ignored_during_execution.as_ref()), -1),
        ] {
            for t in list.into_iter().flatten() {
                if m(&t.pod_affinity_term) {
                    weighted.push((&t.pod_affinity_term.topology_key, sign * t.weight as i64));
                }
            }
        }
        if anti.is_empty() && weighted.is_empty() {
            continue;
        }
        for (node, &n) in &g.per_node {
            let Some(nl) = node_labels(node) else { continue };
            let n = n as i64;
            for t in &anti {
                if let Some(v) = nl.get(&t.topology_key) {
                    bump(&mut st.existing_anti_affinity_counts, &t.topology_key, v, n);
                }
            }
            for (k, w) in &weighted {
                if let Some(v) = nl.get(*k) {
                    bump(&mut st.scores, k, v, w * n);
                }
            }
        }
    }
    st.required_affinity = req_aff;
    st.required_anti_affinity = req_anti;
    st
}

/// PreFilter extension (upstream `preFilterState.updateWithPod`): counts `delta` more pods of
/// `group`, carrying the terms of `terms`, on a node with `node_labels` — how preemption sees
/// the domains without its victims (and with them again when they are reprieved).
pub fn update(
    st: &mut State,
    pod: &Pod,
    cache: &Cache,
    group: &GroupKey,
    terms: Option<&AffinityGroup>,
    node_labels: &Labels,
    delta: i64,
) {
    if node_labels.is_empty() {
        return;
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let empty = Labels::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let ns_labels = |n: &str| cache.namespaces.get(n).unwrap_or(&empty);
    let gns = ns_labels(&group.namespace);
    let m = |t: &PodAffinityTerm| term_matches(t, ns, &group.namespace, gns, &group.labels);
    if !st.required_affinity.is_empty() && st.required_affinity.iter().all(m) {
        for t in &st.required_affinity {
            if let Some(v) = node_labels.get(&t.topology_key) {
                bump(&mut st.affinity_counts, &t.topology_key, v, delta);
            }
        }
    }
    for t in st.required_anti_affinity.iter().filter(|t| m(t)) {
        if let Some(v) = node_labels.get(&t.topology_key) {
            bump(&mut st.anti_affinity_counts, &t.topology_key, v, delta);
        }
    }
    // The victim's own required anti-affinity terms that select the incoming pod.
    let Some(g) = terms else { return };
    let own_ns = ns_labels(ns);
    let required =
        g.pod_anti_affinity.as_ref().and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    for t in required.into_iter().flatten() {
        if term_matches(t, &g.namespace, ns, own_ns, labels) {
            if let Some(v) = node_labels.get(&t.topology_key) {
                bump(&mut st.existing_anti_affinity_counts, &t.topology_key, v, delta);
            }
        }
    }
}

/// Filter: affinity first (unresolvable by preemption), then the pod's anti-affinity, then
/// existing pods' anti-affinity, with upstream's reasons.
pub fn filter(st: &State, node_labels: &Labels) -> Verdict {
    if !st.required_affinity.is_empty() {
        let mut pods_exist = true;
        for t in &st.required_affinity {
            match node_labels.get(&t.topology_key) {
                Some(v) => {
                    if get(&st.affinity_counts, &t.topology_key, v) <= 0 {
                        pods_exist = false;
                    }
                }
                None => return Err(vec![ERR_AFFINITY.into()]),
            }
        }
        // The first pod of a group with affinity to itself may go anywhere with the labels.
        if !pods_exist && (!st.affinity_counts.is_empty() || !st.self_matches) {
            return Err(vec![ERR_AFFINITY.into()]);
        }
    }
    for t in &st.required_anti_affinity {
        if let Some(v) = node_labels.get(&t.topology_key) {
            if get(&st.anti_affinity_counts, &t.topology_key, v) > 0 {
                return Err(vec![ERR_ANTI_AFFINITY.into()]);
            }
        }
    }
    for (k, vals) in &st.existing_anti_affinity_counts {
        if let Some(v) = node_labels.get(k) {
            if vals.get(v).copied().unwrap_or(0) > 0 {
                return Err(vec![ERR_EXISTING_ANTI_AFFINITY.into()]);
            }
        }
    }
    Ok(())
}

/// Raw score: the summed weights of the domains the node belongs to.
pub fn raw_score(st: &State, node_labels: &Labels) -> i64 {
    st.scores.iter().map(|(k, vals)| node_labels.get(k).and_then(|v| vals.get(v)).copied().unwrap_or(0)).sum()
}

/// Upstream NormalizeScore: min-max scaled to 0..=100 (all equal → 0).
pub fn normalize(raw: &[i64]) -> Vec<i64> {
    let (min, max) = (raw.iter().copied().min().unwrap_or(0), raw.iter().copied().max().unwrap_or(0));
    raw.iter().map(|&r| if max > min { 100 * (r - min) / (max - min) } else { 0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::labels::tests::{labels, sel};
    use k8s_openapi::api::core::v1::{Affinity, Node, PodAffinity, PodAntiAffinity, PodSpec};
    use kube::api::ObjectMeta;

    fn node(name: &str, zone: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(&[("kubernetes.io/hostname", name), ("zone", zone)])),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn term(app: &str, key: &str) -> PodAffinityTerm {
        PodAffinityTerm { label_selector: Some(sel(&[("app", app)])), topology_key: key.into(), ..Default::default() }
    }

    fn pod(name: &str, app: &str, node: Option<&str>, affinity: Option<Affinity>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some(labels(&[("app", app)])),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: node.map(String::from), affinity, ..Default::default() }),
            ..Default::default()
        }
    }

    fn anti(app: &str, key: &str) -> Affinity {
        Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![term(app, key)]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cluster() -> Cache {
        let mut c = Cache::default();
        c.set_node(node("a", "z1"));
        c.set_node(node("b", "z1"));
        c.set_node(node("c", "z2"));
        c
    }

    fn verdict(c: &Cache, p: &Pod, n: &str) -> Verdict {
        let st = prepare(p, c);
        filter(&st, c.node(n).map(NodeInfo::labels).unwrap_or(&Labels::new()))
    }

    #[test]
    fn required_anti_affinity_keeps_replicas_out_of_occupied_domains() {
        let mut c = cluster();
        c.update_pod(&pod("w1", "web", Some("a"), Some(anti("web", "kubernetes.io/hostname"))));
        let p = pod("w2", "web", None, Some(anti("web", "kubernetes.io/hostname")));
        assert_eq!(verdict(&c, &p, "a"), Err(vec![ERR_ANTI_AFFINITY.into()]));
        assert!(verdict(&c, &p, "b").is_ok());
        let zonal = pod("w3", "web", None, Some(anti("web", "zone")));
        assert_eq!(verdict(&c, &zonal, "b"), Err(vec![ERR_ANTI_AFFINITY.into()]), "same zone as a");
        assert!(verdict(&c, &zonal, "c").is_ok());
    }

    #[test]
    fn an_existing_pods_anti_affinity_rejects_matching_newcomers() {
        let mut c = cluster();
        c.update_pod(&pod("db", "db", Some("a"), Some(anti("web", "zone"))));
        let web = pod("w", "web", None, None);
        assert_eq!(verdict(&c, &web, "b"), Err(vec![ERR_EXISTING_ANTI_AFFINITY.into()]));
        assert!(verdict(&c, &web, "c").is_ok());
        assert!(verdict(&c, &pod("x", "other", None, None), "a").is_ok());
    }

    #[test]
    fn required_affinity_needs_a_matching_pod_in_the_domain_except_for_the_first_of_a_group() {
        let aff = |app: &str| Affinity {
            pod_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![term(app, "zone")]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = cluster();
        // No cache pod matches and the pod matches itself: anywhere with the label will do.
        let first = pod("f", "cache", None, Some(aff("cache")));
        assert!(verdict(&c, &first, "c").is_ok());
        // Not matching itself: nowhere.
        let lonely = pod("l", "web", None, Some(aff("cache")));
        assert_eq!(verdict(&c, &lonely, "a"), Err(vec![ERR_AFFINITY.into()]));
        c.update_pod(&pod("cache1", "cache", Some("c"), None));
        assert!(verdict(&c, &lonely, "c").is_ok());
        assert_eq!(verdict(&c, &lonely, "a"), Err(vec![ERR_AFFINITY.into()]));
    }

    #[test]
    fn namespaces_and_namespace_selectors_widen_a_term() {
        let mut t = term("web", "zone");
        let ns_labels = labels(&[("team", "x")]);
        assert!(term_matches(&t, "default", "default", &ns_labels, &labels(&[("app", "web")])));
        assert!(!term_matches(&t, "default", "other", &ns_labels, &labels(&[("app", "web")])));
        t.namespaces = Some(vec!["other".into()]);
        assert!(term_matches(&t, "default", "other", &ns_labels, &labels(&[("app", "web")])));
        assert!(!term_matches(&t, "default", "default", &ns_labels, &labels(&[("app", "web")])));
        t.namespaces = None;
        t.namespace_selector = Some(sel(&[("team", "x")]));
        assert!(term_matches(&t, "default", "third", &ns_labels, &labels(&[("app", "web")])));
        t.namespace_selector = Some(Default::default());
        assert!(term_matches(&t, "default", "any", &Labels::new(), &labels(&[("app", "web")])), "{{}} selects all");
    }

    #[test]
    fn preferred_terms_score_domains_by_weight() {
        let mut c = cluster();
        c.update_pod(&pod("cache1", "cache", Some("c"), None));
        let p = pod(
            "w",
            "web",
            None,
            Some(Affinity {
                pod_affinity: Some(PodAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                        weight: 10,
                        pod_affinity_term: term("cache", "zone"),
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
        let st = prepare(&p, &c);
        let raw: Vec<i64> = ["a", "c"]
            .iter()
            .map(|n| raw_score(&st, c.node(n).map(NodeInfo::labels).unwrap_or(&Labels::new())))
            .collect();
        assert_eq!(raw, vec![0, 10]);
        assert_eq!(normalize(&raw), vec![0, 100]);
    }
}
