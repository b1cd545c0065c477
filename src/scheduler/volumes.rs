//! VolumeBinding for pods with PersistentVolumeClaims, after upstream
//! `framework/plugins/volumebinding`:
//!
//! - PreFilter ([`prepare`]): a claim that does not exist or is being deleted, or an unbound
//!   claim whose StorageClass binds `Immediate`ly, makes the pod unschedulable everywhere
//!   (`pod has unbound immediate PersistentVolumeClaims`; the PV controller binds it first).
//! - Filter ([`filter`]): a bound claim's PV `nodeAffinity` must match the node (`node(s) had
//!   volume node affinity conflict`); an unbound `WaitForFirstConsumer` claim needs an available
//!   PV of its class on the node, or a class that can provision there (`allowedTopologies`).
//! - Binding ([`plan`]): for each unbound claim, the matching static PV is reserved by setting
//!   its `claimRef` (the PV controller completes the bind), otherwise the claim gets
//!   `volume.kubernetes.io/selected-node` for the provisioner.

use super::cache::{Cache, NodeInfo};
use super::filter::{term_matches, Verdict};
use super::resources;
use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use k8s_openapi::api::storage::v1::StorageClass;

pub const ERR_UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
pub const ERR_NODE_CONFLICT: &str = "node(s) had volume node affinity conflict";
pub const ERR_BIND_CONFLICT: &str = "node(s) didn't find available persistent volumes to bind";
pub const ERR_PV_NOT_EXIST: &str = "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)";
/// The annotation the scheduler sets on a delayed-binding claim for its provisioner.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
const NO_PROVISIONER: &str = "kubernetes.io/no-provisioner";

#[derive(Debug, Clone)]
enum Claim {
    /// Bound to a PV (`None` if the PV is gone).
    Bound(Option<Box<PersistentVolume>>),
    /// Waiting for the first consumer: decided per node.
    Delayed {
        namespace: String,
        name: String,
        uid: String,
        class: Box<StorageClass>,
        request: i128,
        candidates: Vec<PersistentVolume>,
    },
}

/// The pod's claims, resolved once per attempt.
#[derive(Debug, Clone, Default)]
pub struct State {
    claims: Vec<Claim>,
}

/// What to do with the claims once the pod's node is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set `volume.kubernetes.io/selected-node` on the claim.
    SelectNode { namespace: String, claim: String, node: String },
    /// Reserve the static PV for the claim (`spec.claimRef`).
    ReservePv { pv: String, namespace: String, claim: String, uid: String },
}

fn claim_names(pod: &Pod) -> Vec<String> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                Some(c.claim_name.clone())
            } else {
                // Generic ephemeral volumes get a claim named <pod>-<volume>.
                v.ephemeral.as_ref().map(|_| format!("{name}-{}", v.name))
            }
        })
        .collect()
}

pub fn relevant(pod: &Pod) -> bool {
    !claim_names(pod).is_empty()
}

fn pv_fits_node(pv: &PersistentVolume, node: &NodeInfo) -> bool {
    let Some(req) = pv.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.as_ref()) else {
        return true;
    };
    req.node_selector_terms.iter().any(|t| term_matches(t, node.labels(), node.name()))
}

