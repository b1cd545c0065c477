//! The Job controller (upstream `pkg/controller/job`) and the TTL-after-finished controller
//! (`pkg/controller/ttlafterfinished`).
//!
//! A Job runs pods until `completions` of them succeeded (NonIndexed), or one pod per index
//! `0..completions` succeeded (Indexed), at most `parallelism` at a time. More than
//! `backoffLimit` failed pods fail the Job (`BackoffLimitExceeded`), so does running longer than
//! `activeDeadlineSeconds` (`DeadlineExceeded`); either way its remaining pods are deleted. Like
//! upstream since v1.31, the terminal condition is preceded by the interim `SuccessCriteriaMet`
//! or `FailureTarget`, written together with it here because a finished Job's pods are
//! deleted in the same pass. A finished Job with `ttlSecondsAfterFinished` is deleted that long
//! after it finished, together with its pods.
//!
//! Pods are found by their controller reference to the Job (the API server does not generate a
//! selector for Jobs yet); they carry upstream's `batch.kubernetes.io/job-name`, `job-name`,
//! `batch.kubernetes.io/controller-uid` and `controller-uid` labels. Indexed pods are named
//! `<job>-<index>-<random>` and carry the `batch.kubernetes.io/job-completion-index` annotation
//! and label and the `JOB_COMPLETION_INDEX` environment variable. Finished pods are kept (as
//! upstream keeps them) and are what `succeeded`/`failed` are counted from.
//!
//! `podFailurePolicy` rules are matched against each failed pod in order (upstream
//! `matchPodFailurePolicy`): `onExitCodes` (In/NotIn over non-zero exit codes of the named or of
//! any container) or `onPodConditions` (e.g. `DisruptionTarget`); the first matching rule's
//! action applies: FailJob fails the Job at once (reason `PodFailurePolicy`), Ignore leaves the
//! pod out of `failed` and the backoff limit, Count (and FailIndex, as backoffLimitPerIndex is
//! not done) counts it as usual.
//!
//! Not done yet: `successPolicy`, `backoffLimitPerIndex`, the exponential
//! delay before recreating failed pods, `suspend` beyond not creating pods, adopting orphans.

use crate::controllers::events::{object_ref, Recorder};
use crate::controllers::podutil::{self, controller_ref};
use futures::{future, StreamExt};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const COMPONENT: &str = "job-controller";
pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";
pub const LABEL_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// Why a Job could not be synced; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// An API call failed.
    #[error("{action} for job {job}: {source}")]
    Api {
        action: &'static str,
        job: String,
        #[source]
        source: kube::Error,
    },
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// The completion index of an Indexed Job's pod.
pub fn pod_index(p: &Pod) -> Option<i32> {
    p.metadata.annotations.as_ref().and_then(|a| a.get(COMPLETION_INDEX)).and_then(|v| v.parse().ok())
}

fn has_condition(job: &Job, t: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == t && c.status == "True"))
}

/// Whether the Job has finished (upstream `IsJobFinished`).
pub fn finished(job: &Job) -> bool {
    has_condition(job, "Complete") || has_condition(job, "Failed")
}

