//! Pod status from the pod spec and what the runtime reports: phase, conditions, container
//! statuses, IPs, QoS class. Pure; the rules are the kubelet's `generateAPIPodStatus`,
//! `getPhase` and `pkg/kubelet/status/generate.go`.

use super::probes::ContainerProbes;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::SystemTime;

use super::resources::qos_class;
use crate::agent::runtime::{ContainerState as RtState, ContainerStatus as RtStatus, Sandbox};

/// Why a container is not running, as the kubelet last decided (`CrashLoopBackOff`,
/// `ErrImagePull`, `ImagePullBackOff`, `CreateContainerConfigError`, `RunContainerError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

/// Everything the status depends on.
pub struct StatusInput<'a> {
    pub pod: &'a Pod,
    pub sandbox: Option<&'a Sandbox>,
    /// This pod's containers as the runtime lists them (every instance, dead ones included).
    pub containers: &'a [RtStatus],
    /// Waiting reasons by container name.
    pub waiting: &'a HashMap<String, Waiting>,
    pub node_ip: IpAddr,
    pub now: Timestamp,
    /// Probe results by runtime container id (readiness → `ready`, startup → `started`).
    pub probes: &'a HashMap<String, ContainerProbes>,
}

pub fn time(t: SystemTime) -> Option<Time> {
    Timestamp::try_from(t).ok().map(Time)
}

/// The newest instance of a container (highest restart count) and the one before it.
pub fn instances<'a>(containers: &'a [RtStatus], name: &str) -> (Option<&'a RtStatus>, Option<&'a RtStatus>) {
    let mut mine: Vec<&RtStatus> = containers.iter().filter(|c| c.name == name).collect();
    mine.sort_by_key(|c| std::cmp::Reverse(c.restart_count));
    (mine.first().copied(), mine.get(1).copied())
}

/// `docker.io/library/busybox@sha256:…`, the shape of upstream `imageID`.
pub fn image_id(name: &str, id: &str) -> String {
    if id.is_empty() {
        return String::new();
    }
    let repo = match name.split_once('@') {
        Some((r, _)) => r,
        None => match name.rfind(':') {
            Some(i) if !name[i..].contains('/') => &name[..i],
            _ => name,
        },
    };
    format!("{repo}@{id}")
}

fn terminated(c: &RtStatus) -> Option<ContainerStateTerminated> {
    match &c.state {
        RtState::Exited { exit_code, reason, started_at, finished_at } => Some(ContainerStateTerminated {
            exit_code: *exit_code,
            reason: Some(if reason.is_empty() {
                if *exit_code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                }
            } else {
                reason.clone()
            }),
            started_at: started_at.and_then(time),
            finished_at: time(*finished_at),
            container_id: Some(format!("containerd://{}", c.id)),
            ..Default::default()
        }),
        _ => None,
    }
}

fn waiting_state(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: (!message.is_empty()).then(|| message.to_string()),
        }),
        ..Default::default()
    }
}

/// One container's status. `default_reason` is what a never-created container waits on:
/// `ContainerCreating`, or `PodInitializing` while init containers run.
fn container_status(
    spec: &Container,
    containers: &[RtStatus],
    waiting: Option<&Waiting>,
    default_reason: &str,
    init: bool,
    probes: &HashMap<String, ContainerProbes>,
) -> ContainerStatus {
    let (latest, previous) = instances(containers, &spec.name);
    let image = spec.image.clone().unwrap_or_default();
    let mut s = ContainerStatus {
        name: spec.name.clone(),
        image: image.clone(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        started: Some(false),
        ..Default::default()
    };
    let Some(latest) = latest else {
        let (reason, message) = match waiting {
            Some(w) => (w.reason.as_str(), w.message.as_str()),
            None => (default_reason, ""),
        };
        s.state = Some(waiting_state(reason, message));
        return s;
    };
    s.restart_count = i32::try_from(latest.restart_count).unwrap_or(i32::MAX);
    s.image_id = image_id(&latest.image.name, &latest.image.id);
    s.container_id = Some(format!("containerd://{}", latest.id));
    let prev_terminated = previous.and_then(terminated);
    match &latest.state {
        RtState::Running { started_at } => {
            s.state = Some(ContainerState {
                running: Some(ContainerStateRunning { started_at: time(*started_at) }),
                ..Default::default()
            });
            // A running app container is ready when its readiness probe (if any) passes and its
            // startup probe (if any) has passed (upstream `UpdatePodStatus`); an init
            // container is ready only once it has succeeded.
            let p = probes.get(&latest.id).cloned().unwrap_or_default();
            let started = p.started.unwrap_or(true);
            s.ready = !init && started && p.ready.unwrap_or(true);
            s.started = Some(started);
            s.last_state = prev_terminated.map(|t| ContainerState { terminated: Some(t), ..Default::default() });
        }
        RtState::Exited { exit_code, .. } => {
            let term = terminated(latest);
            match waiting {
                // Waiting to be restarted (back-off): the dead instance becomes lastState.
                Some(w) => {
                    s.state = Some(waiting_state(&w.reason, &w.message));
                    s.last_state = term.map(|t| ContainerState { terminated: Some(t), ..Default::default() });
                }
                None => {
                    s.ready = init && *exit_code == 0;
                    s.state = Some(ContainerState { terminated: term, ..Default::default() });
                    s.last_state =
                        prev_terminated.map(|t| ContainerState { terminated: Some(t), ..Default::default() });
                }
            }
        }
        RtState::Created => {
            let (reason, message) =
                waiting.map(|w| (w.reason.as_str(), w.message.as_str())).unwrap_or(("ContainerCreating", ""));
            s.state = Some(waiting_state(reason, message));
            s.last_state = prev_terminated.map(|t| ContainerState { terminated: Some(t), ..Default::default() });
        }
        // Upstream leaves the state empty when the runtime does not know; getPhase counts it
        // as unknown.
        RtState::Unknown => s.state = Some(ContainerState::default()),
    }
    s
}

fn is_running(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.running.is_some())
}
fn terminated_of(s: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    s.state.as_ref()?.terminated.as_ref()
}
fn waiting_of(s: &ContainerStatus) -> bool {
    s.state.as_ref().is_some_and(|st| st.waiting.is_some())
}
fn last_terminated_of(s: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    s.last_state.as_ref()?.terminated.as_ref()
}

