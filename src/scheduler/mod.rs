//! The scheduler: watches unbound pods and nodes through the API, filters and scores nodes
//! (pure functions in `filter.rs` and `score.rs`), and binds each pod with the `binding`
//! subresource, as kube-scheduler does.
//!
//! Shape, after upstream: watch events feed a [`cache::Cache`] (nodes and the pods on them) and
//! a [`queue::Queue`] (pods waiting for a node). One loop pops a pod, picks a node with
//! [`select_node`], *assumes* the pod there so the next pod already sees its requests, and hands
//! the API call to a binding task, so a slow bind never holds up the next decision. A pod that
//! fits nowhere gets `PodScheduled=False/Unschedulable` and a `FailedScheduling` event, then waits
//! in the queue for the cluster to change. In an HA group only the holder of the
//! `kube-system/kube-scheduler` Lease schedules (see `controllers::leader`).
//!
//! Plugins with cluster-wide state (`interpod.rs`, `spread.rs`, `volumes.rs`) have a PreFilter
//! step run once per attempt ([`filter::PodInfo::prepare`]) over counts the cache keeps per label
//! group and node, so a pod costs O(groups + nodes), not O(pods × nodes). Default topology
//! spreading scores a pod by the selectors of the Services and controller that select it, which
//! `selectors.rs` keeps (selectors only) from watches that, being score-only, retry no pods.
//! When a pod fits nowhere, `preemption.rs` dry-runs every filter without lower-priority pods
//! to find victims; the loop deletes them, records
//! `status.nominatedNodeName` and keeps the room reserved until the pod is retried. A pod with
//! an unbound WaitForFirstConsumer claim is bound right after its claim gets
//! `volume.kubernetes.io/selected-node` (the kubelet waits for the claim to be bound).

pub mod cache;
pub mod filter;
pub mod interpod;
pub mod labels;
pub mod preemption;
pub mod queue;
pub mod resources;
pub mod score;
pub mod selectors;
pub mod spread;
pub mod volumes;

use crate::controllers::events::{object_ref, Recorder};
use crate::controllers::informer::{self, PodHub};
use cache::{pod_key, Cache};
use filter::PodInfo;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Binding, Namespace, Node, ObjectReference, PersistentVolume, PersistentVolumeClaim, Pod, PodCondition,
    ReplicationController, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use queue::{Attempt, Queue};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// The name pods ask for in `spec.schedulerName` (or leave empty).
pub const SCHEDULER_NAME: &str = "default-scheduler";
/// How many binding calls may be in flight at once (upstream binds in parallel goroutines).
const PARALLEL_BINDS: usize = 64;

/// What can go wrong while scheduling one pod.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The binding call failed; the pod is retried after back-off.
    #[error("binding pod {pod} to node {node}: {source}")]
    Bind {
        pod: String,
        node: String,
        #[source]
        source: kube::Error,
    },
    /// Recording the unschedulable condition failed; the scheduling outcome stands.
    #[error("updating the PodScheduled condition of {pod}: {source}")]
    Condition {
        pod: String,
        #[source]
        source: kube::Error,
    },
}

/// Whether this scheduler should place `pod`: unbound, addressed to us, alive.
pub fn needs_scheduling(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    let ours = matches!(spec.scheduler_name.as_deref(), None | Some("") | Some(SCHEDULER_NAME));
    ours && spec.node_name.as_deref().unwrap_or("").is_empty()
        && pod.metadata.deletion_timestamp.is_none()
        && !cache::is_terminal(pod)
}

/// How many feasible nodes to look for before scoring (upstream `numFeasibleNodesToFind` with
/// the adaptive `percentageOfNodesToScore`: 50% minus 1% per 125 nodes, at least 5% and at
/// least 100 nodes). Small clusters are always searched completely.
pub fn feasible_nodes_to_find(total: usize) -> usize {
    if total < 100 {
        return total;
    }
    let pct = (50 - (total / 125) as i64).max(5) as usize;
    (total * pct / 100).max(100)
}

/// Why no node was found: a PreFilter rejection, or each rejected node with its reasons.
#[derive(Debug, Clone, Default)]
pub struct Failure {
    pub total: usize,
    pub prefilter: Option<String>,
    pub failures: Vec<(String, Vec<String>)>,
}

impl Failure {
    /// The FailedScheduling message, with the preemption outcome when one is given. Like
    /// upstream, a preemption message that ends in a full stop gets another one ("pod..").
    pub fn message(&self, postfilter: Option<&str>) -> String {
        let reasons: Vec<Vec<String>> = self.failures.iter().map(|(_, r)| r.clone()).collect();
        let post = postfilter.map(|p| format!("preemption: {p}"));
        filter::fit_error(self.total, self.prefilter.as_deref(), &reasons, post.as_deref())
    }
}

/// The outcome of one scheduling attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Bind to `node` after the volume writes.
    Bind { node: String, volumes: Vec<volumes::Action> },
    /// Fits nowhere; `preemption` names victims whose eviction makes room.
    Unschedulable { message: String, preemption: Option<preemption::Candidate> },
}