fn storage(
    list: Option<&std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> i128 {
    resources::from_list(list).get("storage").copied().unwrap_or(0)
}

/// PreFilter: `Err` is the message for every node.
pub fn prepare(pod: &Pod, cache: &Cache) -> Result<State, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let mut claims = vec![];
    for name in claim_names(pod) {
        let Some(pvc) = cache.pvcs.get(&format!("{ns}/{name}")) else {
            return Err(format!("persistentvolumeclaim \"{name}\" not found"));
        };
        if pvc.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        let spec = pvc.spec.as_ref();
        if let Some(vol) = spec.and_then(|s| s.volume_name.as_deref()).filter(|v| !v.is_empty()) {
            claims.push(Claim::Bound(cache.pvs.get(vol).cloned().map(Box::new)));
            continue;
        }
        let class_name = spec.and_then(|s| s.storage_class_name.clone()).unwrap_or_default();
        let class = cache.classes.get(&class_name).filter(|_| !class_name.is_empty());
        match class {
            Some(c) if c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer") => {
                let request = storage(spec.and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref()));
                let uid = pvc.metadata.uid.clone().unwrap_or_default();
                let candidates = cache
                    .pvs
                    .values()
                    .filter(|pv| {
                        let s = pv.spec.as_ref();
                        let claimed = s.and_then(|s| s.claim_ref.as_ref());
                        s.and_then(|s| s.storage_class_name.as_deref()) == Some(class_name.as_str())
                            && claimed.is_none_or(|r| {
                                r.namespace.as_deref() == Some(ns) && r.name.as_deref() == Some(name.as_str())
                            })
                            && pv.metadata.deletion_timestamp.is_none()
                            && storage(s.and_then(|s| s.capacity.as_ref())) >= request
                    })
                    .cloned()
                    .collect();
                claims.push(Claim::Delayed {
                    namespace: ns.to_string(),
                    name: name.clone(),
                    uid,
                    class: Box::new(c.clone()),
                    request,
                    candidates,
                });
            }
            _ => return Err(ERR_UNBOUND_IMMEDIATE.into()),
        }
    }
    Ok(State { claims })
}

fn can_provision(class: &StorageClass, node: &NodeInfo) -> bool {
    if class.provisioner == NO_PROVISIONER {
        return false;
    }
    let terms = class.allowed_topologies.as_deref().unwrap_or(&[]);
    terms.is_empty()
        || terms.iter().any(|t| {
            t.match_label_expressions
                .iter()
                .flatten()
                .all(|r| node.labels().get(&r.key).is_some_and(|v| r.values.contains(v)))
        })
}

/// Filter for one node.
pub fn filter(st: &State, node: &NodeInfo) -> Verdict {
    for c in &st.claims {
        match c {
            Claim::Bound(None) => return Err(vec![ERR_PV_NOT_EXIST.into()]),
            Claim::Bound(Some(pv)) => {
                if !pv_fits_node(pv, node) {
                    return Err(vec![ERR_NODE_CONFLICT.into()]);
                }
            }
            Claim::Delayed { class, candidates, .. } => {
                if !candidates.iter().any(|pv| pv_fits_node(pv, node)) && !can_provision(class, node) {
                    return Err(vec![ERR_BIND_CONFLICT.into()]);
                }
            }
        }
    }
    Ok(())
}

