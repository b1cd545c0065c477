//! The disruption controller (upstream `pkg/controller/disruption`): the status of every
//! PodDisruptionBudget — `expectedPods`, `desiredHealthy`, `currentHealthy`,
//! `disruptionsAllowed`, `disruptedPods`, `observedGeneration` and the `DisruptionAllowed`
//! condition — which the eviction subresource (`api/policy.rs`) spends.
//!
//! The arithmetic is upstream's `getExpectedPodCount`: with an integer `minAvailable` the
//! expected pods are the matching pods and `desiredHealthy` is the number; with a percentage,
//! or with `maxUnavailable`, the expected pods are the sum of the owning controllers' scale
//! (ReplicationController, Deployment through its ReplicaSet, ReplicaSet, StatefulSet) and
//! percentages round up. A pod counts as healthy when it is Ready, not terminating, and not
//! recorded in `disruptedPods` by an eviction that has not completed yet (entries expire after
//! two minutes, as upstream's `DeletionTimeout`).

use super::events::{object_ref, Recorder};
use super::passes;
use super::podutil::{controller_of, is_ready, selector_matches};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, ReplicationController};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "controllermanager";
const RESYNC: Duration = Duration::from_secs(30);
/// Upstream `DeletionTimeout`: how long an eviction's entry in `disruptedPods` waits for the
/// pod's deletion to show.
const DELETION_TIMEOUT_SECS: i64 = 120;

/// Upstream `GetScaledValueFromIntOrPercent`: an integer as is, `N%` of `total` (rounded up
/// when `round_up`).
pub fn scaled(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let p = s.strip_suffix('%').and_then(|n| n.parse::<i64>().ok()).ok_or_else(|| {
                format!("invalid value for IntOrString: invalid type: string is not a percentage ({s:?})")
            })?;
            let x = p * i64::from(total);
            let v = if round_up { (x + 99).div_euclid(100) } else { x.div_euclid(100) };
            Ok(v as i32)
        }
    }
}

/// Whether the budget's arithmetic needs the controllers' scale.
pub fn needs_scale(pdb: &PodDisruptionBudget) -> bool {
    let spec = pdb.spec.as_ref();
    spec.and_then(|s| s.max_unavailable.as_ref()).is_some()
        || matches!(spec.and_then(|s| s.min_available.as_ref()), Some(IntOrString::String(_)))
}

/// (expectedPods, desiredHealthy) for `pods` matching pods and the controllers' total `scale`.
pub fn expected_and_desired(pdb: &PodDisruptionBudget, pods: i32, scale: i32) -> Result<(i32, i32), String> {
    let spec = pdb.spec.clone().unwrap_or_default();
    if let Some(mu) = &spec.max_unavailable {
        let max_unavailable = scaled(mu, scale, true)?;
        return Ok((scale, (scale - max_unavailable).max(0)));
    }
    match &spec.min_available {
        Some(IntOrString::Int(n)) => Ok((pods, *n)),
        Some(ma @ IntOrString::String(_)) => Ok((scale, scaled(ma, scale, true)?)),
        None => Ok((pods, 0)),
    }
}

/// The `disruptedPods` entries still pending (upstream `buildDisruptedPodMap`) and the names
/// whose deletion never came (for a `NotDeleted` event).
pub fn pending_disruptions(
    recorded: &BTreeMap<String, Time>,
    pods: &[&Pod],
    now: Timestamp,
) -> (BTreeMap<String, Time>, Vec<String>) {
    let by_name: HashMap<String, &Pod> = pods.iter().map(|p| (p.name_any(), *p)).collect();
    let mut keep = BTreeMap::new();
    let mut overdue = Vec::new();
    for (name, t) in recorded {
        let Some(p) = by_name.get(name) else { continue };
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if t.0.as_second() + DELETION_TIMEOUT_SECS < now.as_second() {
            overdue.push(name.clone());
            continue;
        }
        keep.insert(name.clone(), t.clone());
    }
    (keep, overdue)
}

/// Ready pods that are neither terminating nor being disrupted (upstream `countHealthyPods`).
pub fn count_healthy(pods: &[&Pod], disrupted: &BTreeMap<String, Time>) -> i32 {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !disrupted.contains_key(&p.name_any()) && is_ready(p))
        .count() as i32
}

/// Sets a condition, keeping its transition time when the status did not change (upstream
/// `meta.SetStatusCondition`).
pub fn set_condition(conds: &mut Vec<Condition>, new: Condition) {
    match conds.iter_mut().find(|c| c.type_ == new.type_) {
        Some(c) => {
            if c.status != new.status {
                c.last_transition_time = new.last_transition_time;
            }
            c.status = new.status;
            c.reason = new.reason;
            c.message = new.message;
            c.observed_generation = new.observed_generation;
        }
        None => conds.push(new),
    }
}

