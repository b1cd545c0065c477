//! The ReplicaSet controller (upstream `pkg/controller/replicaset`): keeps `spec.replicas` pods
//! from the template running, adopts matching orphans and releases pods that stopped matching,
//! and reports `status` (replicas, fullyLabeledReplicas, readyReplicas, availableReplicas,
//! observedGeneration).
//!
//! The same sync serves ReplicationControllers (`replicationcontroller.rs`): anything that
//! can be seen as a ReplicaSet ([`Replicated`]) is reconciled by [`reconcile`], with its own
//! kind in owner references, events and status writes.
//!
//! Decisions are pure functions ([`pod_from_template`], [`victims`], [`compute_status`],
//! [`Expectations`]); [`reconcile`] only reads the pod cache and performs them. Like upstream it
//! records *expectations* for the pods it created or deleted and makes no further
//! create/delete decision for that ReplicaSet until the watch has shown them, so a reconcile
//! running ahead of the cache never doubles a scale-up.

use super::events::{object_ref, Recorder};
use super::informer::Informers;
use super::podutil::{self, apply_pod_claim, claim, controller_ref, is_active, is_available, is_ready};
use futures::{future, StreamExt};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "replicaset-controller";
/// Upstream `BurstReplicas`: at most this many creations or deletions per sync.
const BURST_REPLICAS: usize = 500;
/// Upstream `ExpectationsTimeout`: stop waiting for a watch event that never came.
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

/// What can stop one ReplicaSet sync; the controller retries it after a pause.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaSetError {
    /// A call to the API server failed.
    #[error("{action} for replica set {rs}: {source}")]
    Api {
        action: &'static str,
        rs: String,
        #[source]
        source: kube::Error,
    },
}

/// Pod creations and deletions this controller made and has not seen in its cache yet,
/// per ReplicaSet (`namespace/name`).
#[derive(Debug, Default)]
pub struct Expectations {
    pending: HashMap<String, Expected>,
}

#[derive(Debug)]
struct Expected {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Instant,
}

impl Expectations {
    /// Remembers pods just created and pods just asked to be deleted.
    pub fn expect(&mut self, rs: &str, creates: Vec<String>, deletes: Vec<String>, now: Instant) {
        if creates.is_empty() && deletes.is_empty() {
            return;
        }
        let e = self.pending.entry(rs.to_string()).or_insert_with(|| Expected {
            creates: HashSet::new(),
            deletes: HashSet::new(),
            since: now,
        });
        e.creates.extend(creates);
        e.deletes.extend(deletes);
        e.since = now;
    }

    /// Whether the cache (`pods`, the namespace's pods) has caught up with every expectation.
    /// A deletion counts as seen once the pod has a deletionTimestamp, as upstream.
    pub fn satisfied(&mut self, rs: &str, pods: &[Arc<Pod>], now: Instant) -> bool {
        let Some(e) = self.pending.get_mut(rs) else { return true };
        let by_name: HashMap<&str, &Pod> =
            pods.iter().filter_map(|p| Some((p.metadata.name.as_deref()?, p.as_ref()))).collect();
        e.creates.retain(|n| !by_name.contains_key(n.as_str()));
        e.deletes.retain(|n| by_name.get(n.as_str()).is_some_and(|p| p.metadata.deletion_timestamp.is_none()));
        if (e.creates.is_empty() && e.deletes.is_empty()) || now.duration_since(e.since) >= EXPECTATIONS_TIMEOUT {
            self.pending.remove(rs);
            return true;
        }
        false
    }

    pub fn forget(&mut self, rs: &str) {
        self.pending.remove(rs);
    }
}

/// A workload kind the ReplicaSet logic manages: it can be viewed as a ReplicaSet (same name,
/// namespace, uid, generation; selector, replicas, minReadySeconds, template and status).
pub trait Replicated:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    fn as_replica_set(&self) -> ReplicaSet;
}

impl Replicated for ReplicaSet {
    fn as_replica_set(&self) -> ReplicaSet {
        self.clone()
    }
}

