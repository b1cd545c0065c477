//! The StatefulSet controller (upstream `pkg/controller/statefulset`): pods with stable
//! identities `<set>-<ordinal>` (hostname = pod name, subdomain = `serviceName`, labels
//! `statefulset.kubernetes.io/pod-name` and `apps.kubernetes.io/pod-index`), a
//! PersistentVolumeClaim `<template>-<set>-<ordinal>` per volumeClaimTemplate created before
//! its pod, `podManagementPolicy` OrderedReady (one pod at a time, each waiting for the previous
//! to be Running and Ready; scale down highest ordinal first) or Parallel, updates by
//! RollingUpdate (highest ordinal first, down to `partition`, `maxUnavailable` at a time) or
//! OnDelete, ControllerRevision history (see `revision.rs`) and the status `kubectl rollout
//! status` reads. `persistentVolumeClaimRetentionPolicy` is expressed, as upstream, by owner
//! references on the claims (to the set for whenDeleted=Delete, to a scaled-down pod for
//! whenScaled=Delete) that the garbage collector acts on.
//!
//! Decisions are pure functions ([`ordinal_of`], [`new_pod`], [`claims_for`], [`plan`],
//! [`claim_owner_refs`], [`compute_status`]); [`reconcile`] gathers state and performs them.

use super::events::{object_ref, Recorder};
use super::informer::Informers;
use super::podutil::{self, apply_pod_claim, claim, controller_ref, is_available};
use super::revision::{self, RevisionError};
use futures::{future, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// Upstream default `revisionHistoryLimit`.
const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// What can stop one StatefulSet sync; the controller retries after a pause.
#[derive(Debug, thiserror::Error)]
pub enum StatefulSetError {
    /// A call to the API server failed.
    #[error("{action} for stateful set {sts}: {source}")]
    Api {
        action: &'static str,
        sts: String,
        #[source]
        source: kube::Error,
    },
    /// Reading or writing the revision history failed.
    #[error("revision history of stateful set {sts}: {source}")]
    Revision {
        sts: String,
        #[source]
        source: RevisionError,
    },
    /// A claim the next pod needs is being deleted; the pod waits until it is gone.
    #[error("claim {0} is being deleted; waiting before creating its pod")]
    ClaimTerminating(String),
}

// ---------------------------------------------------------------------------------------------
// Pure decisions
// ---------------------------------------------------------------------------------------------

/// The ordinal of a pod named `<set>-<n>` (upstream `getParentNameAndOrdinal`), if it has one.
pub fn ordinal_of(set_name: &str, pod_name: &str) -> Option<i32> {
    let rest = pod_name.strip_prefix(set_name)?.strip_prefix('-')?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

pub fn pod_name(set: &StatefulSet, ordinal: i32) -> String {
    format!("{}-{ordinal}", set.name_any())
}

/// `<template>-<set>-<ordinal>` (upstream `getPersistentVolumeClaimName`).
pub fn claim_name(template: &str, set: &str, ordinal: i32) -> String {
    format!("{template}-{set}-{ordinal}")
}

/// (first ordinal, replicas): pods `start..start+replicas` should exist (`spec.ordinals.start`).
pub fn ordinal_range(set: &StatefulSet) -> (i32, i32) {
    let spec = set.spec.as_ref();
    let start = spec.and_then(|s| s.ordinals.as_ref()).and_then(|o| o.start).unwrap_or(0).max(0);
    (start, spec.and_then(|s| s.replicas).unwrap_or(1).max(0))
}

fn is_rolling(set: &StatefulSet) -> bool {
    set.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|u| u.type_.as_deref()) != Some("OnDelete")
}

fn is_parallel(set: &StatefulSet) -> bool {
    set.spec.as_ref().and_then(|s| s.pod_management_policy.as_deref()) == Some("Parallel")
}

/// `rollingUpdate.partition` clamped to `0..=replicas`.
pub fn partition(set: &StatefulSet) -> i32 {
    let (_, replicas) = ordinal_range(set);
    set.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .clamp(0, replicas)
}

/// `rollingUpdate.maxUnavailable` against `replicas` (percentages round up), at least 1.
pub fn max_unavailable(set: &StatefulSet) -> i32 {
    let (_, replicas) = ordinal_range(set);
    let v = set
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref());
    let n = match v {
        None => 1,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct = s.trim_end_matches('%').parse::<i64>().unwrap_or(0);
            ((pct * i64::from(replicas) + 99) / 100) as i32
        }
    };
    n.max(1)
}

