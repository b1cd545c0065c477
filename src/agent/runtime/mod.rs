//! The container runtime layer: drives containerd over its own gRPC API (no CRI, no pause image).
//!
//! The kubelet talks to it only through the [`Runtime`] trait below (a CRI-shaped interface in
//! pods and containers), so the kubelet's logic is tested against a recording fake.

pub mod attach;
pub mod attach_proto;
pub mod client;
pub mod containerd;
pub mod exec;
pub mod exec_sync;
pub mod images;
pub mod logger;
pub mod managed;
pub mod names;
pub mod node;
pub mod pull;
pub mod sandbox;
pub mod spec;

pub use attach::{AttachOptions, AttachSession};
pub use containerd::{ContainerdRuntime, RuntimeOptions};
pub use exec::{ExecOptions, ExecSession, TermSize};
pub use managed::ManagedContainerd;

use async_trait::async_trait;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::config::Cidr;

/// Identifies a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DnsConfig {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// The pod-level environment every container of a pod shares (network, UTS, IPC namespaces).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    pub pod: PodRef,
    pub hostname: String,
    /// Share the node's network namespace (`spec.hostNetwork`).
    pub host_network: bool,
    pub dns: DnsConfig,
    /// Extra /etc/hosts entries (`spec.hostAliases`): (ip, names).
    pub host_aliases: Vec<(String, Vec<String>)>,
}

/// A running sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub pod: PodRef,
    /// The pod IP (`None` with host networking: the pod uses the node IP).
    pub ip: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    /// Fully qualified name, e.g. `docker.io/library/busybox:latest`.
    pub name: String,
    /// Digest of the image (manifest or index) as `sha256:…`.
    pub id: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub container_path: String,
    pub host_path: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub cpu_request_millis: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
}

/// One container to create in a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub pod: PodRef,
    pub name: String,
    pub image: ImageRef,
    /// `command` overrides the image entrypoint, `args` its cmd (Kubernetes rules).
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    pub resources: Resources,
    pub tty: bool,
    /// Give the main process a stdin that `kubectl attach -i` can write to (`stdin: true`).
    pub stdin: bool,
    /// `stdinOnce`: close that stdin when the first attached client ends its input.
    pub stdin_once: bool,
    pub privileged: bool,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    /// CRI-format log file the container's output is appended to.
    pub log_path: PathBuf,
    /// Kubernetes restart count of this container (kept as a label).
    pub restart_count: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContainerState {
    Created,
    Running { started_at: SystemTime },
    Exited { exit_code: i32, reason: String, started_at: Option<SystemTime>, finished_at: SystemTime },
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStatus {
    /// Runtime id (containerd container id).
    pub id: String,
    pub pod: PodRef,
    pub name: String,
    pub image: ImageRef,
    pub state: ContainerState,
    pub restart_count: u32,
    pub log_path: PathBuf,
}

/// What a command run with [`Runtime::exec_sync`] produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    /// Empty when the runtime merges stderr into stdout (containerd's `file://` IO does).
    pub stderr: Vec<u8>,
    /// The command ran past its timeout and was killed (`exit_code` is then meaningless).
    pub timed_out: bool,
}

/// Something changed for a container; the kubelet re-syncs that pod.
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeEvent {
    ContainerExited { pod_uid: String, container_id: String },
    ContainerStarted { pod_uid: String, container_id: String },
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image is not present and the pull policy (or an unreachable registry) prevents getting it.
    #[error("image {image:?} not available: {reason}")]
    ImageNotAvailable { image: String, reason: String },
    /// The pod's network could not be set up (for example no pod CIDR yet).
    #[error("pod network: {0}")]
    Network(String),
    /// containerd refused or failed a call.
    #[error("containerd: {0}")]
    Containerd(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// What the kubelet needs from a container runtime.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Sets the node's pod CIDR; sandboxes get IPs from it. Called once the Node has `spec.podCIDR`.
    async fn set_pod_cidr(&self, cidr: Cidr) -> Result<()>;
    /// Makes the image available locally according to the policy.
    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<ImageRef>;
    /// Creates the pod's namespaces and network. Idempotent: returns the existing sandbox.
    async fn run_sandbox(&self, spec: &SandboxSpec) -> Result<Sandbox>;
    /// Tears down the pod's network and namespaces. Containers must be removed first.
    async fn remove_sandbox(&self, pod_uid: &str) -> Result<()>;
    /// Sandboxes that exist (after an agent restart, to re-adopt or clean them).
    async fn list_sandboxes(&self) -> Result<Vec<Sandbox>>;
    /// Creates and starts a container in the sandbox; returns its runtime id.
    async fn start_container(&self, sandbox: &Sandbox, spec: &ContainerSpec) -> Result<String>;
    /// SIGTERM, then SIGKILL after `grace`. Returns once the container has exited.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()>;
    /// Removes a stopped container and its snapshot.
    async fn remove_container(&self, id: &str) -> Result<()>;
    /// Every container this node's namespace holds.
    async fn list_containers(&self) -> Result<Vec<ContainerStatus>>;
    /// Subscribe to container lifecycle events.
    fn events(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent>;
    /// Runs `cmd` in running container `id` with the container's own process settings (env,
    /// user, cwd), waits at most `timeout` (then kills it), and returns its exit code and
    /// output (CRI `ExecSync`). For exec probes and lifecycle hooks.
    async fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecOutput>;
    /// Runs a process in a running container (`kubectl exec`); see [`ExecSession`] for its
    /// streams. Dropping the session before the process exits kills it.
    async fn exec(&self, container_id: &str, opts: &ExecOptions) -> Result<ExecSession>;
    /// A TCP connection to `127.0.0.1:port` inside the pod's network namespace
    /// (`kubectl port-forward`).
    async fn port_forward(&self, pod_uid: &str, port: u16) -> Result<tokio::net::TcpStream>;
    /// Attaches to the main process of running container `container_id` (`kubectl attach`),
    /// for containers whose stdio the runtime relays live (those started with `stdin: true`).
    /// `Ok(None)`: the runtime has no live stream for this container, and the caller follows
    /// its log file instead (output only).
    async fn attach(&self, _container_id: &str, _opts: &AttachOptions) -> Result<Option<AttachSession>> {
        Ok(None)
    }
}
