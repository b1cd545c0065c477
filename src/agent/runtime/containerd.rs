//! [`ContainerdRuntime`]: the [`Runtime`] trait over containerd's native gRPC API (guide §4–§6).
//!
//! A pod is a pinned set of namespaces plus a veth on the node bridge ([`sandbox`],
//! [`crate::agent::network`]); a container is a containerd container record (labels carry the
//! pod and Kubernetes container identity, so `list_containers` rebuilds statuses after an agent
//! restart) with a task whose output goes to the CRI log through the `binary://` log URI and the
//! `skiff logger` subcommand. A container with `stdin: true` gets FIFOs owned by an attach-mode
//! logger instead ([`super::attach`]), so `kubectl attach -i` can reach its stdin.

use super::client::{call, Client, ClientError};
use super::images::{self, ImageError, SNAPSHOTTER};
use super::sandbox::{self, PodDir, SandboxRecord};
use super::spec::{self, PodContext};
use super::*;
use crate::agent::network::{NetworkError, PodNetwork};
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::v1::Status as TaskStatus;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const LABEL_RESTART_COUNT: &str = "skiff.io/restart-count";
pub const LABEL_LOG_PATH: &str = "skiff.io/log-path";
pub const LABEL_IMAGE_ID: &str = "skiff.io/image-id";
pub const LABEL_STARTED_AT: &str = "skiff.io/started-at";
pub const LABEL_OOM: &str = "skiff.io/oom-killed";
/// The FIFO directory of a container with stdin (its attach socket is inside).
pub const LABEL_ATTACH_DIR: &str = "skiff.io/attach-dir";

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const RUNC_V2: &str = "io.containerd.runc.v2";

impl From<ClientError> for RuntimeError {
    fn from(e: ClientError) -> Self {
        RuntimeError::Containerd(e.to_string())
    }
}

impl From<NetworkError> for RuntimeError {
    fn from(e: NetworkError) -> Self {
        RuntimeError::Network(e.to_string())
    }
}

impl From<sandbox::SandboxError> for RuntimeError {
    fn from(e: sandbox::SandboxError) -> Self {
        RuntimeError::Other(e.to_string())
    }
}

impl From<ImageError> for RuntimeError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Client(c) => c.into(),
            other => RuntimeError::Other(other.to_string()),
        }
    }
}

/// How to build a [`ContainerdRuntime`].
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// containerd's gRPC socket (`--container-runtime-endpoint`, or [`super::managed`]'s).
    pub socket: PathBuf,
    /// containerd namespace holding this node's images and containers.
    pub namespace: String,
    /// The node's data dir; the runtime uses `<data-dir>/agent/{images,run,network}`.
    pub data_dir: PathBuf,
    /// Parent cgroup of pods: containers go to `/<cgroup_root>/pod<uid>/<id>`.
    pub cgroup_root: String,
    /// Network namespace the node lives in (bridge, forwarding, host-network pods). `None`: the
    /// agent process's own. Tests set it to a namespace they created.
    pub node_netns: Option<PathBuf>,
    /// Program the shim runs as the log writer (`<it> logger --path FILE`). `None`: this executable.
    pub logger_binary: Option<PathBuf>,
}

impl RuntimeOptions {
    pub fn new(socket: &Path, namespace: &str, data_dir: &Path, cgroup_root: &str) -> RuntimeOptions {
        RuntimeOptions {
            socket: socket.to_path_buf(),
            namespace: namespace.to_string(),
            data_dir: data_dir.to_path_buf(),
            cgroup_root: cgroup_root.to_string(),
            node_netns: None,
            logger_binary: None,
        }
    }
}

struct Inner {
    client: Client,
    opts: RuntimeOptions,
    run_dir: PathBuf,
    images_dir: PathBuf,
    network: PodNetwork,
    logger: PathBuf,
    events: tokio::sync::broadcast::Sender<RuntimeEvent>,
    /// Containers an OOM event was seen for (de-duplicates the TaskOOM flood, guide §8).
    oom_seen: Mutex<HashSet<String>>,
    /// container id → pod uid, for events.
    pod_of: Mutex<HashMap<String, String>>,
    /// Serialises sandbox creation and removal per node (they are short).
    sandbox_lock: tokio::sync::Mutex<()>,
    stop: tokio_util::sync::CancellationToken,
}