/// Upstream `getPhase`.
pub fn phase(restart_policy: &str, init: &[ContainerStatus], app: &[ContainerStatus]) -> &'static str {
    let (mut pending_init, mut failed_init) = (0, 0);
    for s in init {
        if is_running(s) {
            pending_init += 1;
        } else if let Some(t) = terminated_of(s) {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else if waiting_of(s) {
            if last_terminated_of(s).is_some_and(|t| t.exit_code != 0) {
                failed_init += 1;
            } else {
                pending_init += 1;
            }
        } else {
            pending_init += 1;
        }
    }
    let (mut unknown, mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0, 0);
    for s in app {
        if is_running(s) {
            running += 1;
        } else if let Some(t) = terminated_of(s) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if waiting_of(s) {
            if last_terminated_of(s).is_some() {
                stopped += 1;
            } else {
                waiting += 1;
            }
        } else {
            unknown += 1;
        }
    }
    if failed_init > 0 && restart_policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 || waiting > 0 {
        return "Pending";
    }
    if running > 0 && unknown == 0 {
        return "Running";
    }
    if running == 0 && stopped > 0 && unknown == 0 {
        if restart_policy == "Always" {
            // Containers are being restarted (CrashLoopBackOff): the pod stays Running.
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if restart_policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

/// A condition whose lastTransitionTime stays what it was while its status does not change.
fn condition(
    old: &[PodCondition],
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: &Timestamp,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let last = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(*now));
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(last),
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The whole status the kubelet writes, built on the current one so fields it does not own
/// (nominatedNodeName, resize, …) survive.
pub fn compute(input: &StatusInput<'_>) -> PodStatus {
    let pod = input.pod;
    let old = pod.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let spec = pod.spec.clone().unwrap_or_default();
    let restart_policy = spec.restart_policy.clone().unwrap_or_else(|| "Always".into());
    let inits = spec.init_containers.clone().unwrap_or_default();

    let init_statuses: Vec<ContainerStatus> = inits
        .iter()
        .map(|c| {
            container_status(c, input.containers, input.waiting.get(&c.name), "PodInitializing", true, input.probes)
        })
        .collect();
    let initialized = init_statuses.iter().all(|s| s.ready);
    let app_default = if initialized { "ContainerCreating" } else { "PodInitializing" };
    let app_statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, input.containers, input.waiting.get(&c.name), app_default, false, input.probes))
        .collect();

    // A terminal phase is final (upstream never moves a pod out of Succeeded or Failed).
    let phase = match old.phase.as_deref() {
        Some(p @ ("Succeeded" | "Failed")) => p.to_string(),
        _ => phase(&restart_policy, &init_statuses, &app_statuses).to_string(),
    };

    let now = &input.now;
    let old_conds = old.conditions.clone().unwrap_or_default();
    let completed = phase == "Succeeded";
    let unready: Vec<&str> = app_statuses.iter().filter(|s| !s.ready).map(|s| s.name.as_str()).collect();
    let incomplete: Vec<&str> = init_statuses.iter().filter(|s| !s.ready).map(|s| s.name.as_str()).collect();
    let mut conds = vec![condition(&old_conds, "PodReadyToStartContainers", input.sandbox.is_some(), None, None, now)];
    conds.push(if completed {
        condition(&old_conds, "Initialized", true, Some("PodCompleted"), None, now)
    } else if incomplete.is_empty() {
        condition(&old_conds, "Initialized", true, None, None, now)
    } else {
        let msg = format!("containers with incomplete status: [{}]", incomplete.join(" "));
        condition(&old_conds, "Initialized", false, Some("ContainersNotInitialized"), Some(msg), now)
    });
    for type_ in ["Ready", "ContainersReady"] {
        conds.push(if completed {
            condition(&old_conds, type_, false, Some("PodCompleted"), None, now)
        } else if unready.is_empty() {
            condition(&old_conds, type_, true, None, None, now)
        } else {
            let msg = format!("containers with unready status: [{}]", unready.join(" "));
            condition(&old_conds, type_, false, Some("ContainersNotReady"), Some(msg), now)
        });
    }
    // The scheduler owns PodScheduled; keep its condition, or say True for a bound pod.
    conds.push(
        old_conds
            .iter()
            .find(|c| c.type_ == "PodScheduled")
            .cloned()
            .unwrap_or_else(|| condition(&old_conds, "PodScheduled", true, None, None, now)),
    );
    // Keep conditions other components own (readiness gates, DisruptionTarget, …).
    for c in &old_conds {
        if !conds.iter().any(|n| n.type_ == c.type_) {
            conds.push(c.clone());
        }
    }

    let host_network = spec.host_network.unwrap_or(false);
    let pod_ip = if host_network { Some(input.node_ip) } else { input.sandbox.and_then(|s| s.ip) };
    st.phase = Some(phase);
    st.conditions = Some(conds);
    st.host_ip = Some(input.node_ip.to_string());
    st.host_ips = Some(vec![HostIP { ip: input.node_ip.to_string() }]);
    match pod_ip {
        Some(ip) => {
            st.pod_ip = Some(ip.to_string());
            st.pod_ips = Some(vec![PodIP { ip: ip.to_string() }]);
        }
        None => {
            st.pod_ip = old.pod_ip.clone();
            st.pod_ips = old.pod_ips.clone();
        }
    }
    st.start_time = old.start_time.clone().or(Some(Time(*now)));
    st.qos_class = Some(qos_class(&spec).to_string());
    st.container_statuses = Some(app_statuses);
    st.init_container_statuses = (!inits.is_empty()).then_some(init_statuses);
    st
}

/// True when writing `new` would change nothing the API stores (times are compared as the API
/// serialises them, to the second).
pub fn unchanged(old: Option<&PodStatus>, new: &PodStatus) -> bool {
    match old {
        Some(o) => serde_json::to_value(o).ok() == serde_json::to_value(new).ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::runtime::{ImageRef, PodRef};
    use serde_json::json;
    use std::path::PathBuf;
    use std::time::Duration;

    fn pod(restart_policy: &str, init: bool) -> Pod {
        let mut v = json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {
                "nodeName": "n1",
                "restartPolicy": restart_policy,
                "containers": [{"name": "app", "image": "localhost/busybox:latest"}]
            },
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}
            ]}
        });
        if init {
            v["spec"]["initContainers"] = json!([{"name": "setup", "image": "localhost/busybox:latest"}]);
        }
        serde_json::from_value(v).unwrap()
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn rt(name: &str, restart: u32, state: RtState) -> RtStatus {
        RtStatus {
            id: format!("{name}-{restart}"),
            pod: PodRef { uid: "u1".into(), namespace: "default".into(), name: "p".into() },
            name: name.into(),
            image: ImageRef { name: "localhost/busybox:latest".into(), id: "sha256:aa".into() },
            state,
            restart_count: restart,
            log_path: PathBuf::from("/x"),
        }
    }

    fn exited(code: i32) -> RtState {
        RtState::Exited { exit_code: code, reason: String::new(), started_at: Some(at(1)), finished_at: at(2) }
    }

    fn sandbox() -> Sandbox {
        Sandbox {
            pod: PodRef { uid: "u1".into(), namespace: "default".into(), name: "p".into() },
            ip: Some("10.42.0.7".parse().unwrap()),
        }
    }

    fn status(pod: &Pod, cs: &[RtStatus], waiting: &[(&str, &str)]) -> PodStatus {
        let w: HashMap<String, Waiting> = waiting
            .iter()
            .map(|(n, r)| (n.to_string(), Waiting { reason: r.to_string(), message: String::new() }))
            .collect();
        let sb = sandbox();
        compute(&StatusInput {
            pod,
            sandbox: Some(&sb),
            containers: cs,
            waiting: &w,
            node_ip: "192.0.2.1".parse().unwrap(),
            now: Timestamp::try_from(at(100)).unwrap(),
            probes: &HashMap::new(),
        })
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn a_pod_without_containers_yet_is_pending_with_container_creating() {
        let s = status(&pod("Always", false), &[], &[]);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("ContainerCreating"));
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("ContainersNotReady"));
        assert_eq!(cond(&s, "Ready").message.as_deref(), Some("containers with unready status: [app]"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.42.0.7"));
        assert_eq!(s.host_ip.as_deref(), Some("192.0.2.1"));
        assert_eq!(s.qos_class.as_deref(), Some("BestEffort"));
    }

    #[test]
    fn a_running_container_makes_the_pod_running_and_ready() {
        let s = status(&pod("Always", false), &[rt("app", 0, RtState::Running { started_at: at(5) })], &[]);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.started, Some(true));
        assert_eq!(cs.container_id.as_deref(), Some("containerd://app-0"));
        assert_eq!(cs.image_id, "localhost/busybox@sha256:aa");
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        // The scheduler's condition is kept as it was.
        assert_eq!(
            cond(&s, "PodScheduled").last_transition_time.as_ref().unwrap().0.to_string(),
            "2020-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_crashed_container_under_restart_policy_never_leaves_the_pod_failed() {
        let s = status(&pod("Never", false), &[rt("app", 0, exited(2))], &[]);
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        let t = s.container_statuses.as_ref().unwrap()[0].state.clone().unwrap().terminated.unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (2, Some("Error")));
    }

    #[test]
    fn a_container_that_exits_zero_under_on_failure_makes_the_pod_succeeded() {
        let s = status(&pod("OnFailure", false), &[rt("app", 0, exited(0))], &[]);
        assert_eq!(s.phase.as_deref(), Some("Succeeded"));
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn a_container_in_crash_loop_back_off_keeps_the_pod_running_with_last_state() {
        let s = status(
            &pod("Always", false),
            &[rt("app", 0, exited(0)), rt("app", 1, exited(1))],
            &[("app", "CrashLoopBackOff")],
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 1);
        assert_eq!(cs.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("CrashLoopBackOff"));
        assert_eq!(cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 1);
    }

    #[test]
    fn a_restarted_container_reports_the_previous_instance_as_last_state() {
        let s = status(
            &pod("Always", false),
            &[rt("app", 0, exited(137)), rt("app", 1, RtState::Running { started_at: at(9) })],
            &[],
        );
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 1);
        assert!(cs.state.as_ref().unwrap().running.is_some());
        assert_eq!(cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap().exit_code, 137);
    }

    #[test]
    fn init_containers_gate_the_app_containers() {
        let p = pod("Always", true);
        let s = status(&p, &[rt("setup", 0, RtState::Running { started_at: at(1) })], &[]);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Initialized").message.as_deref(), Some("containers with incomplete status: [setup]"));
        let app = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(app.state.as_ref().unwrap().waiting.as_ref().unwrap().reason.as_deref(), Some("PodInitializing"));
        let s = status(&p, &[rt("setup", 0, exited(0)), rt("app", 0, RtState::Running { started_at: at(3) })], &[]);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert!(s.init_container_statuses.as_ref().unwrap()[0].ready);
    }

    #[test]
    fn a_failed_init_container_under_never_fails_the_pod() {
        let s = status(&pod("Never", true), &[rt("setup", 0, exited(1))], &[]);
        assert_eq!(s.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn transition_times_stay_stable_while_a_condition_does_not_change() {
        let mut p = pod("Always", false);
        let running = [rt("app", 0, RtState::Running { started_at: at(5) })];
        let first = status(&p, &running, &[]);
        p.status = Some(first.clone());
        let w: HashMap<String, Waiting> = HashMap::new();
        let sb = sandbox();
        let later = compute(&StatusInput {
            pod: &p,
            sandbox: Some(&sb),
            containers: &running,
            waiting: &w,
            node_ip: "192.0.2.1".parse().unwrap(),
            now: Timestamp::try_from(at(500)).unwrap(),
            probes: &HashMap::new(),
        });
        assert_eq!(cond(&later, "Ready").last_transition_time, cond(&first, "Ready").last_transition_time);
        assert_eq!(later.start_time, first.start_time);
        assert!(unchanged(p.status.as_ref(), &later), "nothing to write on a second sync");
    }

    #[test]
    fn a_terminal_phase_is_never_left() {
        let mut p = pod("Always", false);
        p.status.as_mut().unwrap().phase = Some("Failed".into());
        let s = status(&p, &[rt("app", 0, RtState::Running { started_at: at(5) })], &[]);
        assert_eq!(s.phase.as_deref(), Some("Failed"));
    }
}