/// Filters nodes, starting at a random one and stopping once enough feasible nodes are found,
/// then scores those and picks the best, breaking ties at random (upstream `findNodesThatFit`
/// and `selectHost`). The failure lists every node, since it is only produced after every node
/// was tried. Room reserved by pods nominated to a node (after preempting there) with at least
/// this pod's priority is counted as taken.
fn filter_and_score(info: &PodInfo<'_>, cache: &Cache) -> Result<String, Failure> {
    let nodes: Vec<&cache::NodeInfo> = cache.nodes().collect();
    let total = nodes.len();
    let want = feasible_nodes_to_find(total);
    let start = if total > 0 { rand::thread_rng().gen_range(0..total) } else { 0 };
    let key = pod_key(info.pod);
    let prio = cache::priority(info.pod);
    let nominations = cache.has_nominations();
    let mut feasible: Vec<std::borrow::Cow<'_, cache::NodeInfo>> = vec![];
    let mut failures = vec![];
    for i in 0..total {
        let node = nodes[(start + i) % total];
        let node: std::borrow::Cow<'_, cache::NodeInfo> = if nominations {
            let reserved: Vec<&cache::Nominated> = cache.nominated_on(node.name(), &key, prio).collect();
            if reserved.is_empty() {
                std::borrow::Cow::Borrowed(node)
            } else {
                let mut n = node.clone();
                for r in reserved {
                    n.add(&r.usage);
                }
                std::borrow::Cow::Owned(n)
            }
        } else {
            std::borrow::Cow::Borrowed(node)
        };
        match filter::run_filters(info, &node) {
            Ok(()) => {
                feasible.push(node);
                if feasible.len() >= want {
                    break;
                }
            }
            Err(reasons) => failures.push((node.name().to_string(), reasons)),
        }
    }
    if feasible.is_empty() {
        return Err(Failure { total, prefilter: None, failures });
    }
    let refs: Vec<&cache::NodeInfo> = feasible.iter().map(|c| c.as_ref()).collect();
    let scores = score::total_with(info, Some(cache), &refs);
    let best = scores.iter().copied().max().unwrap_or(0);
    let top: Vec<&str> = refs.iter().zip(&scores).filter(|(_, s)| **s == best).map(|(n, _)| n.name()).collect();
    let pick = if top.len() > 1 { rand::thread_rng().gen_range(0..top.len()) } else { 0 };
    Ok(top.get(pick).copied().unwrap_or_default().to_string())
}

/// Filter and score only (no preemption): the chosen node, or the FailedScheduling message.
pub fn select_node(pod: &Pod, cache: &Cache) -> Result<String, String> {
    let total = cache.node_count();
    match PodInfo::prepare(pod, cache) {
        Err(m) => Err(Failure { total, prefilter: Some(m), failures: vec![] }.message(None)),
        Ok(info) => filter_and_score(&info, cache).map_err(|f| f.message(None)),
    }
}

/// One scheduling cycle: PreFilter, Filter, Score, and PostFilter (preemption) when the pod
/// fits nowhere, as upstream `schedulingCycle` runs them.
pub fn schedule(pod: &Pod, cache: &Cache) -> Decision {
    let total = cache.node_count();
    let (info, failure) = match PodInfo::prepare(pod, cache) {
        Err(m) => {
            // Preemption dry-runs each node with the PreFilter verdict standing: nodes without
            // lower-priority pods report no victims, the others the same rejection again.
            let prio = cache::priority(pod);
            let all = cache
                .nodes()
                .map(|n| {
                    let lower = n.pods.iter().filter_map(|k| cache.pod(k)).any(|p| p.priority < prio);
                    let why = if lower { m.clone() } else { preemption::NO_VICTIMS.to_string() };
                    (n.name().to_string(), vec![why])
                })
                .collect();
            (None, Failure { total, prefilter: Some(m), failures: all })
        }
        Ok(info) => match filter_and_score(&info, cache) {
            Ok(node) => {
                let volumes = match (&info.volumes, cache.node(&node)) {
                    (Some(v), Some(n)) => volumes::plan(v, n),
                    _ => vec![],
                };
                return Decision::Bind { node, volumes };
            }
            Err(f) => (Some(info), f),
        },
    };
    if total == 0 {
        return Decision::Unschedulable { message: failure.message(None), preemption: None };
    }
    let post = match &info {
        Some(info) => preemption::preempt(info, cache, &failure.failures),
        None => Err(preemption::eligible(pod, cache, &failure.failures).err().unwrap_or_else(|| {
            let statuses: Vec<Vec<String>> = failure.failures.iter().map(|(_, r)| r.clone()).collect();
            filter::fit_error(total, None, &statuses, None)
        })),
    };
    let reasons =
        Failure { failures: if failure.prefilter.is_some() { vec![] } else { failure.failures.clone() }, ..failure };
    match post {
        Ok(c) => Decision::Unschedulable { message: reasons.message(None), preemption: Some(c) },
        Err(m) => Decision::Unschedulable { message: reasons.message(Some(&m)), preemption: None },
    }
}