/// The containerd-backed runtime. Cheap to clone.
#[derive(Clone)]
pub struct ContainerdRuntime {
    inner: Arc<Inner>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters and `/` stay).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The `binary://` log URI. containerd's shim turns each query key and its first value into
/// arguments in Go map order (random), so exactly one key is used: `?logger=--path=FILE` runs
/// `<binary> logger --path=FILE`.
pub fn log_uri(binary: &Path, log_path: &Path) -> String {
    format!("binary://{}?logger={}", pct(&binary.display().to_string()), pct(&format!("--path={}", log_path.display())))
}

/// A containerd container id: letters, digits and `-`, at most 76 characters (guide §4).
pub fn container_id(spec: &ContainerSpec) -> String {
    let name: String = spec.name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
    let name = name.trim_matches('-');
    let rand = &uuid::Uuid::new_v4().simple().to_string()[..16];
    if name.is_empty() {
        rand.to_string()
    } else {
        format!("{name}-{}-{rand}", spec.restart_count)
    }
}

fn ts_to_system(t: &prost_types::Timestamp) -> Option<SystemTime> {
    // containerd reports year 1 (negative seconds) for "not yet".
    if t.seconds <= 0 {
        return None;
    }
    Some(SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanos.max(0) as u32))
}

/// Kubernetes' exit reason: OOMKilled if an OOM was seen, else Completed (0) or Error.
pub fn exit_reason(code: i32, oom: bool) -> &'static str {
    if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

fn nofile_max() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_max
    } else {
        1024
    }
}

impl ContainerdRuntime {
    /// Connects with default options (no node netns override, this executable as logger).
    pub async fn connect(
        socket: &Path,
        namespace: &str,
        data_dir: &Path,
        cgroup_root: &str,
    ) -> Result<ContainerdRuntime> {
        Self::new(RuntimeOptions::new(socket, namespace, data_dir, cgroup_root)).await
    }