/// The pod for `ordinal` from `template` at revision `revision_name` (upstream
/// `newStatefulSetPod`: `GetPodFromTemplate`, `initIdentity`, `updateStorage`, `SetPodRevision`).
pub fn new_pod(set: &StatefulSet, ordinal: i32, template: &PodTemplateSpec, revision_name: &str) -> Pod {
    let name = pod_name(set, ordinal);
    let tm = template.metadata.clone().unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    labels.insert(revision::HASH_LABEL.into(), revision_name.into());
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = set.spec.as_ref().and_then(|s| s.service_name.clone()).filter(|s| !s.is_empty());
    // Each claim template replaces any template volume of the same name.
    let templates = set.spec.as_ref().and_then(|s| s.volume_claim_templates.clone()).unwrap_or_default();
    if !templates.is_empty() {
        let mut volumes: Vec<Volume> = spec.volumes.take().unwrap_or_default();
        for t in &templates {
            let tname = t.metadata.name.clone().unwrap_or_default();
            volumes.retain(|v| v.name != tname);
            volumes.push(Volume {
                name: tname.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim_name(&tname, &set.name_any(), ordinal),
                    read_only: None,
                }),
                ..Default::default()
            });
        }
        spec.volumes = Some(volumes);
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![controller_ref(set)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The claims the pod for `ordinal` needs (upstream `getPersistentVolumeClaims`): each template
/// named `<template>-<set>-<ordinal>`, labelled with the set's `matchLabels` too.
pub fn claims_for(set: &StatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let spec = set.spec.clone().unwrap_or_default();
    let match_labels = spec.selector.match_labels.clone().unwrap_or_default();
    spec.volume_claim_templates
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(match_labels.clone());
            PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&tname, &set.name_any(), ordinal)),
                    namespace: set.metadata.namespace.clone(),
                    labels: Some(labels),
                    annotations: t.metadata.annotations.clone(),
                    ..Default::default()
                },
                spec: t.spec,
                status: None,
            }
        })
        .collect()
}

/// (whenDeleted, whenScaled), each `Retain` unless set to `Delete`.
pub fn retention(set: &StatefulSet) -> (bool, bool) {
    let p = set.spec.as_ref().and_then(|s| s.persistent_volume_claim_retention_policy.as_ref());
    let delete = |v: Option<&String>| v.map(String::as_str) == Some("Delete");
    (delete(p.and_then(|p| p.when_deleted.as_ref())), delete(p.and_then(|p| p.when_scaled.as_ref())))
}

fn plain_ref<K: Resource<DynamicType = ()>>(o: &K) -> OwnerReference {
    let m = o.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// The claim's owner references under the retention policy (upstream
/// `updateClaimOwnerRefForSetAndPod`): the set owns it when whenDeleted=Delete (unless the pod
/// is being scaled away under whenScaled=Delete), the pod owns it when it is scaled away under
/// whenScaled=Delete. Returns `None` when nothing changes.
pub fn claim_owner_refs(
    claim: &PersistentVolumeClaim,
    set: &StatefulSet,
    pod: &Pod,
    pod_in_range: bool,
) -> Option<Vec<OwnerReference>> {
    let cur: Vec<OwnerReference> = claim.metadata.owner_references.clone().unwrap_or_default();
    let mut refs = cur.clone();
    let set_ref = |refs: &mut Vec<OwnerReference>, r: OwnerReference, on: bool| {
        let has = refs.iter().any(|x| x.uid == r.uid);
        if on && !has && !r.uid.is_empty() {
            refs.push(r);
        } else if !on && has {
            refs.retain(|x| x.uid != r.uid);
        }
    };
    let (when_deleted, when_scaled) = retention(set);
    let scaled_away = when_scaled && !pod_in_range;
    set_ref(&mut refs, plain_ref(set), when_deleted && !scaled_away);
    set_ref(&mut refs, plain_ref(pod), scaled_away);
    (refs != cur).then_some(refs)
}

/// What [`plan`] needs to know about one existing pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodState {
    pub name: String,
    pub uid: String,
    /// Its `controller-revision-hash` label.
    pub revision: String,
    pub terminating: bool,
    /// Phase Failed or Succeeded: to be replaced.
    pub finished: bool,
    /// Running, Ready (for minReadySeconds) and not terminating.
    pub healthy: bool,
}

