//! The Deployment controller (upstream `pkg/controller/deployment`): one ReplicaSet per pod
//! template revision, named `<deployment>-<pod-template-hash>`, rolled forward with
//! RollingUpdate (maxSurge/maxUnavailable, 25% each by default) or Recreate, old revisions kept
//! up to `revisionHistoryLimit`, and the status and conditions `kubectl rollout status` reads.
//!
//! The arithmetic is in pure functions ([`pod_template_hash`], [`resolve_fenceposts`],
//! [`rolling_plan`], [`compute_status`], [`progressing_condition`]); [`reconcile`] reads the
//! ReplicaSet cache, applies the plan through the API and writes status.

use super::events::{object_ref, Recorder};
use super::podutil::{self, claim, controller_ref};
use futures::{future, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "deployment-controller";
pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// Upstream default `progressDeadlineSeconds`.
const DEFAULT_PROGRESS_DEADLINE: i32 = 600;
/// Upstream default `revisionHistoryLimit`.
const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// What can stop one Deployment sync; the controller retries after a pause.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// A call to the API server failed.
    #[error("{action} for deployment {deployment}: {source}")]
    Api {
        action: &'static str,
        deployment: String,
        #[source]
        source: kube::Error,
    },
    /// A ReplicaSet with the new revision's name exists but is not this template's: upstream
    /// bumps `status.collisionCount` so the next hash differs.
    #[error("replica set {0} already exists with a different template; bumped collisionCount")]
    HashCollision(String),
}

// ---------------------------------------------------------------------------------------------
// Pure decisions
// ---------------------------------------------------------------------------------------------

fn fnv32a(data: &[u8], mut h: u32) -> u32 {
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(16_777_619);
    }
    h
}

/// Upstream `rand.SafeEncodeString`: digits mapped onto consonants and digits that cannot spell
/// words, so hashes never form bad words and always start with a letter or digit.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes().map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char).collect()
}

/// The template without its `pod-template-hash` label, for hashing and comparison.
fn strip_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    t
}

/// The `pod-template-hash` of a template (upstream `controller.ComputeHash`): FNV-32a over the
/// template, then the collision count as 8 little-endian bytes, printed in decimal and
/// safe-encoded. The template is hashed as canonical JSON (struct fields in declaration order,
/// maps sorted) rather than Go's spew dump, so values differ from upstream but are just as stable.
pub fn pod_template_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let json = serde_json::to_vec(&strip_hash(t)).unwrap_or_default();
    let mut h = fnv32a(&json, 2_166_136_261);
    if let Some(c) = collision_count {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&(c as u32).to_le_bytes());
        h = fnv32a(&bytes, h);
    }
    safe_encode(&h.to_string())
}

/// Whether two templates are the same apart from the hash label (upstream `EqualIgnoreHash`).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    serde_json::to_value(strip_hash(a)).ok() == serde_json::to_value(strip_hash(b)).ok()
}

/// An int-or-percent resolved against `total` (upstream `intstr.GetScaledValueFromIntOrPercent`).
pub fn scaled_value(v: Option<&IntOrString>, default_percent: i32, total: i32, round_up: bool) -> i32 {
    let pct = match v {
        Some(IntOrString::Int(i)) => return *i,
        Some(IntOrString::String(s)) => s.trim_end_matches('%').parse::<i32>().unwrap_or(default_percent),
        None => default_percent,
    };
    let x = i64::from(pct) * i64::from(total);
    (if round_up { (x + 99).div_euclid(100) } else { x.div_euclid(100) }) as i32
}

/// (maxSurge, maxUnavailable) for `replicas` (upstream `ResolveFenceposts`): surge rounds up,
/// unavailable rounds down, and both being zero would deadlock, so unavailable becomes 1.
pub fn resolve_fenceposts(d: &Deployment) -> (i32, i32) {
    let replicas = desired(d);
    let ru = d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(ru.and_then(|r| r.max_surge.as_ref()), 25, replicas, true);
    let unavailable = scaled_value(ru.and_then(|r| r.max_unavailable.as_ref()), 25, replicas, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.strategy.as_ref()).and_then(|s| s.type_.as_deref()) == Some("Recreate")
}

/// Upstream `MaxUnavailable`: 0 for Recreate or zero replicas, never more than replicas.
pub fn max_unavailable(d: &Deployment) -> i32 {
    let replicas = desired(d);
    if is_recreate(d) || replicas == 0 {
        return 0;
    }
    resolve_fenceposts(d).1.min(replicas)
}

fn desired(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0)
}

/// The numbers the rollout arithmetic needs from one ReplicaSet.
#[derive(Debug, Clone, PartialEq)]
pub struct RsView {
    pub name: String,
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
    pub created: Option<Timestamp>,
}

impl RsView {
    pub fn of(rs: &ReplicaSet) -> RsView {
        RsView {
            name: rs.name_any(),
            replicas: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            available: rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0),
            created: rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        }
    }
}

