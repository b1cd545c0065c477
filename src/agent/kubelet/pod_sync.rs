//! Syncing one pod with the runtime: the kubelet's `SyncPod` (kuberuntime_manager.go) and
//! `killPod`. Idempotent: each call looks at what the runtime has and takes the next steps
//! (sandbox → images → init containers one at a time → app containers), restarting exited
//! containers per `restartPolicy` behind the CrashLoopBackOff back-off.
//!
//! Talks only to the [`Runtime`] trait and an [`EventSink`], so every decision is tested against
//! the recording fake runtime.

use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::backoff::{Backoff, INITIAL};
use super::container_spec::{container_spec, pod_ref, pull_policy, sandbox_spec, EnvContext, SpecError};
use super::events::{EventSink, PodEvent};
use super::objects::PodObjects;
use super::pod_status::{instances, Waiting};
use super::probes::{handler_action, run_action, ContainerProbes};

/// Upper bound for a postStart hook (upstream has none but the pod's lifetime).
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
use super::termination;
use super::volumes;
use crate::agent::runtime::{ContainerState, ContainerStatus, PullPolicy, Runtime, RuntimeError, Sandbox};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The runtime failed a call the sync cannot do without (listing containers).
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    /// The pod object lacks a field every stored pod has.
    #[error("pod: {0}")]
    Spec(#[from] SpecError),
}

/// Node facts the sync needs.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub node_ip: IpAddr,
    pub cluster_dns: IpAddr,
    pub cluster_domain: String,
    pub log_root: PathBuf,
    /// `<data-dir>/agent/pods`: per-pod directories holding the pods' volumes.
    pub pods_dir: PathBuf,
    /// Node allocatable CPU and memory: the value of a `resourceFieldRef` to a limit the
    /// container does not set.
    pub node_cpu_millis: u64,
    pub node_memory_bytes: u64,
}

/// What the kubelet remembers about a pod between syncs (the runtime holds the rest).
#[derive(Debug, Default)]
pub struct PodState {
    /// Keys: the container name (restarts) and `pull/<name>` (image pulls).
    pub backoff: Backoff,
    /// Why each not-running container waits; shown in its status.
    pub waiting: HashMap<String, Waiting>,
    pub sandbox: Option<Sandbox>,
    /// Probe results by runtime container id, refreshed by the pod worker before each sync.
    pub probes: HashMap<String, ContainerProbes>,
    /// Termination messages of exited container instances, by runtime id (read once).
    pub termination_messages: HashMap<String, String>,
}

/// The runtime's view after a sync, for the status, and when to sync again at the latest.
#[derive(Debug)]
pub struct SyncOutcome {
    pub containers: Vec<ContainerStatus>,
    pub requeue_after: Option<Duration>,
    /// `activeDeadlineSeconds` passed: the containers were stopped and the status must say
    /// Failed/DeadlineExceeded.
    pub deadline_exceeded: bool,
}

/// Go's `time.Duration.String()` for whole seconds (`10s`, `1m20s`, `5m0s`): upstream messages
/// print back-off delays this way.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

fn min_requeue(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into())
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The grace period for stopping a pod's containers: `metadata.deletionGracePeriodSeconds`,
/// else `spec.terminationGracePeriodSeconds`, else 30 s; never below 2 s (upstream
/// `minimumGracePeriodInSeconds`).
pub fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30);
    Duration::from_secs(secs.max(2) as u64)
}

struct Ctx<'a> {
    rt: &'a dyn Runtime,
    cfg: &'a SyncConfig,
    pod: &'a Pod,
    events: &'a dyn EventSink,
    service_env: &'a [(String, String)],
    objects: &'a PodObjects,
    volumes: &'a HashMap<String, PathBuf>,
    now: SystemTime,
}

