//! Node lifecycle (upstream `pkg/controller/nodelifecycle` and the taint eviction controller
//! `pkg/controller/tainteviction`).
//!
//! - Health: a node is heard from when its `kube-node-lease` Lease's `renewTime` or its Ready
//!   condition's `lastHeartbeatTime` changes. Like upstream, "when" is this controller's own
//!   clock at the moment it noticed the change (`probeTimestamp`), so skewed kubelet clocks do
//!   not matter. A node not heard from for `nodeMonitorGracePeriod` (40 s) has its Ready,
//!   MemoryPressure, DiskPressure and PIDPressure conditions set to Unknown with reason
//!   `NodeStatusUnknown` and message "Kubelet stopped posting node status." (missing ones get
//!   `NodeStatusNeverUpdated`), its pods' Ready conditions set to False (`MarkPodsNotReady`) and a
//!   `NodeNotReady` event.
//! - Taints (upstream `doNoExecuteTaintingPass` and `TaintNodesByCondition`): Ready=Unknown gives
//!   `node.kubernetes.io/unreachable` with effects NoExecute and NoSchedule; Ready=False gives
//!   `node.kubernetes.io/not-ready` with both; Ready=True removes them. One departure: a node
//!   whose lease is renewed again loses the unreachable taints even if its Ready condition is
//!   still the Unknown this controller wrote, because skiff's kubelet re-posts its status only on
//!   its own changes (at the latest every 5 minutes), and a reachable node should take pods again.
//! - Eviction: a pod bound to a node with NoExecute taints is deleted at once if it does not
//!   tolerate them all, otherwise when the shortest `tolerationSeconds` among the tolerations
//!   used has passed since the taint's `timeAdded` (no `tolerationSeconds` means it stays). Before
//!   deletion it gets the `DisruptionTarget` condition (reason `DeletionByTaintManager`) and the
//!   pod a `TaintManagerEviction` event, as upstream. The API server's admission gives every pod
//!   300 s tolerations for not-ready and unreachable (DefaultTolerationSeconds), so pods of a dead
//!   node are replaced by their ReplicaSets five minutes after it went quiet.

use crate::controllers::events::{object_ref, Recorder};
use crate::scheduler::filter::tolerates;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Debug;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Upstream `node.kubernetes.io/unreachable`.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Upstream `node.kubernetes.io/not-ready`.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Where kubelets keep their leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The conditions upstream turns Unknown when a node goes quiet.
pub const MONITORED_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
const COMPONENT: &str = "node-controller";
const EVICTION_COMPONENT: &str = "taint-eviction-controller";

/// How quickly a quiet node is judged (upstream kube-controller-manager flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// `--node-monitor-grace-period`: silence after which a node is Unknown (40 s).
    pub grace: Duration,
    /// `--node-monitor-period`: how often nodes and evictions are checked (5 s).
    pub period: Duration,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings { grace: Duration::from_secs(40), period: Duration::from_secs(5) }
    }
}

/// Why a write failed; the next pass tries again.
#[derive(Debug, thiserror::Error)]
pub enum NodeLifecycleError {
    /// An API call failed.
    #[error("{action} {name}: {source}")]
    Api {
        action: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The Ready condition's status, as the taint pass reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    True,
    False,
    Unknown,
}

pub fn readiness(node: &Node) -> Readiness {
    let c =
        node.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match c.map(|c| c.status.as_str()) {
        Some("True") => Readiness::True,
        Some("False") => Readiness::False,
        _ => Readiness::Unknown,
    }
}

/// The conditions of a node that has gone quiet, or `None` if they are already all Unknown
/// (upstream `tryUpdateNodeHealth`, the branch past the grace period).
pub fn unknown_conditions(node: &Node, now: Timestamp) -> Option<Vec<NodeCondition>> {
    let mut conds = node.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let mut changed = false;
    for t in MONITORED_CONDITIONS {
        match conds.iter_mut().find(|c| c.type_ == *t) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time = Some(Time(now));
                changed = true;
            }
            None => {
                conds.push(NodeCondition {
                    type_: t.to_string(),
                    status: "Unknown".into(),
                    reason: Some("NodeStatusNeverUpdated".into()),
                    message: Some("Kubelet never posted node status.".into()),
                    last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                    last_transition_time: Some(Time(now)),
                });
                changed = true;
            }
        }
    }
    changed.then_some(conds)
}

