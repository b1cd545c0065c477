//! The CronJob controller (upstream `pkg/controller/cronjob`, controller v2): creates a Job for
//! each scheduled time of `spec.schedule` (in `spec.timeZone`), named
//! `<cronjob>-<scheduled time in minutes since the epoch>` so a time is never run twice.
//!
//! - Only the most recent missed time is run (upstream `mostRecentScheduleTime`); one older than
//!   `startingDeadlineSeconds` is skipped with a `MissSchedule` warning.
//! - `concurrencyPolicy`: Allow runs Jobs side by side, Forbid skips a time while a Job is active
//!   (`JobAlreadyActive`), Replace deletes the active Jobs first.
//! - `suspend` stops new Jobs. Finished Jobs beyond `successfulJobsHistoryLimit` /
//!   `failedJobsHistoryLimit` are deleted, oldest first.
//! - Status: `active` references, `lastScheduleTime`, `lastSuccessfulTime`; events
//!   `SuccessfulCreate`, `SawCompletedJob`, `SuccessfulDelete` as upstream.

use crate::controllers::cron_schedule::{time_zone, Schedule};
use crate::controllers::events::{object_ref, Recorder};
use crate::controllers::job::finished;
use crate::controllers::podutil::{self, controller_ref};
use futures::{future, StreamExt};
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const COMPONENT: &str = "cronjob-controller";
/// Upstream's annotation with the time a Job was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Why a CronJob could not be synced; it is retried.
#[derive(Debug, thiserror::Error)]
pub enum CronJobError {
    /// An API call failed.
    #[error("{action} for cronjob {cronjob}: {source}")]
    Api {
        action: &'static str,
        cronjob: String,
        #[source]
        source: kube::Error,
    },
}

/// Upstream `getJobName`: the scheduled time in minutes since the epoch.
pub fn job_name(cronjob: &str, scheduled: Timestamp) -> String {
    format!("{cronjob}-{}", scheduled.as_second().div_euclid(60))
}

/// The most recent scheduled time in `(since, now]` and how many were missed before it
/// (upstream `mostRecentScheduleTime`), or `None` if no time has come.
pub fn most_recent(
    s: &Schedule,
    tz: &k8s_openapi::jiff::tz::TimeZone,
    since: Timestamp,
    now: Timestamp,
) -> Option<(Timestamp, usize)> {
    let mut t = s.next(since, tz)?;
    if t > now {
        return None;
    }
    let mut missed = 0;
    // Upstream gives up counting after 100 misses; stepping is bounded the same way.
    while let Some(n) = s.next(t, tz).filter(|n| *n <= now) {
        t = n;
        missed += 1;
        if missed > 1000 {
            break;
        }
    }
    Some((t, missed))
}

/// What one sync does.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// The time to create a Job for.
    pub create_for: Option<Timestamp>,
    /// Active Jobs to delete first (Replace).
    pub delete_active: Vec<String>,
    /// Finished Jobs beyond the history limits.
    pub delete_history: Vec<String>,
    pub status: CronJobStatus,
    /// (reason, message, warning?)
    pub events: Vec<(&'static str, String, bool)>,
    /// When the next time is due.
    pub requeue_after: Option<Duration>,
}

fn job_ref(j: &Job) -> ObjectReference {
    object_ref(j)
}

fn finished_at(j: &Job) -> Option<Timestamp> {
    let st = j.status.as_ref()?;
    st.completion_time.as_ref().map(|t| t.0).or_else(|| {
        st.conditions
            .iter()
            .flatten()
            .filter(|c| c.status == "True")
            .find_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
    })
}

fn succeeded(j: &Job) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Complete" && c.status == "True"))
}

