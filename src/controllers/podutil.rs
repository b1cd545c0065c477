//! Small pure helpers shared by the workload controllers: pod readiness and availability
//! (upstream `pkg/api/v1/pod`), label selectors (`metav1.LabelSelectorAsSelector`) and owner
//! references (`metav1.GetControllerOf`, `NewControllerRef`).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use std::collections::BTreeMap;

/// A pod that still counts toward its controller's replicas: not finished, not being deleted
/// (upstream `controller.IsPodActive`).
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed")) && pod.metadata.deletion_timestamp.is_none()
}

/// When the pod's Ready condition turned True, if it is True.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let c = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map(|t| t.0))
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` (upstream `podutil.IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since.as_second() + i64::from(min_ready_seconds) <= now.as_second(),
    }
}

/// Whether `labels` satisfy `sel`. An empty selector selects everything, as upstream; the API
/// server rejects empty selectors on workloads, so that case only matters for hand-made objects.
pub fn selector_matches(sel: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let ml = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    ml && sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let v = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => v.is_some_and(|v| values.contains(v)),
            "NotIn" => !v.is_some_and(|v| values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            _ => false,
        }
    })
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

/// A controller reference to `owner`, with `blockOwnerDeletion` so foreground deletion waits.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let m = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `meta` is controlled by the object with `uid`.
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// What a controller should do with the objects in its namespace that its selector might cover
/// (upstream `ControllerRefManager.ClaimObject`): keep its own that still match, release its own
/// that no longer match, adopt matching orphans. Objects controlled by someone else or being
/// deleted are left alone.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Claim<T> {
    pub owned: Vec<T>,
    pub adopt: Vec<T>,
    pub release: Vec<T>,
}

/// The controllers of kind `K` a pod event should wake: its controller if that is a `K`, else
/// (an orphan) every `K` in its namespace whose selector (from `selector`) matches, which may
/// adopt it.
pub fn owners_of<K>(
    pod: &Pod,
    owners: &kube::runtime::reflector::Store<K>,
    selector: &impl Fn(&K) -> Option<LabelSelector>,
) -> Vec<kube::runtime::reflector::ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    use kube::runtime::reflector::ObjectRef;
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    match controller_of(&pod.metadata) {
        Some(r) if r.kind == K::kind(&()) => vec![ObjectRef::new(&r.name).within(&ns)],
        Some(_) => vec![],
        None => owners
            .state()
            .iter()
            .filter(|o| o.meta().namespace.as_deref() == Some(&ns))
            .filter(|o| selector(o).is_some_and(|sel| selector_matches(&sel, pod.metadata.labels.as_ref())))
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect(),
    }
}

/// The `K`s each event of the shared pod watch should wake ([`owners_of`]). A trigger is only
/// seen after the shared cache applied the same event, so a reconcile never reads an older pod
/// than the one that woke it.
pub fn pod_triggers<K>(
    pods: &super::informer::Shared<Pod>,
    owners: kube::runtime::reflector::Store<K>,
    selector: impl Fn(&K) -> Option<LabelSelector> + Send + 'static,
) -> impl futures::Stream<Item = kube::runtime::reflector::ObjectRef<K>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    use futures::StreamExt;
    pods.events().map(move |ev| futures::stream::iter(owners_of(ev.object(), &owners, &selector))).flatten()
}

/// Carries out a pod [`Claim`]: adopts (adding `owner_ref`, keeping the pod's other owners,
/// since a merge patch replaces the whole list) and releases, each guarded by the pod's
/// resourceVersion. Returns the owned pods, adopted ones included; a failed patch is logged and
/// left for the next sync.
pub async fn apply_pod_claim(
    pods: &kube::Api<Pod>,
    owner_ref: OwnerReference,
    c: Claim<std::sync::Arc<Pod>>,
    owner: &str,
) -> Vec<std::sync::Arc<Pod>> {
    use kube::api::{Patch, PatchParams};
    use kube::ResourceExt;
    let mut owned = c.owned;
    for p in c.adopt {
        let mut refs = p.metadata.owner_references.clone().unwrap_or_default();
        refs.push(owner_ref.clone());
        let patch =
            serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": p.metadata.resource_version}});
        match pods.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(adopted) => owned.push(std::sync::Arc::new(adopted)),
            Err(e) => tracing::warn!(error = %e, pod = %p.name_any(), owner, "could not adopt pod"),
        }
    }
    for p in c.release {
        let refs: Vec<_> =
            p.metadata.owner_references.iter().flatten().filter(|r| r.uid != owner_ref.uid).cloned().collect();
        let patch =
            serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": p.metadata.resource_version}});
        if let Err(e) = pods.patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::warn!(error = %e, pod = %p.name_any(), owner, "could not release pod");
        }
    }
    owned
}

