//! The DaemonSet controller (upstream `pkg/controller/daemon`): one pod per eligible node.
//! A node is eligible when it matches the template's `nodeSelector` and required node affinity
//! and its NoSchedule/NoExecute taints are tolerated — with the tolerations upstream adds to
//! every daemon pod (not-ready and unreachable NoExecute; disk, memory and pid pressure and
//! unschedulable NoSchedule; network-unavailable for host-network pods). A node whose only
//! untolerated taints are NoSchedule keeps a pod it already has. Pods are not bound by the
//! controller: as upstream, each is pinned with required node affinity
//! `matchFields metadata.name In [node]` and left to the scheduler.
//!
//! Updates are RollingUpdate (maxUnavailable, maxSurge) or OnDelete, with ControllerRevision
//! history (`revision.rs`; pods carry the revision's hash in `controller-revision-hash`), so
//! `kubectl rollout status|history|undo ds/x` work. Status: desiredNumberScheduled,
//! currentNumberScheduled, numberReady, numberAvailable, numberUnavailable,
//! updatedNumberScheduled, numberMisscheduled, observedGeneration.
//!
//! Decisions are pure functions ([`daemon_tolerations`], [`node_should_run`], [`new_pod`],
//! [`target_node`], [`manage_plan`], [`rolling_plan`], [`compute_status`]).

use super::events::{object_ref, Recorder};
use super::informer::Informers;
use super::podutil::{self, apply_pod_claim, claim, controller_ref, is_available, is_ready};
use super::replicaset::Expectations;
use super::revision::{self, RevisionError};
use crate::scheduler::filter::{node_affinity, tolerates, PodInfo};
use futures::{future, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec,
    PodTemplateSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "daemonset-controller";
/// Deprecated upstream but still set on daemon pods.
pub const TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";
const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// What can stop one DaemonSet sync; the controller retries after a pause.
#[derive(Debug, thiserror::Error)]
pub enum DaemonSetError {
    /// A call to the API server failed.
    #[error("{action} for daemon set {ds}: {source}")]
    Api {
        action: &'static str,
        ds: String,
        #[source]
        source: kube::Error,
    },
    /// Reading or writing the revision history failed.
    #[error("revision history of daemon set {ds}: {source}")]
    Revision {
        ds: String,
        #[source]
        source: RevisionError,
    },
}

// ---------------------------------------------------------------------------------------------
// Pure decisions
// ---------------------------------------------------------------------------------------------

fn toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    }
}

/// The spec's tolerations plus upstream's daemon defaults (`AddOrUpdateDaemonPodTolerations`),
/// each added unless one for the same key and effect is there.
pub fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut out = spec.tolerations.clone().unwrap_or_default();
    let mut defaults = vec![
        toleration("node.kubernetes.io/not-ready", "NoExecute"),
        toleration("node.kubernetes.io/unreachable", "NoExecute"),
        toleration("node.kubernetes.io/disk-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/memory-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/pid-pressure", "NoSchedule"),
        toleration("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        defaults.push(toleration("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for d in defaults {
        if !out.iter().any(|t| t.key == d.key && t.effect == d.effect) {
            out.push(d);
        }
    }
    out
}

/// (shouldRun, shouldContinueRunning) for `node` (upstream `NodeShouldRunDaemonPod`): the node
/// name, selector and affinity must match; untolerated NoSchedule/NoExecute taints stop new
/// pods, and only untolerated NoExecute taints evict a running one.
pub fn node_should_run(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let tpl = ds.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let mut spec = tpl.spec.unwrap_or_default();
    let node_name = node.metadata.name.clone().unwrap_or_default();
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty() && n != node_name) {
        return (false, false);
    }
    spec.tolerations = Some(daemon_tolerations(&spec));
    let pod = Pod { spec: Some(spec), ..Default::default() };
    if node_affinity(&PodInfo::new(&pod), node).is_err() {
        return (false, false);
    }
    let tols = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let taints: &[Taint] = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or(&[]);
    let untolerated = |effect: &str| {
        taints.iter().filter(|t| t.effect == effect).any(|taint| !tols.iter().any(|t| tolerates(t, taint)))
    };
    let no_execute = untolerated("NoExecute");
    let no_schedule = untolerated("NoSchedule");
    (!no_execute && !no_schedule, !no_execute)
}

