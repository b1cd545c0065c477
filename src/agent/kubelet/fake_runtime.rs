//! A recording, in-memory [`Runtime`] for tests (convention 5): it keeps sandboxes and
//! containers in a table, records every call, and lets a test make containers exit or pulls
//! fail. Public so integration tests in `tests/` can drive a kubelet without containerd.

use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;

use crate::agent::runtime::{
    AttachOptions, AttachSession, ContainerSpec, ContainerState, ContainerStatus, ExecOptions, ExecOutput, ExecSession,
    ImageRef, PodRef, PullPolicy, Result, Runtime, RuntimeError, RuntimeEvent, Sandbox, SandboxSpec,
};
use crate::config::Cidr;

/// One call the kubelet made, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    SetPodCidr(String),
    EnsureImage(String, PullPolicy),
    RunSandbox(String),
    RemoveSandbox(String),
    StartContainer { pod_uid: String, name: String, restart_count: u32 },
    StopContainer(String, Duration),
    RemoveContainer(String),
    ExecSync(String, Vec<String>),
    Exec { container_id: String, command: Vec<String> },
    Attach { container_id: String, stdin: bool },
    PortForward { pod_uid: String, port: u16 },
}

#[derive(Default)]
struct State {
    cidr: Option<Cidr>,
    sandboxes: HashMap<String, Sandbox>,
    containers: Vec<ContainerStatus>,
    specs: HashMap<String, ContainerSpec>,
    missing_images: HashSet<String>,
    failing_starts: HashSet<String>,
    calls: Vec<Call>,
    next: u32,
    /// Scripted exec results by container name; the last one repeats. Default: exit 0.
    exec_results: HashMap<String, Vec<ExecOutput>>,
    /// Containers with a live attach stream: id → (tty, stdinOnce).
    attachable: HashMap<String, (bool, bool)>,
    /// Pod ports that port_forward connects to: port → a local listener standing in for it.
    served_ports: HashMap<u16, std::net::SocketAddr>,
}

pub struct FakeRuntime {
    // Shared so that scripted attach sessions can make their container exit.
    state: std::sync::Arc<Mutex<State>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime { state: Default::default(), events: broadcast::channel(256).0 }
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed; keep going for the rest.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Pulls of `image` fail from now on (as an unreachable registry would).
    pub fn fail_pulls(&self, image: &str) {
        self.lock().missing_images.insert(image.to_string());
    }

    pub fn allow_pulls(&self, image: &str) {
        self.lock().missing_images.remove(image);
    }

    /// start_container of container `name` fails from now on.
    pub fn fail_starts(&self, name: &str) {
        self.lock().failing_starts.insert(name.to_string());
    }

    /// What exec_sync in containers named `name` returns from now on, in order; the last
    /// result repeats.
    pub fn script_exec(&self, name: &str, results: Vec<ExecOutput>) {
        self.lock().exec_results.insert(name.to_string(), results);
    }

    /// Makes a running container exit with `code`, as if its process ended.
    pub fn exit(&self, id: &str, code: i32) {
        exit_in(&self.state, &self.events, id, code);
    }

    /// Gives container `id` a live attach stream, as a container started with `stdin: true`
    /// has; its main process behaves like `cat` (see [`Runtime::attach`] below).
    pub fn make_attachable(&self, id: &str, tty: bool, stdin_once: bool) {
        self.lock().attachable.insert(id.to_string(), (tty, stdin_once));
    }

    /// port_forward to `port` (of any pod) connects to `addr` from now on; other ports fail.
    pub fn serve_port(&self, port: u16, addr: std::net::SocketAddr) {
        self.lock().served_ports.insert(port, addr);
    }

    /// The newest container named `name` in pod `uid`.
    pub fn container(&self, uid: &str, name: &str) -> Option<ContainerStatus> {
        self.lock()
            .containers
            .iter()
            .filter(|c| c.pod.uid == uid && c.name == name)
            .max_by_key(|c| c.restart_count)
            .cloned()
    }

    /// The spec a container was started with.
    pub fn spec(&self, id: &str) -> Option<ContainerSpec> {
        self.lock().specs.get(id).cloned()
    }