    /// Connects to containerd, loads the IPAM state and starts the event loop. Does not import
    /// images: call [`import_images`](Self::import_images) next.
    pub async fn new(opts: RuntimeOptions) -> Result<ContainerdRuntime> {
        let client = Client::connect(&opts.socket, &opts.namespace).await?;
        let agent = opts.data_dir.join("agent");
        let run_dir = agent.join("run");
        std::fs::create_dir_all(run_dir.join("pods"))
            .map_err(|e| RuntimeError::Other(format!("create {}: {e}", run_dir.display())))?;
        let network = PodNetwork::new(&agent.join("network"), opts.node_netns.clone())?;
        let logger = match &opts.logger_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .map_err(|e| RuntimeError::Other(format!("cannot find the skiff executable for the logger: {e}")))?,
        };
        let (events, _) = tokio::sync::broadcast::channel(256);
        let inner = Arc::new(Inner {
            client,
            images_dir: agent.join("images"),
            run_dir,
            network,
            logger,
            events,
            oom_seen: Mutex::new(HashSet::new()),
            pod_of: Mutex::new(HashMap::new()),
            sandbox_lock: tokio::sync::Mutex::new(()),
            stop: tokio_util::sync::CancellationToken::new(),
            opts,
        });
        // Containers already labelled OOM-killed (from before a restart) stay de-duplicated.
        let rt = ContainerdRuntime { inner };
        if let Ok(list) = rt.list_records().await {
            let mut seen = rt.inner.oom_seen.lock().map_err(|_| RuntimeError::Other("lock poisoned".into()))?;
            let mut pods = rt.inner.pod_of.lock().map_err(|_| RuntimeError::Other("lock poisoned".into()))?;
            for c in list {
                if c.labels.get(LABEL_OOM).is_some_and(|v| v == "true") {
                    seen.insert(c.id.clone());
                }
                if let Some(uid) = c.labels.get(LABEL_POD_UID) {
                    pods.insert(c.id.clone(), uid.clone());
                }
            }
        }
        // An address whose pod directory is gone belongs to no sandbox any more.
        let pods = rt.inner.run_dir.join("pods");
        match rt.inner.network.release_stale(|uid| pods.join(uid).is_dir()) {
            Ok(gone) if !gone.is_empty() => tracing::info!(pods = ?gone, "released pod IPs of vanished sandboxes"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "releasing stale pod IPs failed"),
        }
        let weak = Arc::downgrade(&rt.inner);
        let stop = rt.inner.stop.clone();
        tokio::spawn(event_loop(weak, stop));
        Ok(rt)
    }

    /// Imports every `<data-dir>/agent/images/*.tar`; returns the image names now present.
    pub async fn import_images(&self) -> Vec<String> {
        images::import_dir(&self.inner.client, &self.inner.images_dir).await
    }

    /// Imports one OCI-layout or docker-archive tarball.
    pub async fn import_image_tar(&self, path: &Path) -> Result<Vec<String>> {
        Ok(images::import_tar(&self.inner.client, path).await?)
    }

    /// The containerd client (namespace-bound), for the kubelet's exec/logs paths.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The pod network (pod IPs, bridge).
    pub fn network(&self) -> &PodNetwork {
        &self.inner.network
    }

    fn attach_dir(&self, container_id: &str) -> PathBuf {
        super::attach::dir_for(&self.inner.run_dir, container_id)
    }

    fn pod_dir(&self, uid: &str) -> PodDir {
        PodDir::new(&self.inner.run_dir, uid)
    }

    async fn list_records(&self) -> Result<Vec<api::Container>> {
        let c = &self.inner.client;
        let r = c
            .containers()
            .list(c.req(api::ListContainersRequest { filters: vec![] }))
            .await
            .map_err(call("list containers"))?;
        Ok(r.into_inner().containers.into_iter().filter(|c| c.labels.contains_key(LABEL_POD_UID)).collect())
    }

    async fn set_container_label(&self, id: &str, key: &str, value: &str) -> Result<()> {
        let c = &self.inner.client;
        let container = api::Container {
            id: id.to_string(),
            labels: [(key.to_string(), value.to_string())].into(),
            ..Default::default()
        };
        let mask = prost_types::FieldMask { paths: vec![format!("labels.{key}")] };
        c.containers()
            .update(c.req(api::UpdateContainerRequest { container: Some(container), update_mask: Some(mask) }))
            .await
            .map_err(call("update container labels"))?;
        Ok(())
    }

    async fn task(&self, id: &str) -> Result<Option<containerd_client::types::v1::Process>> {
        let c = &self.inner.client;
        match c.tasks().get(c.req(api::GetRequest { container_id: id.to_string(), exec_id: String::new() })).await {
            Ok(r) => Ok(r.into_inner().process),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(call("get task")(s).into()),
        }
    }

    async fn kill(&self, id: &str, signal: nix::sys::signal::Signal) -> Result<()> {
        let c = &self.inner.client;
        let r = api::KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal: signal as u32,
            all: false,
        };
        match c.tasks().kill(c.req(r)).await {
            Ok(_) => Ok(()),
            // Already gone: that is what we wanted.
            Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::FailedPrecondition) => Ok(()),
            Err(s) => Err(call("kill task")(s).into()),
        }
    }

    async fn wait(&self, id: &str, timeout: Duration) -> Result<bool> {
        let c = &self.inner.client;
        let mut tasks = c.tasks();
        let fut = tasks.wait(c.req(api::WaitRequest { container_id: id.to_string(), exec_id: String::new() }));
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => Ok(true),
            Ok(Err(s)) => Err(call("wait task")(s).into()),
        }
    }

    /// Removes a rootfs snapshot; a missing one is fine.
    async fn remove_snapshot(&self, key: &str) -> Result<()> {
        let c = &self.inner.client;
        let r = snap::RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: key.to_string() };
        match c.snapshots().remove(c.req(r)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(call("remove snapshot")(s).into()),
        }
    }

    async fn delete_everything(&self, id: &str) -> Result<()> {
        let c = &self.inner.client;
        match c.tasks().delete(c.req(api::DeleteTaskRequest { container_id: id.to_string() })).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(call("delete task")(s).into()),
        }
        match c.containers().delete(c.req(api::DeleteContainerRequest { id: id.to_string() })).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(call("delete container")(s).into()),
        }
        self.remove_snapshot(id).await?;
        // The task is gone, so the shim has closed the FIFOs; the logger removes only its socket.
        let dir = self.attach_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(container = id, dir = %dir.display(), error = %e, "removing the FIFO directory failed")
            }
        }
        if let Ok(mut s) = self.inner.oom_seen.lock() {
            s.remove(id);
        }
        if let Ok(mut p) = self.inner.pod_of.lock() {
            p.remove(id);
        }
        Ok(())
    }

    async fn create_and_start(&self, id: &str, sandbox: &Sandbox, spec: &ContainerSpec) -> Result<()> {
        let c = &self.inner.client;
        let img = images::resolve(c, &spec.image.name).await.map_err(|e| match e {
            ImageError::NotFound(n) => RuntimeError::ImageNotAvailable {
                image: n,
                reason: "not in containerd; call ensure_image first".into(),
            },
            other => other.into(),
        })?;
        let lease = c.lease().await?;
        let res = async {
            let parent = images::unpack(c, &img, &lease).await?;
            let prep = snap::PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.to_string(),
                parent,
                labels: HashMap::new(),
            };
            let mounts = c
                .snapshots()
                .prepare(c.leased(prep, &lease))
                .await
                .map_err(call("prepare rootfs snapshot"))?
                .into_inner()
                .mounts;
            let pod = self.pod_dir(&sandbox.pod.uid);
            let record = pod.read_record();
            let host_network = record.as_ref().is_some_and(|r| r.host_network);
            let ctx = PodContext {
                netns: if host_network { self.inner.opts.node_netns.clone() } else { Some(pod.netns()) },
                utsns: if host_network { None } else { Some(pod.utsns()) },
                ipcns: Some(pod.ipcns()),
                hosts_file: pod.hosts(),
                resolv_file: pod.resolv(),
                hostname_file: pod.hostname(),
                cgroups_path: format!("/{}/pod{}/{}", self.inner.opts.cgroup_root, spec.pod.uid, id),
                nofile_max: nofile_max(),
            };
            let oci = spec::build(spec, &img.config, &ctx).map_err(|e| RuntimeError::Other(e.to_string()))?;
            let oci_bytes = serde_json::to_vec(&oci).map_err(|e| RuntimeError::Other(e.to_string()))?;
            let mut labels: HashMap<String, String> = [
                (LABEL_POD_UID, spec.pod.uid.clone()),
                (LABEL_POD_NAME, spec.pod.name.clone()),
                (LABEL_POD_NAMESPACE, spec.pod.namespace.clone()),
                (LABEL_CONTAINER_NAME, spec.name.clone()),
                (LABEL_RESTART_COUNT, spec.restart_count.to_string()),
                (LABEL_LOG_PATH, spec.log_path.display().to_string()),
                (LABEL_IMAGE_ID, spec.image.id.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            if spec.stdin {
                labels.insert(LABEL_ATTACH_DIR.into(), self.attach_dir(id).display().to_string());
            }
            let container = api::Container {
                id: id.to_string(),
                labels,
                image: spec.image.name.clone(),
                runtime: Some(api::container::Runtime { name: RUNC_V2.into(), options: None }),
                spec: Some(prost_types::Any { type_url: SPEC_TYPE_URL.into(), value: oci_bytes }),
                snapshotter: SNAPSHOTTER.into(),
                snapshot_key: id.to_string(),
                ..Default::default()
            };
            c.containers()
                .create(c.leased(api::CreateContainerRequest { container: Some(container) }, &lease))
                .await
                .map_err(call("create container"))?;
            Ok::<_, RuntimeError>(mounts)
        }
        .await;
        // From here the container record keeps the snapshot alive (guide §4).
        lease.release().await;
        let mounts = res?;
        if let Ok(mut p) = self.inner.pod_of.lock() {
            p.insert(id.to_string(), spec.pod.uid.clone());
        }
        if let Some(dir) = spec.log_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| RuntimeError::Other(format!("create log dir {}: {e}", dir.display())))?;
        }
        // stdin: FIFOs whose far ends an attach-mode logger will own (order: attach.rs header).
        let attach_io = if spec.stdin { Some(super::attach::prepare(&self.attach_dir(id), spec.tty)?) } else { None };
        let create = match &attach_io {
            Some(io) => api::CreateTaskRequest {
                container_id: id.to_string(),
                rootfs: mounts,
                stdin: io.stdin_path.display().to_string(),
                stdout: io.stdout_path.display().to_string(),
                // The 1.6 shim ignores stderr with a terminal (the pty merges the streams).
                stderr: io.stderr_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                terminal: spec.tty,
                ..Default::default()
            },
            None => {
                let uri = log_uri(&self.inner.logger, &spec.log_path);
                api::CreateTaskRequest {
                    container_id: id.to_string(),
                    rootfs: mounts,
                    stdout: uri.clone(),
                    stderr: uri,
                    terminal: spec.tty,
                    ..Default::default()
                }
            }
        };
        c.tasks().create(c.req(create)).await.map_err(call("create task"))?;
        if let Some(io) = attach_io {
            let pid = io.spawn_logger(&self.inner.logger, &spec.log_path, spec.tty, spec.stdin_once)?;
            tracing::debug!(container = id, logger_pid = pid, "attach logger started");
        }
        c.tasks()
            .start(c.req(api::StartRequest { container_id: id.to_string(), exec_id: String::new() }))
            .await
            .map_err(call("start task"))?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        if let Err(e) = self.set_container_label(id, LABEL_STARTED_AT, &now).await {
            tracing::warn!(container = id, error = %e, "recording start time failed");
        }
        Ok(())
    }

    fn status_of(&self, c: &api::Container, task: Option<&containerd_client::types::v1::Process>) -> ContainerStatus {
        let l = &c.labels;
        let get = |k: &str| l.get(k).cloned().unwrap_or_default();
        let started_at = l
            .get(LABEL_STARTED_AT)
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| SystemTime::from(t.with_timezone(&chrono::Utc)));
        let oom = l.get(LABEL_OOM).is_some_and(|v| v == "true")
            || self.inner.oom_seen.lock().map(|s| s.contains(&c.id)).unwrap_or(false);
        let state = match task {
            None => ContainerState::Unknown,
            Some(t) => match TaskStatus::try_from(t.status).unwrap_or(TaskStatus::Unknown) {
                TaskStatus::Created => ContainerState::Created,
                TaskStatus::Running | TaskStatus::Paused | TaskStatus::Pausing => {
                    ContainerState::Running { started_at: started_at.unwrap_or_else(SystemTime::now) }
                }
                TaskStatus::Stopped => {
                    let code = t.exit_status as i32;
                    ContainerState::Exited {
                        exit_code: code,
                        reason: exit_reason(code, oom).to_string(),
                        started_at,
                        finished_at: t.exited_at.as_ref().and_then(ts_to_system).unwrap_or_else(SystemTime::now),
                    }
                }
                TaskStatus::Unknown => ContainerState::Unknown,
            },
        };
        ContainerStatus {
            id: c.id.clone(),
            pod: PodRef { uid: get(LABEL_POD_UID), namespace: get(LABEL_POD_NAMESPACE), name: get(LABEL_POD_NAME) },
            name: get(LABEL_CONTAINER_NAME),
            image: ImageRef { name: c.image.clone(), id: get(LABEL_IMAGE_ID) },
            state,
            restart_count: l.get(LABEL_RESTART_COUNT).and_then(|s| s.parse().ok()).unwrap_or(0),
            log_path: PathBuf::from(get(LABEL_LOG_PATH)),
        }
    }
}