/// One scaling the controller should perform: (ReplicaSet name, from, to).
pub type Scale = (String, i32, i32);

/// Upstream `NewRSNewReplicas` for RollingUpdate: grow the new ReplicaSet as far as maxSurge
/// allows over the total of all ReplicaSets, never beyond `replicas`.
pub fn new_rs_replicas(replicas: i32, max_surge: i32, all_total: i32, new_current: i32) -> i32 {
    let max_total = replicas + max_surge;
    if all_total >= max_total {
        return new_current;
    }
    new_current + (max_total - all_total).min(replicas - new_current).max(0)
}

/// The next RollingUpdate step (upstream `rolloutRolling`): first scale the new ReplicaSet up
/// (or down, if it is above `replicas`); only when it is where it should be, scale old
/// ReplicaSets down — their unhealthy replicas first, then healthy ones as far as
/// `replicas - maxUnavailable` available pods allow, oldest ReplicaSet first.
pub fn rolling_plan(replicas: i32, max_surge: i32, max_unavail: i32, new: &RsView, old: &[RsView]) -> Vec<Scale> {
    let all_total: i32 = new.replicas + old.iter().map(|r| r.replicas).sum::<i32>();
    if new.replicas > replicas {
        return vec![(new.name.clone(), new.replicas, replicas)];
    }
    if new.replicas < replicas {
        let to = new_rs_replicas(replicas, max_surge, all_total, new.replicas);
        if to != new.replicas {
            return vec![(new.name.clone(), new.replicas, to)];
        }
    }
    let old_total: i32 = old.iter().map(|r| r.replicas).sum();
    if old_total == 0 {
        return vec![];
    }
    let min_available = replicas - max_unavail;
    let new_unavailable = (new.replicas - new.available).max(0);
    let max_scaled_down = all_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return vec![];
    }
    let mut sorted: Vec<RsView> = old.to_vec();
    sorted.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));
    let mut target: Vec<i32> = sorted.iter().map(|r| r.replicas).collect();
    // cleanupUnhealthyReplicas
    let mut scaled = 0;
    for (i, rs) in sorted.iter().enumerate() {
        if scaled >= max_scaled_down {
            break;
        }
        let unhealthy = (target[i] - rs.available).max(0);
        if target[i] == 0 || unhealthy == 0 {
            continue;
        }
        let n = unhealthy.min(max_scaled_down - scaled);
        target[i] -= n;
        scaled += n;
    }
    // scaleDownOldReplicaSetsForRollingUpdate
    let available: i32 = new.available + sorted.iter().map(|r| r.available).sum::<i32>();
    if available > min_available {
        let total = available - min_available;
        let mut done = 0;
        for t in target.iter_mut() {
            if done >= total {
                break;
            }
            if *t == 0 {
                continue;
            }
            let n = (*t).min(total - done);
            *t -= n;
            done += n;
        }
    }
    sorted
        .iter()
        .zip(target)
        .filter(|(rs, t)| rs.replicas != *t)
        .map(|(rs, t)| (rs.name.clone(), rs.replicas, t))
        .collect()
}

/// Scaling for a paused deployment (upstream `scale` with `FindActiveOrLatest`): when exactly
/// one ReplicaSet has replicas, or none does, that one (or the newest) takes the whole count;
/// a paused rollout with several active ReplicaSets is left as it is.
pub fn paused_scale(replicas: i32, sets: &[RsView]) -> Vec<Scale> {
    let active: Vec<&RsView> = sets.iter().filter(|r| r.replicas > 0).collect();
    let target = match active.len() {
        0 => sets.iter().max_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name))),
        1 => active.first().copied(),
        _ => None,
    };
    match target {
        Some(t) if t.replicas != replicas => vec![(t.name.clone(), t.replicas, replicas)],
        _ => vec![],
    }
}

fn rs_status_sum(
    sets: &[&ReplicaSet],
    f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>,
) -> i32 {
    sets.iter().filter_map(|r| r.status.as_ref().and_then(&f)).sum()
}