fn taint(key: &str, effect: &str, now: Timestamp) -> Taint {
    let time_added = (effect == "NoExecute").then_some(Time(now));
    Taint { key: key.into(), effect: effect.into(), time_added, value: None }
}

/// The node's taints after the taint pass, or `None` if they are right already. `reachable`
/// says whether the node's lease is fresh (see the module header for why that matters).
pub fn desired_taints(node: &Node, reachable: bool, now: Timestamp) -> Option<Vec<Taint>> {
    let existing = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let want_key = match readiness(node) {
        Readiness::True => None,
        Readiness::False => Some(TAINT_NOT_READY),
        Readiness::Unknown if reachable => None,
        Readiness::Unknown => Some(TAINT_UNREACHABLE),
    };
    let ours = |t: &Taint| {
        (t.key == TAINT_UNREACHABLE || t.key == TAINT_NOT_READY)
            && (t.effect == "NoExecute" || t.effect == "NoSchedule")
    };
    let mut out: Vec<Taint> =
        existing.iter().filter(|t| !ours(t) || Some(t.key.as_str()) == want_key).cloned().collect();
    if let Some(key) = want_key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out.iter().any(|t| t.key == key && t.effect == effect) {
                out.push(taint(key, effect, now));
            }
        }
    }
    (out != existing).then_some(out)
}

/// What the taint eviction controller does with one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// No NoExecute taint applies, or the pod tolerates them forever.
    Never,
    /// Delete the pod now.
    Now,
    /// Delete the pod at this time unless the taints go first.
    At(Timestamp),
}

/// Upstream `processPodOnNode` with `getMinTolerationTime`, counting from each taint's
/// `timeAdded` (so a controller restart does not restart the clock).
pub fn eviction(pod: &Pod, taints: &[Taint], now: Timestamp) -> Eviction {
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == "NoExecute").collect();
    if no_execute.is_empty() {
        return Eviction::Never;
    }
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let mut due: Option<Timestamp> = None;
    for t in no_execute {
        let used: Vec<_> = tolerations.iter().filter(|tol| tolerates(tol, t)).collect();
        if used.is_empty() {
            return Eviction::Now;
        }
        // Tolerations without tolerationSeconds tolerate forever.
        let Some(secs) = used.iter().filter_map(|tol| tol.toleration_seconds).min() else { continue };
        let added = t.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        let at = Timestamp::from_second(added.as_second().saturating_add(secs.max(0))).unwrap_or(now);
        due = Some(due.map_or(at, |d| d.min(at)));
    }
    match due {
        None => Eviction::Never,
        Some(at) if at <= now => Eviction::Now,
        Some(at) => Eviction::At(at),
    }
}

/// What the controller remembers of each node: the last lease renewal and Ready heartbeat it
/// saw, and when (its own clock) it last saw either change.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    lease_renew: Option<Timestamp>,
    heartbeat: Option<Timestamp>,
    pub seen: Timestamp,
}

/// Updates the probe of one node (upstream `nodeHealthData`): a first sighting or any change of
/// the lease renewal or the Ready heartbeat counts as hearing from the node now.
pub fn observe(prev: Option<&Probe>, node: &Node, lease: Option<&Lease>, now: Timestamp) -> Probe {
    let lease_renew = lease.and_then(|l| l.spec.as_ref()).and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
    let heartbeat = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    match prev {
        Some(p) if p.lease_renew == lease_renew && p.heartbeat == heartbeat => p.clone(),
        _ => Probe { lease_renew, heartbeat, seen: now },
    }
}

fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    Duration::from_millis(u64::try_from(now.as_millisecond().saturating_sub(since.as_millisecond())).unwrap_or(0))
}