/// A new pod for `rs` (upstream `GetPodFromTemplate`): the template's labels, annotations,
/// finalizers and spec, `generateName: <rs>-`, and a controller reference.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    pod_from_template_for(rs, rs)
}

/// [`pod_from_template`] with the controller reference pointing at `owner`, the object `rs`
/// views.
pub fn pod_from_template_for<K: Resource<DynamicType = ()>>(owner: &K, rs: &ReplicaSet) -> Pod {
    let tpl = rs.spec.as_ref().and_then(|s| s.template.clone()).unwrap_or_default();
    let tm = tpl.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.metadata.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![controller_ref(owner)]),
            ..Default::default()
        },
        spec: tpl.spec,
        status: None,
    }
}

/// The `count` pods to delete when scaling down, in upstream `ActivePodsWithRanks` order:
/// unscheduled before scheduled, Pending before Unknown before Running, not ready before ready,
/// pods doubled up on a node before lone ones, shorter-ready before longer-ready, more restarts
/// before fewer, newer before older.
pub fn victims(pods: &[Arc<Pod>], count: usize) -> Vec<Arc<Pod>> {
    let node_of = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for p in pods {
        if let Some(n) = node_of(p) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let mut ranked: Vec<Arc<Pod>> = pods.to_vec();
    ranked.sort_by_key(|p| {
        let phase = match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Unknown") => 1,
            Some("Running") => 2,
            _ => 0,
        };
        let node = node_of(p);
        let rank = node.as_ref().and_then(|n| per_node.get(n)).copied().unwrap_or(0);
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
            .unwrap_or(0);
        (
            node.is_some(),
            phase,
            is_ready(p),
            Reverse(rank),
            Reverse(podutil::ready_since(p).flatten()),
            Reverse(restarts),
            Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
        )
    });
    ranked.truncate(count);
    ranked
}

/// Status from the active pods the ReplicaSet owns (upstream `calculateStatus`).
pub fn compute_status(rs: &ReplicaSet, active: &[Arc<Pod>], now: Timestamp) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let tpl_labels =
        spec.and_then(|s| s.template.as_ref()).and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone());
    let fully_labeled = active
        .iter()
        .filter(|p| {
            tpl_labels.iter().flatten().all(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully_labeled as i32),
        ready_replicas: Some(active.iter().filter(|p| is_ready(p)).count() as i32),
        available_replicas: Some(active.iter().filter(|p| is_available(p, min_ready, now)).count() as i32),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    }
}

/// Sets or clears the `ReplicaFailure` condition after managing replicas (upstream
/// `calculateStatus`): set when creating or deleting pods failed, removed once it works again.
pub fn set_failure(status: &mut ReplicaSetStatus, failure: Option<(&str, String)>, now: Timestamp) {
    let was_absent = status.conditions.is_none();
    let conds = status.conditions.get_or_insert_with(Vec::new);
    let existing = conds.iter().position(|c| c.type_ == "ReplicaFailure");
    match (failure, existing) {
        (Some((reason, message)), None) => conds.push(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(Time(now)),
        }),
        (None, Some(i)) => {
            conds.remove(i);
        }
        _ => {}
    }
    if was_absent && status.conditions.as_ref().is_some_and(|c| c.is_empty()) {
        // Nothing was there and nothing is: keep the field absent, as the stored object has it
        // (otherwise every sync would see a difference and write again).
        status.conditions = None;
    }
}

/// Everything a sync needs besides the ReplicaSet itself.
pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub recorder: Recorder,
    pub expectations: Mutex<Expectations>,
}