/// Removes `/sys/fs/cgroup/<controller>/<root>/pod<uid>` in every hierarchy (runc leaves the
/// parents it created for `cgroupsPath`, guide §8). Deepest directories first; rmdir only, so a
/// cgroup with processes left stays and is reported.
pub fn remove_pod_cgroups(cgroup_root: &str, uid: &str) {
    fn rmdir_tree(p: &Path) -> std::io::Result<()> {
        for e in std::fs::read_dir(p)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                rmdir_tree(&e.path())?;
            }
        }
        std::fs::remove_dir(p)
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    let mut bases: Vec<PathBuf> = vec![PathBuf::from("/sys/fs/cgroup")];
    bases.extend(hierarchies.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
    for base in bases {
        let pod = base.join(cgroup_root).join(format!("pod{uid}"));
        if pod.is_dir() {
            if let Err(e) = rmdir_tree(&pod) {
                tracing::warn!(cgroup = %pod.display(), error = %e, "removing pod cgroup failed");
            }
        }
    }
}

#[async_trait]
impl Runtime for ContainerdRuntime {
    /// Added by the kubelet for probes and hooks; the code lives in `exec_sync.rs`.
    async fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecOutput> {
        super::exec_sync::exec_sync(&self.inner.client, &self.inner.run_dir, id, cmd, timeout).await
    }