/// The budget's generation; an object stored without one counts as generation 1, as the
/// eviction handler reads it.
fn generation(pdb: &PodDisruptionBudget) -> i64 {
    pdb.metadata.generation.unwrap_or(1)
}

/// The new status (upstream `updatePdbStatus`).
pub fn compute_status(
    pdb: &PodDisruptionBudget,
    current_healthy: i32,
    desired_healthy: i32,
    expected: i32,
    disrupted: BTreeMap<String, Time>,
    now: Timestamp,
) -> PodDisruptionBudgetStatus {
    let mut allowed = current_healthy - desired_healthy;
    if expected <= 0 || allowed <= 0 {
        allowed = 0;
    }
    let old = pdb.status.clone().unwrap_or_default();
    let mut conds = old.conditions.unwrap_or_default();
    let (status, reason) = if allowed > 0 { ("True", "SufficientPods") } else { ("False", "InsufficientPods") };
    set_condition(
        &mut conds,
        Condition {
            type_: "DisruptionAllowed".into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Time(now),
            observed_generation: Some(generation(pdb)),
        },
    );
    PodDisruptionBudgetStatus {
        current_healthy,
        desired_healthy,
        disruptions_allowed: allowed,
        expected_pods: expected,
        disrupted_pods: if disrupted.is_empty() { None } else { Some(disrupted) },
        observed_generation: Some(generation(pdb)),
        conditions: Some(conds),
    }
}

/// The status when the expected count cannot be worked out (upstream `failSafe`): no
/// disruptions, a `SyncFailed` condition, the rest left as it was.
pub fn fail_safe(pdb: &PodDisruptionBudget, message: &str, now: Timestamp) -> PodDisruptionBudgetStatus {
    let mut st = pdb.status.clone().unwrap_or_default();
    st.disruptions_allowed = 0;
    let mut conds = st.conditions.take().unwrap_or_default();
    set_condition(
        &mut conds,
        Condition {
            type_: "DisruptionAllowed".into(),
            status: "False".into(),
            reason: "SyncFailed".into(),
            message: message.into(),
            last_transition_time: Time(now),
            observed_generation: st.observed_generation,
        },
    );
    st.conditions = Some(conds);
    st
}

struct Context {
    client: kube::Client,
    budgets: Store<PodDisruptionBudget>,
    pods: Store<Pod>,
    recorder: Recorder,
    no_pods: std::sync::Mutex<HashSet<String>>,
}

fn replicas(r: Option<i32>) -> i32 {
    r.unwrap_or(1)
}

/// The summed scale of the controllers of `pods` (upstream `getExpectedScale`), each counted
/// once.
async fn expected_scale(client: &kube::Client, ns: &str, pods: &[&Pod]) -> Result<i32, String> {
    // Pod controller uid → (counted controller uid, its scale); Deployment pods are counted by
    // their Deployment, whichever of its ReplicaSets owns them.
    let mut resolved: HashMap<String, (String, i32)> = HashMap::new();
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let dep_api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let ss_api: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let rc_api: Api<ReplicationController> = Api::namespaced(client.clone(), ns);
    let err = |e: kube::Error| e.to_string();
    for p in pods {
        let Some(r) = controller_of(&p.metadata) else {
            return Err(format!("found no controller ref for pod {:?}", p.name_any()));
        };
        if resolved.contains_key(&r.uid) {
            continue;
        }
        let found: Option<(String, i32)> = match (r.api_version.split('/').next(), r.kind.as_str()) {
            (Some("apps"), "ReplicaSet") => match rs_api.get_opt(&r.name).await.map_err(err)? {
                Some(rs) if rs.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                    match controller_of(&rs.metadata).filter(|o| o.kind == "Deployment") {
                        Some(d) => match dep_api.get_opt(&d.name).await.map_err(err)? {
                            Some(dep) if dep.metadata.uid.as_deref() == Some(d.uid.as_str()) => {
                                Some((d.uid.clone(), replicas(dep.spec.as_ref().and_then(|s| s.replicas))))
                            }
                            _ => None,
                        },
                        None => Some((r.uid.clone(), replicas(rs.spec.as_ref().and_then(|s| s.replicas)))),
                    }
                }
                _ => None,
            },
            (Some("apps"), "StatefulSet") => match ss_api.get_opt(&r.name).await.map_err(err)? {
                Some(ss) if ss.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                    Some((r.uid.clone(), replicas(ss.spec.as_ref().and_then(|s| s.replicas))))
                }
                _ => None,
            },
            (Some("v1"), "ReplicationController") => match rc_api.get_opt(&r.name).await.map_err(err)? {
                Some(rc) if rc.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                    Some((r.uid.clone(), replicas(rc.spec.as_ref().and_then(|s| s.replicas))))
                }
                _ => None,
            },
            _ => None,
        };
        let Some((uid, n)) = found else {
            return Err(format!("found no controllers for pod {:?}", p.name_any()));
        };
        resolved.insert(r.uid.clone(), (uid, n));
    }
    let counted: HashMap<&String, i32> = resolved.values().map(|(uid, n)| (uid, *n)).collect();
    Ok(counted.values().sum())
}