impl Context {
    fn expectations(&self) -> std::sync::MutexGuard<'_, Expectations> {
        self.expectations.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key<K: Resource>(rs: &K) -> String {
    format!("{}/{}", rs.meta().namespace.as_deref().unwrap_or_default(), rs.meta().name.as_deref().unwrap_or_default())
}

/// One idempotent sync of a ReplicaSet or ReplicationController (upstream `syncReplicaSet`).
pub async fn reconcile<K: Replicated>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, ReplicaSetError> {
    let rs = Arc::new(obj.as_replica_set());
    let owner: &K = obj.as_ref();
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let rs_key = key(rs.as_ref());
    let api_err = |action: &'static str| {
        let rs = rs_key.clone();
        move |source| ReplicaSetError::Api { action, rs, source }
    };
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = rs.uid().unwrap_or_default();
    let ns_pods: Vec<Arc<Pod>> =
        ctx.pods.state().into_iter().filter(|p| p.metadata.namespace.as_deref() == Some(&ns)).collect();
    let selector = rs.spec.as_ref().map(|s| s.selector.clone()).unwrap_or_default();
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let c = claim(&uid, deleting, &selector, &ns_pods, |p| &p.metadata);

    let owned = apply_pod_claim(&pods_api, controller_ref(owner), c, &rs_key).await;
    let active: Vec<Arc<Pod>> = owned.into_iter().filter(|p| is_active(p)).collect();

    let synced = ctx.expectations().satisfied(&rs_key, &ns_pods, Instant::now());
    let mut manage_err = None;
    if synced && !deleting {
        let want = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
        if active.len() < want {
            let n = (want - active.len()).min(BURST_REPLICAS);
            let (created, err) = create_pods(&ctx, owner, &rs, &pods_api, n).await;
            ctx.expectations().expect(&rs_key, created, vec![], Instant::now());
            manage_err = err;
        } else if active.len() > want {
            let doomed = victims(&active, (active.len() - want).min(BURST_REPLICAS));
            let names: Vec<String> = doomed.iter().map(|p| p.name_any()).collect();
            ctx.expectations().expect(&rs_key, vec![], names, Instant::now());
            let results = future::join_all(doomed.iter().map(|p| {
                let api = pods_api.clone();
                async move { (p.name_any(), api.delete(&p.name_any(), &DeleteParams::default()).await) }
            }))
            .await;
            for (pod, r) in results {
                match r {
                    Ok(_) => ctx.recorder.normal(object_ref(owner), "SuccessfulDelete", format!("Deleted pod: {pod}")),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        ctx.recorder.warning(object_ref(owner), "FailedDelete", format!("Error deleting: {e}"));
                        // The watch will never show this deletion: stop waiting for it.
                        ctx.expectations().forget(&rs_key);
                        manage_err =
                            Some(ReplicaSetError::Api { action: "deleting pod", rs: rs_key.clone(), source: e });
                    }
                }
            }
        }
    }

    let now = Timestamp::now();
    let mut status = compute_status(&rs, &active, now);
    if synced && !deleting {
        let failure = manage_err.as_ref().map(|e| {
            let reason = if matches!(e, ReplicaSetError::Api { action: "creating pod", .. }) {
                "FailedCreate"
            } else {
                "FailedDelete"
            };
            (reason, e.to_string())
        });
        set_failure(&mut status, failure, now);
    }
    if rs.status.as_ref() != Some(&status) {
        let rs_api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({ "status": status });
        rs_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("updating status"))?;
    }
    if let Some(e) = manage_err {
        return Err(e);
    }
    let min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let refs: Vec<&Pod> = active.iter().map(|p| p.as_ref()).collect();
    Ok(match podutil::next_available_in(&refs, min_ready, now) {
        // Upstream re-queues after minReadySeconds so availability shows up without an event.
        Some(secs) => Action::requeue(Duration::from_secs(secs.max(1) as u64)),
        None => Action::await_change(),
    })
}