/// Upstream's `completedIndexes` format: sorted, consecutive runs as `a-b`, comma separated.
pub fn format_indexes(ix: &BTreeSet<i32>) -> String {
    let mut out: Vec<String> = vec![];
    let mut run: Option<(i32, i32)> = None;
    for &i in ix {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some((a, b)) => {
                out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = run {
        out.push(if a == b { a.to_string() } else { format!("{a}-{b}") });
    }
    out.join(",")
}

/// What one sync does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Pods to create: `None` for NonIndexed, `Some(index)` for Indexed.
    pub create: Vec<Option<i32>>,
    /// Active pods to delete (names).
    pub delete: Vec<String>,
    /// The status to write.
    pub status: JobStatus,
    /// Events (reason, message, warning?).
    pub events: Vec<(&'static str, String, bool)>,
    /// When to look again without news (deadline or TTL).
    pub requeue_after: Option<Duration>,
    /// Delete the Job itself (ttlSecondsAfterFinished passed).
    pub delete_job: bool,
}

fn condition(t: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: t.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn secs(d: i64) -> Duration {
    Duration::from_secs(u64::try_from(d).unwrap_or(0).max(1))
}

/// What a pod failure policy rule says about one failed pod.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureAction {
    /// Fail the Job, with upstream's message naming the pod and the rule.
    FailJob(String),
    /// Do not count the failure.
    Ignore,
    /// Count it towards the backoff limit (also when no rule matches).
    Count,
}

/// The action of the first `podFailurePolicy` rule matching failed pod `p` (upstream
/// `matchPodFailurePolicy`).
pub fn pod_failure_action(job: &Job, p: &Pod) -> FailureAction {
    let Some(policy) = job.spec.as_ref().and_then(|s| s.pod_failure_policy.as_ref()) else {
        return FailureAction::Count;
    };
    let ns = p.metadata.namespace.as_deref().unwrap_or_default();
    let name = p.metadata.name.as_deref().unwrap_or_default();
    let st = p.status.as_ref();
    for (i, rule) in policy.rules.iter().enumerate() {
        let mut matched: Option<String> = None;
        if let Some(req) = &rule.on_exit_codes {
            let statuses = st
                .into_iter()
                .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()));
            for cs in statuses {
                let Some(code) = cs.state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code) else {
                    continue;
                };
                if code == 0 || req.container_name.as_deref().is_some_and(|n| n != cs.name) {
                    continue;
                }
                let listed = req.values.contains(&code);
                let hit = match req.operator.as_str() {
                    "In" => listed,
                    "NotIn" => !listed,
                    _ => false,
                };
                if hit {
                    matched = Some(format!(
                        "Container {} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {i}",
                        cs.name, rule.action
                    ));
                    break;
                }
            }
        }
        for pat in rule.on_pod_conditions.iter().flatten() {
            if matched.is_some() {
                break;
            }
            let want = if pat.status.is_empty() { "True" } else { pat.status.as_str() };
            let has = st
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == pat.type_ && c.status == want));
            if has {
                matched = Some(format!(
                    "Pod {ns}/{name} has condition {} matching {} rule at index {i}",
                    pat.type_, rule.action
                ));
            }
        }
        if let Some(msg) = matched {
            return match rule.action.as_str() {
                "FailJob" => FailureAction::FailJob(msg),
                "Ignore" => FailureAction::Ignore,
                _ => FailureAction::Count,
            };
        }
    }
    FailureAction::Count
}

