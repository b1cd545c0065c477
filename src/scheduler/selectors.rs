//! The label selectors of the objects that group pods — Services, ReplicationControllers,
//! ReplicaSets and StatefulSets — and upstream's `helper.DefaultSelector`, which builds from them
//! the selector PodTopologySpread's system default constraints spread a pod's siblings with.
//!
//! Only the selectors are kept (fed from watches in `mod.rs`), never the objects: a ReplicaSet
//! is a few kilobytes of template, its selector a few dozen bytes, and old ReplicaSets of every
//! Deployment's revision history stay around.
//!
//! Pure data and one pure function.

use super::labels::Labels;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use std::collections::HashMap;

/// Selectors by kind. Keys are `namespace/name`, except Services, which are listed per namespace
/// because every one in the pod's namespace is matched against it.
#[derive(Debug, Default)]
pub struct Selectors {
    /// Namespace → Service name → its non-empty `spec.selector`. A Service without a selector
    /// selects nothing, and one with `{}` adds nothing to the merged selector: neither is kept.
    services: HashMap<String, HashMap<String, Labels>>,
    /// ReplicationControllers' `spec.selector` (equality only).
    rcs: HashMap<String, Labels>,
    /// ReplicaSets' and StatefulSets' `spec.selector` as requirements, kept only when it parses
    /// (upstream ignores a selector `LabelSelectorAsSelector` refuses, as it does a missing owner).
    replica_sets: HashMap<String, Vec<LabelSelectorRequirement>>,
    stateful_sets: HashMap<String, Vec<LabelSelectorRequirement>>,
}

/// `metav1.LabelSelectorAsSelector` as requirements: each `matchLabels` entry becomes `key In
/// (value)`. `None` when the selector would not parse: an unknown operator, `In`/`NotIn`
/// without values, `Exists`/`DoesNotExist` with values.
pub fn requirements(sel: &LabelSelector) -> Option<Vec<LabelSelectorRequirement>> {
    let mut out: Vec<LabelSelectorRequirement> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| LabelSelectorRequirement { key: k.clone(), operator: "In".into(), values: Some(vec![v.clone()]) })
        .collect();
    for r in sel.match_expressions.iter().flatten() {
        let n = r.values.as_ref().map_or(0, Vec::len);
        let ok = match r.operator.as_str() {
            "In" | "NotIn" => n > 0,
            "Exists" | "DoesNotExist" => n == 0,
            _ => false,
        };
        if !ok {
            return None;
        }
        out.push(r.clone());
    }
    Some(out)
}

fn set<V>(map: &mut HashMap<String, V>, key: &str, value: Option<V>) {
    match value {
        Some(v) => {
            map.insert(key.to_string(), v);
        }
        None => {
            map.remove(key);
        }
    }
}

impl Selectors {
    /// Records (or with `None`, forgets) the Service at `namespace/name`.
    pub fn set_service(&mut self, key: &str, svc: Option<&Service>) {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        let sel = svc.and_then(|s| s.spec.as_ref()?.selector.clone()).filter(|s| !s.is_empty());
        match sel {
            Some(sel) => {
                self.services.entry(ns.to_string()).or_default().insert(name.to_string(), sel);
            }
            None => {
                if let Some(m) = self.services.get_mut(ns) {
                    m.remove(name);
                    if m.is_empty() {
                        self.services.remove(ns);
                    }
                }
            }
        }
    }

    pub fn set_replication_controller(&mut self, key: &str, rc: Option<&ReplicationController>) {
        let sel = rc.map(|rc| rc.spec.as_ref().and_then(|s| s.selector.clone()).unwrap_or_default());
        set(&mut self.rcs, key, sel);
    }

    pub fn set_replica_set(&mut self, key: &str, rs: Option<&ReplicaSet>) {
        let sel = rs.and_then(|rs| requirements(&rs.spec.as_ref()?.selector));
        set(&mut self.replica_sets, key, sel);
    }

    pub fn set_stateful_set(&mut self, key: &str, ss: Option<&StatefulSet>) {
        let sel = ss.and_then(|ss| requirements(&ss.spec.as_ref()?.selector));
        set(&mut self.stateful_sets, key, sel);
    }