impl PodState {
    pub fn of(p: &Pod, min_ready_seconds: i32, now: Timestamp) -> PodState {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        let terminating = p.metadata.deletion_timestamp.is_some();
        PodState {
            name: p.name_any(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            revision: p.labels().get(revision::HASH_LABEL).cloned().unwrap_or_default(),
            terminating,
            finished: matches!(phase, Some("Failed" | "Succeeded")),
            healthy: phase == Some("Running") && !terminating && is_available(p, min_ready_seconds, now),
        }
    }
}

/// One action of a sync.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create the pod (and first its claims) for this ordinal.
    Create(i32),
    /// Delete this pod (by UID, so a newer pod of the same name is never hit).
    Delete { ordinal: i32, name: String, uid: String },
}

fn delete(ordinal: i32, p: &PodState) -> Step {
    Step::Delete { ordinal, name: p.name.clone(), uid: p.uid.clone() }
}

/// How a rolling update may proceed: replicas from index `update_min` (the partition) up are
/// brought to revision `update`, at most `max_unavailable` of them unavailable at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Rolling {
    pub update_min: usize,
    pub max_unavailable: i32,
    pub update: String,
}

/// The steps of one sync (upstream `updateStatefulSet`). `replicas` are the wanted ordinals in
/// ascending order with their pod if it exists; `condemned` the pods outside the range, highest
/// ordinal first. With `monotonic` (OrderedReady) the sync stops at the first pod it creates,
/// deletes or must wait for; Parallel does everything at once.
pub fn plan(
    replicas: &[(i32, Option<PodState>)],
    condemned: &[(i32, PodState)],
    monotonic: bool,
    rolling: Option<&Rolling>,
) -> Vec<Step> {
    let mut steps = vec![];
    for (ord, pod) in replicas {
        match pod {
            None => {
                steps.push(Step::Create(*ord));
                if monotonic {
                    return steps;
                }
            }
            // A failed pod is deleted and recreated once it is gone.
            Some(p) if p.finished && !p.terminating => {
                steps.push(delete(*ord, p));
                if monotonic {
                    return steps;
                }
            }
            Some(p) if !p.healthy && monotonic => return steps,
            Some(_) => {}
        }
    }
    let all_healthy = replicas.iter().all(|(_, p)| p.as_ref().is_some_and(|p| p.healthy));
    let first_unhealthy = if all_healthy { condemned.iter().find(|(_, p)| !p.healthy).map(|(o, _)| *o) } else { None };
    for (ord, p) in condemned {
        if p.terminating {
            if monotonic {
                return steps;
            }
            continue;
        }
        if monotonic && !p.healthy && Some(*ord) != first_unhealthy {
            return steps;
        }
        steps.push(delete(*ord, p));
        if monotonic {
            return steps;
        }
    }
    let Some(r) = rolling else { return steps };
    let creating: HashSet<i32> =
        steps.iter().filter_map(|s| if let Step::Create(o) = s { Some(*o) } else { None }).collect();
    let mut unavailable = 0;
    let mut doomed = vec![];
    let range: Vec<usize> = (r.update_min..replicas.len()).rev().collect();
    for &i in &range {
        let (ord, pod) = &replicas[i];
        match pod {
            None => unavailable += 1,
            Some(p) if !p.healthy => {
                unavailable += 1;
                if p.revision != r.update && !p.terminating && !p.finished && !creating.contains(ord) {
                    doomed.push(delete(*ord, p));
                }
            }
            Some(_) => {}
        }
    }
    for &i in &range {
        if unavailable >= r.max_unavailable {
            break;
        }
        if let (ord, Some(p)) = &replicas[i] {
            if p.healthy && p.revision != r.update {
                doomed.push(delete(*ord, p));
                unavailable += 1;
            }
        }
    }
    steps.extend(doomed);
    steps
}

/// Status from the pods the set owns (upstream `computeReplicaStatus` and
/// `completeRollingUpdate`).
pub fn compute_status(
    set: &StatefulSet,
    pods: &[Arc<Pod>],
    current: &str,
    update: &str,
    now: Timestamp,
) -> StatefulSetStatus {
    let min_ready = set.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let live: Vec<&Arc<Pod>> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
    let rev = |p: &Pod| p.labels().get(revision::HASH_LABEL).cloned().unwrap_or_default();
    let running_ready =
        |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && podutil::is_ready(p);
    let replicas = live.len() as i32;
    let ready = live.iter().filter(|p| running_ready(p)).count() as i32;
    let available = live.iter().filter(|p| running_ready(p) && is_available(p, min_ready, now)).count() as i32;
    let mut current_rev = current.to_string();
    let mut current_replicas = live.iter().filter(|p| rev(p) == current).count() as i32;
    let updated = live.iter().filter(|p| rev(p) == update).count() as i32;
    if is_rolling(set) && updated == replicas && ready == replicas {
        current_rev = update.to_string();
        current_replicas = updated;
    }
    StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas,
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        current_replicas: Some(current_replicas),
        updated_replicas: Some(updated),
        current_revision: Some(current_rev),
        update_revision: Some(update.to_string()),
        collision_count: set.status.as_ref().and_then(|s| s.collision_count),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    }
}

