//! Container probes (liveness, readiness, startup) and lifecycle handlers, as the kubelet's
//! `prober` package does them.
//!
//! - [`ProbeSpec`] and [`Tracker`] are pure: the API defaults (period 10 s, timeout 1 s,
//!   success 1, failure 3) and upstream `worker.doProbe`'s threshold rule — a result only flips
//!   after `successThreshold` successes or `failureThreshold` failures in a row; a liveness or
//!   startup failure then puts the worker on hold until the container is replaced.
//! - [`run_action`] performs one exec (through `Runtime::exec_sync`), httpGet (from the node to
//!   the pod IP, 2xx/3xx is success) or tcpSocket check with the probe's timeout.
//! - [`ProbeManager`] runs one task per running container and probe kind and publishes the
//!   results on a shared board the pod worker reads before each sync: readiness feeds the
//!   container's `ready` (and the pod's Ready/ContainersReady conditions), startup its
//!   `started`, and a failed liveness/startup probe asks the sync to restart the container.

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::events::{EventSink, PodEvent};
use crate::agent::runtime::{ContainerState, ContainerStatus, Runtime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }
}

/// What a probe or lifecycle handler does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Exec(Vec<String>),
    Http { scheme: String, host: Option<String>, port: u16, path: String, headers: Vec<(String, String)> },
    Tcp { host: Option<String>, port: u16 },
    Grpc { port: u16 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSpec {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// A port number, or a named port of the container (upstream `findPortByName`).
fn port(c: &Container, p: &IntOrString) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("couldn't find port {name:?} in container {:?}", c.name)),
    }
}

fn action(
    c: &Container,
    exec: Option<&k8s_openapi::api::core::v1::ExecAction>,
    http: Option<&k8s_openapi::api::core::v1::HTTPGetAction>,
    tcp: Option<&k8s_openapi::api::core::v1::TCPSocketAction>,
    grpc: Option<&k8s_openapi::api::core::v1::GRPCAction>,
) -> Result<Action, String> {
    if let Some(e) = exec {
        return Ok(Action::Exec(e.command.clone().unwrap_or_default()));
    }
    if let Some(h) = http {
        let mut path = h.path.clone().unwrap_or_default();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        return Ok(Action::Http {
            scheme: h.scheme.clone().unwrap_or_else(|| "HTTP".into()),
            host: h.host.clone().filter(|s| !s.is_empty()),
            port: port(c, &h.port)?,
            path,
            headers: h.http_headers.iter().flatten().map(|x| (x.name.clone(), x.value.clone())).collect(),
        });
    }
    if let Some(t) = tcp {
        return Ok(Action::Tcp { host: t.host.clone().filter(|s| !s.is_empty()), port: port(c, &t.port)? });
    }
    if let Some(g) = grpc {
        return Ok(Action::Grpc { port: u16::try_from(g.port).map_err(|_| format!("invalid port {}", g.port))? });
    }
    Err("the probe has no handler (exec, httpGet, tcpSocket or grpc)".into())
}

/// The probe with API defaults applied.
pub fn probe_spec(c: &Container, p: &Probe) -> Result<ProbeSpec, String> {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    Ok(ProbeSpec {
        action: action(c, p.exec.as_ref(), p.http_get.as_ref(), p.tcp_socket.as_ref(), p.grpc.as_ref())?,
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    })
}

/// A lifecycle handler (postStart/preStop) as an action.
pub fn handler_action(c: &Container, h: &LifecycleHandler) -> Result<Action, String> {
    if let Some(s) = &h.sleep {
        // `sleep` handlers are served by the kubelet itself; model them as a local wait.
        return Ok(Action::Exec(vec!["sleep".into(), s.seconds.to_string()]));
    }
    action(c, h.exec.as_ref(), h.http_get.as_ref(), h.tcp_socket.as_ref(), None)
}

/// The threshold state machine of one probe (upstream `worker.doProbe`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tracker {
    /// The published result.
    pub result: bool,
    last: Option<bool>,
    run: u32,
}

impl Tracker {
    /// Upstream initial values: readiness starts failed, liveness succeeded, startup unknown
    /// (not started).
    pub fn new(kind: Kind) -> Tracker {
        Tracker { result: kind == Kind::Liveness, last: None, run: 0 }
    }