    pub fn sandbox_count(&self) -> usize {
        self.lock().sandboxes.len()
    }

    pub fn container_count(&self) -> usize {
        self.lock().containers.len()
    }

    pub fn pod_cidr(&self) -> Option<Cidr> {
        self.lock().cidr
    }

    /// Seeds a container as if it survived an agent restart.
    pub fn insert(&self, sandbox: Sandbox, c: ContainerStatus) {
        let mut st = self.lock();
        st.sandboxes.insert(sandbox.pod.uid.clone(), sandbox);
        st.containers.push(c);
    }

    /// A runtime with one running container `c1` (pod `default/p1`, uid `u1`, container `main`)
    /// whose log file is `log_path`: what the streaming tests talk to.
    pub fn with_running_container(log_path: &str) -> FakeRuntime {
        let rt = FakeRuntime::new();
        let pod = PodRef { uid: "u1".into(), namespace: "default".into(), name: "p1".into() };
        rt.insert(
            Sandbox { pod: pod.clone(), ip: None },
            ContainerStatus {
                id: "c1".into(),
                pod,
                name: "main".into(),
                image: ImageRef { name: "busybox".into(), id: "sha256:x".into() },
                state: ContainerState::Running { started_at: SystemTime::now() },
                restart_count: 0,
                log_path: log_path.into(),
            },
        );
        rt
    }
}