// ---------------------------------------------------------------------------------------------
// The reconciler
// ---------------------------------------------------------------------------------------------

/// Everything a sync needs besides the StatefulSet.
pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub recorder: Recorder,
}

fn skey(s: &StatefulSet) -> String {
    format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any())
}

/// One idempotent sync of a StatefulSet (upstream `syncStatefulSet`).
pub async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, StatefulSetError> {
    // An empty cache would read as "no pods": wait for the first list.
    if ctx.pods.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let key = skey(&set);
    let err = |action: &'static str| {
        let sts = key.clone();
        move |source| StatefulSetError::Api { action, sts, source }
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let sets_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = set.uid().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let deleting = set.metadata.deletion_timestamp.is_some();

    // Pods: claim by selector, as the ReplicaSet controller does.
    let ns_pods: Vec<Arc<Pod>> =
        ctx.pods.state().into_iter().filter(|p| p.metadata.namespace.as_deref() == Some(&ns)).collect();
    let c = claim(&uid, deleting, &spec.selector, &ns_pods, |p| &p.metadata);
    let pods = apply_pod_claim(&pods_api, controller_ref(set.as_ref()), c, &key).await;

    // Revisions.
    let collision = set.status.as_ref().and_then(|s| s.collision_count);
    let hist = match revision::sync(&ctx.client, set.as_ref(), &spec.selector, &spec.template, collision).await {
        Ok(h) => h,
        Err(RevisionError::Collision(n)) => {
            let patch = serde_json::json!({"status": {"collisionCount": collision.unwrap_or(0) + 1}});
            sets_api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err("bumping collisionCount"))?;
            return Err(StatefulSetError::Revision { sts: key, source: RevisionError::Collision(n) });
        }
        Err(source) => return Err(StatefulSetError::Revision { sts: key, source }),
    };
    let update: ControllerRevision = hist.update.clone();
    let update_name = update.name_any();
    let current: ControllerRevision = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.as_deref())
        .and_then(|n| hist.revisions.iter().find(|r| r.name_any() == n))
        .cloned()
        .unwrap_or_else(|| update.clone());
    let current_name = current.name_any();

    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let (start, replicas) = ordinal_range(&set);
    let in_range = |o: i32| o >= start && o < start + replicas;
    let mut slots: Vec<(i32, Option<PodState>)> = (start..start + replicas).map(|o| (o, None)).collect();
    let mut condemned: Vec<(i32, PodState)> = vec![];
    let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
    for p in &pods {
        let Some(o) = ordinal_of(&name, &p.name_any()) else { continue };
        by_ordinal.insert(o, p.clone());
        let st = PodState::of(p, min_ready, now);
        if in_range(o) {
            slots[(o - start) as usize].1 = Some(st);
        } else {
            condemned.push((o, st));
        }
    }
    condemned.sort_by_key(|(o, _)| std::cmp::Reverse(*o));

    let mut failure = None;
    if !deleting {
        // Claims follow the retention policy before any pod is deleted, so a scaled-down pod
        // owns its claims by the time it goes (upstream `UpdatePodClaimForRetentionPolicy`).
        if !spec.volume_claim_templates.as_ref().is_none_or(|t| t.is_empty()) {
            sync_claim_owners(&ctx, &set, &by_ordinal, in_range).await?;
        }
        let rolling = is_rolling(&set).then(|| Rolling {
            update_min: partition(&set) as usize,
            max_unavailable: max_unavailable(&set),
            update: update_name.clone(),
        });
        let steps = plan(&slots, &condemned, !is_parallel(&set), rolling.as_ref());
        let current_tpl = revision::template_of(&current).unwrap_or_else(|| spec.template.clone());
        let update_tpl = revision::template_of(&update).unwrap_or_else(|| spec.template.clone());
        let part = partition(&set);
        let results = future::join_all(steps.into_iter().map(|s| {
            let (ctx, set, pods_api) = (ctx.clone(), set.clone(), pods_api.clone());
            // Ordinals below the partition keep the current revision (upstream
            // `newVersionedStatefulSetPod`).
            let (tpl, rev) = match &s {
                Step::Create(o) if is_rolling(&set) && *o < start + part => (current_tpl.clone(), current_name.clone()),
                _ => (update_tpl.clone(), update_name.clone()),
            };
            async move { perform(&ctx, &set, &pods_api, s, &tpl, &rev).await }
        }))
        .await;
        failure = results.into_iter().find_map(|r| r.err());
    }

    // Status.
    let status = compute_status(&set, &pods, &current_name, &update_name, now);
    if set.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({ "status": status });
        sets_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err("updating status"))?;
    }

    // History: keep revisions in use and `revisionHistoryLimit` more.
    let mut live: HashSet<String> = pods.iter().filter_map(|p| p.labels().get(revision::HASH_LABEL).cloned()).collect();
    live.insert(current_name);
    live.insert(update_name);
    let limit = spec.revision_history_limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    revision::prune(&ctx.client, &ns, &hist.revisions, &live, limit).await;

    if let Some(e) = failure {
        return Err(e);
    }
    let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    Ok(match podutil::next_available_in(&refs, min_ready, now) {
        Some(secs) => Action::requeue(Duration::from_secs(secs.max(1) as u64)),
        None => Action::await_change(),
    })
}