/// The volume writes that go with binding the pod to `node` (smallest fitting PV first).
pub fn plan(st: &State, node: &NodeInfo) -> Vec<Action> {
    let mut taken: Vec<String> = vec![];
    let mut out = vec![];
    for c in &st.claims {
        let Claim::Delayed { namespace, name, uid, candidates, request, .. } = c else { continue };
        let mut fits: Vec<&PersistentVolume> = candidates
            .iter()
            .filter(|pv| pv_fits_node(pv, node) && !taken.iter().any(|t| Some(t) == pv.metadata.name.as_ref()))
            .collect();
        fits.sort_by_key(|pv| storage(pv.spec.as_ref().and_then(|s| s.capacity.as_ref())) - request);
        match fits.first().and_then(|pv| pv.metadata.name.clone()) {
            Some(pv) => {
                taken.push(pv.clone());
                out.push(Action::ReservePv { pv, namespace: namespace.clone(), claim: name.clone(), uid: uid.clone() });
            }
            None => out.push(Action::SelectNode {
                namespace: namespace.clone(),
                claim: name.clone(),
                node: node.name().to_string(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::labels::tests::labels;
    use k8s_openapi::api::core::v1::{
        Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaim,
        PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, PodSpec, Volume,
        VolumeNodeAffinity,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    fn cache() -> Cache {
        let mut c = Cache::default();
        for n in ["a", "b"] {
            c.set_node(Node {
                metadata: ObjectMeta {
                    name: Some(n.into()),
                    labels: Some(labels(&[("kubernetes.io/hostname", n)])),
                    ..Default::default()
                },
                ..Default::default()
            });
        }
        c
    }

    fn class(name: &str, mode: &str, provisioner: &str) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            provisioner: provisioner.into(),
            volume_binding_mode: Some(mode.into()),
            ..Default::default()
        }
    }

    fn pvc(name: &str, class: &str, volume: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(PersistentVolumeClaimSpec {
                storage_class_name: Some(class.into()),
                volume_name: volume.map(String::from),
                resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
                    requests: Some([("storage".to_string(), Quantity("1Gi".into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn local_pv(name: &str, class: &str, node: &str) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(PersistentVolumeSpec {
                storage_class_name: Some(class.into()),
                capacity: Some([("storage".to_string(), Quantity("2Gi".into()))].into()),
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "kubernetes.io/hostname".into(),
                                operator: "In".into(),
                                values: Some(vec![node.into()]),
                            }]),
                            ..Default::default()
                        }],
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(claim: &str) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some("p".into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(PodSpec {
                volumes: Some(vec![Volume {
                    name: "data".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.into(),
                        read_only: None,
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node<'a>(c: &'a Cache, n: &str) -> &'a NodeInfo {
        c.node(n).expect("node")
    }

    #[test]
    fn missing_and_unbound_immediate_claims_fail_before_any_node_is_tried() {
        let mut c = cache();
        assert_eq!(prepare(&pod("data"), &c).err(), Some("persistentvolumeclaim \"data\" not found".into()));
        c.classes.insert("fast".into(), class("fast", "Immediate", "x.io/fast"));
        c.pvcs.insert("default/data".into(), pvc("data", "fast", None));
        assert_eq!(prepare(&pod("data"), &c).err(), Some(ERR_UNBOUND_IMMEDIATE.into()));
    }

    #[test]
    fn a_bound_claim_keeps_the_pod_on_nodes_its_volume_can_reach() {
        let mut c = cache();
        c.pvs.insert("pv1".into(), local_pv("pv1", "local", "a"));
        c.pvcs.insert("default/data".into(), pvc("data", "local", Some("pv1")));
        let st = prepare(&pod("data"), &c).expect("prefilter");
        assert!(filter(&st, node(&c, "a")).is_ok());
        assert_eq!(filter(&st, node(&c, "b")), Err(vec![ERR_NODE_CONFLICT.into()]));
        c.pvs.clear();
        let st = prepare(&pod("data"), &c).expect("prefilter");
        assert_eq!(filter(&st, node(&c, "a")), Err(vec![ERR_PV_NOT_EXIST.into()]));
    }

    #[test]
    fn a_wait_for_first_consumer_claim_is_provisioned_on_the_chosen_node() {
        let mut c = cache();
        c.classes.insert("local-path".into(), class("local-path", "WaitForFirstConsumer", "skiff.io/local-path"));
        c.pvcs.insert("default/data".into(), pvc("data", "local-path", None));
        let st = prepare(&pod("data"), &c).expect("prefilter");
        assert!(filter(&st, node(&c, "b")).is_ok());
        assert_eq!(
            plan(&st, node(&c, "b")),
            vec![Action::SelectNode { namespace: "default".into(), claim: "data".into(), node: "b".into() }]
        );
    }

    #[test]
    fn without_a_provisioner_only_nodes_with_a_free_local_volume_fit_and_it_is_reserved() {
        let mut c = cache();
        c.classes.insert("manual".into(), class("manual", "WaitForFirstConsumer", NO_PROVISIONER));
        c.pvs.insert("pv-a".into(), local_pv("pv-a", "manual", "a"));
        c.pvcs.insert("default/data".into(), pvc("data", "manual", None));
        let st = prepare(&pod("data"), &c).expect("prefilter");
        assert!(filter(&st, node(&c, "a")).is_ok());
        assert_eq!(filter(&st, node(&c, "b")), Err(vec![ERR_BIND_CONFLICT.into()]));
        assert_eq!(
            plan(&st, node(&c, "a")),
            vec![Action::ReservePv {
                pv: "pv-a".into(),
                namespace: "default".into(),
                claim: "data".into(),
                uid: String::new()
            }]
        );
    }
}