fn spawn_reflector<K>(api: Api<K>, cfg: watcher::Config, shutdown: CancellationToken) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector::reflector(writer, watcher(api, cfg));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev { Some(ev) => ev, None => return },
            };
            if let Err(e) = ev {
                tracing::warn!(error = %e, kind = %K::kind(&()), "node-lifecycle: watch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    reader
}

struct Ctx {
    client: kube::Client,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    recorder: Recorder,
    evictions: Recorder,
    timings: Timings,
    probes: HashMap<String, Probe>,
}

/// Runs the health monitor, the taint pass and taint eviction until `shutdown` fires.
pub async fn run(
    client: kube::Client,
    informers: super::informer::Informers,
    timings: Timings,
    shutdown: CancellationToken,
) {
    let nodes = spawn_reflector(Api::<Node>::all(client.clone()), watcher::Config::default(), shutdown.clone());
    let leases = spawn_reflector(
        Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE),
        watcher::Config::default(),
        shutdown.clone(),
    );
    let pods = informers.pods.store();
    for store in [nodes.wait_until_ready().await.is_ok(), leases.wait_until_ready().await.is_ok()] {
        if !store {
            return;
        }
    }
    if pods.wait_until_ready().await.is_err() {
        return;
    }
    let mut ctx = Ctx {
        recorder: Recorder::new(client.clone(), COMPONENT, shutdown.clone()),
        evictions: Recorder::new(client.clone(), EVICTION_COMPONENT, shutdown.clone()),
        client,
        nodes,
        leases,
        pods,
        timings,
        probes: HashMap::new(),
    };
    let mut tick = tokio::time::interval(timings.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        pass(&mut ctx).await;
    }
}

/// One monitor period: node health and taints, then evictions.
async fn pass(ctx: &mut Ctx) {
    let now = Timestamp::now();
    let nodes = ctx.nodes.state();
    ctx.probes.retain(|name, _| nodes.iter().any(|n| n.name_any() == *name));
    let mut taints: HashMap<String, Vec<Taint>> = HashMap::new();
    for node in nodes {
        let name = node.name_any();
        let lease = ctx.leases.state().into_iter().find(|l| l.name_any() == name);
        let probe = observe(ctx.probes.get(&name), &node, lease.as_deref(), now);
        let quiet = elapsed(probe.seen, now) > ctx.timings.grace;
        ctx.probes.insert(name.clone(), probe);
        let mut node = (*node).clone();
        if quiet {
            match mark_unknown(ctx, &node, now).await {
                Ok(Some(updated)) => node = updated,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "node-lifecycle"),
            }
        }
        match update_taints(ctx, &node, !quiet, now).await {
            Ok(t) => {
                taints.insert(name, t);
            }
            Err(e) => tracing::warn!(error = %e, "node-lifecycle"),
        }
    }
    evict(ctx, &taints, now).await;
}

/// Sets a quiet node's conditions to Unknown and its pods NotReady.
async fn mark_unknown(ctx: &Ctx, node: &Node, now: Timestamp) -> Result<Option<Node>, NodeLifecycleError> {
    let Some(conds) = unknown_conditions(node, now) else { return Ok(None) };
    let name = node.name_any();
    let api: Api<Node> = Api::all(ctx.client.clone());
    let was_ready = readiness(node) == Readiness::True;
    let patch = serde_json::json!({"status": {"conditions": conds}});
    let updated = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| NodeLifecycleError::Api { action: "marking node unknown", name: name.clone(), source })?;
    tracing::info!(node = %name, "node stopped posting status; conditions set to Unknown");
    if was_ready {
        // Upstream `RecordNodeStatusChange`.
        ctx.recorder.normal(object_ref(node), "NodeNotReady", format!("Node {name} status is now: NodeNotReady"));
    }
    // Upstream `MarkPodsNotReady`: the node's pods stop counting as ready endpoints.
    for pod in ctx.pods.state() {
        if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name.as_str()) {
            continue;
        }
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready").map(|c| c.status == "True"));
        if ready != Some(true) {
            continue;
        }
        let mut conds = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        for c in conds.iter_mut().filter(|c| c.type_ == "Ready") {
            c.status = "False".into();
            c.last_transition_time = Some(Time(now));
        }
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        let patch = serde_json::json!({"status": {"conditions": conds}});
        if let Err(e) = pods.patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::debug!(error = %e, pod = %pod.name_any(), "could not mark pod not ready");
        }
    }
    Ok(Some(updated))
}