    /// Records one probe outcome; returns the new published result when it changes.
    pub fn observe(&mut self, kind: Kind, ok: bool, spec: &ProbeSpec) -> Option<bool> {
        if self.last == Some(ok) {
            self.run += 1;
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let needed = if ok { spec.success_threshold } else { spec.failure_threshold };
        if self.run < needed {
            return None;
        }
        // A failed liveness/startup probe restarts the container: count afresh afterwards.
        if !ok && kind != Kind::Readiness {
            self.run = 0;
        }
        if self.result == ok {
            return None;
        }
        self.result = ok;
        Some(ok)
    }
}

/// Runs one action against a container. `Ok(())` is success, `Err(message)` a failure with
/// upstream's wording where there is one.
pub async fn run_action(
    rt: &dyn Runtime,
    container_id: &str,
    pod_ip: IpAddr,
    action: &Action,
    timeout: Duration,
) -> Result<(), String> {
    match action {
        Action::Exec(cmd) => match rt.exec_sync(container_id, cmd, timeout).await {
            Ok(o) if o.timed_out => Err(format!("command {:?} timed out", cmd.join(" "))),
            Ok(o) if o.exit_code == 0 => Ok(()),
            Ok(o) => {
                let mut out = String::from_utf8_lossy(&o.stdout).into_owned();
                out.push_str(&String::from_utf8_lossy(&o.stderr));
                if out.trim().is_empty() {
                    Err(format!("command {:?} exited with {}", cmd.join(" "), o.exit_code))
                } else {
                    Err(out)
                }
            }
            Err(e) => Err(format!("exec failed: {e}")),
        },
        Action::Tcp { host, port } => {
            let host = host.clone().unwrap_or_else(|| pod_ip.to_string());
            let addr = format!("{}:{port}", bracket(&host));
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {addr}: connect: {e}")),
                Err(_) => Err(format!("dial tcp {addr}: i/o timeout")),
            }
        }
        Action::Http { scheme, host, port, path, headers } => {
            let host = host.clone().unwrap_or_else(|| pod_ip.to_string());
            let addr = format!("{}:{port}", bracket(&host));
            let url = format!("{}://{addr}{path}", scheme.to_lowercase());
            if !scheme.eq_ignore_ascii_case("http") {
                return Err(format!("Get {url:?}: only HTTP probes are supported by this kubelet"));
            }
            match tokio::time::timeout(timeout, http_get(&addr, path, headers)).await {
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                Ok(Ok(code)) => Err(format!("HTTP probe failed with statuscode: {code}")),
                Ok(Err(e)) => Err(format!("Get {url:?}: {e}")),
                Err(_) => Err(format!(
                    "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                )),
            }
        }
        Action::Grpc { port } => Err(format!("grpc probe on port {port}: not supported by this kubelet yet")),
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// A minimal HTTP/1.1 GET returning the status code (upstream sends `User-Agent: kube-probe/<v>`).
async fn http_get(addr: &str, path: &str, headers: &[(String, String)]) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("dial tcp {addr}: connect: {e}"))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 8192 {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("malformed HTTP response {:?}", line.lines().next().unwrap_or_default()))
}

/// The probe results of one container instance, as the sync and the status read them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerProbes {
    /// `None`: no readiness probe (ready while running).
    pub ready: Option<bool>,
    /// `None`: no startup probe (started while running).
    pub started: Option<bool>,
    /// Set when a liveness or startup probe failed: the message of the Killing event.
    pub kill: Option<String>,
}

type Board = Arc<Mutex<HashMap<String, ContainerProbes>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Aborts the task when dropped.
struct TaskGuard(tokio::task::JoinHandle<()>);
impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The probe workers of one pod (upstream `prober.Manager`, per pod).
#[derive(Default)]
pub struct ProbeManager {
    board: Board,
    tasks: HashMap<String, Vec<TaskGuard>>,
}

impl ProbeManager {
    /// Probe results by runtime container id.
    pub fn snapshot(&self) -> HashMap<String, ContainerProbes> {
        lock(&self.board).clone()
    }

    /// Starts workers for newly running containers and stops those of containers that are
    /// gone or no longer running.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        pod: &Arc<Pod>,
        containers: &[ContainerStatus],
        pod_ip: IpAddr,
        rt: Arc<dyn Runtime>,
        events: Arc<dyn EventSink>,
        notify: Arc<Notify>,
    ) {
        let specs: HashMap<&str, &Container> =
            pod.spec.iter().flat_map(|s| s.containers.iter()).map(|c| (c.name.as_str(), c)).collect();
        let running: HashMap<&str, &ContainerStatus> = containers
            .iter()
            .filter(|c| matches!(c.state, ContainerState::Running { .. }))
            .map(|c| (c.id.as_str(), c))
            .collect();
        self.tasks.retain(|id, _| running.contains_key(id.as_str()));
        lock(&self.board).retain(|id, _| running.contains_key(id.as_str()));
        for (id, st) in running {
            if self.tasks.contains_key(id) {
                continue;
            }
            let Some(c) = specs.get(st.name.as_str()) else { continue };
            let kinds = [
                (Kind::Startup, c.startup_probe.as_ref()),
                (Kind::Liveness, c.liveness_probe.as_ref()),
                (Kind::Readiness, c.readiness_probe.as_ref()),
            ];
            let entry = ContainerProbes {
                ready: c.readiness_probe.as_ref().map(|_| false),
                started: c.startup_probe.as_ref().map(|_| false),
                kill: None,
            };
            lock(&self.board).insert(id.to_string(), entry);
            let mut guards = Vec::new();
            for (kind, probe) in kinds {
                let Some(probe) = probe else { continue };
                let field = format!("spec.containers{{{}}}", c.name);
                let spec = match probe_spec(c, probe) {
                    Ok(s) => s,
                    Err(e) => {
                        events.emit(PodEvent::new(
                            pod,
                            Some(field),
                            "Warning",
                            "Unhealthy",
                            format!("{} probe errored: {e}", kind.name()),
                        ));
                        continue;
                    }
                };
                let w = Worker {
                    kind,
                    spec,
                    id: id.to_string(),
                    name: c.name.clone(),
                    field,
                    pod: pod.clone(),
                    pod_ip,
                    rt: rt.clone(),
                    events: events.clone(),
                    board: self.board.clone(),
                    notify: notify.clone(),
                };
                guards.push(TaskGuard(tokio::spawn(w.run())));
            }
            self.tasks.insert(id.to_string(), guards);
        }
    }
}