/// Whether an update to a waiting pod may change where it fits. Like upstream `isPodUpdated`,
/// status and bookkeeping changes (including our own PodScheduled condition) do not count, so
/// recording a failure does not trigger an immediate retry.
pub fn spec_changed(old: &Pod, new: &Pod) -> bool {
    let strip = |p: &Pod| {
        let mut p = p.clone();
        p.status = None;
        p.metadata.resource_version = None;
        p.metadata.managed_fields = None;
        p.metadata.generation = None;
        p
    };
    strip(old) != strip(new)
}

/// The pod's conditions with `PodScheduled` set to False/Unschedulable and `message`, or `None`
/// when that exact condition is already there (saves a write per retry).
pub fn unschedulable_conditions(pod: &Pod, message: &str, now: Timestamp) -> Option<Vec<PodCondition>> {
    let mut conds = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let existing = conds.iter().position(|c| c.type_ == "PodScheduled");
    if let Some(i) = existing {
        let c = &conds[i];
        if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") && c.message.as_deref() == Some(message)
        {
            return None;
        }
    }
    let cond = PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some(message.to_string()),
        last_transition_time: match existing {
            Some(i) if conds[i].status == "False" => conds[i].last_transition_time.clone(),
            _ => Some(Time(now)),
        },
        last_probe_time: None,
        observed_generation: None,
    };
    match existing {
        Some(i) => conds[i] = cond,
        None => conds.push(cond),
    }
    Some(conds)
}

/// The scheduler never reads managedFields; dropping them from its caches saves memory.
fn strip_managed_fields<K: kube::Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// The `Binding` POSTed to `pods/{name}/binding`.
pub fn binding(pod: &Pod, node: &str) -> Binding {
    Binding {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        },
    }
}

#[derive(Default)]
struct State {
    cache: Cache,
    queue: Queue,
    /// The latest version of every pod waiting for a node.
    pending: HashMap<String, Arc<Pod>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep scheduling.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs until `shutdown` fires, scheduling while this server holds the
/// `kube-system/kube-scheduler` Lease (upstream kube-scheduler's leader election).
/// Pods come from the process's shared pod informer (`hub`), which the controllers use too.
pub async fn run(client: kube::Client, hub: Arc<PodHub>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let c = client.clone();
    crate::controllers::leader::run_as_leader(client, "kube-scheduler", shutdown, move |term| {
        let (c, hub) = (c.clone(), hub.clone());
        async move { run_unelected(c, &hub, term).await }
    })
    .await;
    Ok(())
}

/// Schedules until `shutdown` fires, without leader election (the caller holds the lease).
pub async fn run_unelected(client: kube::Client, hub: &Arc<PodHub>, shutdown: CancellationToken) {
    let shared = Arc::new(Shared { state: Mutex::new(State::default()), wake: Notify::new() });
    let recorder = Recorder::new(client.clone(), SCHEDULER_NAME, shutdown.clone());
    let nodes = tokio::spawn(watch_nodes(client.clone(), shared.clone(), shutdown.clone()));
    // Held until scheduling stops: the shared watch runs while someone needs it.
    let pod_informer = hub.acquire();
    let pods = tokio::spawn(watch_pods(pod_informer.pods.subscribe(), shared.clone(), shutdown.clone()));
    let (c, sh, sd) = (&client, &shared, &shutdown);
    let others = vec![
        tokio::spawn(watch_objects::<Namespace>(
            c.clone(),
            sh.clone(),
            sd.clone(),
            false,
            true,
            |cache, key, o| match o {
                Some(ns) => {
                    cache.namespaces.insert(key, ns.metadata.labels.unwrap_or_default());
                }
                None => {
                    cache.namespaces.remove(&key);
                }
            },
        )),
        tokio::spawn(watch_objects::<PersistentVolumeClaim>(
            c.clone(),
            sh.clone(),
            sd.clone(),
            true,
            true,
            |cache, key, o| upsert(&mut cache.pvcs, key, o),
        )),
        tokio::spawn(watch_objects::<PersistentVolume>(
            c.clone(),
            sh.clone(),
            sd.clone(),
            false,
            true,
            |cache, key, o| upsert(&mut cache.pvs, key, o),
        )),
        tokio::spawn(watch_objects::<StorageClass>(c.clone(), sh.clone(), sd.clone(), false, true, |cache, key, o| {
            upsert(&mut cache.classes, key, o)
        })),
        tokio::spawn(watch_objects::<PodDisruptionBudget>(
            c.clone(),
            sh.clone(),
            sd.clone(),
            true,
            true,
            |cache, key, o| upsert(&mut cache.pdbs, key, o),
        )),
        // Default topology spreading reads only these kinds' selectors (see `selectors.rs`).
        tokio::spawn(watch_objects::<Service>(c.clone(), sh.clone(), sd.clone(), true, false, |cache, key, o| {
            cache.selectors.set_service(&key, o.as_ref())
        })),
        tokio::spawn(watch_objects::<ReplicationController>(
            c.clone(),
            sh.clone(),
            sd.clone(),
            true,
            false,
            |cache, key, o| cache.selectors.set_replication_controller(&key, o.as_ref()),
        )),
        tokio::spawn(watch_objects::<ReplicaSet>(c.clone(), sh.clone(), sd.clone(), true, false, |cache, key, o| {
            cache.selectors.set_replica_set(&key, o.as_ref())
        })),
        tokio::spawn(watch_objects::<StatefulSet>(c.clone(), sh.clone(), sd.clone(), true, false, |cache, key, o| {
            cache.selectors.set_stateful_set(&key, o.as_ref())
        })),
    ];
    schedule_loop(client, shared, recorder, shutdown).await;
    nodes.abort();
    pods.abort();
    drop(pod_informer);
    for t in others {
        t.abort();
    }
}

fn upsert<K>(map: &mut HashMap<String, K>, key: String, o: Option<K>) {
    match o {
        Some(o) => {
            map.insert(key, o);
        }
        None => {
            map.remove(&key);
        }
    }
}

/// Mirrors one kind the plugins read (namespaces, claims, volumes, classes, budgets, and the
/// selectors of Services and controllers) into the cache. Keys are `namespace/name` for
/// namespaced kinds and the name otherwise. With `wakes`, any change may make waiting pods
/// schedulable and retries them; kinds only scores read (the selectors) wake nobody, as
/// upstream registers no events for them.
async fn watch_objects<K>(
    client: kube::Client,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    namespaced: bool,
    wakes: bool,
    apply: fn(&mut Cache, String, Option<K>),
) where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let api: Api<K> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default()).modify(strip_managed_fields).boxed();
    let key_of = |m: &ObjectMeta| if namespaced { cache::meta_key(m) } else { m.name.clone().unwrap_or_default() };
    let (mut seen, mut known): (HashSet<String>, HashSet<String>) = Default::default();
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.next() => match ev { Some(ev) => ev, None => return },
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, kind = %K::kind(&()), "scheduler: watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut st = shared.lock();
        match ev {
            watcher::Event::Init => seen.clear(),
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                let key = key_of(o.meta());
                seen.insert(key.clone());
                known.insert(key.clone());
                apply(&mut st.cache, key, Some(o));
            }
            watcher::Event::Delete(o) => {
                let key = key_of(o.meta());
                known.remove(&key);
                apply(&mut st.cache, key, None);
            }
            watcher::Event::InitDone => {
                for gone in known.difference(&seen).cloned().collect::<Vec<_>>() {
                    known.remove(&gone);
                    apply(&mut st.cache, gone, None);
                }
            }
        }
        if !wakes {
            continue;
        }
        st.queue.cluster_changed(Instant::now());
        drop(st);
        shared.wake.notify_one();
    }
}