/// The pure decision for one Job given its pods (upstream `syncJob`).
pub fn plan(job: &Job, pods: &[Pod], now: Timestamp) -> Plan {
    let spec = job.spec.clone().unwrap_or_default();
    let mut status = job.status.clone().unwrap_or_default();
    let mut p = Plan::default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let active: Vec<&Pod> = pods.iter().filter(|p| podutil::is_active(p)).collect();
    let succeeded_pods: Vec<&Pod> = pods.iter().filter(|p| phase(p) == Some("Succeeded")).collect();
    let mut failed = 0;
    let mut fail_job: Option<String> = None;
    for fp in pods.iter().filter(|p| phase(p) == Some("Failed")) {
        match pod_failure_action(job, fp) {
            FailureAction::Ignore => {}
            FailureAction::Count => failed += 1,
            FailureAction::FailJob(msg) => {
                failed += 1;
                fail_job.get_or_insert(msg);
            }
        }
    }
    let completions = spec.completions;
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let succeeded_ix: BTreeSet<i32> =
        succeeded_pods.iter().filter_map(|p| pod_index(p)).filter(|i| completions.is_none_or(|c| *i < c)).collect();
    let succeeded = if indexed { succeeded_ix.len() as i32 } else { succeeded_pods.len() as i32 };
    status.succeeded = Some(succeeded);
    status.failed = Some(failed);
    status.ready = Some(active.iter().filter(|p| podutil::is_ready(p)).count() as i32);
    if indexed {
        status.completed_indexes = Some(format_indexes(&succeeded_ix));
    }

    if finished(job) {
        // Only the TTL is left to apply (upstream ttlafterfinished).
        status.active = Some(active.len() as i32);
        p.status = job.status.clone().unwrap_or_default();
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let done = status
                .conditions
                .iter()
                .flatten()
                .filter(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
                .filter_map(|c| c.last_transition_time.as_ref())
                .map(|t| t.0)
                .next()
                .or(status.completion_time.as_ref().map(|t| t.0));
            if let Some(done) = done {
                let due = done.as_second() + i64::from(ttl);
                if due <= now.as_second() {
                    p.delete_job = true;
                } else {
                    p.requeue_after = Some(secs(due - now.as_second()));
                }
            }
        }
        return p;
    }
    if status.start_time.is_none() && spec.suspend != Some(true) {
        status.start_time = Some(Time(now));
    }
    let conds = status.conditions.get_or_insert_with(Vec::new);

    // Failure: backoff limit, then the active deadline.
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let mut failure: Option<(&str, String)> = None;
    if let Some(msg) = fail_job {
        failure = Some(("PodFailurePolicy", msg));
    } else if failed > backoff_limit {
        failure = Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit".into()));
    } else if let (Some(ads), Some(start)) = (spec.active_deadline_seconds, status.start_time.as_ref()) {
        let due = start.0.as_second() + ads;
        if due <= now.as_second() {
            failure = Some(("DeadlineExceeded", "Job was active longer than specified deadline".into()));
        } else {
            p.requeue_after = Some(secs(due - now.as_second()));
        }
    }
    let complete = match completions {
        Some(c) if indexed => (0..c).all(|i| succeeded_ix.contains(&i)),
        Some(c) => succeeded >= c,
        // Work-queue mode: done once any pod succeeded and none is left running.
        None => succeeded > 0 && active.is_empty(),
    };
    if let Some((reason, message)) = failure {
        p.delete = active.iter().map(|p| p.name_any()).collect();
        conds.push(condition("FailureTarget", reason, &message, now));
        conds.push(condition("Failed", reason, &message, now));
        p.events.push((reason, message, true));
        status.active = Some(0);
        p.status = status;
        return p;
    }
    if complete {
        p.delete = active.iter().map(|p| p.name_any()).collect();
        let msg = "Reached expected number of succeeded pods";
        conds.push(condition("SuccessCriteriaMet", "CompletionsReached", msg, now));
        conds.push(condition("Complete", "CompletionsReached", msg, now));
        status.completion_time = Some(Time(now));
        status.active = Some(0);
        p.events.push(("Completed", "Job completed".into(), false));
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            p.requeue_after = Some(secs(i64::from(ttl)));
        }
        p.status = status;
        return p;
    }
    if spec.suspend == Some(true) {
        p.delete = active.iter().map(|p| p.name_any()).collect();
        status.active = Some(0);
        p.status = status;
        return p;
    }

    // How many pods should run now (upstream `manageJob`).
    let want = match completions {
        Some(c) => parallelism.min(c - succeeded).max(0),
        None if succeeded > 0 => 0,
        None => parallelism,
    };
    if indexed {
        let running: BTreeSet<i32> = active.iter().filter_map(|p| pod_index(p)).collect();
        let missing = (0..completions.unwrap_or(0)).filter(|i| !succeeded_ix.contains(i) && !running.contains(i));
        let room = (want - active.len() as i32).max(0) as usize;
        p.create = missing.take(room).map(Some).collect();
        // Extra active pods (parallelism lowered): delete the highest indexes first.
        let mut extra: Vec<&&Pod> = active.iter().collect();
        extra.sort_by_key(|p| std::cmp::Reverse(pod_index(p)));
        let excess = (active.len() as i32 - want).max(0) as usize;
        p.delete = extra.into_iter().take(excess).map(|p| p.name_any()).collect();
    } else {
        let n = want - active.len() as i32;
        if n > 0 {
            p.create = vec![None; n as usize];
        } else if n < 0 {
            // Scale down preferring pods that are not ready, as upstream's `activePodsForRemoval`.
            let mut by: Vec<&&Pod> = active.iter().collect();
            by.sort_by_key(|p| podutil::is_ready(p));
            p.delete = by.into_iter().take((-n) as usize).map(|p| p.name_any()).collect();
        }
    }
    status.active = Some(active.len() as i32 + p.create.len() as i32 - p.delete.len() as i32);
    p.status = status;
    p
}