impl Ctx<'_> {
    fn event(&self, field: &str, type_: &'static str, reason: &'static str, message: String) {
        self.events.emit(PodEvent::new(self.pod, Some(field.to_string()), type_, reason, message));
    }

    fn pod_desc(&self) -> String {
        // `format.Pod`: name_namespace(uid).
        let m = &self.pod.metadata;
        format!(
            "{}_{}({})",
            m.name.as_deref().unwrap_or_default(),
            m.namespace.as_deref().unwrap_or_default(),
            m.uid.as_deref().unwrap_or_default()
        )
    }

    /// Starts (or restarts) one container; returns when to look again if it must wait.
    async fn start(
        &self,
        state: &mut PodState,
        sandbox: &Sandbox,
        c: &Container,
        latest: Option<&ContainerStatus>,
        init: bool,
    ) -> Option<Duration> {
        let name = c.name.as_str();
        let field = format!("spec.{}{{{name}}}", if init { "initContainers" } else { "containers" });
        let image = c.image.clone().unwrap_or_default();

        // Restart back-off (kuberuntime `doBackOff`), counted from when the last instance died.
        if let Some(ContainerStatus { state: ContainerState::Exited { finished_at, .. }, .. }) = latest {
            if let Some((left, delay)) = state.backoff.remaining_since(name, *finished_at, self.now) {
                let msg = format!(
                    "back-off {} restarting failed container={name} pod={}",
                    go_duration(delay),
                    self.pod_desc()
                );
                state.waiting.insert(name.into(), Waiting { reason: "CrashLoopBackOff".into(), message: msg });
                self.event(
                    &field,
                    "Warning",
                    "BackOff",
                    format!("Back-off restarting failed container {name} in pod {}", self.pod_desc()),
                );
                return Some(left);
            }
            state.backoff.next(name, self.now);
        }

        // Images (kubelet images.EnsureImageExists): a failed pull backs off as ImagePullBackOff.
        let pull_key = format!("pull/{name}");
        if let Some((left, _)) = state.backoff.remaining_since_update(&pull_key, self.now) {
            let msg = format!("Back-off pulling image {image:?}");
            state.waiting.insert(name.into(), Waiting { reason: "ImagePullBackOff".into(), message: msg.clone() });
            self.event(&field, "Normal", "BackOff", msg);
            return Some(left);
        }
        let policy = pull_policy(c);
        if policy == PullPolicy::Always {
            self.event(&field, "Normal", "Pulling", format!("Pulling image {image:?}"));
        }
        let t0 = Instant::now();
        let image_ref = match self.rt.ensure_image(&image, policy).await {
            Ok(i) => {
                state.backoff.reset(&pull_key);
                if policy == PullPolicy::Always {
                    let ms = t0.elapsed().as_millis();
                    self.event(&field, "Normal", "Pulled", format!("Successfully pulled image {image:?} in {ms}ms"));
                }
                i
            }
            Err(e) => {
                tracing::warn!(pod = %self.pod_desc(), container = name, image = %image, error = %e, "image not available");
                let delay = state.backoff.next(&pull_key, self.now);
                let (reason, message) = if policy == PullPolicy::Never {
                    ("ErrImageNeverPull", format!("Container image {image:?} is not present with pull policy of Never"))
                } else {
                    self.event(&field, "Warning", "Failed", format!("Failed to pull image {image:?}: {e}"));
                    ("ErrImagePull", e.to_string())
                };
                self.event(&field, "Warning", "Failed", format!("Error: {reason}"));
                state.waiting.insert(name.into(), Waiting { reason: reason.into(), message });
                return Some(delay);
            }
        };

        let restart_count = latest.map(|l| l.restart_count + 1).unwrap_or(0);
        let cx = EnvContext {
            pod_ip: sandbox.ip,
            host_ip: self.cfg.node_ip,
            service_env: self.service_env,
            objects: self.objects,
            node_cpu_millis: self.cfg.node_cpu_millis,
            node_memory_bytes: self.cfg.node_memory_bytes,
        };
        let uid = self.pod.metadata.uid.as_deref().unwrap_or_default();
        let spec = volumes::container_mounts(self.pod, c, self.volumes)
            .map_err(|e| SpecError::Config(e.to_string()))
            .and_then(|mut mounts| {
                let t = termination::prepare(&self.cfg.pods_dir, uid, c, restart_count).map_err(SpecError::Config)?;
                mounts.extend(t);
                Ok(mounts)
            })
            .and_then(|mounts| container_spec(self.pod, c, image_ref, &cx, restart_count, &self.cfg.log_root, mounts));
        let spec = match spec {
            Ok(s) => s,
            Err(e) => {
                self.event(&field, "Warning", "Failed", format!("Error: {e}"));
                state.waiting.insert(
                    name.into(),
                    Waiting { reason: "CreateContainerConfigError".into(), message: e.to_string() },
                );
                return Some(INITIAL);
            }
        };
        // The kubelet creates the log directory; the runtime's logger creates the file.
        if let Some(dir) = spec.log_path.parent() {
            if let Err(e) = tokio::fs::create_dir_all(dir).await {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create container log directory");
            }
        }
        match self.rt.start_container(sandbox, &spec).await {
            Ok(id) => {
                state.waiting.remove(name);
                self.event(&field, "Normal", "Created", format!("Created container: {name}"));
                self.event(&field, "Normal", "Started", format!("Started container {name}"));
                // postStart runs right after the start; if it fails the container is killed
                // and restarted per policy (upstream `startContainer`, FailedPostStartHook).
                if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                    let ip = sandbox.ip.unwrap_or(self.cfg.node_ip);
                    let r = match handler_action(c, h) {
                        Ok(a) => run_action(self.rt, &id, ip, &a, HOOK_TIMEOUT).await,
                        Err(e) => Err(e),
                    };
                    if let Err(msg) = r {
                        self.event(&field, "Warning", "FailedPostStartHook", format!("PostStartHook failed: {msg}"));
                        if let Err(e) = self.rt.stop_container(&id, grace_period(self.pod)).await {
                            tracing::warn!(pod = %self.pod_desc(), container = name, error = %e, "stopping after a failed postStart hook failed");
                        }
                    }
                }
                None
            }
            Err(e) => {
                tracing::warn!(pod = %self.pod_desc(), container = name, error = %e, "starting container failed");
                self.event(&field, "Warning", "Failed", format!("Error: {e}"));
                state
                    .waiting
                    .insert(name.into(), Waiting { reason: "RunContainerError".into(), message: e.to_string() });
                Some(state.backoff.next(name, self.now))
            }
        }
    }
}