/// Replaces the condition of the same type unless status and reason are unchanged (upstream
/// `SetDeploymentCondition`), keeping `lastTransitionTime` while the status stays the same.
pub fn set_condition(conds: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition) {
    if let Some(i) = conds.iter().position(|x| x.type_ == c.type_) {
        let cur = &conds[i];
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
        conds[i] = c;
    } else {
        conds.push(c);
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: String, now: Timestamp) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Status from the ReplicaSets (upstream `calculateStatus`), with the Available condition.
pub fn compute_status(
    d: &Deployment,
    new: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
    now: Timestamp,
) -> DeploymentStatus {
    let available = rs_status_sum(all, |s| s.available_replicas);
    let replicas = desired(d);
    let mut conds = d.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    if available >= replicas - max_unavailable(d) {
        set_condition(
            &mut conds,
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut conds,
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(rs_status_sum(all, |s| Some(s.replicas))),
        updated_replicas: Some(new.and_then(|n| n.status.as_ref()).map(|s| s.replicas).unwrap_or(0)),
        ready_replicas: Some(rs_status_sum(all, |s| s.ready_replicas)),
        available_replicas: Some(available),
        unavailable_replicas: Some((replicas - available).max(0)),
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        conditions: Some(conds),
        terminating_replicas: None,
    }
}

fn progressing(conds: &[DeploymentCondition]) -> Option<&DeploymentCondition> {
    conds.iter().find(|c| c.type_ == "Progressing")
}

/// Upstream `DeploymentComplete`.
pub fn is_complete(d: &Deployment, st: &DeploymentStatus) -> bool {
    let r = desired(d);
    st.updated_replicas == Some(r)
        && st.replicas == Some(r)
        && st.available_replicas == Some(r)
        && st.observed_generation >= d.metadata.generation
}

/// The Progressing condition after this sync (upstream `syncRolloutStatus`), or `None` to keep
/// the current one. Returns the condition and, while progressing, seconds until the deadline.
pub fn progressing_condition(
    d: &Deployment,
    st: &DeploymentStatus,
    new_rs: &str,
    now: Timestamp,
) -> (Option<DeploymentCondition>, Option<i64>) {
    let conds = st.conditions.as_deref().unwrap_or(&[]);
    let cur = progressing(conds);
    let reason = cur.and_then(|c| c.reason.as_deref());
    if d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) {
        // Upstream marks a pause once (and the deadline does not run while paused).
        if reason == Some("DeploymentPaused") {
            return (None, None);
        }
        let c = condition("Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), now);
        return (Some(c), None);
    }
    if reason == Some("DeploymentPaused") {
        // Resumed: the deadline starts counting again from now.
        let c = condition("Progressing", "Unknown", "DeploymentResumed", "Deployment is resumed".into(), now);
        return (Some(c), Some(i64::from(DEFAULT_PROGRESS_DEADLINE)));
    }
    let already_complete = st.replicas == st.updated_replicas
        && cur.is_some_and(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"));
    if already_complete {
        return (None, None);
    }
    let deadline =
        i64::from(d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).unwrap_or(DEFAULT_PROGRESS_DEADLINE));
    if is_complete(d, st) {
        let msg = format!("ReplicaSet \"{new_rs}\" has successfully progressed.");
        return (Some(condition("Progressing", "True", "NewReplicaSetAvailable", msg, now)), None);
    }
    let old = d.status.clone().unwrap_or_default();
    let old_old = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_old = st.replicas.unwrap_or(0) - st.updated_replicas.unwrap_or(0);
    let moved = st.updated_replicas.unwrap_or(0) > old.updated_replicas.unwrap_or(0)
        || new_old < old_old
        || st.ready_replicas.unwrap_or(0) > old.ready_replicas.unwrap_or(0)
        || st.available_replicas.unwrap_or(0) > old.available_replicas.unwrap_or(0);
    if moved {
        let msg = format!("ReplicaSet \"{new_rs}\" is progressing.");
        let mut c = condition("Progressing", "True", "ReplicaSetUpdated", msg, now);
        if let Some(cur) = cur.filter(|c| c.status == "True") {
            c.last_transition_time = cur.last_transition_time.clone();
        }
        return (Some(c), Some(deadline));
    }
    let since = cur.and_then(|c| c.last_update_time.as_ref()).map(|t| t.0.as_second());
    match (cur, since) {
        (Some(c), _) if c.reason.as_deref() == Some("ProgressDeadlineExceeded") => (None, None),
        (Some(_), Some(since)) if now.as_second() > since + deadline => {
            let msg = format!("ReplicaSet \"{new_rs}\" has timed out progressing.");
            (Some(condition("Progressing", "False", "ProgressDeadlineExceeded", msg, now)), None)
        }
        (Some(_), Some(since)) => (None, Some(since + deadline - now.as_second() + 1)),
        _ => (None, Some(deadline)),
    }
}

/// Old ReplicaSets to delete beyond `revisionHistoryLimit` (upstream `cleanupDeployment`): only
/// fully scaled-down ones, lowest revision first.
pub fn history_to_delete(old: &[&ReplicaSet], limit: i32) -> Vec<String> {
    let mut dead: Vec<&ReplicaSet> = old
        .iter()
        .copied()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .filter(|r| r.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) == 0)
        .filter(|r| r.status.as_ref().map(|s| s.replicas).unwrap_or(0) == 0)
        .collect();
    let excess = dead.len() as i64 - i64::from(limit.max(0));
    if excess <= 0 {
        return vec![];
    }
    dead.sort_by_key(|r| (revision(*r), r.metadata.creation_timestamp.as_ref().map(|t| t.0)));
    dead.iter().take(excess as usize).map(|r| r.name_any()).collect()
}

/// `deployment.kubernetes.io/revision` of an object, 0 if absent.
pub fn revision(meta_owner: &impl kube::Resource) -> i64 {
    meta_owner
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The new revision's ReplicaSet (upstream `getNewReplicaSet` when none exists yet).
pub fn new_replica_set(d: &Deployment, hash: &str, revision: i64, replicas: i32) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.into());
    let mut selector = spec.selector.clone();
    selector.match_labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.into());
    // Copy the deployment's annotations as upstream does, minus the ones that describe the
    // deployment object itself.
    let mut annotations: BTreeMap<String, String> = d
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| {
            k.as_str() != "kubectl.kubernetes.io/last-applied-configuration" && k.as_str() != REVISION_ANNOTATION
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(REVISION_ANNOTATION.into(), revision.to_string());
    annotations.insert(DESIRED_REPLICAS_ANNOTATION.into(), desired(d).to_string());
    annotations.insert(MAX_REPLICAS_ANNOTATION.into(), (desired(d) + resolve_fenceposts(d).0).to_string());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{}", d.name_any(), hash)),
            namespace: d.metadata.namespace.clone(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(d)]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

// ---------------------------------------------------------------------------------------------
// The reconciler
// ---------------------------------------------------------------------------------------------

/// Everything a sync needs besides the Deployment.
pub struct Context {
    pub client: kube::Client,
    pub sets: Store<ReplicaSet>,
    pub recorder: Recorder,
}

fn dkey(d: &Deployment) -> String {
    format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any())
}