/// The pod a Job creates (upstream `getPodTemplate` plus the Indexed additions).
pub fn new_pod(job: &Job, index: Option<i32>) -> Pod {
    let name = job.name_any();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let tpl: PodTemplateSpec = job.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let mut meta = tpl.metadata.unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in [
        (LABEL_JOB_NAME, name.as_str()),
        ("job-name", name.as_str()),
        (LABEL_CONTROLLER_UID, uid.as_str()),
        ("controller-uid", uid.as_str()),
    ] {
        labels.insert(k.into(), v.into());
    }
    let mut spec = tpl.spec.unwrap_or_default();
    match index {
        Some(i) => {
            labels.insert(COMPLETION_INDEX.into(), i.to_string());
            meta.annotations.get_or_insert_with(BTreeMap::new).insert(COMPLETION_INDEX.into(), i.to_string());
            meta.generate_name = Some(format!("{name}-{i}-"));
            // Upstream: hostname `<job>-<index>` so a headless service can address each index.
            if spec.hostname.is_none() {
                spec.hostname = Some(format!("{name}-{i}"));
            }
            let env = EnvVar {
                name: "JOB_COMPLETION_INDEX".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                        api_version: None,
                    }),
                    ..Default::default()
                }),
                value: None,
            };
            for c in spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut()) {
                let e = c.env.get_or_insert_with(Vec::new);
                if !e.iter().any(|e| e.name == "JOB_COMPLETION_INDEX") {
                    e.push(env.clone());
                }
            }
        }
        None => meta.generate_name = Some(format!("{name}-")),
    }
    meta.name = None;
    meta.namespace = job.metadata.namespace.clone();
    meta.owner_references = Some(vec![controller_ref(job)]);
    Pod { metadata: meta, spec: Some(spec), status: None }
}

pub struct Context {
    client: kube::Client,
    recorder: Recorder,
}

fn as_json(s: &JobStatus) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_default()
}

/// Syncs one Job.
pub async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, JobError> {
    let ns = job.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", job.name_any());
    let err = |action: &'static str| {
        let job = key.clone();
        move |source| JobError::Api { action, job, source }
    };
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let list = pods_api
        .list(&ListParams::default().labels(&format!("{LABEL_CONTROLLER_UID}={uid}")))
        .await
        .map_err(err("listing pods"))?;
    let pods: Vec<Pod> = list.items.into_iter().filter(|p| podutil::is_controlled_by(&p.metadata, &uid)).collect();
    let now = Timestamp::now();
    let p = plan(&job, &pods, now);
    if p.delete_job {
        tracing::info!(job = %key, "ttlSecondsAfterFinished passed; deleting the job and its pods");
        for pod in &pods {
            let _ = pods_api.delete(&pod.name_any(), &DeleteParams::background()).await;
        }
        let dp = DeleteParams {
            preconditions: Some(kube::api::Preconditions { uid: Some(uid), resource_version: None }),
            ..DeleteParams::background()
        };
        return match jobs.delete(&job.name_any(), &dp).await {
            Ok(_) => Ok(Action::await_change()),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(Action::await_change()),
            Err(e) => Err(err("deleting finished job")(e)),
        };
    }
    for name in &p.delete {
        match pods_api.delete(name, &DeleteParams::default()).await {
            Ok(_) => ctx.recorder.normal(object_ref(job.as_ref()), "SuccessfulDelete", format!("Deleted pod: {name}")),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(err("deleting pod")(e)),
        }
    }
    for index in &p.create {
        match pods_api.create(&PostParams::default(), &new_pod(&job, *index)).await {
            Ok(created) => ctx.recorder.normal(
                object_ref(job.as_ref()),
                "SuccessfulCreate",
                format!("Created pod: {}", created.name_any()),
            ),
            Err(e) => {
                ctx.recorder.warning(object_ref(job.as_ref()), "FailedCreate", format!("Error creating: {e}"));
                return Err(err("creating pod")(e));
            }
        }
    }
    let old = job.status.clone().unwrap_or_default();
    if as_json(&old) != as_json(&p.status) {
        // Guarded by resourceVersion: a sync that read a stale Job must not erase conditions
        // a newer sync wrote; it fails with a conflict and is retried.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": job.metadata.resource_version},
            "status": p.status,
        });
        jobs.patch_status(&job.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err("updating status"))?;
        for (reason, message, warning) in &p.events {
            if *warning {
                ctx.recorder.warning(object_ref(job.as_ref()), reason, message.clone());
            } else {
                ctx.recorder.normal(object_ref(job.as_ref()), reason, message.clone());
            }
        }
    }
    Ok(match p.requeue_after {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

fn error_policy(_job: Arc<Job>, e: &JobError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "job-controller: will retry");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the Job controller until `shutdown` fires.
pub async fn run(client: kube::Client, informers: super::informer::Informers, shutdown: CancellationToken) {
    // A pod event wakes the Job that controls it (upstream's owner index).
    let pod_events = informers.pods.events().filter_map(|ev| {
        let p = ev.object();
        let owner = crate::controllers::podutil::controller_of(&p.metadata)
            .filter(|r| r.kind == "Job" && r.api_version == "batch/v1")
            .map(|r| ObjectRef::<Job>::new(&r.name).within(p.metadata.namespace.as_deref().unwrap_or_default()));
        future::ready(owner)
    });
    let controller =
        Controller::new(Api::<Job>::all(client.clone()), watcher::Config::default()).reconcile_on(pod_events);
    let ctx = Arc::new(Context { recorder: Recorder::new(client.clone(), COMPONENT, shutdown.clone()), client });
    controller
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "job-controller");
            }
            future::ready(())
        })
        .await;
}