    async fn set_pod_cidr(&self, cidr: Cidr) -> Result<()> {
        Ok(self.inner.network.set_pod_cidr(cidr).await?)
    }

    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<ImageRef> {
        let name = names::normalize(image)
            .map_err(|e| RuntimeError::ImageNotAvailable { image: image.to_string(), reason: e.to_string() })?;
        let c = &self.inner.client;
        let local = images::get_image(c, &name).await?;
        match (local, policy) {
            (Some(target), PullPolicy::IfNotPresent | PullPolicy::Never) => {
                // Present but perhaps never unpacked (imported by another client): unpack now.
                let img = images::resolve(c, &name).await?;
                let lease = c.lease().await?;
                let r = images::unpack(c, &img, &lease).await;
                lease.release().await;
                r?;
                Ok(ImageRef { name, id: target.digest })
            }
            (None, PullPolicy::Never) => Err(RuntimeError::ImageNotAvailable {
                image: name,
                reason: "not present and imagePullPolicy is Never; put the image tar in <data-dir>/agent/images".into(),
            }),
            _ => {
                let id = super::pull::pull(c, &name)
                    .await
                    .map_err(|e| RuntimeError::ImageNotAvailable { image: name.clone(), reason: e.to_string() })?;
                Ok(ImageRef { name, id })
            }
        }
    }

    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox> {
        let _g = self.inner.sandbox_lock.lock().await;
        let uid = &spec.pod.uid;
        let pod = self.pod_dir(uid);
        if let Some(r) = pod.read_record() {
            if pod.pinned(r.host_network) {
                return Ok(Sandbox { pod: r.pod(), ip: r.ip });
            }
        }
        std::fs::create_dir_all(&pod.dir)
            .map_err(|e| RuntimeError::Other(format!("create {}: {e}", pod.dir.display())))?;
        let res = async {
            sandbox::pin_namespaces(&pod, uid, &spec.hostname, spec.host_network).await?;
            let ip = if spec.host_network {
                None
            } else {
                Some(IpAddr::V4(self.inner.network.attach(uid, &pod.netns()).await?.ip))
            };
            sandbox::write_pod_files(&pod, spec, ip)?;
            let record = SandboxRecord {
                uid: uid.clone(),
                namespace: spec.pod.namespace.clone(),
                name: spec.pod.name.clone(),
                hostname: spec.hostname.clone(),
                host_network: spec.host_network,
                ip,
            };
            pod.write_record(&record)?;
            Ok::<_, RuntimeError>(Sandbox { pod: spec.pod.clone(), ip })
        }
        .await;
        if let Err(e) = &res {
            tracing::warn!(pod_uid = %uid, error = %e, "sandbox creation failed; cleaning up");
            let _ = self.inner.network.detach(uid).await;
            let _ = sandbox::unpin_and_remove(&pod);
        }
        res
    }