/// Brings the owner references of every existing claim in line with the retention policy.
async fn sync_claim_owners(
    ctx: &Context,
    set: &StatefulSet,
    pods: &BTreeMap<i32, Arc<Pod>>,
    in_range: impl Fn(i32) -> bool,
) -> Result<(), StatefulSetError> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = api.list(&ListParams::default()).await.map_err(|source| StatefulSetError::Api {
        action: "listing claims",
        sts: skey(set),
        source,
    })?;
    for (ord, pod) in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        for want in claims_for(set, *ord) {
            let Some(claim) = existing.items.iter().find(|c| c.metadata.name == want.metadata.name) else { continue };
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Some(refs) = claim_owner_refs(claim, set, pod, in_range(*ord)) {
                let patch = serde_json::json!({"metadata": {
                    "ownerReferences": refs, "resourceVersion": claim.metadata.resource_version}});
                if let Err(e) = api.patch(&claim.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
                    tracing::warn!(error = %e, claim = %claim.name_any(), "could not update claim owner references");
                }
            }
        }
    }
    Ok(())
}

/// Performs one step, recording the upstream events.
async fn perform(
    ctx: &Context,
    set: &StatefulSet,
    api: &Api<Pod>,
    step: Step,
    template: &PodTemplateSpec,
    revision_name: &str,
) -> Result<(), StatefulSetError> {
    let sname = set.name_any();
    let key = skey(set);
    match step {
        Step::Create(ord) => {
            let pod = new_pod(set, ord, template, revision_name);
            let pname = pod.name_any();
            create_claims(ctx, set, ord, &pname).await?;
            match api.create(&PostParams::default(), &pod).await {
                Ok(_) => {
                    ctx.recorder.normal(
                        object_ref(set),
                        "SuccessfulCreate",
                        format!("create Pod {pname} in StatefulSet {sname} successful"),
                    );
                    Ok(())
                }
                // The cache is behind: the pod is there already.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => {
                    ctx.recorder.warning(
                        object_ref(set),
                        "FailedCreate",
                        format!("create Pod {pname} in StatefulSet {sname} failed error: {e}"),
                    );
                    Err(StatefulSetError::Api { action: "creating pod", sts: key, source: e })
                }
            }
        }
        Step::Delete { name, uid, .. } => {
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: Some(uid), resource_version: None }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    ctx.recorder.normal(
                        object_ref(set),
                        "SuccessfulDelete",
                        format!("delete Pod {name} in StatefulSet {sname} successful"),
                    );
                    Ok(())
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                Err(e) => {
                    ctx.recorder.warning(
                        object_ref(set),
                        "FailedDelete",
                        format!("delete Pod {name} in StatefulSet {sname} failed error: {e}"),
                    );
                    Err(StatefulSetError::Api { action: "deleting pod", sts: key, source: e })
                }
            }
        }
    }
}