async fn sync(ctx: &Context, pdb: &PodDisruptionBudget) -> Result<(), kube::Error> {
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let ns = pdb.namespace().unwrap_or_default();
    let uid = pdb.metadata.uid.clone().unwrap_or_default();
    let now = Timestamp::now();
    let all = ctx.pods.state();
    let pods: Vec<&Pod> = match pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        // policy/v1: a null selector selects nothing, an empty one everything.
        None => vec![],
        Some(sel) => all
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|p| selector_matches(sel, p.metadata.labels.as_ref()))
            .collect(),
    };
    {
        let mut np = ctx.no_pods.lock().unwrap_or_else(|e| e.into_inner());
        if pods.is_empty() {
            if np.insert(uid.clone()) {
                ctx.recorder.normal(object_ref(pdb), "NoPods", "No matching pods found".into());
            }
        } else {
            np.remove(&uid);
        }
    }
    let scale = if needs_scale(pdb) { Some(expected_scale(&ctx.client, &ns, &pods).await) } else { None };
    let counts = match scale {
        Some(Err(e)) => Err(e),
        Some(Ok(s)) => expected_and_desired(pdb, pods.len() as i32, s),
        None => expected_and_desired(pdb, pods.len() as i32, 0),
    };
    let status = match counts {
        Ok((expected, desired)) => {
            let recorded = pdb.status.as_ref().and_then(|s| s.disrupted_pods.clone()).unwrap_or_default();
            let (disrupted, overdue) = pending_disruptions(&recorded, &pods, now);
            for name in overdue {
                ctx.recorder.warning(
                    object_ref(pdb),
                    "NotDeleted",
                    format!("Pod was expected by PDB {ns}/{} to be deleted but it wasn't", pdb.name_any()),
                );
                tracing::debug!(pod = %name, "disrupted pod was not deleted in time");
            }
            let healthy = count_healthy(&pods, &disrupted);
            compute_status(pdb, healthy, desired, expected, disrupted, now)
        }
        Err(e) => {
            ctx.recorder.warning(
                object_ref(pdb),
                "CalculateExpectedPodCountFailed",
                format!("Failed to calculate the number of expected pods: {e}"),
            );
            fail_safe(pdb, &e, now)
        }
    };
    if pdb.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut next = pdb.clone();
    next.status = Some(status);
    let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
    // The object carries the resourceVersion this status was computed from: an eviction that
    // spent a disruption meanwhile makes this a conflict, retried on the next pass.
    api.replace_status(&pdb.name_any(), &PostParams::default(), &next).await?;
    Ok(())
}