/// Metadata helper for tests and the CronJob controller.
pub fn job_meta(name: &str, ns: &str, uid: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), uid: Some(uid.into()), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::podutil::tests::ts;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};

    fn job(completions: Option<i32>, parallelism: i32, indexed: bool) -> Job {
        Job {
            metadata: job_meta("pi", "default", "job-uid"),
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                backoff_limit: Some(2),
                completion_mode: Some(if indexed { "Indexed" } else { "NonIndexed" }.into()),
                template: PodTemplateSpec {
                    spec: Some(PodSpec {
                        containers: vec![Container { name: "c".into(), ..Default::default() }],
                        restart_policy: Some("Never".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, phase: &str, index: Option<i32>) -> Pod {
        let mut p = Pod {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            status: Some(PodStatus { phase: Some(phase.into()), ..Default::default() }),
            ..Default::default()
        };
        if let Some(i) = index {
            p.metadata.annotations = Some(BTreeMap::from([(COMPLETION_INDEX.into(), i.to_string())]));
        }
        p
    }

    fn cond<'a>(s: &'a JobStatus, t: &str) -> Option<&'a JobCondition> {
        s.conditions.iter().flatten().find(|c| c.type_ == t)
    }

    #[test]
    fn a_new_job_starts_parallelism_pods_and_records_its_start_time() {
        let p = plan(&job(Some(5), 2, false), &[], ts(100));
        assert_eq!(p.create, vec![None, None]);
        assert_eq!(p.status.active, Some(2));
        assert_eq!(p.status.start_time, Some(Time(ts(100))));
    }

    #[test]
    fn never_more_pods_than_completions_left() {
        let pods = [pod("a", "Succeeded", None), pod("b", "Succeeded", None), pod("c", "Running", None)];
        let p = plan(&job(Some(4), 3, false), &pods, ts(100));
        assert_eq!(p.create.len(), 1, "4 - 2 succeeded = 2 wanted, 1 running");
        assert_eq!(p.status.succeeded, Some(2));
    }

    #[test]
    fn enough_successes_complete_the_job_with_upstream_conditions() {
        let pods = [pod("a", "Succeeded", None), pod("b", "Failed", None)];
        let p = plan(&job(Some(1), 1, false), &pods, ts(100));
        let c = p.status.conditions.clone().unwrap_or_default();
        assert_eq!(c.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["SuccessCriteriaMet", "Complete"]);
        assert_eq!(c[1].reason.as_deref(), Some("CompletionsReached"));
        assert_eq!(p.status.completion_time, Some(Time(ts(100))));
        assert_eq!((p.status.succeeded, p.status.failed, p.status.active), (Some(1), Some(1), Some(0)));
        assert!(p.create.is_empty());
    }

    #[test]
    fn more_failures_than_the_backoff_limit_fail_the_job_and_stop_its_pods() {
        let pods =
            [pod("a", "Failed", None), pod("b", "Failed", None), pod("c", "Failed", None), pod("d", "Running", None)];
        let p = plan(&job(Some(1), 1, false), &pods, ts(100));
        let failed = cond(&p.status, "Failed").cloned().unwrap_or_default();
        assert_eq!(failed.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(failed.message.as_deref(), Some("Job has reached the specified backoff limit"));
        assert!(cond(&p.status, "FailureTarget").is_some());
        assert_eq!(p.delete, ["d"]);
        assert!(p.status.completion_time.is_none(), "only complete jobs have a completion time");
        // Two failures are within backoffLimit 2: a replacement is made.
        let p = plan(&job(Some(1), 1, false), &pods[..2], ts(100));
        assert!(cond(&p.status, "Failed").is_none());
        assert_eq!(p.create.len(), 1);
    }

    #[test]
    fn the_active_deadline_fails_the_job_once_passed() {
        let mut j = job(Some(1), 1, false);
        if let Some(s) = j.spec.as_mut() {
            s.active_deadline_seconds = Some(30);
        }
        j.status = Some(JobStatus { start_time: Some(Time(ts(100))), ..Default::default() });
        let p = plan(&j, &[pod("a", "Running", None)], ts(110));
        assert_eq!(p.requeue_after, Some(Duration::from_secs(20)));
        let p = plan(&j, &[pod("a", "Running", None)], ts(130));
        assert_eq!(cond(&p.status, "Failed").and_then(|c| c.reason.as_deref()), Some("DeadlineExceeded"));
        assert_eq!(p.delete, ["a"]);
    }

    #[test]
    fn indexed_jobs_run_each_missing_index_once_and_report_completed_indexes() {
        let pods = [pod("a", "Succeeded", Some(0)), pod("b", "Running", Some(1)), pod("c", "Succeeded", Some(3))];
        let p = plan(&job(Some(5), 3, true), &pods, ts(100));
        assert_eq!(p.create, vec![Some(2), Some(4)]);
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0,3"));
        let done: Vec<Pod> = (0..3).map(|i| pod(&format!("p{i}"), "Succeeded", Some(i))).collect();
        let p = plan(&job(Some(3), 3, true), &done, ts(100));
        assert_eq!(p.status.completed_indexes.as_deref(), Some("0-2"));
        assert!(cond(&p.status, "Complete").is_some());
    }

    #[test]
    fn completed_indexes_use_upstream_ranges() {
        let s: BTreeSet<i32> = [0, 1, 2, 4, 6, 7].into();
        assert_eq!(format_indexes(&s), "0-2,4,6-7");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
    }

    #[test]
    fn a_finished_job_is_deleted_after_its_ttl() {
        let mut j = job(Some(1), 1, false);
        if let Some(s) = j.spec.as_mut() {
            s.ttl_seconds_after_finished = Some(10);
        }
        j.status = Some(JobStatus {
            conditions: Some(vec![condition("Complete", "CompletionsReached", "m", ts(100))]),
            ..Default::default()
        });
        let p = plan(&j, &[], ts(105));
        assert!(!p.delete_job);
        assert_eq!(p.requeue_after, Some(Duration::from_secs(5)));
        assert!(plan(&j, &[], ts(110)).delete_job);
    }

    #[test]
    fn pods_carry_the_job_labels_owner_and_index() {
        let mut j = job(Some(3), 1, true);
        j.metadata.uid = Some("u1".into());
        let p = new_pod(&j, Some(2));
        let l = p.metadata.labels.clone().unwrap_or_default();
        assert_eq!(l.get("batch.kubernetes.io/job-name").map(String::as_str), Some("pi"));
        assert_eq!(l.get("job-name").map(String::as_str), Some("pi"));
        assert_eq!(l.get("controller-uid").map(String::as_str), Some("u1"));
        assert_eq!(l.get(COMPLETION_INDEX).map(String::as_str), Some("2"));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-2-"));
        assert_eq!(p.spec.as_ref().and_then(|s| s.hostname.as_deref()), Some("pi-2"));
        let env = p.spec.as_ref().and_then(|s| s.containers[0].env.clone()).unwrap_or_default();
        assert!(env.iter().any(|e| e.name == "JOB_COMPLETION_INDEX"));
        assert!(podutil::is_controlled_by(&p.metadata, "u1"));
        assert_eq!(new_pod(&j, None).metadata.generate_name.as_deref(), Some("pi-"));
    }

    fn with_policy(rules: serde_json::Value) -> Job {
        let mut j = job(Some(1), 1, false);
        if let Some(s) = j.spec.as_mut() {
            s.pod_failure_policy = serde_json::from_value(json_rules(rules)).ok();
        }
        j
    }

    fn json_rules(rules: serde_json::Value) -> serde_json::Value {
        serde_json::json!({ "rules": rules })
    }

    fn failed_with(name: &str, container: &str, code: i32) -> Pod {
        let mut p = pod(name, "Failed", None);
        p.metadata.namespace = Some("default".into());
        if let Some(st) = p.status.as_mut() {
            st.container_statuses = serde_json::from_value(serde_json::json!([{
                "name": container, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": code}},
            }]))
            .ok();
        }
        p
    }

    #[test]
    fn a_fail_job_rule_on_an_exit_code_fails_the_job_with_the_upstream_message() {
        let j = with_policy(serde_json::json!([
            {"action": "FailJob", "onExitCodes": {"containerName": "c", "operator": "In", "values": [42]}},
        ]));
        let p = plan(&j, &[failed_with("pi-x", "c", 42)], ts(100));
        let conds = p.status.conditions.clone().unwrap_or_default();
        let failed = conds.iter().find(|c| c.type_ == "Failed").cloned().unwrap_or_default();
        assert_eq!(failed.reason.as_deref(), Some("PodFailurePolicy"));
        assert_eq!(
            failed.message.as_deref(),
            Some("Container c for pod default/pi-x failed with exit code 42 matching FailJob rule at index 0")
        );
        assert!(conds.iter().any(|c| c.type_ == "FailureTarget"));
        let other = plan(&j, &[failed_with("pi-y", "c", 1)], ts(100));
        assert!(!finished(&Job { status: Some(other.status), ..j.clone() }), "exit code 1 is only counted");
    }

    #[test]
    fn ignored_failures_do_not_count_towards_the_backoff_limit() {
        let j = with_policy(serde_json::json!([
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [0]}},
        ]));
        let mut disrupted: Vec<Pod> = (0..5).map(|i| pod(&format!("d{i}"), "Failed", None)).collect();
        for d in &mut disrupted {
            if let Some(st) = d.status.as_mut() {
                st.conditions = serde_json::from_value(serde_json::json!([
                    {"type": "DisruptionTarget", "status": "True"}]))
                .ok();
            }
        }
        assert_eq!(pod_failure_action(&j, &disrupted[0]), FailureAction::Ignore);
        let p = plan(&j, &disrupted, ts(100));
        assert_eq!(p.status.failed, Some(0));
        assert_eq!(p.create.len(), 1, "a replacement runs; backoffLimit 2 not reached");
        let counted: Vec<Pod> = (0..3).map(|i| failed_with(&format!("f{i}"), "c", 3)).collect();
        let p = plan(&j, &counted, ts(100));
        assert_eq!(p.status.failed, Some(3));
        let failed = p.status.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "Failed");
        assert_eq!(failed.and_then(|c| c.reason).as_deref(), Some("BackoffLimitExceeded"));
    }

    #[test]
    fn exit_code_zero_and_other_containers_never_match() {
        let j = with_policy(serde_json::json!([
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "NotIn", "values": [5]}},
        ]));
        assert_eq!(pod_failure_action(&j, &failed_with("a", "main", 0)), FailureAction::Count);
        assert_eq!(pod_failure_action(&j, &failed_with("b", "sidecar", 7)), FailureAction::Count);
        assert!(matches!(pod_failure_action(&j, &failed_with("c", "main", 7)), FailureAction::FailJob(_)));
    }
}