async fn watch_nodes(client: kube::Client, shared: Arc<Shared>, shutdown: CancellationToken) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default()).modify(strip_managed_fields).boxed();
    let mut seen: HashSet<String> = HashSet::new();
    let mut known: HashSet<String> = HashSet::new();
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = stream.next() => match ev { Some(ev) => ev, None => return },
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                // The watcher retries by itself; say why scheduling may lag.
                tracing::warn!(error = %e, "scheduler: node watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut st = shared.lock();
        match ev {
            watcher::Event::Init => seen.clear(),
            watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                if let Some(name) = n.metadata.name.clone() {
                    seen.insert(name.clone());
                    known.insert(name);
                }
                st.cache.set_node(n);
            }
            watcher::Event::Delete(n) => {
                if let Some(name) = n.metadata.name.as_deref() {
                    known.remove(name);
                    st.cache.remove_node(name);
                }
            }
            watcher::Event::InitDone => {
                // Nodes deleted while the watch was down never sent a Delete.
                for gone in known.difference(&seen).cloned().collect::<Vec<_>>() {
                    st.cache.remove_node(&gone);
                    known.remove(&gone);
                }
            }
        }
        st.queue.cluster_changed(Instant::now());
        drop(st);
        shared.wake.notify_one();
    }
}

/// Feeds the queue and the cache from the shared pod informer's events (managedFields are
/// already stripped there, and a pod deleted while its watch was down arrives as a delete).
async fn watch_pods(
    mut events: tokio::sync::mpsc::UnboundedReceiver<informer::Event<Pod>>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => return,
            ev = events.recv() => match ev { Some(ev) => ev, None => return },
        };
        let now = Instant::now();
        let mut st = shared.lock();
        match ev {
            informer::Event::Apply(p) => {
                let key = pod_key(&p);
                let was_holding = cache::is_terminal(&p);
                st.cache.update_pod(&p);
                if needs_scheduling(&p) {
                    // An assumed pod is being bound: a stale unbound copy must not queue it again,
                    // but keep it at hand in case the binding fails and it is retried.
                    let assumed = st.cache.is_assumed(&p);
                    let changed = st.pending.get(&key).is_none_or(|old| spec_changed(old, &p));
                    st.pending.insert(key.clone(), p);
                    if !assumed && changed {
                        st.queue.add(&key, now);
                    }
                } else {
                    st.pending.remove(&key);
                    st.queue.remove(&key);
                }
                if was_holding {
                    // A finished pod frees its node's resources.
                    st.queue.cluster_changed(now);
                }
            }
            informer::Event::Delete(p) => {
                let key = pod_key(&p);
                st.cache.remove_pod(&p);
                st.pending.remove(&key);
                st.queue.remove(&key);
                st.queue.cluster_changed(now);
            }
        }
        drop(st);
        shared.wake.notify_one();
    }
}