/// Pins a pod to `node` the upstream way (`ReplaceDaemonSetPodNodeNameNodeAffinity`): the
/// required node affinity becomes the single term `metadata.name In [node]`; preferred terms stay.
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_expressions: None,
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
    };
    let aff = spec.affinity.get_or_insert_with(Affinity::default);
    let na = aff.node_affinity.get_or_insert_with(NodeAffinity::default);
    na.required_during_scheduling_ignored_during_execution = Some(NodeSelector { node_selector_terms: vec![term] });
}

/// The node a daemon pod is for: its `nodeName` once bound, else the node its affinity pins
/// (upstream `GetTargetNodeName`).
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms.iter().flat_map(|t| t.match_fields.iter().flatten()).find_map(|r| {
        (r.key == "metadata.name" && r.operator == "In" && r.values.as_ref().is_some_and(|v| v.len() == 1))
            .then(|| r.values.as_ref().and_then(|v| v.first().cloned()))
            .flatten()
    })
}

/// A new daemon pod for `node` from `template` at revision `hash` (upstream `NewPod` and
/// `syncNodes`): `generateName: <ds>-`, the hash and template generation labels, the daemon
/// tolerations and the node pin.
pub fn new_pod(ds: &DaemonSet, node: &str, template: &PodTemplateSpec, hash: &str) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    let mut labels = tm.labels.unwrap_or_default();
    labels.insert(revision::HASH_LABEL.into(), hash.into());
    if let Some(g) = ds.metadata.generation {
        labels.insert(TEMPLATE_GENERATION_LABEL.into(), g.to_string());
    }
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.tolerations = Some(daemon_tolerations(&spec));
    pin_to_node(&mut spec, node);
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![controller_ref(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// What the plans need to know about one pod on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonPod {
    pub name: String,
    pub uid: String,
    /// At the update revision.
    pub updated: bool,
    pub available: bool,
    /// Phase Failed.
    pub failed: bool,
    pub created: Option<Timestamp>,
}

/// One node as the plans see it: its eligibility and its non-terminating daemon pods.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeState {
    pub node: String,
    pub should_run: bool,
    pub should_continue: bool,
    pub pods: Vec<DaemonPod>,
}

/// Pod creations (node names) and deletions (pods) of one sync.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    pub create: Vec<String>,
    pub delete: Vec<DaemonPod>,
    /// Failed pods among `delete`, for the FailedDaemonPod event.
    pub failed: Vec<(String, String)>,
}

/// Upstream `podsShouldBeOnNode`: a pod where one should run and there is none; failed pods
/// replaced; pods removed from nodes that should not keep them; duplicates removed, keeping the
/// oldest (and, while surging, the newest updated pod too).
pub fn manage_plan(nodes: &[NodeState], surging: bool) -> Changes {
    let mut c = Changes::default();
    for n in nodes {
        if !n.should_continue {
            c.delete.extend(n.pods.iter().cloned());
            continue;
        }
        let (failed, running): (Vec<&DaemonPod>, Vec<&DaemonPod>) = n.pods.iter().partition(|p| p.failed);
        for p in failed {
            c.failed.push((p.name.clone(), n.node.clone()));
            c.delete.push(p.clone());
        }
        if running.is_empty() {
            if n.should_run {
                c.create.push(n.node.clone());
            }
            continue;
        }
        let mut sorted = running.clone();
        sorted.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));
        let mut keep: Vec<&str> = vec![sorted[0].name.as_str()];
        if surging {
            if let Some(newest) = sorted.iter().rev().find(|p| p.updated) {
                keep.push(newest.name.as_str());
            }
        }
        c.delete.extend(sorted.iter().filter(|p| !keep.contains(&p.name.as_str())).map(|p| (*p).clone()));
    }
    c
}