/// One idempotent sync of a Deployment (upstream `syncDeployment`).
pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, DeploymentError> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace().unwrap_or_default();
    let key = dkey(&d);
    let err = |action: &'static str| {
        let deployment = key.clone();
        move |source| DeploymentError::Api { action, deployment, source }
    };
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = d.uid().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let in_ns: Vec<Arc<ReplicaSet>> =
        ctx.sets.state().into_iter().filter(|r| r.metadata.namespace.as_deref() == Some(&ns)).collect();
    let c = claim(&uid, false, &spec.selector, &in_ns, |r| &r.metadata);
    let mut owned: Vec<ReplicaSet> = c.owned.iter().map(|r| (**r).clone()).collect();
    for r in c.adopt {
        let mut refs = r.metadata.owner_references.clone().unwrap_or_default();
        refs.push(controller_ref(d.as_ref()));
        let patch =
            serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": r.metadata.resource_version}});
        match rs_api.patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(a) => owned.push(a),
            Err(e) => tracing::warn!(error = %e, rs = %r.name_any(), deployment = %key, "could not adopt replica set"),
        }
    }
    for r in c.release {
        let refs: Vec<_> = r.metadata.owner_references.iter().flatten().filter(|o| o.uid != uid).cloned().collect();
        let patch =
            serde_json::json!({"metadata": {"ownerReferences": refs, "resourceVersion": r.metadata.resource_version}});
        if let Err(e) = rs_api.patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::warn!(error = %e, rs = %r.name_any(), deployment = %key, "could not release replica set");
        }
    }
    owned.retain(|r| r.metadata.deletion_timestamp.is_none());

    let now = Timestamp::now();
    let paused = spec.paused.unwrap_or(false);
    let collision = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = pod_template_hash(&spec.template, collision);
    let new_idx = owned.iter().position(|r| {
        r.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|t| equal_ignore_hash(t, &spec.template))
    });
    let max_old_rev =
        owned.iter().enumerate().filter(|(i, _)| Some(*i) != new_idx).map(|(_, r)| revision(r)).max().unwrap_or(0);
    let mut progressing_override: Option<DeploymentCondition> = None;

    // Find or create the new ReplicaSet; bring its revision to the top (a rollback to an old
    // template makes that ReplicaSet the newest revision again).
    let mut new_rs: Option<ReplicaSet> = new_idx.map(|i| owned.remove(i));
    if let Some(n) = new_rs.as_mut() {
        if revision(n) <= max_old_rev {
            let rev = (max_old_rev + 1).to_string();
            let patch = serde_json::json!({"metadata": {"annotations": {REVISION_ANNOTATION: rev}}});
            *n = rs_api
                .patch(&n.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err("bumping revision"))?;
        }
        if d.status.as_ref().and_then(|s| s.conditions.as_deref()).and_then(progressing).is_none() {
            let msg = format!("Found new replica set \"{}\"", n.name_any());
            progressing_override = Some(condition("Progressing", "True", "FoundNewReplicaSet", msg, now));
        }
    }
    let old_views: Vec<RsView> = owned.iter().map(RsView::of).collect();
    let old_active = old_views.iter().any(|r| r.replicas > 0);
    let mut old_pods = owned.iter().any(|r| r.status.as_ref().is_some_and(|s| s.replicas > 0));
    if is_recreate(&d) && !old_active && !old_pods && !owned.is_empty() {
        // ReplicaSet status stops counting a pod once it is terminating, but Recreate must wait
        // until old pods have actually stopped (upstream `oldPodsRunning`): ask the API.
        let uids: Vec<String> = owned.iter().filter_map(|r| r.metadata.uid.clone()).collect();
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let list = pods.list(&ListParams::default()).await.map_err(err("listing pods"))?;
        old_pods = list.items.iter().any(|p| {
            let mine = podutil::controller_of(&p.metadata).is_some_and(|r| uids.contains(&r.uid));
            mine && !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
        });
    }
    // Pod deletions do not wake this controller: while old pods stop, look again shortly.
    let waiting_for_old_pods = is_recreate(&d) && !old_active && old_pods;
    let replicas = desired(&d);
    let (surge, unavail) = resolve_fenceposts(&d);
    // Recreate only creates the new ReplicaSet once every old pod is gone.
    let may_create = !paused && (!is_recreate(&d) || (!old_active && !old_pods));
    if new_rs.is_none() && may_create {
        let all_total: i32 = old_views.iter().map(|r| r.replicas).sum();
        let start = if is_recreate(&d) { replicas } else { new_rs_replicas(replicas, surge, all_total, 0) };
        let want = new_replica_set(&d, &hash, max_old_rev + 1, start);
        let name = want.name_any();
        match rs_api.create(&PostParams::default(), &want).await {
            Ok(created) => {
                if start > 0 {
                    ctx.recorder.normal(
                        object_ref(d.as_ref()),
                        "ScalingReplicaSet",
                        format!("Scaled up replica set {name} from 0 to {start}"),
                    );
                }
                let msg = format!("Created new replica set \"{name}\"");
                progressing_override = Some(condition("Progressing", "True", "NewReplicaSetCreated", msg, now));
                new_rs = Some(created);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let existing = rs_api.get(&name).await.map_err(err("reading existing replica set"))?;
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &spec.template));
                if same && podutil::is_controlled_by(&existing.metadata, &uid) {
                    new_rs = Some(existing);
                } else {
                    let patch = serde_json::json!({"status": {"collisionCount": collision.unwrap_or(0) + 1}});
                    d_api
                        .patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(err("bumping collisionCount"))?;
                    return Err(DeploymentError::HashCollision(name));
                }
            }
            Err(e) => return Err(err("creating replica set")(e)),
        }
    }

    // Scale.
    {
        let plan: Vec<Scale> = if paused {
            // A paused deployment does not roll out, but `kubectl scale` still applies to it.
            let mut views: Vec<RsView> = old_views.clone();
            views.extend(new_rs.as_ref().map(RsView::of));
            paused_scale(replicas, &views)
        } else if is_recreate(&d) {
            if old_active {
                old_views.iter().filter(|r| r.replicas > 0).map(|r| (r.name.clone(), r.replicas, 0)).collect()
            } else if old_pods {
                vec![]
            } else {
                new_rs
                    .as_ref()
                    .map(RsView::of)
                    .filter(|n| n.replicas != replicas)
                    .map(|n| vec![(n.name, n.replicas, replicas)])
                    .unwrap_or_default()
            }
        } else if let Some(n) = new_rs.as_ref() {
            rolling_plan(replicas, surge, unavail, &RsView::of(n), &old_views)
        } else {
            vec![]
        };
        for (name, from, to) in plan {
            let patch = serde_json::json!({
                "metadata": {"annotations": {
                    DESIRED_REPLICAS_ANNOTATION: replicas.to_string(),
                    MAX_REPLICAS_ANNOTATION: (replicas + surge).to_string(),
                }},
                "spec": {"replicas": to},
            });
            let scaled = rs_api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err("scaling replica set"))?;
            let dir = if to > from { "up" } else { "down" };
            ctx.recorder.normal(
                object_ref(d.as_ref()),
                "ScalingReplicaSet",
                format!("Scaled {dir} replica set {name} from {from} to {to}"),
            );
            if new_rs.as_ref().is_some_and(|n| n.name_any() == name) {
                new_rs = Some(scaled);
            } else if let Some(o) = owned.iter_mut().find(|o| o.name_any() == name) {
                *o = scaled;
            }
        }
    }

    // Status.
    let mut all: Vec<&ReplicaSet> = owned.iter().collect();
    if let Some(n) = new_rs.as_ref() {
        all.push(n);
    }
    let mut status = compute_status(&d, new_rs.as_ref(), &all, now);
    let new_name = new_rs.as_ref().map(|n| n.name_any()).unwrap_or_default();
    let (cond, recheck) = progressing_condition(&d, &status, &new_name, now);
    let conds = status.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = cond.or(progressing_override) {
        if let Some(i) = conds.iter().position(|x| x.type_ == "Progressing") {
            conds[i] = c;
        } else {
            conds.push(c);
        }
    }
    if d.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({ "status": status });
        d_api
            .patch_status(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err("updating status"))?;
    }
    // The deployment carries its newest revision, which `kubectl rollout history` shows.
    if let Some(n) = new_rs.as_ref() {
        let rev = revision(n);
        if rev > 0 && revision(d.as_ref()) != rev {
            let patch = serde_json::json!({"metadata": {"annotations": {REVISION_ANNOTATION: rev.to_string()}}});
            d_api
                .patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err("annotating revision"))?;
        }
    }
    // Trim history once the rollout is done (upstream only cleans up complete deployments).
    if is_complete(&d, &status) {
        let olds: Vec<&ReplicaSet> = owned.iter().collect();
        let limit = spec.revision_history_limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
        for name in history_to_delete(&olds, limit) {
            match rs_api.delete(&name, &DeleteParams::background()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => tracing::warn!(error = %e, rs = %name, deployment = %key, "could not delete old replica set"),
            }
        }
    }
    if waiting_for_old_pods {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(match recheck {
        Some(secs) => Action::requeue(Duration::from_secs(secs.clamp(1, 3600) as u64)),
        None => Action::await_change(),
    })
}