/// Creates `n` pods in slow-start batches of 1, 2, 4, … stopping at the first failing batch
/// (upstream `slowStartBatch`), so a quota or validation error costs one call, not hundreds.
async fn create_pods<K: Replicated>(
    ctx: &Context,
    owner: &K,
    rs: &ReplicaSet,
    api: &Api<Pod>,
    n: usize,
) -> (Vec<String>, Option<ReplicaSetError>) {
    let pod = pod_from_template_for(owner, rs);
    let pp = PostParams::default();
    let mut created = vec![];
    let mut batch = 1;
    let mut remaining = n;
    while remaining > 0 {
        let size = batch.min(remaining);
        let results = future::join_all((0..size).map(|_| api.create(&pp, &pod))).await;
        let mut failed = None;
        for r in results {
            match r {
                Ok(p) => {
                    let name = p.name_any();
                    ctx.recorder.normal(object_ref(owner), "SuccessfulCreate", format!("Created pod: {name}"));
                    created.push(name);
                }
                Err(e) => {
                    ctx.recorder.warning(object_ref(owner), "FailedCreate", format!("Error creating: {e}"));
                    failed = Some(e);
                }
            }
        }
        if let Some(source) = failed {
            tracing::warn!(error = %source, rs = %key(rs), "creating pods failed; skipping the rest of this scale-up");
            return (created, Some(ReplicaSetError::Api { action: "creating pod", rs: key(rs), source }));
        }
        remaining -= size;
        batch *= 2;
    }
    (created, None)
}