async fn schedule_loop(client: kube::Client, shared: Arc<Shared>, recorder: Recorder, shutdown: CancellationToken) {
    let binds = Arc::new(Semaphore::new(PARALLEL_BINDS));
    loop {
        let (next, due) = {
            let mut st = shared.lock();
            let next = st.queue.pop(Instant::now());
            (next, st.queue.next_due())
        };
        let Some(attempt) = next else {
            let sleep = due.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or(Duration::from_secs(60));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = shared.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
            continue;
        };
        // Decide under the lock (pure and quick), then do the API calls outside it.
        let decision = {
            let mut st = shared.lock();
            match st.pending.get(&attempt.key).cloned() {
                None => {
                    st.queue.forget(&attempt);
                    continue;
                }
                Some(pod) if st.cache.is_assumed(&pod) => {
                    st.queue.forget(&attempt);
                    continue;
                }
                Some(pod) => {
                    let d = schedule(&pod, &st.cache);
                    match &d {
                        Decision::Bind { node, .. } => st.cache.assume(&pod, node),
                        Decision::Unschedulable { preemption: Some(c), .. } => st.cache.nominate(&pod, &c.node),
                        Decision::Unschedulable { .. } => {}
                    }
                    (pod, d)
                }
            }
        };
        let Ok(permit) = binds.clone().acquire_owned().await else { return };
        let (client, shared, recorder) = (client.clone(), shared.clone(), recorder.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match decision {
                (pod, Decision::Bind { node, volumes }) => {
                    bind(client, shared, recorder, attempt, pod, node, volumes).await
                }
                (pod, Decision::Unschedulable { message, preemption }) => {
                    if let Some(c) = preemption {
                        preempt(client.clone(), &recorder, &pod, c).await;
                    }
                    unschedulable(client, shared, recorder, attempt, pod, message).await
                }
            }
        });
    }
}

/// Carries out a preemption: the preemptor's `status.nominatedNodeName`, then each victim gets
/// the `DisruptionTarget` condition, a `Preempted` event and a graceful delete (upstream
/// `prepareCandidate`).
async fn preempt(client: kube::Client, recorder: &Recorder, pod: &Pod, c: preemption::Candidate) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let nominated = serde_json::json!({"status": {"nominatedNodeName": c.node}});
    if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&nominated)).await {
        tracing::warn!(error = %e, pod = %format!("{ns}/{name}"), "could not record the nominated node");
    }
    for v in &c.victims {
        let vapi: Api<Pod> = Api::namespaced(client.clone(), &v.namespace);
        let cond = serde_json::json!({"status": {"conditions": [{
            "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
            "message": format!("{SCHEDULER_NAME}: preempting to accommodate a higher priority pod"),
            "lastTransitionTime": Timestamp::now().to_string(),
        }]}});
        if let Err(e) = vapi.patch_status(&v.name, &PatchParams::default(), &Patch::Strategic(&cond)).await {
            tracing::debug!(error = %e, victim = %v.name, "could not add DisruptionTarget");
        }
        let dp = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions { uid: Some(v.uid.clone()), resource_version: None }),
            ..Default::default()
        };
        match vapi.delete(&v.name, &dp).await {
            Ok(_) => {
                let victim = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    namespace: Some(v.namespace.clone()),
                    name: Some(v.name.clone()),
                    uid: Some(v.uid.clone()),
                    ..Default::default()
                };
                recorder.normal(victim, "Preempted", format!("Preempted by pod {uid} on node {}", c.node));
                tracing::info!(victim = %format!("{}/{}", v.namespace, v.name), preemptor = %format!("{ns}/{name}"), node = %c.node, "preempted");
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(error = %e, victim = %v.name, "could not delete preemption victim"),
        }
    }
}