struct Worker {
    kind: Kind,
    spec: ProbeSpec,
    id: String,
    name: String,
    field: String,
    pod: Arc<Pod>,
    pod_ip: IpAddr,
    rt: Arc<dyn Runtime>,
    events: Arc<dyn EventSink>,
    board: Board,
    notify: Arc<Notify>,
}

impl Worker {
    fn entry<T>(&self, f: impl FnOnce(&mut ContainerProbes) -> T) -> Option<T> {
        lock(&self.board).get_mut(&self.id).map(f)
    }

    async fn run(self) {
        tokio::time::sleep(self.spec.initial_delay).await;
        let mut tracker = Tracker::new(self.kind);
        loop {
            let Some((started, killing)) = self.entry(|e| (e.started, e.kill.is_some())) else { return };
            if killing {
                // On hold until the container is replaced (upstream `onHold`).
                return;
            }
            let run = match self.kind {
                Kind::Startup => started == Some(false),
                // Liveness and readiness wait until the startup probe has succeeded.
                _ => started != Some(false),
            };
            if self.kind == Kind::Startup && started == Some(true) {
                return;
            }
            if run {
                let r = run_action(self.rt.as_ref(), &self.id, self.pod_ip, &self.spec.action, self.spec.timeout).await;
                if let Err(msg) = &r {
                    tracing::debug!(pod = ?self.pod.metadata.name, container = %self.name, probe = self.kind.name(), %msg, "probe failed");
                    self.events.emit(PodEvent::new(
                        &self.pod,
                        Some(self.field.clone()),
                        "Warning",
                        "Unhealthy",
                        format!("{} probe failed: {}", self.kind.name(), msg.trim_end()),
                    ));
                }
                if let Some(now) = tracker.observe(self.kind, r.is_ok(), &self.spec) {
                    let name = self.name.clone();
                    let kind = self.kind;
                    self.entry(|e| match (kind, now) {
                        (Kind::Readiness, v) => e.ready = Some(v),
                        (Kind::Startup, true) => e.started = Some(true),
                        (Kind::Startup, false) => {
                            e.kill = Some(format!("Container {name} failed startup probe, will be restarted"))
                        }
                        (Kind::Liveness, false) => {
                            e.kill = Some(format!("Container {name} failed liveness probe, will be restarted"))
                        }
                        (Kind::Liveness, true) => {}
                    });
                    self.notify.notify_one();
                }
            }
            tokio::time::sleep(self.spec.period).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::kubelet::events::CollectingSink;
    use crate::agent::kubelet::fake_runtime::FakeRuntime;
    use crate::agent::runtime::{ExecOutput, ImageRef, PodRef, Resources, Sandbox};
    use serde_json::json;

    fn spec(success: u32, failure: u32) -> ProbeSpec {
        ProbeSpec {
            action: Action::Exec(vec!["true".into()]),
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn api_defaults_apply_and_named_ports_resolve() {
        let c: Container =
            serde_json::from_value(json!({"name": "c", "ports": [{"name": "http", "containerPort": 8080}]})).unwrap();
        let p: Probe = serde_json::from_value(json!({"httpGet": {"port": "http", "path": "healthz"}})).unwrap();
        let s = probe_spec(&c, &p).unwrap();
        assert_eq!(
            (s.period, s.timeout, s.success_threshold, s.failure_threshold),
            (Duration::from_secs(10), Duration::from_secs(1), 1, 3)
        );
        assert!(matches!(s.action, Action::Http { port: 8080, ref path, .. } if path == "/healthz"));
        let p: Probe = serde_json::from_value(json!({"tcpSocket": {"port": "nope"}})).unwrap();
        assert!(probe_spec(&c, &p).unwrap_err().contains("couldn't find port"));
    }

    #[test]
    fn readiness_flips_only_after_the_thresholds() {
        let s = spec(2, 3);
        let mut t = Tracker::new(Kind::Readiness);
        assert!(!t.result, "readiness starts failed");
        assert_eq!(t.observe(Kind::Readiness, true, &s), None, "one success is not enough");
        assert_eq!(t.observe(Kind::Readiness, true, &s), Some(true));
        assert_eq!(t.observe(Kind::Readiness, false, &s), None);
        assert_eq!(t.observe(Kind::Readiness, true, &s), None, "a success resets the failure run");
        assert_eq!(t.observe(Kind::Readiness, false, &s), None);
        assert_eq!(t.observe(Kind::Readiness, false, &s), None);
        assert_eq!(t.observe(Kind::Readiness, false, &s), Some(false));
    }

    #[test]
    fn liveness_starts_healthy_and_fails_after_failure_threshold() {
        let s = spec(1, 2);
        let mut t = Tracker::new(Kind::Liveness);
        assert!(t.result);
        assert_eq!(t.observe(Kind::Liveness, false, &s), None);
        assert_eq!(t.observe(Kind::Liveness, false, &s), Some(false));
    }

    #[tokio::test]
    async fn http_and_tcp_probes_reach_a_listener_and_report_status_codes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let code = if req.starts_with("GET /ok ") && req.contains("kube-probe/") {
                    "200 OK"
                } else {
                    "503 Unavailable"
                };
                let _ = s.write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let rt = FakeRuntime::new();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let http =
            |path: &str| Action::Http { scheme: "HTTP".into(), host: None, port, path: path.into(), headers: vec![] };
        let t = Duration::from_secs(2);
        assert_eq!(run_action(&rt, "x", ip, &http("/ok"), t).await, Ok(()));
        assert_eq!(
            run_action(&rt, "x", ip, &http("/bad"), t).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        assert_eq!(run_action(&rt, "x", ip, &Action::Tcp { host: None, port }, t).await, Ok(()));
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let e = run_action(&rt, "x", ip, &Action::Tcp { host: None, port: closed }, t).await.unwrap_err();
        assert!(e.starts_with(&format!("dial tcp 127.0.0.1:{closed}: connect:")), "{e}");
    }

    #[tokio::test]
    async fn a_failing_liveness_exec_probe_asks_for_a_restart_and_readiness_follows_its_probe() {
        let rt = Arc::new(FakeRuntime::new());
        let pod: Arc<Pod> = Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
                "spec": {"containers": [{"name": "app",
                    "livenessProbe": {"exec": {"command": ["check"]}, "periodSeconds": 1, "failureThreshold": 2},
                    "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 1}}]}
            }))
            .unwrap(),
        );
        let sb = Sandbox { pod: PodRef { uid: "u1".into(), namespace: "default".into(), name: "p".into() }, ip: None };
        let cs = crate::agent::runtime::ContainerSpec {
            pod: sb.pod.clone(),
            name: "app".into(),
            image: ImageRef { name: "i".into(), id: "sha256:1".into() },
            command: vec![],
            args: vec![],
            env: vec![],
            working_dir: None,
            mounts: vec![],
            resources: Resources::default(),
            tty: false,
            stdin: false,
            stdin_once: false,
            privileged: false,
            run_as_user: None,
            run_as_group: None,
            log_path: "/dev/null".into(),
            restart_count: 0,
        };
        let id = rt.start_container(&sb, &cs).await.unwrap();
        rt.script_exec(
            "app",
            vec![
                ExecOutput::default(),
                ExecOutput { exit_code: 1, stdout: b"unhealthy\n".to_vec(), ..Default::default() },
            ],
        );
        let events = Arc::new(CollectingSink::default());
        let notify = Arc::new(Notify::new());
        let mut m = ProbeManager::default();
        let containers = rt.list_containers().await.unwrap();
        m.update(&pod, &containers, "127.0.0.1".parse().unwrap(), rt.clone(), events.clone(), notify.clone());
        assert_eq!(m.snapshot()[&id].ready, Some(false), "not ready before the first probe");
        let mut kill = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Some(k) = m.snapshot()[&id].kill.clone() {
                kill = Some(k);
                break;
            }
        }
        assert_eq!(kill.as_deref(), Some("Container app failed liveness probe, will be restarted"));
        assert!(events
            .events()
            .iter()
            .any(|e| e.reason == "Unhealthy" && e.message.contains("probe failed: unhealthy")));
        // The container is gone: its workers stop and its results are dropped.
        m.update(&pod, &[], "127.0.0.1".parse().unwrap(), rt.clone(), events.clone(), notify);
        assert!(m.snapshot().is_empty());
    }
}