async fn list_pod(rt: &dyn Runtime, uid: &str) -> Result<Vec<ContainerStatus>, RuntimeError> {
    Ok(rt.list_containers().await?.into_iter().filter(|c| c.pod.uid == uid).collect())
}

/// Brings the runtime in line with a live (not deleted) pod. `service_env` holds the service
/// variables for the pod (see `service_env`), `objects` the ConfigMaps, Secrets and tokens it
/// refers to (see `objects`).
#[allow(clippy::too_many_arguments)]
pub async fn sync_pod(
    rt: &dyn Runtime,
    cfg: &SyncConfig,
    pod: &Pod,
    state: &mut PodState,
    events: &dyn EventSink,
    service_env: &[(String, String)],
    objects: &PodObjects,
    now: SystemTime,
) -> Result<SyncOutcome, SyncError> {
    let r = pod_ref(pod)?;
    let spec = pod.spec.as_ref().ok_or(SpecError::Incomplete("spec"))?;
    let mine = list_pod(rt, &r.uid).await?;
    let no_volumes = HashMap::new();
    let ctx = Ctx { rt, cfg, pod, events, service_env, objects, volumes: &no_volumes, now };

    // A pod in a terminal phase never runs again; stop whatever still runs (upstream
    // `SyncTerminatingPod` for a pod that reached Succeeded or Failed).
    if is_terminal(pod) {
        for c in mine.iter().filter(|c| matches!(c.state, ContainerState::Running { .. })) {
            if let Err(e) = rt.stop_container(&c.id, grace_period(pod)).await {
                tracing::warn!(pod = %ctx.pod_desc(), container = %c.name, error = %e, "stopping container of a finished pod failed");
            }
        }
        return Ok(SyncOutcome {
            deadline_exceeded: false,
            containers: list_pod(rt, &r.uid).await?,
            requeue_after: None,
        });
    }

    // activeDeadlineSeconds (upstream `activeDeadlineHandler`): past it, stop everything and
    // let the status say Failed/DeadlineExceeded; before it, look again when it falls due.
    let deadline = termination::deadline_left(pod, now);
    if deadline == Some(Duration::ZERO) {
        events.emit(PodEvent::new(
            pod,
            None,
            "Normal",
            termination::DEADLINE_REASON,
            termination::DEADLINE_MESSAGE.to_string(),
        ));
        for c in mine.iter().filter(|c| matches!(c.state, ContainerState::Running { .. })) {
            if let Err(e) = rt.stop_container(&c.id, grace_period(pod)).await {
                tracing::warn!(pod = %ctx.pod_desc(), container = %c.name, error = %e, "stopping a container past the pod deadline failed");
            }
        }
        let containers = list_pod(rt, &r.uid).await?;
        return Ok(SyncOutcome { containers, requeue_after: None, deadline_exceeded: true });
    }

    let sb_spec = sandbox_spec(pod, cfg.cluster_dns, &cfg.cluster_domain)?;
    let sandbox = match rt.run_sandbox(&sb_spec).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(pod = %ctx.pod_desc(), error = %e, "creating pod sandbox failed");
            events.emit(PodEvent::new(
                pod,
                None,
                "Warning",
                "FailedCreatePodSandBox",
                format!("Failed to create pod sandbox: {e}"),
            ));
            let delay = state.backoff.next("sandbox", now);
            return Ok(SyncOutcome { deadline_exceeded: false, containers: mine, requeue_after: Some(delay) });
        }
    };
    state.backoff.reset("sandbox");
    state.sandbox = Some(sandbox.clone());

    // Volumes before any container (upstream `WaitForAttachAndMount`); while one cannot be set
    // up the containers keep waiting in ContainerCreating and a FailedMount event says why.
    let vols = match volumes::setup(&cfg.pods_dir, pod, objects, cfg.node_cpu_millis, cfg.node_memory_bytes) {
        Ok(v) => {
            state.backoff.reset("volumes");
            v
        }
        Err((name, e)) => {
            tracing::warn!(pod = %ctx.pod_desc(), volume = %name, error = %e, "setting up a volume failed");
            events.emit(PodEvent::new(
                pod,
                None,
                "Warning",
                "FailedMount",
                format!("MountVolume.SetUp failed for volume {name:?} : {e}"),
            ));
            let delay = state.backoff.next("volumes", now);
            return Ok(SyncOutcome { deadline_exceeded: false, containers: mine, requeue_after: Some(delay) });
        }
    };
    let ctx = Ctx { volumes: &vols, ..ctx };

    // A failed liveness or startup probe kills the container; the restart below follows the
    // restart policy and back-off (upstream `computePodActions`: "Container c failed liveness
    // probe, will be restarted").
    let mut mine = mine;
    let mut killed = false;
    for c in mine.iter().filter(|c| matches!(c.state, ContainerState::Running { .. })) {
        let Some(msg) = state.probes.get(&c.id).and_then(|p| p.kill.clone()) else { continue };
        ctx.event(&format!("spec.containers{{{}}}", c.name), "Normal", "Killing", msg);
        if let Err(e) = rt.stop_container(&c.id, grace_period(pod)).await {
            tracing::warn!(pod = %ctx.pod_desc(), container = %c.name, error = %e, "stopping an unhealthy container failed");
        }
        killed = true;
    }
    if killed {
        mine = list_pod(rt, &r.uid).await?;
    }

    let policy = restart_policy(pod);
    let mut requeue = deadline;
    // Init containers run one at a time, in order, each to success (computeInitContainerActions).
    let mut initialized = true;
    for c in spec.init_containers.iter().flatten() {
        let (latest, _) = instances(&mine, &c.name);
        match latest.map(|l| &l.state) {
            Some(ContainerState::Exited { exit_code: 0, .. }) => {
                state.waiting.remove(&c.name);
                continue;
            }
            Some(ContainerState::Exited { .. }) => {
                initialized = false;
                // Under Never a failed init container fails the pod; otherwise retry it.
                if policy != "Never" {
                    requeue = min_requeue(requeue, ctx.start(state, &sandbox, c, latest, true).await);
                } else {
                    state.waiting.remove(&c.name);
                }
                break;
            }
            Some(_) => {
                initialized = false;
                break;
            }
            None => {
                initialized = false;
                requeue = min_requeue(requeue, ctx.start(state, &sandbox, c, None, true).await);
                break;
            }
        }
    }

    if initialized {
        for c in &spec.containers {
            let (latest, _) = instances(&mine, &c.name);
            match latest.map(|l| &l.state) {
                None => requeue = min_requeue(requeue, ctx.start(state, &sandbox, c, None, false).await),
                Some(ContainerState::Exited { exit_code, .. }) => {
                    let restart = policy == "Always" || (policy == "OnFailure" && *exit_code != 0);
                    if restart {
                        requeue = min_requeue(requeue, ctx.start(state, &sandbox, c, latest, false).await);
                    } else {
                        state.waiting.remove(&c.name);
                    }
                }
                Some(_) => {}
            }
        }
    }

    let after = list_pod(rt, &r.uid).await?;
    for c in &after {
        let ContainerState::Exited { exit_code, .. } = c.state else { continue };
        if state.termination_messages.contains_key(&c.id) {
            continue;
        }
        let Some(cs) = spec.containers.iter().chain(spec.init_containers.iter().flatten()).find(|s| s.name == c.name)
        else {
            continue;
        };
        let file = termination::message_file(&cfg.pods_dir, &r.uid, &c.name, c.restart_count);
        let fallback = cs.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        let msg = termination::read_message(&file, fallback, exit_code, &c.log_path);
        state.termination_messages.insert(c.id.clone(), msg);
    }
    state.termination_messages.retain(|id, _| after.iter().any(|c| &c.id == id));
    // Keep the newest instance of each container and the one before it (its lastState and
    // `logs --previous`), remove older dead ones, as the kubelet's container GC does with MaxPerPodContainer = 1.
    let mut by_name: HashMap<&str, Vec<&ContainerStatus>> = HashMap::new();
    for c in &after {
        by_name.entry(c.name.as_str()).or_default().push(c);
    }
    for list in by_name.values_mut() {
        list.sort_by_key(|c| std::cmp::Reverse(c.restart_count));
        for old in list.iter().skip(2).filter(|c| matches!(c.state, ContainerState::Exited { .. })) {
            if let Err(e) = rt.remove_container(&old.id).await {
                tracing::warn!(container = %old.id, error = %e, "removing dead container failed");
            }
        }
    }

    let removed = by_name.values().any(|l| l.len() > 2);
    let containers = if removed { list_pod(rt, &r.uid).await? } else { after.clone() };
    Ok(SyncOutcome { containers, requeue_after: requeue, deadline_exceeded: false })
}