/// Creates the claims of the pod for `ord` that do not exist yet (upstream
/// `createPersistentVolumeClaims`).
async fn create_claims(ctx: &Context, set: &StatefulSet, ord: i32, pod: &str) -> Result<(), StatefulSetError> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let sname = set.name_any();
    for mut c in claims_for(set, ord) {
        let cname = c.name_any();
        match api.get_opt(&cname).await {
            Ok(Some(existing)) if existing.metadata.deletion_timestamp.is_some() => {
                return Err(StatefulSetError::ClaimTerminating(cname));
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => return Err(StatefulSetError::Api { action: "reading claim", sts: skey(set), source: e }),
        }
        // Under whenDeleted=Delete the set owns its claims from the start.
        if retention(set).0 {
            c.metadata.owner_references = Some(vec![plain_ref(set)]);
        }
        match api.create(&PostParams::default(), &c).await {
            Ok(_) => ctx.recorder.normal(
                object_ref(set),
                "SuccessfulCreate",
                format!("create Claim {cname} Pod {pod} in StatefulSet {sname} success"),
            ),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                ctx.recorder.warning(
                    object_ref(set),
                    "FailedCreate",
                    format!("create Claim {cname} for Pod {pod} in StatefulSet {sname} failed error: {e}"),
                );
                return Err(StatefulSetError::Api { action: "creating claim", sts: skey(set), source: e });
            }
        }
    }
    Ok(())
}