/// (maxSurge, maxUnavailable) against the number of nodes that should run the pod, percentages
/// rounded up; both zero would never progress, so unavailable becomes 1 (upstream
/// `updatedDesiredNodeCounts`).
pub fn fenceposts(ds: &DaemonSet, desired: i32) -> (i32, i32) {
    let ru = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref()).and_then(|u| u.rolling_update.as_ref());
    let scaled = |v: Option<&IntOrString>, default: i32| match v {
        None => default,
        Some(IntOrString::Int(i)) => (*i).max(0),
        Some(IntOrString::String(s)) => {
            let pct = i64::from(s.trim_end_matches('%').parse::<i32>().unwrap_or(0).max(0));
            ((pct * i64::from(desired) + 99) / 100) as i32
        }
    };
    let surge = scaled(ru.and_then(|r| r.max_surge.as_ref()), 0);
    let unavailable = scaled(ru.and_then(|r| r.max_unavailable.as_ref()), 1);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// The next RollingUpdate step (upstream `rollingUpdate`). Without surge: delete unavailable
/// old pods, and available ones while fewer than maxUnavailable pods are unavailable (the manage
/// step then creates their replacements). With surge: start an updated pod next to an old one on
/// up to maxSurge nodes at a time, and delete the old pod once the new one is available.
pub fn rolling_plan(nodes: &[NodeState], max_surge: i32, max_unavailable: i32) -> Changes {
    let mut c = Changes::default();
    // (new, old) on each node that should run the pod, or None when the node holds more than
    // one of either (the manage step sorts that out first).
    let split = |n: &NodeState| -> Option<(Option<DaemonPod>, Option<DaemonPod>)> {
        let news: Vec<&DaemonPod> = n.pods.iter().filter(|p| p.updated).collect();
        let olds: Vec<&DaemonPod> = n.pods.iter().filter(|p| !p.updated).collect();
        (news.len() <= 1 && olds.len() <= 1)
            .then(|| (news.first().map(|p| (*p).clone()), olds.first().map(|p| (*p).clone())))
    };
    if max_surge == 0 {
        let mut unavailable = 0;
        let mut replace = vec![];
        let mut candidates = vec![];
        for n in nodes.iter().filter(|n| n.should_run) {
            let Some((new, old)) = split(n) else { continue };
            match (new, old) {
                (None, None) | (Some(_), Some(_)) => unavailable += 1,
                (Some(new), None) => {
                    if !new.available {
                        unavailable += 1;
                    }
                }
                (None, Some(old)) => {
                    if !old.available {
                        replace.push(old);
                    } else if unavailable < max_unavailable {
                        candidates.push(old);
                    }
                }
            }
        }
        let room = (max_unavailable - unavailable).clamp(0, candidates.len() as i32) as usize;
        c.delete = replace;
        c.delete.extend(candidates.into_iter().take(room));
    } else {
        let mut surged = 0;
        let mut allowed = vec![];
        let mut candidates = vec![];
        for n in nodes.iter().filter(|n| n.should_run) {
            let Some((new, old)) = split(n) else { continue };
            match (new, old) {
                (_, None) => {}
                (None, Some(old)) => {
                    if !old.available {
                        allowed.push(n.node.clone());
                    } else if surged < max_surge {
                        candidates.push(n.node.clone());
                    }
                }
                (Some(new), Some(old)) => {
                    if new.available {
                        c.delete.push(old);
                    } else {
                        surged += 1;
                    }
                }
            }
        }
        let room = (max_surge - surged).clamp(0, candidates.len() as i32) as usize;
        c.create = allowed;
        c.create.extend(candidates.into_iter().take(room));
    }
    c
}

/// Status over the nodes (upstream `updateDaemonSetStatus`): each node's oldest pod decides
/// whether it counts as ready, available and updated.
pub fn compute_status(ds: &DaemonSet, nodes: &[NodeState], ready: &BTreeMap<String, bool>) -> DaemonSetStatus {
    let mut st = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    let (mut available, mut updated) = (0, 0);
    for n in nodes {
        let scheduled = !n.pods.is_empty();
        if n.should_run {
            st.desired_number_scheduled += 1;
            if !scheduled {
                continue;
            }
            st.current_number_scheduled += 1;
            let Some(oldest) = n.pods.iter().min_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)))
            else {
                continue;
            };
            if ready.get(&oldest.name).copied().unwrap_or(false) {
                st.number_ready += 1;
                if oldest.available {
                    available += 1;
                }
            }
            if oldest.updated {
                updated += 1;
            }
        } else if scheduled {
            st.number_misscheduled += 1;
        }
    }
    st.number_available = Some(available);
    st.number_unavailable = Some(st.desired_number_scheduled - available);
    st.updated_number_scheduled = Some(updated);
    st
}