fn error_policy<K: Replicated>(rs: Arc<K>, err: &ReplicaSetError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, rs = %key(rs.as_ref()), kind = %K::kind(&()), "sync failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the ReplicaSet controller until `shutdown` fires.
pub async fn run(client: kube::Client, informers: Informers, shutdown: CancellationToken) {
    run_for::<ReplicaSet>(client, informers, COMPONENT, shutdown).await
}

/// Runs the controller for kind `K` until `shutdown` fires, recording events as `component`.
pub async fn run_for<K: Replicated>(
    client: kube::Client,
    informers: Informers,
    component: &'static str,
    shutdown: CancellationToken,
) {
    let controller = Controller::new(Api::<K>::all(client.clone()), watcher::Config::default());
    let sets = controller.store();
    let pod_events =
        podutil::pod_triggers(&informers.pods, sets, |rs: &K| rs.as_replica_set().spec.map(|s| s.selector));
    let pods = informers.pods.store();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), component, shutdown.clone()),
        client,
        pods,
        expectations: Mutex::new(Expectations::default()),
    });
    controller
        .reconcile_on(pod_events)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, component, "controller");
            }
            future::ready(())
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::podutil::tests::{ready, ts};
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodSpec, PodStatus, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn rs(replicas: i32) -> ReplicaSet {
        let labels: std::collections::BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                namespace: Some("default".into()),
                uid: Some("rs-uid".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                    spec: Some(PodSpec::default()),
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, node: Option<&str>, phase: &str, created: i64) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                creation_timestamp: Some(Time(ts(created))),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: node.map(String::from), ..Default::default() }),
            status: Some(PodStatus { phase: Some(phase.into()), ..Default::default() }),
        })
    }

    fn names(v: &[Arc<Pod>]) -> Vec<String> {
        v.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn pods_from_the_template_are_named_after_and_controlled_by_the_replica_set() {
        let p = pod_from_template(&rs(1));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str), Some("web"));
        let owner = p.metadata.owner_references.as_ref().and_then(|o| o.first()).cloned().unwrap_or_default();
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("ReplicaSet", "web-abc", "rs-uid"));
        assert_eq!((owner.controller, owner.block_owner_deletion), (Some(true), Some(true)));
    }

    #[test]
    fn scale_down_removes_unscheduled_then_pending_then_not_ready_pods_first() {
        let mut running_ready = (*pod("running-ready", Some("n1"), "Running", 10)).clone();
        ready(&mut running_ready, 20);
        let pods = vec![
            Arc::new(running_ready),
            pod("running-not-ready", Some("n2"), "Running", 10),
            pod("pending", Some("n3"), "Pending", 10),
            pod("unscheduled", None, "Pending", 10),
        ];
        assert_eq!(names(&victims(&pods, 4)), ["unscheduled", "pending", "running-not-ready", "running-ready"]);
    }

    #[test]
    fn scale_down_prefers_doubled_up_restarting_and_newer_pods() {
        let pods = vec![pod("old-alone", Some("n1"), "Running", 10), pod("new-alone", Some("n2"), "Running", 20)];
        assert_eq!(names(&victims(&pods, 1)), ["new-alone"], "newer first");
        let pods = vec![
            pod("alone", Some("n1"), "Running", 30),
            pod("crowded-a", Some("n2"), "Running", 10),
            pod("crowded-b", Some("n2"), "Running", 10),
        ];
        assert!(names(&victims(&pods, 1))[0].starts_with("crowded"), "pods sharing a node go first");
        let mut restarting = (*pod("restarting", Some("n1"), "Running", 10)).clone();
        if let Some(s) = restarting.status.as_mut() {
            s.container_statuses = Some(vec![ContainerStatus { restart_count: 5, ..Default::default() }]);
        }
        let pods = vec![pod("steady", Some("n2"), "Running", 10), Arc::new(restarting)];
        assert_eq!(names(&victims(&pods, 1)), ["restarting"]);
    }

    #[test]
    fn status_counts_ready_available_and_fully_labelled_pods() {
        let mut set = rs(3);
        if let Some(s) = set.spec.as_mut() {
            s.min_ready_seconds = Some(10);
        }
        let mut a = (*pod("a", Some("n"), "Running", 0)).clone();
        ready(&mut a, 100);
        let mut b = (*pod("b", Some("n"), "Running", 0)).clone();
        ready(&mut b, 195);
        let mut c = (*pod("c", Some("n"), "Pending", 0)).clone();
        c.metadata.labels = Some(Default::default());
        let st = compute_status(&set, &[Arc::new(a), Arc::new(b), Arc::new(c)], ts(200));
        assert_eq!(st.replicas, 3);
        assert_eq!(st.fully_labeled_replicas, Some(2));
        assert_eq!(st.ready_replicas, Some(2));
        assert_eq!(st.available_replicas, Some(1), "b has been ready for 5 of the 10 seconds");
        assert_eq!(st.observed_generation, Some(3));
    }

    #[test]
    fn a_failed_create_sets_replica_failure_until_creation_works_again() {
        let mut st = ReplicaSetStatus::default();
        set_failure(&mut st, Some(("FailedCreate", "quota exceeded".into())), ts(1));
        let c = st.conditions.clone().unwrap_or_default();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].type_.as_str(), c[0].reason.as_deref()), ("ReplicaFailure", Some("FailedCreate")));
        set_failure(&mut st, None, ts(2));
        assert_eq!(st.conditions, Some(vec![]), "an explicit empty list clears it through a merge patch");
        let mut clean = ReplicaSetStatus::default();
        set_failure(&mut clean, None, ts(2));
        assert_eq!(clean.conditions, None);
    }

    #[test]
    fn expectations_hold_back_decisions_until_the_cache_shows_the_pods() {
        let t0 = Instant::now();
        let mut e = Expectations::default();
        e.expect("default/web", vec!["web-1".into()], vec!["web-0".into()], t0);
        let old = pod("web-0", None, "Running", 0);
        assert!(
            !e.satisfied("default/web", std::slice::from_ref(&old), t0),
            "neither the creation nor the deletion seen"
        );
        let created = pod("web-1", None, "Pending", 0);
        assert!(!e.satisfied("default/web", &[old, created.clone()], t0), "deletion not seen");
        assert!(e.satisfied("default/web", &[created], t0));
        assert!(e.satisfied("default/other", &[], t0), "no expectations, nothing to wait for");
    }

    #[test]
    fn expectations_count_a_terminating_pod_as_deleted_and_expire() {
        let t0 = Instant::now();
        let mut e = Expectations::default();
        e.expect("k", vec![], vec!["p".into()], t0);
        let mut p = (*pod("p", None, "Running", 0)).clone();
        p.metadata.deletion_timestamp = Some(Time(ts(1)));
        assert!(e.satisfied("k", &[Arc::new(p)], t0));
        e.expect("k", vec!["never".into()], vec![], t0);
        assert!(!e.satisfied("k", &[], t0));
        assert!(e.satisfied("k", &[], t0 + EXPECTATIONS_TIMEOUT));
    }
}