/// The PVC and PV writes that go before a binding (upstream VolumeBinding's PreBind).
async fn bind_volumes(client: &kube::Client, actions: &[volumes::Action]) -> Result<(), kube::Error> {
    for a in actions {
        match a {
            volumes::Action::SelectNode { namespace, claim, node } => {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
                let patch = serde_json::json!({"metadata": {"annotations": {volumes::SELECTED_NODE: node}}});
                api.patch(claim, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
            volumes::Action::ReservePv { pv, namespace, claim, uid } => {
                let api: Api<PersistentVolume> = Api::all(client.clone());
                let patch = serde_json::json!({
                    "metadata": {"annotations": {"pv.kubernetes.io/bound-by-controller": "yes"}},
                    "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                        "namespace": namespace, "name": claim, "uid": uid}},
                });
                api.patch(pv, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            }
        }
    }
    Ok(())
}

async fn bind(
    client: kube::Client,
    shared: Arc<Shared>,
    recorder: Recorder,
    attempt: Attempt,
    pod: Arc<Pod>,
    node: String,
    volume_actions: Vec<volumes::Action>,
) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    // Binding the pod right after the claim writes: the kubelet waits for its claims to be
    // bound before starting it, so the provisioner may finish meanwhile.
    let result: Result<serde_json::Value, kube::Error> = match bind_volumes(&client, &volume_actions).await {
        Err(e) => Err(e),
        Ok(()) => {
            let api: Api<Pod> = Api::namespaced(client, &ns);
            api.create_subresource("binding", &name, &PostParams::default(), &binding(&pod, &node)).await
        }
    };
    match result {
        Ok(_) => {
            shared.lock().queue.done(&attempt);
            recorder.normal(
                object_ref(pod.as_ref()),
                "Scheduled",
                format!("Successfully assigned {ns}/{name} to {node}"),
            );
        }
        Err(source) => {
            let gone = matches!(&source, kube::Error::Api(s) if s.code == 404 || s.code == 409);
            let err = SchedulerError::Bind { pod: format!("{ns}/{name}"), node, source };
            let mut st = shared.lock();
            st.cache.forget(&pod);
            if gone {
                // Deleted, or bound by someone else meanwhile: the watch will tell us the rest.
                tracing::debug!(error = %err, "binding abandoned");
                st.queue.forget(&attempt);
            } else {
                tracing::warn!(error = %err, "binding failed; retrying after back-off");
                st.queue.error(&attempt, Instant::now());
            }
            drop(st);
            shared.wake.notify_one();
        }
    }
}

async fn unschedulable(
    client: kube::Client,
    shared: Arc<Shared>,
    recorder: Recorder,
    attempt: Attempt,
    pod: Arc<Pod>,
    message: String,
) {
    shared.lock().queue.unschedulable(&attempt, Instant::now());
    shared.wake.notify_one();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    tracing::debug!(pod = %format!("{ns}/{name}"), %message, "pod is unschedulable");
    recorder.warning(object_ref(pod.as_ref()), "FailedScheduling", message.clone());
    if let Some(conds) = unschedulable_conditions(&pod, &message, Timestamp::now()) {
        let api: Api<Pod> = Api::namespaced(client, &ns);
        let patch = serde_json::json!({ "status": { "conditions": conds } });
        if let Err(source) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            let err = SchedulerError::Condition { pod: format!("{ns}/{name}"), source };
            tracing::warn!(error = %err, "could not record why the pod is unschedulable");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, NodeCondition, NodeSpec, NodeStatus, PodSpec, PodStatus, ResourceRequirements, Taint,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn node(name: &str, cpu: &str) -> Node {
        Node {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(
                    [
                        ("cpu".to_string(), Quantity(cpu.into())),
                        ("memory".to_string(), Quantity("4Gi".into())),
                        ("pods".to_string(), Quantity("110".into())),
                    ]
                    .into(),
                ),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod(name: &str, cpu: &str) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("default".into()), ..Default::default() },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some([("cpu".to_string(), Quantity(cpu.into()))].into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_unbound_live_pods_for_the_default_scheduler_need_scheduling() {
        let p = pod("a", "1");
        assert!(needs_scheduling(&p));
        let mut other = p.clone();
        if let Some(s) = other.spec.as_mut() {
            s.scheduler_name = Some("custom".into());
        }
        assert!(!needs_scheduling(&other));
        let mut bound = p.clone();
        if let Some(s) = bound.spec.as_mut() {
            s.node_name = Some("n".into());
        }
        assert!(!needs_scheduling(&bound));
        let mut done = p.clone();
        done.status = Some(PodStatus { phase: Some("Failed".into()), ..Default::default() });
        assert!(!needs_scheduling(&done));
    }

    #[test]
    fn assumed_pods_spread_a_burst_instead_of_overcommitting_one_node() {
        let mut c = Cache::default();
        c.set_node(node("a", "1"));
        c.set_node(node("b", "1"));
        let mut placed = vec![];
        for i in 0..2 {
            let p = pod(&format!("p{i}"), "600m");
            let n = select_node(&p, &c).expect("fits");
            c.assume(&p, &n);
            placed.push(n);
        }
        placed.sort();
        assert_eq!(placed, vec!["a", "b"]);
        let third = pod("p2", "600m");
        assert_eq!(select_node(&third, &c), Err("0/2 nodes are available: 2 Insufficient cpu.".into()));
    }

    #[test]
    fn a_pod_that_fits_nowhere_gets_the_upstream_message() {
        let mut c = Cache::default();
        c.set_node(node("small", "1"));
        for name in ["cp1", "cp2"] {
            let mut n = node(name, "8");
            n.spec = Some(NodeSpec {
                taints: Some(vec![Taint {
                    key: "node-role.kubernetes.io/control-plane".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            c.set_node(n);
        }
        assert_eq!(
            select_node(&pod("big", "2"), &c),
            Err("0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }.".into())
        );
    }

    #[test]
    fn the_unschedulable_condition_is_written_once_per_message() {
        let p = pod("a", "1");
        let now = Timestamp::UNIX_EPOCH;
        let conds = unschedulable_conditions(&p, "0/1 nodes are available: 1 Insufficient cpu.", now).expect("new");
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].type_, "PodScheduled");
        assert_eq!(conds[0].status, "False");
        assert_eq!(conds[0].reason.as_deref(), Some("Unschedulable"));
        let mut p2 = p.clone();
        p2.status = Some(PodStatus { conditions: Some(conds), ..Default::default() });
        assert!(unschedulable_conditions(&p2, "0/1 nodes are available: 1 Insufficient cpu.", now).is_none());
        let changed =
            unschedulable_conditions(&p2, "0/2 nodes are available: 2 Insufficient cpu.", now).expect("new message");
        assert_eq!(changed.len(), 1);
    }

    /// Decision throughput of the pure path (filter, score, assume) on 1,000 nodes; run with
    /// `cargo test --release -- --ignored scheduling_throughput --nocapture`.
    #[test]
    #[ignore]
    fn scheduling_throughput() {
        let mut c = Cache::default();
        for i in 0..1000 {
            let mut n = node(&format!("n{i}"), "32");
            n.metadata.labels = Some([("kubernetes.io/hostname".to_string(), format!("n{i}"))].into());
            c.set_node(n);
        }
        let start = std::time::Instant::now();
        let n: usize = std::env::var("SCHED_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
        for i in 0..n {
            let mut p = pod(&format!("p{i}"), "100m");
            // Like the benchmark: groups of labels, every tenth pod with anti-affinity.
            let app = if i % 10 == 0 { format!("spread-{}", i % 20) } else { format!("group-{}", i % 50) };
            p.metadata.labels = Some([("app".to_string(), app.clone())].into());
            if i % 10 == 0 {
                if let Some(s) = p.spec.as_mut() {
                    s.affinity = Some(k8s_openapi::api::core::v1::Affinity {
                        pod_anti_affinity: Some(k8s_openapi::api::core::v1::PodAntiAffinity {
                            required_during_scheduling_ignored_during_execution: Some(vec![
                                k8s_openapi::api::core::v1::PodAffinityTerm {
                                    label_selector: Some(
                                        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                                            match_labels: Some([("app".to_string(), app)].into()),
                                            ..Default::default()
                                        },
                                    ),
                                    topology_key: "kubernetes.io/hostname".into(),
                                    ..Default::default()
                                },
                            ]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
            }
            let Decision::Bind { node, .. } = schedule(&p, &c) else { panic!("fits") };
            c.assume(&p, &node);
        }
        let secs = start.elapsed().as_secs_f64();
        println!("| nodes | pods | pods/s |\n| 1000 | {n} | {:.0} |", n as f64 / secs);
    }

    #[test]
    fn large_clusters_are_sampled_small_ones_searched_fully() {
        assert_eq!(feasible_nodes_to_find(3), 3);
        assert_eq!(feasible_nodes_to_find(99), 99);
        assert_eq!(feasible_nodes_to_find(200), 100, "never fewer than 100");
        assert_eq!(feasible_nodes_to_find(1000), 420, "42% of 1,000");
        assert_eq!(feasible_nodes_to_find(10_000), 500, "at least 5%");
    }

    #[test]
    fn status_only_updates_do_not_count_as_pod_changes() {
        let p = pod("a", "1");
        let mut status_only = p.clone();
        status_only.status = Some(PodStatus { phase: Some("Pending".into()), ..Default::default() });
        status_only.metadata.resource_version = Some("42".into());
        assert!(!spec_changed(&p, &status_only));
        let mut relabelled = p.clone();
        relabelled.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        assert!(spec_changed(&p, &relabelled));
    }

    #[test]
    fn the_binding_targets_the_chosen_node() {
        let b = binding(&pod("a", "1"), "n1");
        assert_eq!(b.metadata.name.as_deref(), Some("a"));
        assert_eq!(b.target.kind.as_deref(), Some("Node"));
        assert_eq!(b.target.name.as_deref(), Some("n1"));
    }

    fn with_priority(mut p: Pod, prio: i32) -> Pod {
        if let Some(s) = p.spec.as_mut() {
            s.priority = Some(prio);
        }
        p
    }

    fn bound(p: Pod, node: &str) -> Pod {
        let mut p = p;
        if let Some(s) = p.spec.as_mut() {
            s.node_name = Some(node.into());
        }
        p
    }

    #[test]
    fn the_message_ends_with_the_preemption_verdict() {
        let mut c = Cache::default();
        c.set_node(node("a", "1"));
        c.set_node(node("b", "1"));
        assert_eq!(
            schedule(&pod("big", "8"), &c),
            Decision::Unschedulable {
                message: "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod..".into(),
                preemption: None,
            }
        );
    }

    #[test]
    fn a_prefilter_rejection_is_reported_once_and_preemption_cannot_help() {
        let mut c = Cache::default();
        c.set_node(node("a", "1"));
        c.set_node(node("b", "1"));
        let mut p = pod("p", "100m");
        if let Some(s) = p.spec.as_mut() {
            s.volumes = Some(vec![k8s_openapi::api::core::v1::Volume {
                name: "data".into(),
                persistent_volume_claim: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                    claim_name: "missing".into(),
                    read_only: None,
                }),
                ..Default::default()
            }]);
        }
        let Decision::Unschedulable { message, .. } = schedule(&p, &c) else { panic!("scheduled") };
        assert_eq!(
            message,
            "0/2 nodes are available: persistentvolumeclaim \"missing\" not found. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.."
        );
    }

    #[test]
    fn a_higher_priority_pod_preempts_then_its_room_is_reserved() {
        let mut c = Cache::default();
        c.set_node(node("a", "1"));
        let low = bound(with_priority(pod("low", "1"), 0), "a");
        c.update_pod(&low);
        let high = with_priority(pod("high", "1"), 1000);
        let Decision::Unschedulable { message, preemption: Some(cand) } = schedule(&high, &c) else {
            panic!("expected a preemption")
        };
        assert_eq!(message, "0/1 nodes are available: 1 Insufficient cpu.");
        assert_eq!(cand.node, "a");
        assert_eq!(cand.victims.len(), 1);
        c.nominate(&high, "a");
        c.remove_pod(&low);
        // A less important pod must not take the room the victim left.
        let mid = with_priority(pod("mid", "1"), 10);
        assert!(matches!(schedule(&mid, &c), Decision::Unschedulable { .. }));
        assert_eq!(schedule(&high, &c), Decision::Bind { node: "a".into(), volumes: vec![] });
    }

    fn labelled(name: &str, cpu: &str, memory: &str, zone: &str) -> Node {
        let mut n = node(name, cpu);
        n.metadata.labels = Some(
            [(spread::HOSTNAME.to_string(), name.to_string()), (spread::ZONE.to_string(), zone.to_string())].into(),
        );
        if let Some(a) = n.status.as_mut().and_then(|s| s.allocatable.as_mut()) {
            a.insert("memory".into(), Quantity(memory.into()));
        }
        n
    }

    fn replica(i: usize) -> Pod {
        let mut p = pod(&format!("web-1-{i}"), "100m");
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: "web-1".into(),
            uid: "rs-uid".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        p
    }

    fn place_replicas(c: &mut Cache, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                let p = replica(i);
                let Decision::Bind { node, .. } = schedule(&p, c) else { panic!("replica {i} fits") };
                c.assume(&p, &node);
                node
            })
            .collect()
    }

    fn two_zones_one_big_node() -> Cache {
        let mut c = Cache::default();
        c.set_node(labelled("big", "64", "128Gi", "zone-a"));
        c.set_node(labelled("a2", "2", "4Gi", "zone-a"));
        c.set_node(labelled("b1", "2", "4Gi", "zone-b"));
        c.set_node(labelled("b2", "2", "4Gi", "zone-b"));
        c
    }

    #[test]
    fn replicas_without_constraints_spread_over_hosts_and_zones_though_one_node_is_much_bigger() {
        // The ReplicaSet is not known yet: nothing selects the pods, and the big node wins all.
        let mut c = two_zones_one_big_node();
        assert_eq!(place_replicas(&mut c, 4), vec!["big"; 4]);

        let mut c = two_zones_one_big_node();
        let rs = k8s_openapi::api::apps::v1::ReplicaSet {
            spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
                selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some([("app".to_string(), "web".to_string())].into()),
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        c.selectors.set_replica_set("default/web-1", Some(&rs));
        let mut placed = place_replicas(&mut c, 4);
        placed.sort();
        assert_eq!(placed, vec!["a2", "b1", "b2", "big"], "one per node, two per zone");
    }

    #[test]
    fn a_pod_kept_out_by_a_lower_priority_pods_anti_affinity_preempts_it() {
        let mut c = Cache::default();
        c.set_node(labelled("a", "4", "8Gi", "z"));
        let mut low = bound(with_priority(pod("loner", "100m"), 0), "a");
        if let Some(s) = low.spec.as_mut() {
            s.affinity = Some(k8s_openapi::api::core::v1::Affinity {
                pod_anti_affinity: Some(k8s_openapi::api::core::v1::PodAntiAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        k8s_openapi::api::core::v1::PodAffinityTerm {
                            label_selector: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                                match_labels: Some([("app".to_string(), "web".to_string())].into()),
                                ..Default::default()
                            }),
                            topology_key: spread::HOSTNAME.into(),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        c.update_pod(&low);
        let mut high = with_priority(pod("web", "100m"), 1000);
        high.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let Decision::Unschedulable { message, preemption: Some(cand) } = schedule(&high, &c) else {
            panic!("expected a preemption")
        };
        assert_eq!(message, "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules.");
        assert_eq!((cand.node.as_str(), cand.victims.len()), ("a", 1));
        assert_eq!(cand.victims[0].name, "loner");
    }

    #[test]
    fn a_pod_only_a_taint_keeps_out_preempts_nothing() {
        let mut c = Cache::default();
        let mut n = node("a", "1");
        n.spec = Some(NodeSpec {
            taints: Some(vec![Taint { key: "dedicated".into(), effect: "NoSchedule".into(), ..Default::default() }]),
            ..Default::default()
        });
        c.set_node(n);
        c.update_pod(&bound(with_priority(pod("low", "1"), 0), "a"));
        assert_eq!(
            schedule(&with_priority(pod("high", "1"), 1000), &c),
            Decision::Unschedulable {
                message: "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: }. \
                          preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.."
                    .into(),
                preemption: None,
            }
        );
    }
}