    /// Upstream `DefaultSelector`: the selectors of the pod's namespace's Services that select
    /// it, merged, and the selector of its controller when that is a ReplicationController (merged
    /// into the labels), ReplicaSet or StatefulSet (added as requirements). A controller the
    /// cache does not know (not created yet, or gone) adds nothing, as upstream's lister miss
    /// does. `None` when the result is empty: the pod then gets no default spreading.
    pub fn default_selector(&self, pod: &Pod) -> Option<LabelSelector> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("");
        let empty = Labels::new();
        let own = pod.metadata.labels.as_ref().unwrap_or(&empty);
        // Every Service merged here selects the pod, so their keys cannot disagree.
        let mut merged = Labels::new();
        for sel in self.services.get(ns).into_iter().flat_map(|m| m.values()) {
            if sel.iter().all(|(k, v)| own.get(k) == Some(v)) {
                merged.extend(sel.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        let mut exprs: Vec<LabelSelectorRequirement> = vec![];
        // `metav1.GetControllerOf`: the first owner reference marked as the controller.
        let owner = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
        if let Some(o) = owner {
            // `schema.ParseGroupVersion`: "v1" is the core group; more than one slash is invalid.
            let gv = match o.api_version.split_once('/') {
                None => Some(("", o.api_version.as_str())),
                Some((_, v)) if v.contains('/') => None,
                Some(gv) => Some(gv),
            };
            let key = format!("{ns}/{}", o.name);
            match (gv, o.kind.as_str()) {
                (Some(("", "v1")), "ReplicationController") => {
                    if let Some(sel) = self.rcs.get(&key) {
                        merged.extend(sel.iter().map(|(k, v)| (k.clone(), v.clone())));
                    }
                }
                (Some(("apps", "v1")), "ReplicaSet") => {
                    exprs.extend(self.replica_sets.get(&key).into_iter().flatten().cloned());
                }
                (Some(("apps", "v1")), "StatefulSet") => {
                    exprs.extend(self.stateful_sets.get(&key).into_iter().flatten().cloned());
                }
                _ => {}
            }
        }
        if merged.is_empty() && exprs.is_empty() {
            return None;
        }
        Some(LabelSelector {
            match_labels: Some(merged).filter(|m| !m.is_empty()),
            match_expressions: Some(exprs).filter(|e| !e.is_empty()),
        })
    }

    /// How many objects' selectors are kept (for tests and debugging).
    pub fn len(&self) -> usize {
        self.services.values().map(HashMap::len).sum::<usize>()
            + self.rcs.len()
            + self.replica_sets.len()
            + self.stateful_sets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::labels::matches;
    use crate::scheduler::labels::tests::{labels, sel};
    use k8s_openapi::api::apps::v1::{ReplicaSetSpec, StatefulSetSpec};
    use k8s_openapi::api::core::v1::{ReplicationControllerSpec, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    fn pod(l: &[(&str, &str)], owner: Option<(&str, &str, &str)>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("default".into()),
                labels: Some(labels(l)),
                owner_references: owner.map(|(api_version, kind, name)| {
                    vec![OwnerReference {
                        api_version: api_version.into(),
                        kind: kind.into(),
                        name: name.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn service(sel: Option<&[(&str, &str)]>) -> Service {
        Service { spec: Some(ServiceSpec { selector: sel.map(labels), ..Default::default() }), ..Default::default() }
    }

    fn replica_set(s: LabelSelector) -> ReplicaSet {
        ReplicaSet { spec: Some(ReplicaSetSpec { selector: s, ..Default::default() }), ..Default::default() }
    }

    fn selects(s: &Option<LabelSelector>, l: &[(&str, &str)]) -> bool {
        matches(s.as_ref(), &labels(l))
    }

    #[test]
    fn a_pod_nothing_selects_gets_no_default_selector() {
        let mut s = Selectors::default();
        s.set_service("default/kubernetes", Some(&service(None)));
        s.set_service("default/everything", Some(&service(Some(&[]))));
        s.set_service("default/other", Some(&service(Some(&[("app", "db")]))));
        s.set_service("elsewhere/web", Some(&service(Some(&[("app", "web")]))));
        assert_eq!(s.default_selector(&pod(&[("app", "web")], None)), None);
        assert_eq!(s.len(), 2, "selectorless and empty-selector services are not kept");
    }

    #[test]
    fn the_services_selecting_a_pod_are_merged() {
        let mut s = Selectors::default();
        s.set_service("default/web", Some(&service(Some(&[("app", "web")]))));
        s.set_service("default/web-canary", Some(&service(Some(&[("app", "web"), ("track", "canary")]))));
        let got = s.default_selector(&pod(&[("app", "web"), ("track", "canary")], None));
        assert_eq!(
            got.as_ref().and_then(|g| g.match_labels.clone()),
            Some(labels(&[("app", "web"), ("track", "canary")]))
        );
        assert!(!selects(&got, &[("app", "web")]), "both services' keys are required");
        s.set_service("default/web-canary", None);
        let got = s.default_selector(&pod(&[("app", "web"), ("track", "canary")], None));
        assert!(selects(&got, &[("app", "web")]), "a deleted service no longer narrows it");
    }

    #[test]
    fn a_replica_set_owners_selector_is_added_as_requirements() {
        let mut s = Selectors::default();
        let mut rs_sel = sel(&[("app", "web")]);
        rs_sel.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "NotIn".into(),
            values: Some(vec!["db".into()]),
        }]);
        s.set_replica_set("default/web-abc", Some(&replica_set(rs_sel)));
        s.set_service("default/front", Some(&service(Some(&[("role", "front")]))));
        let p = pod(&[("app", "web"), ("role", "front")], Some(("apps/v1", "ReplicaSet", "web-abc")));
        let got = s.default_selector(&p);
        assert!(selects(&got, &[("app", "web"), ("role", "front")]));
        assert!(!selects(&got, &[("app", "web")]), "the service's labels still count");
        assert!(!selects(&got, &[("app", "web"), ("role", "front"), ("tier", "db")]));
        // Not the controller's kind and version: ignored (extensions/v1beta1 is not apps/v1).
        let old = pod(&[("app", "web")], Some(("extensions/v1beta1", "ReplicaSet", "web-abc")));
        assert_eq!(s.default_selector(&old), None);
    }

    #[test]
    fn an_owner_the_cache_does_not_know_adds_nothing() {
        let mut s = Selectors::default();
        let p = pod(&[("app", "web")], Some(("apps/v1", "ReplicaSet", "gone")));
        assert_eq!(s.default_selector(&p), None, "no service either: no default spreading");
        s.set_service("default/web", Some(&service(Some(&[("app", "web")]))));
        assert!(selects(&s.default_selector(&p), &[("app", "web")]), "the services' selector stands");
    }

    #[test]
    fn replication_controllers_and_stateful_sets_count_too() {
        let mut s = Selectors::default();
        let rc = ReplicationController {
            spec: Some(ReplicationControllerSpec {
                selector: Some(labels(&[("app", "legacy")])),
                ..Default::default()
            }),
            ..Default::default()
        };
        s.set_replication_controller("default/legacy", Some(&rc));
        let p = pod(&[("app", "legacy")], Some(("v1", "ReplicationController", "legacy")));
        assert_eq!(s.default_selector(&p).and_then(|g| g.match_labels), Some(labels(&[("app", "legacy")])));
        let ss = StatefulSet {
            spec: Some(StatefulSetSpec { selector: sel(&[("app", "db")]), ..Default::default() }),
            ..Default::default()
        };
        s.set_stateful_set("default/db", Some(&ss));
        let p = pod(
            &[("app", "db"), ("statefulset.kubernetes.io/pod-name", "db-0")],
            Some(("apps/v1", "StatefulSet", "db")),
        );
        assert!(selects(&s.default_selector(&p), &[("app", "db"), ("statefulset.kubernetes.io/pod-name", "db-1")]));
        s.set_stateful_set("default/db", None);
        assert_eq!(s.default_selector(&p), None);
    }

    #[test]
    fn a_selector_that_does_not_parse_is_ignored() {
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: "In".into(),
                values: Some(vec![]),
            }]),
            ..Default::default()
        };
        assert_eq!(requirements(&bad), None);
        let mut s = Selectors::default();
        s.set_replica_set("default/bad", Some(&replica_set(bad)));
        assert!(s.is_empty());
        let flat = requirements(&sel(&[("app", "web")])).unwrap_or_default();
        assert_eq!(flat.len(), 1);
        assert_eq!((flat[0].operator.as_str(), flat[0].values.clone()), ("In", Some(vec!["web".to_string()])));
    }
}