fn error_policy(d: Arc<Deployment>, e: &DeploymentError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, deployment = %dkey(&d), "deployment sync failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

fn owners_of(rs: &ReplicaSet, deployments: &Store<Deployment>) -> Vec<ObjectRef<Deployment>> {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    match podutil::controller_of(&rs.metadata) {
        Some(r) if r.kind == "Deployment" => vec![ObjectRef::new(&r.name).within(&ns)],
        Some(_) => vec![],
        None => deployments
            .state()
            .iter()
            .filter(|d| d.metadata.namespace.as_deref() == Some(&ns))
            .filter(|d| {
                d.spec.as_ref().is_some_and(|s| podutil::selector_matches(&s.selector, rs.metadata.labels.as_ref()))
            })
            .map(|d| ObjectRef::from_obj(d.as_ref()))
            .collect(),
    }
}

/// Runs the controller until `shutdown` fires.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let (sets, writer) = reflector::store::<ReplicaSet>();
    let controller = Controller::new(Api::<Deployment>::all(client.clone()), watcher::Config::default());
    let deployments = controller.store();
    let rs_events =
        reflector::reflector(writer, watcher(Api::<ReplicaSet>::all(client.clone()), watcher::Config::default()))
            .filter_map(move |ev| {
                let refs = match ev {
                    Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r) | watcher::Event::Delete(r)) => {
                        owners_of(&r, &deployments)
                    }
                    Ok(_) => vec![],
                    Err(e) => {
                        tracing::warn!(error = %e, "deployment-controller: replica set watch failed; retrying");
                        vec![]
                    }
                };
                future::ready(Some(futures::stream::iter(refs)))
            })
            .flatten();
    let ctx = Arc::new(Context { recorder: Recorder::new(client.clone(), COMPONENT, shutdown.clone()), client, sets });
    controller
        .reconcile_on(rs_events)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "deployment-controller");
            }
            future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::podutil::tests::ts;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment};
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container { name: "web".into(), image: Some(image.into()), ..Default::default() }],
                ..Default::default()
            }),
        }
    }

    fn deployment(replicas: i32, surge: Option<IntOrString>, unavail: Option<IntOrString>) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("d-uid".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                template: template("busybox:1"),
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment { max_surge: surge, max_unavailable: unavail }),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn view(name: &str, replicas: i32, available: i32, created: i64) -> RsView {
        RsView { name: name.into(), replicas, available, created: Some(ts(created)) }
    }

    #[test]
    fn pod_template_hash_is_stable_and_changes_with_the_template() {
        let a = pod_template_hash(&template("busybox:1"), None);
        assert_eq!(a, pod_template_hash(&template("busybox:1"), None));
        assert_ne!(a, pod_template_hash(&template("busybox:2"), None));
        assert_ne!(a, pod_template_hash(&template("busybox:1"), Some(1)), "collisionCount changes the hash");
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{a}");
        let mut labelled = template("busybox:1");
        if let Some(l) = labelled.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            l.insert(HASH_LABEL.into(), a.clone());
        }
        assert_eq!(pod_template_hash(&labelled, None), a, "the hash label itself is ignored");
        assert!(equal_ignore_hash(&labelled, &template("busybox:1")));
    }

    #[test]
    fn fenceposts_default_to_25_percent_surge_rounded_up_and_unavailable_rounded_down() {
        assert_eq!(resolve_fenceposts(&deployment(10, None, None)), (3, 2));
        assert_eq!(resolve_fenceposts(&deployment(1, None, None)), (1, 0));
        assert_eq!(
            resolve_fenceposts(&deployment(3, Some(IntOrString::Int(0)), Some(IntOrString::Int(0)))),
            (0, 1),
            "both zero would never progress"
        );
        assert_eq!(
            resolve_fenceposts(&deployment(4, Some(IntOrString::String("50%".into())), Some(IntOrString::Int(1)))),
            (2, 1)
        );
    }

    #[test]
    fn a_fresh_deployment_scales_its_new_replica_set_straight_to_replicas() {
        assert_eq!(rolling_plan(3, 1, 0, &view("new", 0, 0, 2), &[]), vec![("new".into(), 0, 3)]);
        assert_eq!(new_rs_replicas(3, 1, 0, 0), 3);
    }

    #[test]
    fn a_rolling_update_first_surges_the_new_replica_set() {
        // 4 replicas, maxSurge 1, maxUnavailable 1, all 4 old available.
        let old = [view("old", 4, 4, 1)];
        assert_eq!(rolling_plan(4, 1, 1, &view("new", 0, 0, 2), &old), vec![("new".into(), 0, 1)]);
    }

    #[test]
    fn a_rolling_update_then_scales_old_down_within_max_unavailable() {
        // New at 1 (not yet available), old at 4 all available: total 5, minAvailable 3.
        // maxScaledDown = 5 - 3 - 1 = 1; available 4 > 3 so one old pod goes.
        let old = [view("old", 4, 4, 1)];
        assert_eq!(rolling_plan(4, 1, 1, &view("new", 1, 0, 2), &old), vec![("old".into(), 4, 3)]);
        // With maxUnavailable 0 nothing old may go until the new pod is available.
        assert_eq!(rolling_plan(4, 1, 0, &view("new", 1, 0, 2), &old), vec![]);
        assert_eq!(rolling_plan(4, 1, 0, &view("new", 1, 1, 2), &old), vec![("old".into(), 4, 3)]);
    }

    #[test]
    fn unhealthy_old_replicas_are_removed_before_healthy_ones_oldest_set_first() {
        // Two old sets: the older one has 2 replicas of which 0 are available.
        let old = [view("older", 2, 0, 1), view("old", 2, 2, 2)];
        // New at 2/0; replicas 4; surge 0; unavailable 2 → minAvailable 2; total 6.
        // maxScaledDown = 6 - 2 - 2 = 2 → both unhealthy "older" pods go; available 2 = min → stop.
        assert_eq!(rolling_plan(4, 0, 2, &view("new", 2, 0, 3), &old), vec![("older".into(), 2, 0)]);
    }

    #[test]
    fn a_new_replica_set_above_replicas_is_scaled_down_first() {
        assert_eq!(rolling_plan(2, 1, 0, &view("new", 5, 5, 1), &[]), vec![("new".into(), 5, 2)]);
    }

    #[test]
    fn a_paused_deployment_still_scales_its_only_active_replica_set() {
        assert_eq!(paused_scale(5, &[view("old", 0, 0, 1), view("cur", 3, 3, 2)]), vec![("cur".into(), 3, 5)]);
        assert_eq!(
            paused_scale(2, &[view("a", 0, 0, 1), view("b", 0, 0, 2)]),
            vec![("b".into(), 0, 2)],
            "the newest when none is active"
        );
        assert!(paused_scale(5, &[view("a", 2, 2, 1), view("b", 2, 2, 2)]).is_empty(), "mid-rollout: leave it");
    }

    #[test]
    fn a_finished_rollout_has_nothing_left_to_do() {
        assert_eq!(rolling_plan(3, 1, 0, &view("new", 3, 3, 2), &[view("old", 0, 0, 1)]), vec![]);
    }

    fn rs_with(name: &str, replicas: i32, ready: i32, available: i32, rev: i64) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some([(REVISION_ANNOTATION.to_string(), rev.to_string())].into()),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec { replicas: Some(replicas), ..Default::default() }),
            status: Some(ReplicaSetStatus {
                replicas,
                ready_replicas: Some(ready),
                available_replicas: Some(available),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn status_sums_replica_sets_and_reports_availability() {
        let d = deployment(3, None, Some(IntOrString::Int(0)));
        let new = rs_with("web-new", 2, 2, 1, 2);
        let old = rs_with("web-old", 2, 2, 2, 1);
        let st = compute_status(&d, Some(&new), &[&old, &new], ts(100));
        assert_eq!(st.replicas, Some(4));
        assert_eq!(st.updated_replicas, Some(2));
        assert_eq!(st.ready_replicas, Some(4));
        assert_eq!(st.available_replicas, Some(3));
        assert_eq!(st.unavailable_replicas, Some(0));
        assert_eq!(st.observed_generation, Some(2));
        let avail =
            st.conditions.as_ref().and_then(|c| c.iter().find(|c| c.type_ == "Available")).cloned().unwrap_or_default();
        assert_eq!((avail.status.as_str(), avail.reason.as_deref()), ("True", Some("MinimumReplicasAvailable")));
        let short = compute_status(&d, Some(&new), &[&new], ts(100));
        let avail = short
            .conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == "Available"))
            .cloned()
            .unwrap_or_default();
        assert_eq!((avail.status.as_str(), avail.reason.as_deref()), ("False", Some("MinimumReplicasUnavailable")));
    }

    #[test]
    fn progressing_becomes_new_replica_set_available_when_complete() {
        let d = deployment(2, None, None);
        let new = rs_with("web-abc", 2, 2, 2, 1);
        let st = compute_status(&d, Some(&new), &[&new], ts(100));
        let (c, _) = progressing_condition(&d, &st, "web-abc", ts(100));
        let c = c.unwrap_or_default();
        assert_eq!((c.status.as_str(), c.reason.as_deref()), ("True", Some("NewReplicaSetAvailable")));
        assert_eq!(c.message.as_deref(), Some("ReplicaSet \"web-abc\" has successfully progressed."));
    }

    #[test]
    fn progressing_reports_replica_set_updated_while_moving_and_times_out_when_stuck() {
        let mut d = deployment(2, None, None);
        let new = rs_with("web-abc", 2, 1, 1, 1);
        let st = compute_status(&d, Some(&new), &[&new], ts(100));
        let (c, recheck) = progressing_condition(&d, &st, "web-abc", ts(100));
        let c = c.unwrap_or_default();
        assert_eq!(c.reason.as_deref(), Some("ReplicaSetUpdated"));
        assert_eq!(c.message.as_deref(), Some("ReplicaSet \"web-abc\" is progressing."));
        assert_eq!(recheck, Some(600));
        // Nothing moves for longer than progressDeadlineSeconds.
        d.status = Some(DeploymentStatus { conditions: Some(vec![c]), ..st.clone() });
        let st2 = compute_status(&d, Some(&new), &[&new], ts(800));
        let (c2, _) = progressing_condition(&d, &st2, "web-abc", ts(800));
        let c2 = c2.unwrap_or_default();
        assert_eq!((c2.status.as_str(), c2.reason.as_deref()), ("False", Some("ProgressDeadlineExceeded")));
    }

    #[test]
    fn pausing_and_resuming_are_recorded_once_each() {
        let mut d = deployment(2, None, None);
        if let Some(s) = d.spec.as_mut() {
            s.paused = Some(true);
        }
        let new = rs_with("web-abc", 2, 1, 1, 1);
        let st = compute_status(&d, Some(&new), &[&new], ts(100));
        let (c, _) = progressing_condition(&d, &st, "web-abc", ts(100));
        let c = c.unwrap_or_default();
        assert_eq!(c.reason.as_deref(), Some("DeploymentPaused"));
        d.status = Some(DeploymentStatus { conditions: Some(vec![c]), ..st.clone() });
        let st = compute_status(&d, Some(&new), &[&new], ts(200));
        assert_eq!(progressing_condition(&d, &st, "web-abc", ts(200)).0, None, "no churn while paused");
        if let Some(s) = d.spec.as_mut() {
            s.paused = Some(false);
        }
        let (c, _) = progressing_condition(&d, &st, "web-abc", ts(300));
        assert_eq!(c.and_then(|c| c.reason).as_deref(), Some("DeploymentResumed"));
    }

    #[test]
    fn history_beyond_the_limit_is_deleted_oldest_revision_first() {
        let sets = [
            rs_with("r3", 0, 0, 0, 3),
            rs_with("r1", 0, 0, 0, 1),
            rs_with("r2", 0, 0, 0, 2),
            rs_with("live", 1, 1, 1, 0),
        ];
        let refs: Vec<&ReplicaSet> = sets.iter().collect();
        assert_eq!(history_to_delete(&refs, 1), ["r1", "r2"]);
        assert!(history_to_delete(&refs, 10).is_empty());
    }

    #[test]
    fn the_new_replica_set_carries_hash_revision_and_owner() {
        let d = deployment(3, None, None);
        let rs = new_replica_set(&d, "abc12", 4, 1);
        assert_eq!(rs.metadata.name.as_deref(), Some("web-abc12"));
        let ann = rs.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get(REVISION_ANNOTATION).map(String::as_str), Some("4"));
        let spec = rs.spec.clone().unwrap_or_default();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(
            spec.selector.match_labels.as_ref().and_then(|l| l.get(HASH_LABEL)).map(String::as_str),
            Some("abc12")
        );
        let tl = spec.template.and_then(|t| t.metadata).and_then(|m| m.labels).unwrap_or_default();
        assert_eq!(tl.get(HASH_LABEL).map(String::as_str), Some("abc12"));
        let owner = rs.metadata.owner_references.and_then(|o| o.into_iter().next()).unwrap_or_default();
        assert_eq!((owner.kind.as_str(), owner.controller), ("Deployment", Some(true)));
    }
}