// ---------------------------------------------------------------------------------------------
// The reconciler
// ---------------------------------------------------------------------------------------------

/// Everything a sync needs besides the DaemonSet.
pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub recorder: Recorder,
    pub expectations: Mutex<Expectations>,
}

impl Context {
    fn expectations(&self) -> std::sync::MutexGuard<'_, Expectations> {
        self.expectations.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn dkey(ds: &DaemonSet) -> String {
    format!("{}/{}", ds.namespace().unwrap_or_default(), ds.name_any())
}

/// One idempotent sync of a DaemonSet (upstream `syncDaemonSet`).
pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Context>) -> Result<Action, DaemonSetError> {
    // An empty cache would read as "no nodes, no pods": wait for the first lists.
    if ctx.nodes.wait_until_ready().await.is_err() || ctx.pods.wait_until_ready().await.is_err() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let ns = ds.namespace().unwrap_or_default();
    let name = ds.name_any();
    let key = dkey(&ds);
    let err = |action: &'static str| {
        let k = key.clone();
        move |source| DaemonSetError::Api { action, ds: k, source }
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let ds_api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = ds.uid().unwrap_or_default();
    let spec = ds.spec.clone().unwrap_or_default();
    let deleting = ds.metadata.deletion_timestamp.is_some();

    let ns_pods: Vec<Arc<Pod>> =
        ctx.pods.state().into_iter().filter(|p| p.metadata.namespace.as_deref() == Some(&ns)).collect();
    let c = claim(&uid, deleting, &spec.selector, &ns_pods, |p| &p.metadata);
    let pods = apply_pod_claim(&pods_api, controller_ref(ds.as_ref()), c, &key).await;

    let collision = ds.status.as_ref().and_then(|s| s.collision_count);
    let hist = match revision::sync(&ctx.client, ds.as_ref(), &spec.selector, &spec.template, collision).await {
        Ok(h) => h,
        Err(RevisionError::Collision(n)) => {
            let patch = serde_json::json!({"status": {"collisionCount": collision.unwrap_or(0) + 1}});
            ds_api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err("bumping collisionCount"))?;
            return Err(DaemonSetError::Revision { ds: key, source: RevisionError::Collision(n) });
        }
        Err(source) => return Err(DaemonSetError::Revision { ds: key, source }),
    };
    let hash = revision::hash_of(&hist.update).unwrap_or_default().to_string();
    let template = revision::template_of(&hist.update).unwrap_or_else(|| spec.template.clone());

    // Pods per node; pods for nodes that no longer exist are deleted.
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let nodes: Vec<Arc<Node>> = ctx.nodes.state();
    let node_names: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    let mut per_node: BTreeMap<String, Vec<DaemonPod>> = BTreeMap::new();
    let mut orphaned: Vec<DaemonPod> = vec![];
    let mut ready: BTreeMap<String, bool> = BTreeMap::new();
    for p in pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        let dp = DaemonPod {
            name: p.name_any(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            updated: p.labels().get(revision::HASH_LABEL) == Some(&hash),
            available: is_available(p, min_ready, now),
            failed: p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"),
            created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        };
        ready.insert(dp.name.clone(), is_ready(p));
        match target_node(p) {
            Some(n) if node_names.contains(&n) => per_node.entry(n).or_default().push(dp),
            _ => orphaned.push(dp),
        }
    }
    let states: Vec<NodeState> = nodes
        .iter()
        .map(|n| {
            let (should_run, should_continue) = node_should_run(&ds, n);
            let node = n.name_any();
            NodeState { pods: per_node.remove(&node).unwrap_or_default(), node, should_run, should_continue }
        })
        .collect();

    let synced = ctx.expectations().satisfied(&key, &ns_pods, Instant::now());
    let mut failure = None;
    if synced && !deleting {
        let strategy = spec.update_strategy.as_ref().and_then(|u| u.type_.as_deref()).unwrap_or("RollingUpdate");
        let desired = states.iter().filter(|n| n.should_run).count() as i32;
        let (surge, unavailable) = fenceposts(&ds, desired);
        let rolling = strategy != "OnDelete";
        let mut changes = manage_plan(&states, rolling && surge > 0);
        changes.delete.extend(orphaned);
        if rolling {
            let r = rolling_plan(&states, surge, unavailable);
            for d in r.delete {
                if !changes.delete.iter().any(|x| x.uid == d.uid) {
                    changes.delete.push(d);
                }
            }
            for n in r.create {
                if !changes.create.contains(&n) {
                    changes.create.push(n);
                }
            }
        }
        for (pod, node) in &changes.failed {
            ctx.recorder.warning(
                object_ref(ds.as_ref()),
                "FailedDaemonPod",
                format!("Found failed daemon pod {ns}/{pod} on node {node}, will try to kill it"),
            );
        }
        failure = apply(&ctx, &ds, &pods_api, &changes, &template, &hash).await.err();
    }

    let status = compute_status(&ds, &states, &ready);
    if ds.status.as_ref() != Some(&status) {
        let patch = serde_json::json!({ "status": status });
        ds_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err("updating status"))?;
    }

    let mut live: HashSet<String> = HashSet::new();
    for p in &pods {
        if let Some(h) = p.labels().get(revision::HASH_LABEL) {
            live.insert(revision::revision_name(&name, h));
        }
    }
    live.insert(hist.update.name_any());
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