/// Runs the disruption controller until shutdown.
pub async fn run(client: kube::Client, informers: super::informer::Informers, shutdown: CancellationToken) {
    let notify = Arc::new(Notify::new());
    informers.pods.notify_on_events(notify.clone(), shutdown.clone());
    let ctx = Context {
        budgets: passes::cache(
            Api::<PodDisruptionBudget>::all(client.clone()),
            notify.clone(),
            shutdown.clone(),
            COMPONENT,
        ),
        pods: informers.pods.store(),
        recorder: Recorder::new(client.clone(), COMPONENT, shutdown.clone()),
        no_pods: Default::default(),
        client,
    };
    if !passes::ready(&shutdown, vec![passes::when_ready(&ctx.budgets), passes::when_ready(&ctx.pods)]).await {
        return;
    }
    loop {
        for pdb in ctx.budgets.state() {
            if let Err(e) = sync(&ctx, &pdb).await {
                tracing::debug!(error = %e, pdb = %pdb.name_any(), "disruption controller: status update failed; retrying");
                notify.notify_one();
            }
        }
        if !passes::next(&notify, RESYNC, &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pdb(spec: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({"metadata": {"name": "b", "namespace": "d", "generation": 2}, "spec": spec}))
            .unwrap()
    }

    fn pod(name: &str, ready: bool, deleting: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "deletionTimestamp": if deleting { json!("2030-01-01T00:00:00Z") } else { json!(null) }},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    #[test]
    fn percentages_round_up_and_bad_strings_are_errors() {
        assert_eq!(scaled(&IntOrString::String("50%".into()), 3, true), Ok(2));
        assert_eq!(scaled(&IntOrString::String("50%".into()), 3, false), Ok(1));
        assert_eq!(scaled(&IntOrString::String("100%".into()), 4, true), Ok(4));
        assert_eq!(scaled(&IntOrString::Int(2), 10, true), Ok(2));
        assert!(scaled(&IntOrString::String("half".into()), 3, true).is_err());
    }

    #[test]
    fn min_available_as_int_counts_the_matching_pods() {
        let b = pdb(json!({"minAvailable": 2}));
        assert!(!needs_scale(&b));
        assert_eq!(expected_and_desired(&b, 3, 0), Ok((3, 2)));
    }

    #[test]
    fn percentages_and_max_unavailable_use_the_controllers_scale() {
        let b = pdb(json!({"minAvailable": "50%"}));
        assert!(needs_scale(&b));
        assert_eq!(expected_and_desired(&b, 2, 5), Ok((5, 3)));
        let b = pdb(json!({"maxUnavailable": 1}));
        assert!(needs_scale(&b));
        assert_eq!(expected_and_desired(&b, 3, 3), Ok((3, 2)));
        let b = pdb(json!({"maxUnavailable": "30%"}));
        assert_eq!(expected_and_desired(&b, 3, 3), Ok((3, 2)));
        let b = pdb(json!({"maxUnavailable": 5}));
        assert_eq!(expected_and_desired(&b, 3, 3), Ok((3, 0)));
    }

    #[test]
    fn healthy_pods_are_ready_not_terminating_and_not_being_disrupted() {
        let (a, b, c, d) = (pod("a", true, false), pod("b", false, false), pod("c", true, true), pod("d", true, false));
        let pods = vec![&a, &b, &c, &d];
        let now = Timestamp::from_second(1_000_000).unwrap();
        let mut recorded = BTreeMap::new();
        recorded.insert("d".to_string(), Time(Timestamp::from_second(1_000_000 - 10).unwrap()));
        recorded.insert("c".to_string(), Time(now));
        recorded.insert("gone".to_string(), Time(now));
        let (pending, overdue) = pending_disruptions(&recorded, &pods, now);
        assert_eq!(pending.keys().collect::<Vec<_>>(), vec!["d"]);
        assert!(overdue.is_empty());
        assert_eq!(count_healthy(&pods, &pending), 1);
        let later = Timestamp::from_second(1_000_000 + 200).unwrap();
        let (pending, overdue) = pending_disruptions(&recorded, &pods, later);
        assert!(pending.is_empty());
        assert_eq!(overdue, vec!["d".to_string()]);
    }

    #[test]
    fn status_allows_the_surplus_and_sets_the_condition() {
        let b = pdb(json!({"minAvailable": 2}));
        let now = Timestamp::from_second(1_000_000).unwrap();
        let st = compute_status(&b, 3, 2, 3, BTreeMap::new(), now);
        assert_eq!((st.current_healthy, st.desired_healthy, st.expected_pods, st.disruptions_allowed), (3, 2, 3, 1));
        assert_eq!(st.observed_generation, Some(2));
        let c = &st.conditions.as_ref().unwrap()[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("DisruptionAllowed", "True", "SufficientPods")
        );
        let st = compute_status(&b, 1, 2, 3, BTreeMap::new(), now);
        assert_eq!(st.disruptions_allowed, 0);
        assert_eq!(st.conditions.as_ref().unwrap()[0].reason, "InsufficientPods");
        // No expected pods: nothing may be disrupted whatever the counts say.
        assert_eq!(compute_status(&b, 3, 0, 0, BTreeMap::new(), now).disruptions_allowed, 0);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let t0 = Time(Timestamp::from_second(100).unwrap());
        let t1 = Time(Timestamp::from_second(200).unwrap());
        let cond = |status: &str, t: &Time| Condition {
            type_: "DisruptionAllowed".into(),
            status: status.into(),
            reason: "r".into(),
            message: String::new(),
            last_transition_time: t.clone(),
            observed_generation: None,
        };
        let mut conds = vec![cond("True", &t0)];
        set_condition(&mut conds, cond("True", &t1));
        assert_eq!(conds[0].last_transition_time, t0);
        set_condition(&mut conds, cond("False", &t1));
        assert_eq!(conds[0].last_transition_time, t1);
    }

    #[test]
    fn a_failed_sync_forbids_disruptions() {
        let b = pdb(json!({"maxUnavailable": 1}));
        let st = fail_safe(&b, "found no controller ref for pod \"x\"", Timestamp::UNIX_EPOCH);
        assert_eq!(st.disruptions_allowed, 0);
        assert_eq!(st.conditions.unwrap()[0].reason, "SyncFailed");
    }
}