/// The pure decision for one CronJob given its Jobs (upstream `syncCronJob`).
pub fn plan(cj: &CronJob, jobs: &[Job], now: Timestamp) -> Result<Plan, crate::controllers::cron_schedule::CronError> {
    let spec = cj.spec.clone().unwrap_or_default();
    let mut p = Plan::default();
    let mut status = cj.status.clone().unwrap_or_default();
    let schedule = Schedule::parse(&spec.schedule)?;
    let tz = time_zone(spec.time_zone.as_deref())?;

    // Status from the Jobs as they are.
    let active: Vec<&Job> = jobs.iter().filter(|j| !finished(j)).collect();
    let mut done: Vec<&Job> = jobs.iter().filter(|j| finished(j)).collect();
    done.sort_by_key(|j| finished_at(j));
    status.active = Some(active.iter().map(|j| job_ref(j)).collect()).filter(|v: &Vec<_>| !v.is_empty());
    if let Some(t) = done.iter().filter(|j| succeeded(j)).filter_map(|j| finished_at(j)).max() {
        if status.last_successful_time.as_ref().is_none_or(|l| l.0 < t) {
            status.last_successful_time = Some(Time(t));
        }
    }
    // History limits, oldest first.
    let (ok, failed): (Vec<&&Job>, Vec<&&Job>) = done.iter().partition(|j| succeeded(j));
    for (list, limit) in
        [(ok, spec.successful_jobs_history_limit.unwrap_or(3)), (failed, spec.failed_jobs_history_limit.unwrap_or(1))]
    {
        let excess = list.len().saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        p.delete_history.extend(list.iter().take(excess).map(|j| j.name_any()));
    }

    if spec.suspend == Some(true) {
        p.status = status;
        return Ok(p);
    }
    let since = status
        .last_schedule_time
        .as_ref()
        .map(|t| t.0)
        .or(cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now);
    p.requeue_after = schedule
        .next(now, &tz)
        .map(|n| Duration::from_millis(u64::try_from(n.as_millisecond() - now.as_millisecond()).unwrap_or(0) + 100));
    let Some((scheduled, missed)) = most_recent(&schedule, &tz, since, now) else {
        p.status = status;
        return Ok(p);
    };
    if missed > 100 {
        p.events.push((
            "TooManyMissedTimes",
            "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew".into(),
            true,
        ));
    }
    if let Some(deadline) = spec.starting_deadline_seconds {
        if scheduled.as_second() + deadline < now.as_second() {
            p.events.push(("MissSchedule", format!("Missed scheduled time to start a job: {scheduled}"), true));
            p.status = status;
            return Ok(p);
        }
    }
    let name = job_name(&cj.name_any(), scheduled);
    if jobs.iter().any(|j| j.name_any() == name) {
        // Already created (the name is the time): nothing to do until the next one.
        p.status = status;
        return Ok(p);
    }
    match spec.concurrency_policy.as_deref() {
        Some("Forbid") if !active.is_empty() => {
            p.events.push((
                "JobAlreadyActive",
                "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                false,
            ));
            // Retry this time when the active Job finishes (its watch event wakes us).
            p.status = status;
            return Ok(p);
        }
        Some("Replace") => p.delete_active = active.iter().map(|j| j.name_any()).collect(),
        _ => {}
    }
    p.create_for = Some(scheduled);
    status.last_schedule_time = Some(Time(scheduled));
    p.status = status;
    Ok(p)
}

/// The Job for `scheduled` (upstream `getJobFromTemplate2`).
pub fn new_job(cj: &CronJob, scheduled: Timestamp, tz_name: Option<&str>) -> Job {
    let tpl = cj.spec.as_ref().map(|s| s.job_template.clone()).unwrap_or_default();
    let mut meta = tpl.metadata.unwrap_or_default();
    let tz = time_zone(tz_name).unwrap_or(k8s_openapi::jiff::tz::TimeZone::UTC);
    let stamp = scheduled.to_zoned(tz).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(SCHEDULED_TIMESTAMP.into(), stamp);
    meta.name = Some(job_name(&cj.name_any(), scheduled));
    meta.namespace = cj.metadata.namespace.clone();
    meta.owner_references = Some(vec![controller_ref(cj)]);
    Job { metadata: meta, spec: tpl.spec, status: None }
}

pub struct Context {
    client: kube::Client,
    recorder: Recorder,
}