/// Marks a running container exited with `code` and tells the kubelet.
fn exit_in(state: &Mutex<State>, events: &broadcast::Sender<RuntimeEvent>, id: &str, code: i32) {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let mut uid = None;
    if let Some(c) = st.containers.iter_mut().find(|c| c.id == id) {
        let started_at = match c.state {
            ContainerState::Running { started_at } => Some(started_at),
            _ => None,
        };
        let reason = if code == 0 { "Completed" } else { "Error" };
        c.state = ContainerState::Exited {
            exit_code: code,
            reason: reason.into(),
            started_at,
            finished_at: SystemTime::now(),
        };
        uid = Some(c.pod.uid.clone());
    }
    drop(st);
    if let Some(pod_uid) = uid {
        let _ = events.send(RuntimeEvent::ContainerExited { pod_uid, container_id: id.to_string() });
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    async fn set_pod_cidr(&self, cidr: Cidr) -> Result<()> {
        let mut st = self.lock();
        st.calls.push(Call::SetPodCidr(cidr.to_string()));
        st.cidr = Some(cidr);
        Ok(())
    }

    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<ImageRef> {
        let mut st = self.lock();
        st.calls.push(Call::EnsureImage(image.to_string(), policy));
        if st.missing_images.contains(image) {
            return Err(RuntimeError::ImageNotAvailable { image: image.into(), reason: "registry unreachable".into() });
        }
        Ok(ImageRef { name: image.to_string(), id: "sha256:0123456789abcdef".into() })
    }

    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox> {
        let mut st = self.lock();
        st.calls.push(Call::RunSandbox(spec.pod.uid.clone()));
        if let Some(s) = st.sandboxes.get(&spec.pod.uid) {
            return Ok(s.clone());
        }
        let n = st.sandboxes.len() as u8 + 2;
        let ip = (!spec.host_network).then_some(IpAddr::V4(Ipv4Addr::new(10, 42, 0, n)));
        let s = Sandbox { pod: spec.pod.clone(), ip };
        st.sandboxes.insert(spec.pod.uid.clone(), s.clone());
        Ok(s)
    }

    async fn remove_sandbox(&self, pod_uid: &str) -> Result<()> {
        let mut st = self.lock();
        st.calls.push(Call::RemoveSandbox(pod_uid.to_string()));
        if st.containers.iter().any(|c| c.pod.uid == pod_uid) {
            return Err(RuntimeError::Other("sandbox still has containers".into()));
        }
        st.sandboxes.remove(pod_uid);
        Ok(())
    }

    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>> {
        Ok(self.lock().sandboxes.values().cloned().collect())
    }

    async fn start_container(&self, sandbox: &Sandbox, spec: &ContainerSpec) -> Result<String> {
        let mut st = self.lock();
        st.calls.push(Call::StartContainer {
            pod_uid: sandbox.pod.uid.clone(),
            name: spec.name.clone(),
            restart_count: spec.restart_count,
        });
        if st.failing_starts.contains(&spec.name) {
            return Err(RuntimeError::Containerd("exec: no such file".into()));
        }
        st.next += 1;
        let id = format!("c{}", st.next);
        st.containers.push(ContainerStatus {
            id: id.clone(),
            pod: spec.pod.clone(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            state: ContainerState::Running { started_at: SystemTime::now() },
            restart_count: spec.restart_count,
            log_path: spec.log_path.clone(),
        });
        st.specs.insert(id.clone(), spec.clone());
        Ok(id)
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        self.lock().calls.push(Call::StopContainer(id.to_string(), grace));
        let running =
            self.lock().containers.iter().any(|c| c.id == id && matches!(c.state, ContainerState::Running { .. }));
        if running {
            // SIGTERM honoured: 128 + 15, as a shell's exit status reports it.
            self.exit(id, 143);
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let mut st = self.lock();
        st.calls.push(Call::RemoveContainer(id.to_string()));
        st.containers.retain(|c| c.id != id);
        Ok(())
    }

    async fn list_containers(&self) -> Result<Vec<ContainerStatus>> {
        Ok(self.lock().containers.clone())
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    async fn exec_sync(&self, id: &str, cmd: &[String], _timeout: Duration) -> Result<ExecOutput> {
        let mut st = self.lock();
        st.calls.push(Call::ExecSync(id.to_string(), cmd.to_vec()));
        let Some(c) = st.containers.iter().find(|c| c.id == id) else {
            return Err(RuntimeError::NotFound(format!("container {id}")));
        };
        if !matches!(c.state, ContainerState::Running { .. }) {
            return Err(RuntimeError::Containerd(format!("container {id} is not running")));
        }
        let name = c.name.clone();
        Ok(match st.exec_results.get_mut(&name) {
            Some(q) if q.len() > 1 => q.remove(0),
            Some(q) => q.first().cloned().unwrap_or_default(),
            None => ExecOutput::default(),
        })
    }
    /// A scripted process: `echo ARGS…` prints them, `exit N` exits with N, `cat` copies stdin
    /// to stdout (and, with a tty, prints the initial size and each resize as `WxH`), `stderr TEXT` prints to stderr.
    async fn exec(&self, container_id: &str, opts: &ExecOptions) -> Result<ExecSession> {
        {
            let mut st = self.lock();
            st.calls.push(Call::Exec { container_id: container_id.to_string(), command: opts.command.clone() });
            let running =
                st.containers.iter().any(|c| c.id == container_id && matches!(c.state, ContainerState::Running { .. }));
            if !running {
                return Err(RuntimeError::NotFound(format!("container {container_id} is not running")));
            }
        }
        use bytes::Bytes;
        use tokio::sync::{mpsc, oneshot};
        let (out_tx, out_rx) = mpsc::channel::<Bytes>(16);
        let (err_tx, err_rx) = mpsc::channel::<Bytes>(16);
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(16);
        let (resize_tx, mut resize_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        let (cmd, tty, initial) = (opts.command.clone(), opts.tty, opts.initial_size);
        let err_tx = if tty { None } else { Some(err_tx) };
        tokio::spawn(async move {
            if let (true, Some(sz)) = (tty, initial) {
                let _ = out_tx.send(Bytes::from(format!("{}x{}\n", sz.width, sz.height))).await;
            }
            let arg = |i: usize| cmd.get(i).cloned().unwrap_or_default();
            let code = match arg(0).as_str() {
                "echo" => {
                    let _ = out_tx.send(Bytes::from(format!("{}\n", cmd[1..].join(" ")))).await;
                    0
                }
                "exit" => arg(1).parse().unwrap_or(1),
                "stderr" => {
                    if let Some(e) = &err_tx {
                        let _ = e.send(Bytes::from(format!("{}\n", cmd[1..].join(" ")))).await;
                    }
                    0
                }
                "cat" => loop {
                    tokio::select! {
                        _ = stop.cancelled() => break 137,
                        b = in_rx.recv() => match b {
                            Some(b) => { let _ = out_tx.send(b).await; }
                            None => break 0,
                        },
                        Some(sz) = resize_rx.recv(), if tty => {
                            let sz: crate::agent::runtime::TermSize = sz;
                            let _ = out_tx.send(Bytes::from(format!("{}x{}\n", sz.width, sz.height))).await;
                        }
                    }
                },
                _ => 127,
            };
            drop((out_tx, err_tx));
            let _ = exit_tx.send(Ok(code));
        });
        Ok(ExecSession {
            exec_id: "fake-exec".into(),
            stdin: opts.stdin.then_some(in_tx),
            stdout: out_rx,
            stderr: err_rx,
            resize: resize_tx,
            exit: exit_rx,
            kill_on_drop: cancel.drop_guard(),
        })
    }

    /// A container made attachable (or started with `stdin: true`) runs a scripted `cat` per
    /// session: stdin is echoed to stdout, and with a tty every resize prints `WxH`. When the
    /// session's stdin ends and the container is stdinOnce without a tty, its stdin closes as the
    /// real runtime's would: `cat` prints `EOF`, the output ends and the container exits 0.
    async fn attach(&self, container_id: &str, opts: &AttachOptions) -> Result<Option<AttachSession>> {
        let (tty, stdin_once) = {
            let mut st = self.lock();
            st.calls.push(Call::Attach { container_id: container_id.to_string(), stdin: opts.stdin });
            let Some(c) = st.containers.iter().find(|c| c.id == container_id) else {
                return Err(RuntimeError::NotFound(format!("container {container_id}")));
            };
            if !matches!(c.state, ContainerState::Running { .. }) {
                return Err(RuntimeError::NotFound(format!("container {container_id} is not running")));
            }
            let from_spec = st.specs.get(container_id).filter(|s| s.stdin).map(|s| (s.tty, s.stdin_once));
            match st.attachable.get(container_id).copied().or(from_spec) {
                Some(x) => x,
                None => return Ok(None),
            }
        };
        use bytes::Bytes;
        use tokio::sync::{mpsc, oneshot};
        let (out_tx, out_rx) = mpsc::channel::<Bytes>(16);
        let (err_tx, err_rx) = mpsc::channel::<Bytes>(16);
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(16);
        let (resize_tx, mut resize_rx) = mpsc::unbounded_channel::<crate::agent::runtime::TermSize>();
        let (end_tx, end_rx) = oneshot::channel();
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        let mut has_stdin = opts.stdin;
        let (state, events, id) = (self.state.clone(), self.events.clone(), container_id.to_string());
        tokio::spawn(async move {
            let _stderr = err_tx;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    b = in_rx.recv(), if has_stdin => match b {
                        Some(b) => { let _ = out_tx.send(b).await; }
                        None if stdin_once && !tty => {
                            let _ = out_tx.send(Bytes::from_static(b"EOF\n")).await;
                            break;
                        }
                        None => has_stdin = false,
                    },
                    Some(sz) = resize_rx.recv(), if tty => {
                        let _ = out_tx.send(Bytes::from(format!("{}x{}\n", sz.width, sz.height))).await;
                    }
                }
            }
            drop(out_tx);
            exit_in(&state, &events, &id, 0);
            let _ = end_tx.send(Ok(()));
        });
        Ok(Some(AttachSession {
            tty,
            stdin_once,
            stdin: opts.stdin.then_some(in_tx),
            stdout: out_rx,
            stderr: err_rx,
            resize: resize_tx,
            end: end_rx,
            detach_on_drop: cancel.drop_guard(),
        }))
    }

    async fn port_forward(&self, pod_uid: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let served = {
            let mut st = self.lock();
            st.calls.push(Call::PortForward { pod_uid: pod_uid.to_string(), port });
            st.served_ports.get(&port).copied()
        };
        match served {
            Some(addr) => tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| RuntimeError::Other(format!("connecting to {addr}: {e}"))),
            None => Err(RuntimeError::Other("the fake runtime has no pod network".into())),
        }
    }
}