    async fn remove_sandbox(&self, pod_uid: &str) -> Result<()> {
        let _g = self.inner.sandbox_lock.lock().await;
        let pod = self.pod_dir(pod_uid);
        self.inner.network.detach(pod_uid).await?;
        sandbox::unpin_and_remove(&pod)?;
        remove_pod_cgroups(&self.inner.opts.cgroup_root, pod_uid);
        Ok(())
    }

    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>> {
        Ok(sandbox::list_records(&self.inner.run_dir).into_iter().map(|r| Sandbox { pod: r.pod(), ip: r.ip }).collect())
    }

    async fn start_container(&self, sandbox: &Sandbox, spec: &ContainerSpec) -> Result<String> {
        let id = container_id(spec);
        match self.create_and_start(&id, sandbox, spec).await {
            Ok(()) => Ok(id),
            Err(e) => {
                tracing::warn!(container = %id, pod_uid = %spec.pod.uid, error = %e, "container start failed; removing it");
                if let Err(ce) = self.delete_everything(&id).await {
                    tracing::warn!(container = %id, error = %ce, "cleanup after failed start failed");
                }
                Err(e)
            }
        }
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let Some(t) = self.task(id).await? else { return Ok(()) };
        if t.status == TaskStatus::Stopped as i32 {
            return Ok(());
        }
        self.kill(id, nix::sys::signal::Signal::SIGTERM).await?;
        if self.wait(id, grace).await? {
            return Ok(());
        }
        // PID 1 without a SIGTERM handler ignores it (guide §5).
        self.kill(id, nix::sys::signal::Signal::SIGKILL).await?;
        if !self.wait(id, Duration::from_secs(30)).await? {
            tracing::error!(container = id, "container did not exit 30s after SIGKILL");
            return Err(RuntimeError::Containerd(format!(
                "container {id} did not exit after SIGKILL; check its shim and runc"
            )));
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        if let Some(t) = self.task(id).await? {
            if t.status != TaskStatus::Stopped as i32 && t.status != TaskStatus::Created as i32 {
                return Err(RuntimeError::Other(format!("container {id} is still running; stop it first")));
            }
            if t.status == TaskStatus::Created as i32 {
                self.kill(id, nix::sys::signal::Signal::SIGKILL).await?;
                let _ = self.wait(id, Duration::from_secs(10)).await?;
            }
        }
        self.delete_everything(id).await
    }

    async fn list_containers(&self) -> Result<Vec<ContainerStatus>> {
        let c = &self.inner.client;
        let records = self.list_records().await?;
        // Tasks.List ignores its filter in 1.6 (guide §6): filter here.
        let tasks =
            c.tasks().list(c.req(api::ListTasksRequest { filter: String::new() })).await.map_err(call("list tasks"))?;
        let tasks: HashMap<String, containerd_client::types::v1::Process> =
            // containerd 1.6 leaves `container_id` empty here and puts the container id in `id`
            // (the init process's id).
            tasks
                .into_inner()
                .tasks
                .into_iter()
                .map(|t| (if t.container_id.is_empty() { t.id.clone() } else { t.container_id.clone() }, t))
                .collect();
        Ok(records.iter().map(|r| self.status_of(r, tasks.get(&r.id))).collect())
    }

    fn events(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    async fn exec(&self, container_id: &str, opts: &ExecOptions) -> Result<ExecSession> {
        super::exec::exec(&self.inner.client, &self.inner.run_dir, container_id, opts).await
    }

    async fn attach(&self, container_id: &str, opts: &AttachOptions) -> Result<Option<AttachSession>> {
        let c = &self.inner.client;
        let rec = match c.containers().get(c.req(api::GetContainerRequest { id: container_id.to_string() })).await {
            Ok(r) => r.into_inner().container.ok_or_else(|| RuntimeError::NotFound(container_id.to_string()))?,
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(RuntimeError::NotFound(container_id.to_string()))
            }
            Err(s) => return Err(call("get container")(s).into()),
        };
        // Only containers started with stdin have a live stream; the rest are followed in their
        // log file by the caller.
        let Some(dir) = rec.labels.get(LABEL_ATTACH_DIR) else { return Ok(None) };
        let control =
            Arc::new(super::attach::ContainerdTask { client: c.clone(), container_id: container_id.to_string() });
        super::attach::connect(Path::new(dir), *opts, control).await.map(Some)
    }

    async fn port_forward(&self, pod_uid: &str, port: u16) -> Result<tokio::net::TcpStream> {
        let pod = self.pod_dir(pod_uid);
        let record = pod.read_record().ok_or_else(|| RuntimeError::NotFound(format!("sandbox of pod {pod_uid}")))?;
        // A host-network pod listens in the node's namespace.
        let netns = if record.host_network { self.inner.opts.node_netns.clone() } else { Some(pod.netns()) };
        super::exec::connect_in_netns(netns, port).await
    }
}

/// Follows `/tasks/{start,exit,oom}` for this namespace and turns them into [`RuntimeEvent`]s.
/// Reconnects after containerd restarts (events are not stored, so the kubelet's periodic resync
/// covers the gap, guide §5).
async fn event_loop(inner: std::sync::Weak<Inner>, stop: tokio_util::sync::CancellationToken) {
    loop {
        let Some(rt) = inner.upgrade().map(|inner| ContainerdRuntime { inner }) else { return };
        let ns = rt.inner.client.namespace().to_string();
        // The namespace header does not scope a subscription: filter on it (guide §5).
        let filters = ["/tasks/exit", "/tasks/oom", "/tasks/start"]
            .iter()
            .map(|t| format!("topic==\"{t}\",namespace==\"{ns}\""))
            .collect();
        let c = rt.inner.client.clone();
        let sub = c.events().subscribe(c.req(api::SubscribeRequest { filters })).await;
        drop(rt);
        match sub {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = stream.message() => m,
                    };
                    match msg {
                        Ok(Some(env)) => {
                            let Some(rt) = inner.upgrade().map(|inner| ContainerdRuntime { inner }) else { return };
                            handle_event(&rt, env).await;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e.message(), "containerd event stream broke; resubscribing");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e.message(), "subscribing to containerd events failed; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn handle_event(rt: &ContainerdRuntime, env: containerd_client::types::Envelope) {
    let Some(any) = env.event else { return };
    let pod_uid = |cid: &str| rt.inner.pod_of.lock().ok().and_then(|m| m.get(cid).cloned());
    match env.topic.as_str() {
        "/tasks/exit" => {
            // prost's Any::to_msg wants a leading '/'; containerd sends the bare name (guide §5).
            let Ok(e) = containerd_client::events::TaskExit::decode(any.value.as_slice()) else { return };
            // Only the init process (its id is the container id) ends the container.
            if !e.id.is_empty() && e.id != e.container_id {
                return;
            }
            if let Some(uid) = pod_uid(&e.container_id) {
                let _ =
                    rt.inner.events.send(RuntimeEvent::ContainerExited { pod_uid: uid, container_id: e.container_id });
            }
        }
        "/tasks/start" => {
            let Ok(e) = containerd_client::events::TaskStart::decode(any.value.as_slice()) else { return };
            if let Some(uid) = pod_uid(&e.container_id) {
                let _ =
                    rt.inner.events.send(RuntimeEvent::ContainerStarted { pod_uid: uid, container_id: e.container_id });
            }
        }
        "/tasks/oom" => {
            let Ok(e) = containerd_client::events::TaskOom::decode(any.value.as_slice()) else { return };
            let first = rt.inner.oom_seen.lock().map(|mut s| s.insert(e.container_id.clone())).unwrap_or(false);
            if first {
                tracing::info!(container = %e.container_id, "container hit its memory limit (OOM)");
                // Persist it so the reason survives an agent restart.
                if let Err(err) = rt.set_container_label(&e.container_id, LABEL_OOM, "true").await {
                    tracing::warn!(container = %e.container_id, error = %err, "recording OOM failed");
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_uri_has_one_query_key_so_argument_order_is_fixed() {
        let u = log_uri(Path::new("/usr/bin/skiff"), Path::new("/var/log/pods/ns_p_u/c/0.log"));
        assert_eq!(u, "binary:///usr/bin/skiff?logger=--path%3D/var/log/pods/ns_p_u/c/0.log");
    }

    #[test]
    fn exit_reasons_follow_kubernetes() {
        assert_eq!(exit_reason(0, false), "Completed");
        assert_eq!(exit_reason(1, false), "Error");
        assert_eq!(exit_reason(137, true), "OOMKilled");
    }

    #[test]
    fn container_ids_are_valid_for_containerd() {
        let spec = ContainerSpec {
            pod: PodRef { uid: "u".into(), namespace: "n".into(), name: "p".into() },
            name: "My_Web.Server".repeat(10),
            image: ImageRef { name: "x".into(), id: "y".into() },
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
            log_path: "/x".into(),
            restart_count: 3,
        };
        let id = container_id(&spec);
        assert!(id.len() <= 76);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_ne!(id, container_id(&spec));
    }
}