pub async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, CronJobError> {
    let ns = cj.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", cj.name_any());
    let err = |action: &'static str| {
        let cronjob = key.clone();
        move |source| CronJobError::Api { action, cronjob, source }
    };
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs: Vec<Job> = jobs_api
        .list(&ListParams::default())
        .await
        .map_err(err("listing jobs"))?
        .items
        .into_iter()
        .filter(|j| podutil::is_controlled_by(&j.metadata, &uid))
        .collect();
    let now = Timestamp::now();
    let p = match plan(&cj, &jobs, now) {
        Ok(p) => p,
        Err(e) => {
            // Upstream: an unparseable schedule or zone is reported and not retried until edited.
            ctx.recorder.warning(object_ref(cj.as_ref()), "UnparseableSchedule", e.to_string());
            return Ok(Action::await_change());
        }
    };
    // Upstream records SawCompletedJob once per Job leaving the active list.
    let was_active: Vec<String> = cj
        .status
        .as_ref()
        .and_then(|s| s.active.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r.name)
        .collect();
    for j in jobs.iter().filter(|j| finished(j) && was_active.contains(&j.name_any())) {
        let cond = if crate::controllers::cronjob::succeeded(j) { "Complete" } else { "Failed" };
        ctx.recorder.normal(
            object_ref(cj.as_ref()),
            "SawCompletedJob",
            format!("Saw completed job: {}, condition: {cond}", j.name_any()),
        );
    }
    for name in p.delete_history.iter().chain(p.delete_active.iter()) {
        match jobs_api.delete(name, &DeleteParams::background()).await {
            Ok(_) => ctx.recorder.normal(object_ref(cj.as_ref()), "SuccessfulDelete", format!("Deleted job {name}")),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(err("deleting job")(e)),
        }
    }
    let mut status = p.status.clone();
    if let Some(at) = p.create_for {
        let job = new_job(&cj, at, cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()));
        let name = job.name_any();
        match jobs_api.create(&PostParams::default(), &job).await {
            Ok(created) => {
                ctx.recorder.normal(object_ref(cj.as_ref()), "SuccessfulCreate", format!("Created job {name}"));
                status.active.get_or_insert_with(Vec::new).push(job_ref(&created));
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                ctx.recorder.warning(object_ref(cj.as_ref()), "FailedCreate", format!("Error creating job: {e}"));
                return Err(err("creating job")(e));
            }
        }
    }
    // Deleted Replace/history Jobs leave the active list.
    if let Some(a) = status.active.as_mut() {
        a.retain(|r| !p.delete_active.iter().any(|d| Some(d) == r.name.as_ref()));
    }
    for (reason, message, warning) in &p.events {
        if *warning {
            ctx.recorder.warning(object_ref(cj.as_ref()), reason, message.clone());
        } else {
            ctx.recorder.normal(object_ref(cj.as_ref()), reason, message.clone());
        }
    }
    let old = cj.status.clone().unwrap_or_default();
    let strip = |s: &CronJobStatus| {
        let mut s = s.clone();
        for r in s.active.iter_mut().flatten() {
            r.resource_version = None;
        }
        serde_json::to_value(s).unwrap_or_default()
    };
    if strip(&old) != strip(&status) {
        // `active: null` clears the list with a merge patch; the times are only ever set. The
        // resourceVersion makes a write based on a stale read fail (and be retried) instead of
        // undoing someone else's status change.
        let mut st = serde_json::json!({"active": status.active});
        if let Some(t) = &status.last_schedule_time {
            st["lastScheduleTime"] = serde_json::json!(t);
        }
        if let Some(t) = &status.last_successful_time {
            st["lastSuccessfulTime"] = serde_json::json!(t);
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": cj.metadata.resource_version},
            "status": st,
        });
        let api: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(&cj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(err("updating status"))?;
    }
    Ok(match p.requeue_after {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

fn error_policy(_cj: Arc<CronJob>, e: &CronJobError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "cronjob-controller: will retry");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the CronJob controller until `shutdown` fires.
pub async fn run(client: kube::Client, shutdown: CancellationToken) {
    let controller = Controller::new(Api::<CronJob>::all(client.clone()), watcher::Config::default())
        .owns(Api::<Job>::all(client.clone()), watcher::Config::default());
    let ctx = Arc::new(Context { recorder: Recorder::new(client.clone(), COMPONENT, shutdown.clone()), client });
    controller
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(error = %e, "cronjob-controller");
            }
            future::ready(())
        })
        .await;
}