/// Applies [`desired_taints`]; returns the node's taints afterwards.
async fn update_taints(
    ctx: &Ctx,
    node: &Node,
    reachable: bool,
    now: Timestamp,
) -> Result<Vec<Taint>, NodeLifecycleError> {
    let current = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let Some(want) = desired_taints(node, reachable, now) else { return Ok(current) };
    let name = node.name_any();
    let api: Api<Node> = Api::all(ctx.client.clone());
    // Guarded by resourceVersion so a concurrent taint edit is not lost; the next pass retries.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"taints": want},
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| NodeLifecycleError::Api { action: "updating taints of", name: name.clone(), source })?;
    tracing::info!(node = %name, taints = ?want.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect::<Vec<_>>(), "node taints updated");
    Ok(want)
}

/// Deletes the pods whose tolerations of their node's NoExecute taints have run out.
async fn evict(ctx: &Ctx, taints: &HashMap<String, Vec<Taint>>, now: Timestamp) {
    for pod in ctx.pods.state() {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
        let Some(t) = taints.get(node) else { continue };
        if eviction(&pod, t, now) != Eviction::Now {
            continue;
        }
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        ctx.evictions.normal(
            object_ref(pod.as_ref()),
            "TaintManagerEviction",
            format!("Marking for deletion Pod {ns}/{name}"),
        );
        // Upstream adds the DisruptionTarget condition before deleting.
        let mut conds = pod.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        conds.retain(|c| c.type_ != "DisruptionTarget");
        conds.push(k8s_openapi::api::core::v1::PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some("DeletionByTaintManager".into()),
            message: Some("Taint manager: deleting due to NoExecute taint".into()),
            last_transition_time: Some(Time(now)),
            ..Default::default()
        });
        let patch = serde_json::json!({"status": {"conditions": conds}});
        if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::debug!(error = %e, pod = %name, "could not add DisruptionTarget");
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => tracing::info!(pod = %name, namespace = %ns, node = %node, "evicted pod from tainted node"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(error = %e, pod = %name, "could not evict pod; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::podutil::tests::ts;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodSpec, Toleration};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn node(ready: Option<&str>, taints: Vec<Taint>) -> Node {
        Node {
            metadata: kube::api::ObjectMeta { name: Some("n1".into()), ..Default::default() },
            spec: Some(NodeSpec { taints: Some(taints), ..Default::default() }),
            status: Some(NodeStatus {
                conditions: ready.map(|s| {
                    vec![NodeCondition {
                        type_: "Ready".into(),
                        status: s.into(),
                        reason: Some("KubeletReady".into()),
                        last_heartbeat_time: Some(Time(ts(10))),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn pod(tolerations: Vec<Toleration>) -> Pod {
        Pod { spec: Some(PodSpec { tolerations: Some(tolerations), ..Default::default() }), ..Default::default() }
    }

    fn tol(key: &str, secs: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            ..Default::default()
        }
    }

    #[test]
    fn a_quiet_node_gets_all_monitored_conditions_unknown_with_upstream_reasons() {
        let n = node(Some("True"), vec![]);
        let conds = unknown_conditions(&n, ts(100)).unwrap_or_default();
        let ready = conds.iter().find(|c| c.type_ == "Ready").cloned().unwrap_or_default();
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(ready.message.as_deref(), Some("Kubelet stopped posting node status."));
        assert_eq!(ready.last_heartbeat_time, Some(Time(ts(10))), "the heartbeat is the kubelet's, kept");
        assert_eq!(ready.last_transition_time, Some(Time(ts(100))));
        let never = conds.iter().find(|c| c.type_ == "DiskPressure").cloned().unwrap_or_default();
        assert_eq!(never.status, "Unknown");
        assert_eq!(never.reason.as_deref(), Some("NodeStatusNeverUpdated"));
        assert_eq!(conds.len(), 4);
        let mut again = n.clone();
        if let Some(s) = again.status.as_mut() {
            s.conditions = Some(conds);
        }
        assert!(unknown_conditions(&again, ts(200)).is_none(), "already Unknown: nothing to write");
    }

    #[test]
    fn an_unknown_node_is_tainted_unreachable_and_a_ready_one_is_untainted() {
        let other = Taint { key: "dedicated".into(), effect: "NoSchedule".into(), ..Default::default() };
        let n = node(Some("Unknown"), vec![other.clone()]);
        let t = desired_taints(&n, false, ts(50)).unwrap_or_default();
        assert_eq!(t.len(), 3);
        assert!(t.contains(&other));
        let ne = t.iter().find(|t| t.key == TAINT_UNREACHABLE && t.effect == "NoExecute");
        assert_eq!(ne.and_then(|t| t.time_added.clone()), Some(Time(ts(50))));
        assert!(t.iter().any(|t| t.key == TAINT_UNREACHABLE && t.effect == "NoSchedule"));
        // Stable once applied: timeAdded is not refreshed.
        assert!(desired_taints(&node(Some("Unknown"), t.clone()), false, ts(90)).is_none());
        // Ready again: only the foreign taint stays.
        assert_eq!(desired_taints(&node(Some("True"), t.clone()), true, ts(90)), Some(vec![other.clone()]));
        // Lease renewed but Ready still our Unknown: reachable, untainted.
        assert_eq!(desired_taints(&node(Some("Unknown"), t), true, ts(90)), Some(vec![other]));
    }

    #[test]
    fn a_not_ready_node_gets_not_ready_taints_instead_of_unreachable() {
        let unreachable = taint(TAINT_UNREACHABLE, "NoExecute", ts(1));
        let t = desired_taints(&node(Some("False"), vec![unreachable]), true, ts(5)).unwrap_or_default();
        assert!(t.iter().all(|t| t.key == TAINT_NOT_READY));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn pods_are_evicted_when_their_shortest_toleration_runs_out() {
        let taints =
            vec![taint(TAINT_UNREACHABLE, "NoExecute", ts(100)), taint(TAINT_UNREACHABLE, "NoSchedule", ts(100))];
        let p = pod(vec![tol(TAINT_UNREACHABLE, Some(300)), tol(TAINT_UNREACHABLE, Some(60))]);
        assert_eq!(eviction(&p, &taints, ts(120)), Eviction::At(ts(160)));
        assert_eq!(eviction(&p, &taints, ts(160)), Eviction::Now);
        assert_eq!(eviction(&pod(vec![]), &taints, ts(100)), Eviction::Now, "untolerated: at once");
        assert_eq!(eviction(&pod(vec![tol(TAINT_UNREACHABLE, None)]), &taints, ts(9999)), Eviction::Never);
        assert_eq!(eviction(&pod(vec![]), &taints[1..], ts(100)), Eviction::Never, "NoSchedule never evicts");
    }

    #[test]
    fn a_node_is_heard_from_when_its_lease_or_heartbeat_changes() {
        let n = node(Some("True"), vec![]);
        let lease = |renew: i64| Lease {
            spec: Some(LeaseSpec { renew_time: Some(MicroTime(ts(renew))), ..Default::default() }),
            ..Default::default()
        };
        let p = observe(None, &n, Some(&lease(10)), ts(100));
        assert_eq!(p.seen, ts(100));
        assert_eq!(observe(Some(&p), &n, Some(&lease(10)), ts(200)).seen, ts(100), "no change, no news");
        assert_eq!(observe(Some(&p), &n, Some(&lease(20)), ts(200)).seen, ts(200), "renewal counts");
        assert!(elapsed(ts(100), ts(141)) > Timings::default().grace);
    }
}