pub fn claim<T: Clone>(
    owner_uid: &str,
    owner_deleting: bool,
    sel: &LabelSelector,
    objects: &[T],
    meta: impl Fn(&T) -> &ObjectMeta,
) -> Claim<T> {
    let mut c = Claim { owned: vec![], adopt: vec![], release: vec![] };
    for o in objects {
        let m = meta(o);
        let matches = selector_matches(sel, m.labels.as_ref());
        match controller_of(m) {
            Some(r) if r.uid == owner_uid => {
                if matches {
                    c.owned.push(o.clone());
                } else if m.deletion_timestamp.is_none() {
                    c.release.push(o.clone());
                }
            }
            Some(_) => {}
            None => {
                // Never adopt while the owner or the orphan is on its way out.
                if matches && !owner_deleting && m.deletion_timestamp.is_none() {
                    c.adopt.push(o.clone());
                }
            }
        }
    }
    c
}

/// Seconds `kube::runtime` should wait before checking a pod that is ready but not yet
/// available, so availability is reported without another event arriving.
pub fn next_available_in(pods: &[&Pod], min_ready_seconds: i32, now: Timestamp) -> Option<i64> {
    if min_ready_seconds <= 0 {
        return None;
    }
    pods.iter()
        .filter_map(|p| ready_since(p).flatten())
        .map(|since| since.as_second() + i64::from(min_ready_seconds) - now.as_second())
        .filter(|s| *s > 0)
        .min()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, Time};

    pub fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    pub fn ready(pod: &mut Pod, since: i64) {
        let st = pod.status.get_or_insert_with(PodStatus::default);
        st.conditions = Some(vec![PodCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(Time(ts(since))),
            ..Default::default()
        }]);
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let mut p = Pod::default();
        assert!(!is_available(&p, 0, ts(100)));
        ready(&mut p, 100);
        assert!(is_available(&p, 0, ts(100)));
        assert!(!is_available(&p, 10, ts(105)));
        assert!(is_available(&p, 10, ts(110)));
        assert_eq!(next_available_in(&[&p], 10, ts(105)), Some(5));
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["front".into(), "edge".into()]),
            }]),
        };
        assert!(selector_matches(&sel, Some(&labels(&[("app", "web"), ("tier", "edge")]))));
        assert!(!selector_matches(&sel, Some(&labels(&[("app", "web")]))));
        assert!(!selector_matches(&sel, Some(&labels(&[("app", "db"), ("tier", "edge")]))));
        assert!(selector_matches(&LabelSelector::default(), None));
    }

    #[test]
    fn claim_adopts_orphans_releases_strays_and_ignores_others() {
        let sel = LabelSelector { match_labels: Some(labels(&[("app", "web")])), ..Default::default() };
        let owner =
            |uid: &str| Some(vec![OwnerReference { uid: uid.into(), controller: Some(true), ..Default::default() }]);
        let m = |name: &str, l: &[(&str, &str)], owners: Option<Vec<OwnerReference>>| ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels(l)),
            owner_references: owners,
            ..Default::default()
        };
        let objs = vec![
            m("mine", &[("app", "web")], owner("me")),
            m("stray", &[("app", "db")], owner("me")),
            m("orphan", &[("app", "web")], None),
            m("theirs", &[("app", "web")], owner("other")),
            m("unrelated", &[("app", "db")], None),
        ];
        let c = claim("me", false, &sel, &objs, |o| o);
        let names = |v: &[ObjectMeta]| v.iter().filter_map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&c.owned), ["mine"]);
        assert_eq!(names(&c.release), ["stray"]);
        assert_eq!(names(&c.adopt), ["orphan"]);
        assert!(claim("me", true, &sel, &objs, |o| o).adopt.is_empty(), "a deleting owner adopts nothing");
    }
}