fn error_policy(set: Arc<StatefulSet>, e: &StatefulSetError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, sts = %skey(&set), "stateful set sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller until `shutdown` fires.
pub async fn run(client: kube::Client, informers: Informers, shutdown: CancellationToken) {
    let pods = informers.pods.store();
    let controller = Controller::new(Api::<StatefulSet>::all(client.clone()), watcher::Config::default());
    let sets = controller.store();
    let pod_events =
        podutil::pod_triggers(&informers.pods, sets, |s: &StatefulSet| s.spec.as_ref().map(|s| s.selector.clone()));
    let ctx = Arc::new(Context { recorder: Recorder::new(client.clone(), COMPONENT, shutdown.clone()), client, pods });
    controller
        .reconcile_on(pod_events)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "statefulset-controller");
            }
            future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::podutil::tests::{ready, ts};
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
        StatefulSetUpdateStrategy,
    };
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn set(replicas: i32) -> StatefulSet {
        let labels: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("default".into()),
                uid: Some("sts-uid".into()),
                generation: Some(4),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some("db-headless".into()),
                selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                    spec: Some(PodSpec {
                        volumes: Some(vec![Volume { name: "data".into(), ..Default::default() }]),
                        ..Default::default()
                    }),
                },
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("data".into()),
                        labels: Some([("tier".to_string(), "storage".to_string())].into()),
                        ..Default::default()
                    },
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn healthy(name: &str, rev: &str) -> PodState {
        PodState {
            name: name.into(),
            uid: format!("{name}-uid"),
            revision: rev.into(),
            terminating: false,
            finished: false,
            healthy: true,
        }
    }

    fn unhealthy(name: &str, rev: &str) -> PodState {
        PodState { healthy: false, ..healthy(name, rev) }
    }

    fn del(ordinal: i32) -> Step {
        Step::Delete { ordinal, name: format!("db-{ordinal}"), uid: format!("db-{ordinal}-uid") }
    }

    fn rolling(update_min: usize, max_unavailable: i32) -> Rolling {
        Rolling { update_min, max_unavailable, update: "new".into() }
    }

    #[test]
    fn ordinals_are_parsed_from_names_of_the_form_set_dash_number() {
        assert_eq!(ordinal_of("db", "db-0"), Some(0));
        assert_eq!(ordinal_of("db", "db-12"), Some(12));
        assert_eq!(ordinal_of("db", "db-"), None);
        assert_eq!(ordinal_of("db", "db-x"), None);
        assert_eq!(ordinal_of("db", "db-01"), None, "not a name the controller would make");
        assert_eq!(ordinal_of("db", "dba-1"), None);
        assert_eq!(ordinal_of("web-db", "web-db-3"), Some(3));
        assert_eq!(claim_name("data", "db", 2), "data-db-2");
    }

    #[test]
    fn ordinals_start_at_spec_ordinals_start() {
        let mut s = set(3);
        assert_eq!(ordinal_range(&s), (0, 3));
        if let Some(spec) = s.spec.as_mut() {
            spec.ordinals = Some(k8s_openapi::api::apps::v1::StatefulSetOrdinals { start: Some(5) });
        }
        assert_eq!(ordinal_range(&s), (5, 3));
    }

    #[test]
    fn a_pod_gets_a_stable_identity_and_its_claims_as_volumes() {
        let s = set(3);
        let tpl = s.spec.as_ref().map(|x| x.template.clone()).unwrap_or_default();
        let p = new_pod(&s, 2, &tpl, "db-abc");
        assert_eq!(p.metadata.name.as_deref(), Some("db-2"));
        let labels = p.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(POD_NAME_LABEL).map(String::as_str), Some("db-2"));
        assert_eq!(labels.get(POD_INDEX_LABEL).map(String::as_str), Some("2"));
        assert_eq!(labels.get(revision::HASH_LABEL).map(String::as_str), Some("db-abc"));
        assert_eq!(labels.get("app").map(String::as_str), Some("db"));
        let spec = p.spec.clone().unwrap_or_default();
        assert_eq!(spec.hostname.as_deref(), Some("db-2"));
        assert_eq!(spec.subdomain.as_deref(), Some("db-headless"));
        let vols = spec.volumes.unwrap_or_default();
        assert_eq!(vols.len(), 1, "the claim replaces the template volume of the same name");
        assert_eq!(vols[0].persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()), Some("data-db-2"));
        let owner = p.metadata.owner_references.and_then(|o| o.into_iter().next()).unwrap_or_default();
        assert_eq!((owner.kind.as_str(), owner.controller), ("StatefulSet", Some(true)));
    }

    #[test]
    fn claims_carry_template_and_selector_labels() {
        let c = claims_for(&set(1), 0);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].metadata.name.as_deref(), Some("data-db-0"));
        let l = c[0].metadata.labels.clone().unwrap_or_default();
        assert_eq!(l.get("tier").map(String::as_str), Some("storage"));
        assert_eq!(l.get("app").map(String::as_str), Some("db"));
    }

    #[test]
    fn ordered_ready_creates_one_pod_at_a_time_and_waits_for_readiness() {
        let none: Vec<(i32, Option<PodState>)> = (0..3).map(|o| (o, None)).collect();
        assert_eq!(plan(&none, &[], true, None), vec![Step::Create(0)]);
        let waiting = vec![(0, Some(unhealthy("db-0", "r"))), (1, None), (2, None)];
        assert_eq!(plan(&waiting, &[], true, None), vec![], "db-1 waits for db-0");
        let next = vec![(0, Some(healthy("db-0", "r"))), (1, None), (2, None)];
        assert_eq!(plan(&next, &[], true, None), vec![Step::Create(1)]);
    }

    #[test]
    fn parallel_creates_every_missing_pod_at_once() {
        let slots = vec![(0, Some(unhealthy("db-0", "r"))), (1, None), (2, None)];
        assert_eq!(plan(&slots, &[], false, None), vec![Step::Create(1), Step::Create(2)]);
    }

    #[test]
    fn scale_down_removes_the_highest_ordinal_first_one_at_a_time() {
        let slots = vec![(0, Some(healthy("db-0", "r")))];
        let condemned = vec![(2, healthy("db-2", "r")), (1, healthy("db-1", "r"))];
        assert_eq!(plan(&slots, &condemned, true, None), vec![del(2)]);
        let terminating = vec![(2, PodState { terminating: true, ..healthy("db-2", "r") }), (1, healthy("db-1", "r"))];
        assert_eq!(plan(&slots, &terminating, true, None), vec![], "db-1 waits for db-2 to be gone");
        assert_eq!(plan(&slots, &condemned, false, None), vec![del(2), del(1)], "Parallel deletes all");
    }

    #[test]
    fn an_unhealthy_replica_blocks_ordered_scale_down() {
        let slots = vec![(0, Some(unhealthy("db-0", "r")))];
        assert_eq!(plan(&slots, &[(1, healthy("db-1", "r"))], true, None), vec![]);
    }

    #[test]
    fn failed_pods_are_deleted_to_be_recreated() {
        let slots = vec![(0, Some(PodState { finished: true, ..unhealthy("db-0", "r") }))];
        assert_eq!(plan(&slots, &[], true, None), vec![del(0)]);
    }

    #[test]
    fn rolling_update_replaces_the_highest_old_pod_and_stops_at_the_partition() {
        let slots: Vec<(i32, Option<PodState>)> =
            (0..3).map(|o| (o, Some(healthy(&format!("db-{o}"), "old")))).collect();
        assert_eq!(plan(&slots, &[], true, Some(&rolling(0, 1))), vec![del(2)]);
        let mut done = slots.clone();
        done[2].1 = Some(healthy("db-2", "new"));
        assert_eq!(plan(&done, &[], true, Some(&rolling(2, 1))), vec![], "partition 2 leaves db-0 and db-1");
        assert_eq!(plan(&done, &[], true, Some(&rolling(0, 1))), vec![del(1)]);
        let mut recreating = slots.clone();
        recreating[2].1 = Some(unhealthy("db-2", "new"));
        assert_eq!(plan(&recreating, &[], false, Some(&rolling(0, 1))), vec![], "waits for the new db-2");
        assert_eq!(plan(&slots, &[], false, Some(&rolling(0, 2))), vec![del(2), del(1)], "maxUnavailable 2");
    }

    #[test]
    fn retention_policy_sets_claim_owners_like_upstream() {
        let mut s = set(1);
        let pod = Pod {
            metadata: ObjectMeta { name: Some("db-1".into()), uid: Some("pod-uid".into()), ..Default::default() },
            ..Default::default()
        };
        let claim = claims_for(&s, 1).remove(0);
        assert_eq!(claim_owner_refs(&claim, &s, &pod, true), None, "Retain/Retain: no owners");
        let policy = |deleted: &str, scaled: &str| StatefulSetPersistentVolumeClaimRetentionPolicy {
            when_deleted: Some(deleted.into()),
            when_scaled: Some(scaled.into()),
        };
        if let Some(spec) = s.spec.as_mut() {
            spec.persistent_volume_claim_retention_policy = Some(policy("Delete", "Retain"));
        }
        let refs = claim_owner_refs(&claim, &s, &pod, false).unwrap_or_default();
        assert_eq!(refs.iter().map(|r| r.uid.as_str()).collect::<Vec<_>>(), ["sts-uid"]);
        if let Some(spec) = s.spec.as_mut() {
            spec.persistent_volume_claim_retention_policy = Some(policy("Delete", "Delete"));
        }
        let owned_by_set = PersistentVolumeClaim {
            metadata: ObjectMeta { owner_references: Some(refs), ..claim.metadata.clone() },
            ..claim.clone()
        };
        assert_eq!(claim_owner_refs(&owned_by_set, &s, &pod, true), None, "in range: the set keeps it");
        let scaled = claim_owner_refs(&owned_by_set, &s, &pod, false).unwrap_or_default();
        assert_eq!(scaled.iter().map(|r| r.uid.as_str()).collect::<Vec<_>>(), ["pod-uid"], "scaled away: the pod");
        assert_eq!(scaled[0].kind, "Pod");
    }

    fn pod(name: &str, rev: &str, is_ready: bool) -> Arc<Pod> {
        let mut p = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(revision::HASH_LABEL.to_string(), rev.to_string())].into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus { phase: Some("Running".into()), ..Default::default() }),
        };
        if is_ready {
            ready(&mut p, 10);
        }
        Arc::new(p)
    }

    #[test]
    fn status_counts_revisions_and_completes_a_rollout() {
        let mut s = set(3);
        if let Some(spec) = s.spec.as_mut() {
            spec.update_strategy = Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy { partition: Some(0), max_unavailable: None }),
            });
        }
        let pods = vec![pod("db-0", "db-old", true), pod("db-1", "db-new", true), pod("db-2", "db-new", false)];
        let st = compute_status(&s, &pods, "db-old", "db-new", ts(100));
        assert_eq!((st.replicas, st.ready_replicas, st.available_replicas), (3, Some(2), Some(2)));
        assert_eq!((st.current_replicas, st.updated_replicas), (Some(1), Some(2)));
        assert_eq!(st.current_revision.as_deref(), Some("db-old"));
        assert_eq!(st.observed_generation, Some(4));
        let all_new = vec![pod("db-0", "db-new", true), pod("db-1", "db-new", true), pod("db-2", "db-new", true)];
        let st = compute_status(&s, &all_new, "db-old", "db-new", ts(100));
        assert_eq!(st.current_revision.as_deref(), Some("db-new"), "every pod updated and ready");
        assert_eq!(st.current_replicas, Some(3));
    }

    #[test]
    fn partition_and_max_unavailable_are_clamped() {
        let mut s = set(4);
        if let Some(spec) = s.spec.as_mut() {
            spec.update_strategy = Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(9),
                    max_unavailable: Some(IntOrString::String("50%".into())),
                }),
            });
        }
        assert_eq!(partition(&s), 4);
        assert_eq!(max_unavailable(&s), 2);
        assert_eq!(max_unavailable(&set(4)), 1);
    }
}