/// Stops every container of pod `uid` with `grace`, removes them and the sandbox (upstream
/// `killPodWithSyncResult`, then container and sandbox GC). `pod`, when known, gets a
/// `Killing` event per running container.
pub async fn kill_pod(
    rt: &dyn Runtime,
    uid: &str,
    grace: Duration,
    pod: Option<&Pod>,
    events: &dyn EventSink,
) -> Result<(), SyncError> {
    let mine = list_pod(rt, uid).await?;
    let running: Vec<&ContainerStatus> =
        mine.iter().filter(|c| matches!(c.state, ContainerState::Running { .. } | ContainerState::Created)).collect();
    let pod_ip = pod.and_then(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok());
    for c in &running {
        if let Some(p) = pod {
            let field =
                match p.spec.as_ref().is_some_and(|s| s.init_containers.iter().flatten().any(|i| i.name == c.name)) {
                    true => format!("spec.initContainers{{{}}}", c.name),
                    false => format!("spec.containers{{{}}}", c.name),
                };
            events.emit(PodEvent::new(p, Some(field), "Normal", "Killing", format!("Stopping container {}", c.name)));
        }
    }
    // Containers stop in parallel, each with the full grace period, as upstream kills them.
    let stops = running.iter().map(|c| async move {
        // preStop runs first, within the grace period; SIGTERM gets what is left, at least
        // 2 s (upstream `killContainer` / `executePreStopHook`).
        let mut grace = grace;
        let spec = pod.and_then(|p| p.spec.as_ref()?.containers.iter().find(|s| s.name == c.name));
        if let (Some(p), Some(s), Some(ip)) = (pod, spec, pod_ip) {
            if let Some(h) = s.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
                let t0 = Instant::now();
                let r = match handler_action(s, h) {
                    Ok(a) => run_action(rt, &c.id, ip, &a, grace).await,
                    Err(e) => Err(e),
                };
                if let Err(msg) = r {
                    events.emit(PodEvent::new(
                        p,
                        Some(format!("spec.containers{{{}}}", c.name)),
                        "Warning",
                        "FailedPreStopHook",
                        format!("PreStopHook failed: {msg}"),
                    ));
                }
                grace = grace.saturating_sub(t0.elapsed()).max(Duration::from_secs(2));
            }
        }
        if let Err(e) = rt.stop_container(&c.id, grace).await {
            tracing::warn!(container = %c.id, error = %e, "stopping container failed");
        }
    });
    futures::future::join_all(stops).await;
    let mut last_err = None;
    for c in &mine {
        if let Err(e) = rt.remove_container(&c.id).await {
            tracing::warn!(container = %c.id, error = %e, "removing container failed");
            last_err = Some(e);
        }
    }
    if let Some(e) = last_err {
        return Err(e.into());
    }
    match rt.remove_sandbox(uid).await {
        Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
        Err(e) => {
            tracing::warn!(pod_uid = uid, error = %e, "removing sandbox failed");
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::kubelet::events::CollectingSink;
    use crate::agent::kubelet::fake_runtime::{Call, FakeRuntime};
    use crate::agent::kubelet::pod_status::{compute, StatusInput};
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    struct Harness {
        rt: FakeRuntime,
        cfg: SyncConfig,
        state: PodState,
        events: CollectingSink,
        objects: PodObjects,
        dir: tempfile::TempDir,
    }

    impl Harness {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            Harness {
                rt: FakeRuntime::new(),
                cfg: SyncConfig {
                    node_ip: "192.0.2.1".parse().unwrap(),
                    cluster_dns: "10.43.0.10".parse().unwrap(),
                    cluster_domain: "cluster.local".into(),
                    log_root: dir.path().to_path_buf(),
                    pods_dir: dir.path().join("pods"),
                    node_cpu_millis: 2000,
                    node_memory_bytes: 4 << 30,
                },
                state: PodState::default(),
                events: CollectingSink::default(),
                objects: PodObjects::default(),
                dir,
            }
        }

        async fn sync(&mut self, pod: &Pod, now: SystemTime) -> SyncOutcome {
            sync_pod(&self.rt, &self.cfg, pod, &mut self.state, &self.events, &[], &self.objects, now).await.unwrap()
        }

        fn status(&self, pod: &Pod, out: &SyncOutcome) -> k8s_openapi::api::core::v1::PodStatus {
            let mut st = compute(&StatusInput {
                pod,
                sandbox: self.state.sandbox.as_ref(),
                containers: &out.containers,
                waiting: &self.state.waiting,
                node_ip: self.cfg.node_ip,
                now: Timestamp::now(),
                probes: &self.state.probes,
            });
            termination::apply(&mut st, &self.state.termination_messages);
            if out.deadline_exceeded {
                termination::fail_deadline(&mut st);
            }
            st
        }

        fn starts(&self) -> Vec<(String, u32)> {
            self.rt
                .calls()
                .into_iter()
                .filter_map(|c| match c {
                    Call::StartContainer { name, restart_count, .. } => Some((name, restart_count)),
                    _ => None,
                })
                .collect()
        }
    }

    fn pod(policy: &str, init: bool) -> Pod {
        let mut v = json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"nodeName": "n1", "restartPolicy": policy,
                     "containers": [{"name": "app", "image": "localhost/busybox:1", "command": ["sleep", "1d"]}]},
            "status": {"phase": "Pending"}
        });
        if init {
            v["spec"]["initContainers"] = json!([{"name": "one", "image": "localhost/busybox:1"}, {"name": "two", "image": "localhost/busybox:1"}]);
        }
        serde_json::from_value(v).unwrap()
    }

    fn after(s: u64) -> SystemTime {
        SystemTime::now() + Duration::from_secs(s)
    }

    #[tokio::test]
    async fn a_new_pod_gets_a_sandbox_and_its_containers_started_with_events() {
        let mut h = Harness::new();
        let p = pod("Always", false);
        let out = h.sync(&p, SystemTime::now()).await;
        assert_eq!(h.starts(), vec![("app".to_string(), 0)]);
        assert_eq!(h.events.reasons(), vec!["Created", "Started"]);
        let st = h.status(&p, &out);
        assert_eq!(st.phase.as_deref(), Some("Running"));
        assert_eq!(st.pod_ip.as_deref(), Some("10.42.0.2"));
        let id = h.rt.container("u1", "app").unwrap().id;
        let spec = h.rt.spec(&id).unwrap();
        assert_eq!(spec.log_path, h.dir.path().join("default_p_u1/app/0.log"));
        assert!(h.dir.path().join("default_p_u1/app").is_dir(), "the log directory is created");
        // A second sync with everything running changes nothing.
        h.rt.clear_calls();
        h.sync(&p, SystemTime::now()).await;
        assert!(h.starts().is_empty());
    }

    #[tokio::test]
    async fn a_crashed_container_under_restart_policy_never_leaves_the_pod_failed() {
        let mut h = Harness::new();
        let p = pod("Never", false);
        h.sync(&p, SystemTime::now()).await;
        let id = h.rt.container("u1", "app").unwrap().id;
        h.rt.exit(&id, 3);
        let out = h.sync(&p, after(1)).await;
        assert_eq!(h.starts().len(), 1, "never restarted");
        let st = h.status(&p, &out);
        assert_eq!(st.phase.as_deref(), Some("Failed"));
        assert_eq!(st.container_statuses.unwrap()[0].state.clone().unwrap().terminated.unwrap().exit_code, 3);
    }

    #[tokio::test]
    async fn a_crashing_container_restarts_at_once_then_backs_off() {
        let mut h = Harness::new();
        let p = pod("Always", false);
        h.sync(&p, SystemTime::now()).await;
        h.rt.exit(&h.rt.container("u1", "app").unwrap().id, 1);
        // First crash: restarted immediately with restartCount 1.
        h.sync(&p, SystemTime::now()).await;
        assert_eq!(h.starts(), vec![("app".to_string(), 0), ("app".to_string(), 1)]);
        h.rt.exit(&h.rt.container("u1", "app").unwrap().id, 1);
        // Second crash: CrashLoopBackOff for 10 s.
        let out = h.sync(&p, SystemTime::now()).await;
        assert_eq!(h.starts().len(), 2);
        let wait = out.requeue_after.unwrap();
        assert!(wait <= Duration::from_secs(10) && wait > Duration::from_secs(8), "{wait:?}");
        let st = h.status(&p, &out);
        assert_eq!(st.phase.as_deref(), Some("Running"));
        let cs = &st.container_statuses.unwrap()[0];
        let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        assert!(w
            .message
            .as_deref()
            .unwrap()
            .starts_with("back-off 10s restarting failed container=app pod=p_default(u1)"));
        assert_eq!(cs.restart_count, 1);
        assert!(h.events.reasons().contains(&"BackOff"));
        // After the delay it restarts, and the next delay doubles.
        h.sync(&p, after(11)).await;
        assert_eq!(h.starts().last(), Some(&("app".to_string(), 2)));
        h.rt.exit(&h.rt.container("u1", "app").unwrap().id, 1);
        let out = h.sync(&p, after(12)).await;
        let st = h.status(&p, &out);
        let w = st.container_statuses.unwrap()[0].state.clone().unwrap().waiting.unwrap();
        assert!(w.message.unwrap().starts_with("back-off 20s"));
    }

    #[tokio::test]
    async fn on_failure_restarts_failures_but_not_successes() {
        let mut h = Harness::new();
        let p = pod("OnFailure", false);
        h.sync(&p, SystemTime::now()).await;
        h.rt.exit(&h.rt.container("u1", "app").unwrap().id, 0);
        let out = h.sync(&p, SystemTime::now()).await;
        assert_eq!(h.starts().len(), 1);
        assert_eq!(h.status(&p, &out).phase.as_deref(), Some("Succeeded"));
    }

    #[tokio::test]
    async fn init_containers_run_one_at_a_time_before_the_app() {
        let mut h = Harness::new();
        let p = pod("Always", true);
        let out = h.sync(&p, SystemTime::now()).await;
        assert_eq!(h.starts(), vec![("one".to_string(), 0)]);
        assert_eq!(h.status(&p, &out).phase.as_deref(), Some("Pending"));
        h.sync(&p, SystemTime::now()).await;
        assert_eq!(h.starts().len(), 1, "waits while `one` runs");
        h.rt.exit(&h.rt.container("u1", "one").unwrap().id, 0);
        h.sync(&p, SystemTime::now()).await;
        h.rt.exit(&h.rt.container("u1", "two").unwrap().id, 0);
        let out = h.sync(&p, SystemTime::now()).await;
        let names: Vec<String> = h.starts().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["one", "two", "app"]);
        assert_eq!(h.status(&p, &out).phase.as_deref(), Some("Running"));
    }

    #[tokio::test]
    async fn a_failed_init_container_under_never_fails_the_pod_and_starts_nothing_else() {
        let mut h = Harness::new();
        let p = pod("Never", true);
        h.sync(&p, SystemTime::now()).await;
        h.rt.exit(&h.rt.container("u1", "one").unwrap().id, 1);
        let out = h.sync(&p, SystemTime::now()).await;
        assert_eq!(h.starts().len(), 1);
        assert_eq!(h.status(&p, &out).phase.as_deref(), Some("Failed"));
    }

    #[tokio::test]
    async fn a_failed_pull_is_err_image_pull_then_image_pull_back_off() {
        let mut h = Harness::new();
        let p = pod("Always", false);
        h.rt.fail_pulls("localhost/busybox:1");
        let out = h.sync(&p, SystemTime::now()).await;
        let reason = |out: &SyncOutcome, h: &Harness| {
            h.status(&p, out).container_statuses.unwrap()[0].state.clone().unwrap().waiting.unwrap().reason.unwrap()
        };
        assert_eq!(reason(&out, &h), "ErrImagePull");
        assert_eq!(out.requeue_after, Some(Duration::from_secs(10)));
        let out = h.sync(&p, SystemTime::now()).await;
        assert_eq!(reason(&out, &h), "ImagePullBackOff");
        assert_eq!(
            h.rt.calls().iter().filter(|c| matches!(c, Call::EnsureImage(..))).count(),
            1,
            "no pull during back-off"
        );
        h.rt.allow_pulls("localhost/busybox:1");
        let out = h.sync(&p, after(11)).await;
        assert_eq!(h.status(&p, &out).phase.as_deref(), Some("Running"));
        assert!(h
            .events
            .events()
            .iter()
            .any(|e| e.message.starts_with("Failed to pull image \"localhost/busybox:1\"")));
    }

    #[tokio::test]
    async fn a_bad_env_reference_waits_with_create_container_config_error() {
        let mut h = Harness::new();
        let mut p = pod("Always", false);
        p.spec.as_mut().unwrap().containers[0].env = Some(vec![serde_json::from_value(
            json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
        )
        .unwrap()]);
        let out = h.sync(&p, SystemTime::now()).await;
        let cs = &h.status(&p, &out).container_statuses.unwrap()[0];
        assert_eq!(
            cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(),
            Some("CreateContainerConfigError")
        );
        assert!(h.starts().is_empty());
    }

    #[tokio::test]
    async fn containers_that_survived_an_agent_restart_are_adopted_not_restarted() {
        let mut h = Harness::new();
        let p = pod("Always", false);
        h.sync(&p, SystemTime::now()).await;
        // A fresh kubelet (empty PodState) over the same runtime.
        h.state = PodState::default();
        h.rt.clear_calls();
        let out = h.sync(&p, SystemTime::now()).await;
        assert!(h.starts().is_empty());
        assert_eq!(h.status(&p, &out).phase.as_deref(), Some("Running"));
    }

    #[tokio::test]
    async fn only_the_newest_dead_instance_is_kept() {
        let mut h = Harness::new();
        let p = pod("Always", false);
        let mut t = SystemTime::now();
        for _ in 0..4 {
            h.sync(&p, t).await;
            h.rt.exit(&h.rt.container("u1", "app").unwrap().id, 1);
            t += Duration::from_secs(400);
        }
        h.sync(&p, t).await;
        assert_eq!(h.rt.container_count(), 2, "the running instance and the last dead one");
    }

    #[tokio::test]
    async fn killing_a_pod_stops_with_its_grace_period_then_removes_everything() {
        let mut h = Harness::new();
        let mut p = pod("Always", false);
        h.sync(&p, SystemTime::now()).await;
        p.metadata.deletion_grace_period_seconds = Some(7);
        kill_pod(&h.rt, "u1", grace_period(&p), Some(&p), &h.events).await.unwrap();
        let calls = h.rt.calls();
        assert!(calls.iter().any(|c| matches!(c, Call::StopContainer(_, g) if *g == Duration::from_secs(7))));
        assert!(calls.contains(&Call::RemoveSandbox("u1".into())));
        assert_eq!((h.rt.container_count(), h.rt.sandbox_count()), (0, 0));
        assert!(h.events.reasons().contains(&"Killing"));
    }

    #[tokio::test]
    async fn a_finished_pod_is_not_restarted() {
        let mut h = Harness::new();
        let mut p = pod("Always", false);
        h.sync(&p, SystemTime::now()).await;
        p.status.as_mut().unwrap().phase = Some("Failed".into());
        h.rt.exit(&h.rt.container("u1", "app").unwrap().id, 1);
        h.sync(&p, SystemTime::now()).await;
        assert_eq!(h.starts().len(), 1);
    }

    #[tokio::test]
    async fn readiness_gates_ready_and_a_failed_liveness_probe_restarts_the_container() {
        let mut h = Harness::new();
        let p = pod("Always", false);
        h.sync(&p, SystemTime::now()).await;
        let id = h.rt.container("u1", "app").unwrap().id;
        h.state.probes.insert(id.clone(), ContainerProbes { ready: Some(false), started: None, kill: None });
        let out = h.sync(&p, SystemTime::now()).await;
        let st = h.status(&p, &out);
        assert!(!st.container_statuses.as_ref().unwrap()[0].ready);
        let ready = st.conditions.iter().flatten().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "False");
        h.state.probes.get_mut(&id).unwrap().ready = Some(true);
        let out = h.sync(&p, SystemTime::now()).await;
        let st = h.status(&p, &out);
        assert!(st.container_statuses.as_ref().unwrap()[0].ready);

        let msg = "Container app failed liveness probe, will be restarted";
        h.state.probes.get_mut(&id).unwrap().kill = Some(msg.into());
        h.sync(&p, SystemTime::now()).await;
        assert_eq!(h.starts(), vec![("app".to_string(), 0), ("app".to_string(), 1)]);
        assert!(h.rt.calls().iter().any(|c| matches!(c, Call::StopContainer(i, _) if *i == id)));
        assert!(h.events.events().iter().any(|e| e.reason == "Killing" && e.message == msg));
    }

    #[tokio::test]
    async fn lifecycle_hooks_run_after_start_and_before_stop() {
        let mut h = Harness::new();
        let mut p = pod("Always", false);
        p.spec.as_mut().unwrap().containers[0].lifecycle = Some(
            serde_json::from_value(json!({"postStart": {"exec": {"command": ["post"]}},
                                          "preStop": {"exec": {"command": ["pre"]}}}))
            .unwrap(),
        );
        p.status.as_mut().unwrap().pod_ip = Some("10.42.0.2".into());
        h.sync(&p, SystemTime::now()).await;
        let id = h.rt.container("u1", "app").unwrap().id;
        kill_pod(&h.rt, "u1", Duration::from_secs(5), Some(&p), &h.events).await.unwrap();
        let execs: Vec<Vec<String>> =
            h.rt.calls()
                .into_iter()
                .filter_map(|c| match c {
                    Call::ExecSync(i, cmd) if i == id => Some(cmd),
                    _ => None,
                })
                .collect();
        assert_eq!(execs, vec![vec!["post".to_string()], vec!["pre".to_string()]]);
        let calls = h.rt.calls();
        let pre = calls.iter().position(|c| matches!(c, Call::ExecSync(_, cmd) if cmd[0] == "pre")).unwrap();
        let stop = calls.iter().position(|c| matches!(c, Call::StopContainer(..))).unwrap();
        assert!(pre < stop, "preStop before SIGTERM");
    }

    #[tokio::test]
    async fn a_failed_post_start_hook_kills_the_container_with_an_event() {
        let mut h = Harness::new();
        let mut p = pod("Always", false);
        p.spec.as_mut().unwrap().containers[0].lifecycle =
            Some(serde_json::from_value(json!({"postStart": {"exec": {"command": ["post"]}}})).unwrap());
        h.rt.script_exec(
            "app",
            vec![crate::agent::runtime::ExecOutput { exit_code: 2, stdout: b"boom".to_vec(), ..Default::default() }],
        );
        h.sync(&p, SystemTime::now()).await;
        assert!(h.events.events().iter().any(|e| e.reason == "FailedPostStartHook" && e.message.contains("boom")));
        assert!(matches!(h.rt.container("u1", "app").unwrap().state, ContainerState::Exited { .. }));
    }

    #[tokio::test]
    async fn a_termination_message_reaches_the_terminated_state() {
        let mut h = Harness::new();
        let p = pod("Never", false);
        h.sync(&p, SystemTime::now()).await;
        let c = h.rt.container("u1", "app").unwrap();
        let spec = h.rt.spec(&c.id).unwrap();
        let m = spec.mounts.iter().find(|m| m.container_path == "/dev/termination-log").expect("message file mounted");
        std::fs::write(&m.host_path, "bye").unwrap();
        h.rt.exit(&c.id, 1);
        let out = h.sync(&p, SystemTime::now()).await;
        let st = h.status(&p, &out);
        let t = st.container_statuses.unwrap()[0].state.clone().unwrap().terminated.unwrap();
        assert_eq!(t.message.as_deref(), Some("bye"));
    }

    #[tokio::test]
    async fn a_pod_past_its_active_deadline_is_stopped_and_failed() {
        let mut h = Harness::new();
        let mut p = pod("Always", false);
        p.spec.as_mut().unwrap().active_deadline_seconds = Some(5);
        p.status.as_mut().unwrap().start_time =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
        let out = h.sync(&p, SystemTime::now()).await;
        assert!(!out.deadline_exceeded);
        assert!(out.requeue_after.is_some_and(|d| d <= Duration::from_secs(5)), "{:?}", out.requeue_after);
        let out = h.sync(&p, after(6)).await;
        assert!(out.deadline_exceeded);
        assert!(h.rt.calls().iter().any(|c| matches!(c, Call::StopContainer(..))));
        let st = h.status(&p, &out);
        assert_eq!((st.phase.as_deref(), st.reason.as_deref()), (Some("Failed"), Some("DeadlineExceeded")));
        assert!(h.events.reasons().contains(&"DeadlineExceeded"));
    }

    #[test]
    fn back_off_delays_print_like_go_durations() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    }
}