/// Creates and deletes pods, recording expectations and the upstream events.
async fn apply(
    ctx: &Context,
    ds: &DaemonSet,
    api: &Api<Pod>,
    changes: &Changes,
    template: &PodTemplateSpec,
    hash: &str,
) -> Result<(), DaemonSetError> {
    let key = dkey(ds);
    let creates = future::join_all(changes.create.iter().map(|node| {
        let pod = new_pod(ds, node, template, hash);
        async move { api.create(&PostParams::default(), &pod).await }
    }))
    .await;
    let mut created = vec![];
    let mut failure = None;
    for r in creates {
        match r {
            Ok(p) => {
                ctx.recorder.normal(object_ref(ds), "SuccessfulCreate", format!("Created pod: {}", p.name_any()));
                created.push(p.name_any());
            }
            Err(e) => {
                ctx.recorder.warning(object_ref(ds), "FailedCreate", format!("Error creating: {e}"));
                failure = Some(DaemonSetError::Api { action: "creating pod", ds: key.clone(), source: e });
            }
        }
    }
    let doomed: Vec<String> = changes.delete.iter().map(|p| p.name.clone()).collect();
    ctx.expectations().expect(&key, created, doomed, Instant::now());
    let deletes = future::join_all(changes.delete.iter().map(|p| {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(p.uid.clone()), resource_version: None }),
            ..Default::default()
        };
        async move { (p.name.clone(), api.delete(&p.name, &dp).await) }
    }))
    .await;
    for (pod, r) in deletes {
        match r {
            Ok(_) => ctx.recorder.normal(object_ref(ds), "SuccessfulDelete", format!("Deleted pod: {pod}")),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => {
                ctx.recorder.warning(object_ref(ds), "FailedDelete", format!("Error deleting: {e}"));
                ctx.expectations().forget(&key);
                failure = Some(DaemonSetError::Api { action: "deleting pod", ds: key.clone(), source: e });
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn error_policy(ds: Arc<DaemonSet>, e: &DaemonSetError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, ds = %dkey(&ds), "daemon set sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the controller until `shutdown` fires.
/// What of a Node decides where daemon pods run: its labels, taints, schedulability and
/// readiness (readiness gates rolling updates' availability). Heartbeats change none of these.
pub fn node_fingerprint(n: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    n.metadata.labels.hash(&mut h);
    if let Some(spec) = &n.spec {
        spec.unschedulable.hash(&mut h);
        for t in spec.taints.iter().flatten() {
            (&t.key, &t.value, &t.effect).hash(&mut h);
        }
    }
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    ready.hash(&mut h);
    h.finish()
}

pub async fn run(client: kube::Client, informers: Informers, shutdown: CancellationToken) {
    let pods = informers.pods.store();
    let (nodes, node_writer) = reflector::store::<Node>();
    let controller = Controller::new(Api::<DaemonSet>::all(client.clone()), watcher::Config::default());
    let sets = controller.store();
    let sets2 = sets.clone();
    let pod_events =
        podutil::pod_triggers(&informers.pods, sets, |s: &DaemonSet| s.spec.as_ref().map(|s| s.selector.clone()));
    // A node change that may change where daemon pods belong (labels, taints, schedulability,
    // readiness; not the kubelet's heartbeats, as upstream's `shouldIgnoreNodeUpdate`): look at
    // every DaemonSet.
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let node_events =
        reflector::reflector(node_writer, watcher(Api::<Node>::all(client.clone()), watcher::Config::default()))
            .filter_map(move |ev| {
                let all = || sets2.state().iter().map(|s| ObjectRef::from_obj(s.as_ref())).collect();
                let refs: Vec<ObjectRef<DaemonSet>> = match ev {
                    // The initial list is covered by InitDone.
                    Ok(watcher::Event::InitApply(n)) => {
                        seen.insert(n.name_any(), node_fingerprint(&n));
                        vec![]
                    }
                    Ok(watcher::Event::Apply(n)) => {
                        let fp = node_fingerprint(&n);
                        if seen.insert(n.name_any(), fp) == Some(fp) {
                            vec![]
                        } else {
                            all()
                        }
                    }
                    Ok(watcher::Event::Delete(n)) => {
                        seen.remove(&n.name_any());
                        all()
                    }
                    Ok(watcher::Event::InitDone) => all(),
                    Ok(_) => vec![],
                    Err(e) => {
                        tracing::warn!(error = %e, "daemonset-controller: node watch failed; retrying");
                        vec![]
                    }
                };
                future::ready(Some(futures::stream::iter(refs)))
            })
            .flatten();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), COMPONENT, shutdown.clone()),
        client,
        pods,
        nodes,
        expectations: Mutex::new(Expectations::default()),
    });
    controller
        .reconcile_on(pod_events)
        .reconcile_on(node_events)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "daemonset-controller");
            }
            future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::podutil::tests::ts;
    use k8s_openapi::api::apps::v1::{DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn ds(node_selector: Option<(&str, &str)>, tolerations: Vec<Toleration>) -> DaemonSet {
        DaemonSet {
            metadata: ObjectMeta {
                name: Some("agent".into()),
                namespace: Some("kube-system".into()),
                uid: Some("ds-uid".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(DaemonSetSpec {
                selector: LabelSelector::default(),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some([("app".to_string(), "agent".to_string())].into()),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        node_selector: node_selector.map(|(k, v)| [(k.to_string(), v.to_string())].into()),
                        tolerations: Some(tolerations),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn node(name: &str, labels: &[(&str, &str)], taints: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(
                    taints
                        .iter()
                        .map(|(k, e)| Taint { key: k.to_string(), effect: e.to_string(), ..Default::default() })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn daemon_pods_tolerate_the_upstream_node_condition_taints() {
        let tols = daemon_tolerations(&PodSpec::default());
        let has = |k: &str, e: &str| tols.iter().any(|t| t.key.as_deref() == Some(k) && t.effect.as_deref() == Some(e));
        assert!(has("node.kubernetes.io/not-ready", "NoExecute"));
        assert!(has("node.kubernetes.io/unreachable", "NoExecute"));
        assert!(has("node.kubernetes.io/disk-pressure", "NoSchedule"));
        assert!(has("node.kubernetes.io/memory-pressure", "NoSchedule"));
        assert!(has("node.kubernetes.io/pid-pressure", "NoSchedule"));
        assert!(has("node.kubernetes.io/unschedulable", "NoSchedule"));
        assert!(!has("node.kubernetes.io/network-unavailable", "NoSchedule"));
        let host = daemon_tolerations(&PodSpec { host_network: Some(true), ..Default::default() });
        assert!(host.iter().any(|t| t.key.as_deref() == Some("node.kubernetes.io/network-unavailable")));
        assert_eq!(daemon_tolerations(&PodSpec { tolerations: Some(tols.clone()), ..Default::default() }).len(), 6);
    }

    #[test]
    fn nodes_run_a_daemon_pod_when_selector_and_taints_allow() {
        let d = ds(Some(("disk", "ssd")), vec![]);
        assert_eq!(node_should_run(&d, &node("a", &[("disk", "ssd")], &[])), (true, true));
        assert_eq!(node_should_run(&d, &node("b", &[("disk", "hdd")], &[])), (false, false), "selector");
        assert_eq!(
            node_should_run(&d, &node("c", &[("disk", "ssd")], &[("dedicated", "NoSchedule")])),
            (false, true),
            "an untolerated NoSchedule taint keeps a running pod"
        );
        assert_eq!(node_should_run(&d, &node("d", &[("disk", "ssd")], &[("dedicated", "NoExecute")])), (false, false));
        assert_eq!(
            node_should_run(&d, &node("e", &[("disk", "ssd")], &[("node.kubernetes.io/unschedulable", "NoSchedule")])),
            (true, true),
            "cordoned nodes still run daemons"
        );
        let tolerant = ds(
            None,
            vec![Toleration { key: Some("dedicated".into()), operator: Some("Exists".into()), ..Default::default() }],
        );
        assert_eq!(node_should_run(&tolerant, &node("f", &[], &[("dedicated", "NoExecute")])), (true, true));
    }

    #[test]
    fn required_node_affinity_limits_the_nodes() {
        let mut d = ds(None, vec![]);
        if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            spec.affinity = Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "zone".into(),
                                operator: "In".into(),
                                values: Some(vec!["a".into()]),
                            }]),
                            match_fields: None,
                        }],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        assert!(node_should_run(&d, &node("x", &[("zone", "a")], &[])).0);
        assert!(!node_should_run(&d, &node("y", &[("zone", "b")], &[])).0);
    }

    #[test]
    fn new_pods_are_pinned_to_their_node_by_match_fields() {
        let d = ds(Some(("disk", "ssd")), vec![]);
        let tpl = d.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        let p = new_pod(&d, "n1", &tpl, "h1");
        assert_eq!(target_node(&p).as_deref(), Some("n1"));
        assert_eq!(p.spec.as_ref().and_then(|s| s.node_name.clone()), None, "left to the scheduler");
        assert_eq!(p.metadata.generate_name.as_deref(), Some("agent-"));
        let labels = p.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(revision::HASH_LABEL).map(String::as_str), Some("h1"));
        assert_eq!(labels.get(TEMPLATE_GENERATION_LABEL).map(String::as_str), Some("3"));
        assert_eq!(p.spec.as_ref().and_then(|s| s.tolerations.as_ref()).map(Vec::len), Some(6));
        let owner = p.metadata.owner_references.and_then(|o| o.into_iter().next()).unwrap_or_default();
        assert_eq!((owner.kind.as_str(), owner.controller), ("DaemonSet", Some(true)));
    }

    fn dp(name: &str, updated: bool, available: bool, created: i64) -> DaemonPod {
        DaemonPod {
            name: name.into(),
            uid: format!("{name}-uid"),
            updated,
            available,
            failed: false,
            created: Some(ts(created)),
        }
    }

    fn ns(node: &str, run: bool, keep: bool, pods: Vec<DaemonPod>) -> NodeState {
        NodeState { node: node.into(), should_run: run, should_continue: keep, pods }
    }

    fn deleted(c: &Changes) -> Vec<&str> {
        c.delete.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn manage_creates_missing_pods_and_removes_unwanted_ones() {
        let nodes = vec![
            ns("empty", true, true, vec![]),
            ns("gone", false, false, vec![dp("stray", true, true, 1)]),
            ns("twice", true, true, vec![dp("newer", true, true, 5), dp("older", true, true, 1)]),
            ns("tainted", false, true, vec![dp("stays", true, true, 1)]),
            ns("failed", true, true, vec![DaemonPod { failed: true, ..dp("crashed", true, false, 1) }]),
        ];
        let c = manage_plan(&nodes, false);
        assert_eq!(c.create, ["empty", "failed"]);
        assert_eq!(deleted(&c), ["stray", "newer", "crashed"]);
        assert_eq!(c.failed, [("crashed".to_string(), "failed".to_string())]);
    }

    #[test]
    fn rolling_update_without_surge_deletes_within_max_unavailable() {
        let nodes = vec![
            ns("a", true, true, vec![dp("a-old", false, true, 1)]),
            ns("b", true, true, vec![dp("b-old", false, true, 1)]),
            ns("c", true, true, vec![dp("c-old", false, false, 1)]),
        ];
        let c = rolling_plan(&nodes, 0, 1);
        assert_eq!(deleted(&c), ["c-old", "a-old"], "unavailable old pods go at once, then one more");
        let progressing = vec![
            ns("a", true, true, vec![dp("a-new", true, false, 2)]),
            ns("b", true, true, vec![dp("b-old", false, true, 1)]),
        ];
        assert!(rolling_plan(&progressing, 0, 1).delete.is_empty(), "waits for a-new to be available");
        let next = vec![
            ns("a", true, true, vec![dp("a-new", true, true, 2)]),
            ns("b", true, true, vec![dp("b-old", false, true, 1)]),
        ];
        assert_eq!(deleted(&rolling_plan(&next, 0, 1)), ["b-old"]);
    }

    #[test]
    fn rolling_update_with_surge_starts_new_pods_before_removing_old_ones() {
        let nodes = vec![
            ns("a", true, true, vec![dp("a-old", false, true, 1)]),
            ns("b", true, true, vec![dp("b-old", false, true, 1)]),
        ];
        let c = rolling_plan(&nodes, 1, 0);
        assert_eq!(c.create, ["a"]);
        assert!(c.delete.is_empty());
        let surged = vec![
            ns("a", true, true, vec![dp("a-old", false, true, 1), dp("a-new", true, true, 2)]),
            ns("b", true, true, vec![dp("b-old", false, true, 1)]),
        ];
        let c = rolling_plan(&surged, 1, 0);
        assert_eq!(deleted(&c), ["a-old"]);
        assert_eq!(c.create, ["b"]);
        let manage = manage_plan(&surged, true);
        assert!(manage.delete.is_empty(), "while surging the old and the new pod may share a node");
    }

    #[test]
    fn fenceposts_scale_percentages_up_and_never_both_zero() {
        let mut d = ds(None, vec![]);
        assert_eq!(fenceposts(&d, 10), (0, 1));
        if let Some(s) = d.spec.as_mut() {
            s.update_strategy = Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            });
        }
        assert_eq!(fenceposts(&d, 10), (3, 0));
        if let Some(ru) =
            d.spec.as_mut().and_then(|s| s.update_strategy.as_mut()).and_then(|u| u.rolling_update.as_mut())
        {
            ru.max_surge = Some(IntOrString::Int(0));
        }
        assert_eq!(fenceposts(&d, 10), (0, 1));
    }

    #[test]
    fn status_counts_desired_scheduled_ready_updated_and_misscheduled_nodes() {
        let d = ds(None, vec![]);
        let nodes = vec![
            ns("a", true, true, vec![dp("a1", true, true, 1)]),
            ns("b", true, true, vec![dp("b1", false, false, 1)]),
            ns("c", true, true, vec![]),
            ns("d", false, true, vec![dp("d1", true, true, 1)]),
        ];
        let ready: BTreeMap<String, bool> = [("a1".to_string(), true), ("b1".to_string(), true)].into();
        let st = compute_status(&d, &nodes, &ready);
        assert_eq!(st.desired_number_scheduled, 3);
        assert_eq!(st.current_number_scheduled, 2);
        assert_eq!(st.number_ready, 2);
        assert_eq!(st.number_available, Some(1));
        assert_eq!(st.number_unavailable, Some(2));
        assert_eq!(st.updated_number_scheduled, Some(1));
        assert_eq!(st.number_misscheduled, 1);
        assert_eq!(st.observed_generation, Some(3));
    }

    #[test]
    fn node_heartbeats_do_not_change_the_fingerprint_but_labels_taints_and_readiness_do() {
        let node = |labels: &[(&str, &str)], taint: Option<&str>, ready: &str, heartbeat: &str| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "n1", "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
                "spec": {"taints": taint.map(|t| vec![serde_json::json!({"key": t, "effect": "NoSchedule"})]).unwrap_or_default()},
                "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": heartbeat}]},
            }))
            .expect("node")
        };
        let base = node_fingerprint(&node(&[("a", "1")], None, "True", "2026-01-01T00:00:00Z"));
        assert_eq!(base, node_fingerprint(&node(&[("a", "1")], None, "True", "2026-01-01T00:00:10Z")));
        assert_ne!(base, node_fingerprint(&node(&[("a", "2")], None, "True", "2026-01-01T00:00:00Z")));
        assert_ne!(base, node_fingerprint(&node(&[("a", "1")], Some("t"), "True", "2026-01-01T00:00:00Z")));
        assert_ne!(base, node_fingerprint(&node(&[("a", "1")], None, "False", "2026-01-01T00:00:00Z")));
    }
}