/// Metadata for tests.
pub fn cronjob_meta(name: &str, created: Timestamp) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        uid: Some("cj-uid".into()),
        creation_timestamp: Some(Time(created)),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{CronJobSpec, JobCondition, JobStatus};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn cj(schedule: &str, policy: &str) -> CronJob {
        CronJob {
            metadata: cronjob_meta("tick", t("2026-01-01T10:00:30Z")),
            spec: Some(CronJobSpec {
                schedule: schedule.into(),
                concurrency_policy: Some(policy.into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn job(name: &str, done: Option<(&str, &str)>) -> Job {
        let mut j =
            Job { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
        if let Some((cond, at)) = done {
            j.status = Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: cond.into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(t(at))),
                    ..Default::default()
                }]),
                completion_time: (cond == "Complete").then(|| Time(t(at))),
                ..Default::default()
            });
        }
        j
    }

    #[test]
    fn job_names_are_the_scheduled_minute_since_the_epoch() {
        assert_eq!(
            job_name("tick", t("2026-01-01T10:01:00Z")),
            format!("tick-{}", t("2026-01-01T10:01:00Z").as_second() / 60)
        );
    }

    #[test]
    fn a_due_time_creates_a_job_and_moves_last_schedule_time() {
        let p = plan(&cj("* * * * *", "Allow"), &[], t("2026-01-01T10:01:10Z")).unwrap_or_default();
        assert_eq!(p.create_for, Some(t("2026-01-01T10:01:00Z")));
        assert_eq!(p.status.last_schedule_time, Some(Time(t("2026-01-01T10:01:00Z"))));
        assert_eq!(p.requeue_after, Some(Duration::from_millis(50_100)));
        // Before the first time comes: nothing.
        let p = plan(&cj("* * * * *", "Allow"), &[], t("2026-01-01T10:00:40Z")).unwrap_or_default();
        assert_eq!(p.create_for, None);
    }

    #[test]
    fn only_the_most_recent_missed_time_runs_and_late_ones_are_skipped() {
        let p = plan(&cj("* * * * *", "Allow"), &[], t("2026-01-01T10:05:10Z")).unwrap_or_default();
        assert_eq!(p.create_for, Some(t("2026-01-01T10:05:00Z")));
        let mut c = cj("* * * * *", "Allow");
        if let Some(s) = c.spec.as_mut() {
            s.starting_deadline_seconds = Some(5);
        }
        let p = plan(&c, &[], t("2026-01-01T10:05:10Z")).unwrap_or_default();
        assert_eq!(p.create_for, None);
        assert_eq!(p.events.first().map(|e| e.0), Some("MissSchedule"));
    }

    #[test]
    fn concurrency_policies_forbid_or_replace_a_running_job() {
        let running = [job("tick-1", None)];
        let now = t("2026-01-01T10:01:10Z");
        let p = plan(&cj("* * * * *", "Forbid"), &running, now).unwrap_or_default();
        assert_eq!(p.create_for, None);
        assert_eq!(p.events.first().map(|e| e.0), Some("JobAlreadyActive"));
        let p = plan(&cj("* * * * *", "Replace"), &running, now).unwrap_or_default();
        assert_eq!(p.delete_active, ["tick-1"]);
        assert!(p.create_for.is_some());
        let p = plan(&cj("* * * * *", "Allow"), &running, now).unwrap_or_default();
        assert!(p.delete_active.is_empty() && p.create_for.is_some());
    }

    #[test]
    fn suspended_cronjobs_start_nothing() {
        let mut c = cj("* * * * *", "Allow");
        if let Some(s) = c.spec.as_mut() {
            s.suspend = Some(true);
        }
        assert_eq!(plan(&c, &[], t("2026-01-01T10:05:10Z")).unwrap_or_default().create_for, None);
    }

    #[test]
    fn history_limits_delete_the_oldest_finished_jobs_and_success_time_is_kept() {
        let jobs = [
            job("a", Some(("Complete", "2026-01-01T10:01:05Z"))),
            job("b", Some(("Complete", "2026-01-01T10:02:05Z"))),
            job("c", Some(("Failed", "2026-01-01T10:03:05Z"))),
            job("d", Some(("Failed", "2026-01-01T10:04:05Z"))),
        ];
        let mut c = cj("0 0 1 1 *", "Allow");
        if let Some(s) = c.spec.as_mut() {
            s.successful_jobs_history_limit = Some(1);
            s.failed_jobs_history_limit = Some(1);
        }
        let p = plan(&c, &jobs, t("2026-01-01T10:05:00Z")).unwrap_or_default();
        assert_eq!(p.delete_history, ["a", "c"]);
        assert_eq!(p.status.last_successful_time, Some(Time(t("2026-01-01T10:02:05Z"))));
        assert!(p.status.active.is_none());
    }

    #[test]
    fn jobs_carry_the_template_owner_and_scheduled_timestamp() {
        let j = new_job(&cj("* * * * *", "Allow"), t("2026-01-01T10:01:00Z"), None);
        assert_eq!(j.metadata.name, Some(job_name("tick", t("2026-01-01T10:01:00Z"))));
        assert_eq!(
            j.metadata.annotations.as_ref().and_then(|a| a.get(SCHEDULED_TIMESTAMP).cloned()).as_deref(),
            Some("2026-01-01T10:01:00+00:00")
        );
        assert!(podutil::is_controlled_by(&j.metadata, "cj-uid"));
    }

    #[test]
    fn bad_schedules_are_errors() {
        assert!(plan(&cj("every minute", "Allow"), &[], t("2026-01-01T10:05:10Z")).is_err());
    }
}
