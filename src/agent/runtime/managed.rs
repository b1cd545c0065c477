//! A containerd the agent runs itself when the node has no `--container-runtime-endpoint`: its
//! own config under `<data-dir>/agent/containerd/` (own root, state, gRPC and ttrpc sockets, CRI
//! plugin off, since skiff drives containerd's native API), started as a child, restarted when it
//! dies, and stopped on shutdown. Shims are not our children and keep running across restarts,
//! so containers survive a containerd or agent restart (guide §6).

use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Errors of the managed containerd.
#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    /// The config or directories could not be written.
    #[error("containerd directory {path}: {reason}")]
    Io { path: String, reason: String },
    /// The binary could not be started.
    #[error("cannot start {binary}: {reason}; install containerd (Debian: apt-get install containerd runc) or pass --container-runtime-endpoint")]
    Spawn { binary: String, reason: String },
    /// It started but never answered.
    #[error("containerd did not answer on {socket} within {secs}s; see {log}")]
    NotReady { socket: String, secs: u64, log: String },
}

/// Paths of a managed containerd.
#[derive(Debug, Clone)]
pub struct ManagedPaths {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub ttrpc: PathBuf,
    pub log: PathBuf,
}

impl ManagedPaths {
    /// Everything under `<data-dir>/agent/containerd/`.
    pub fn new(data_dir: &Path) -> ManagedPaths {
        let dir = data_dir.join("agent").join("containerd");
        ManagedPaths {
            config: dir.join("config.toml"),
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("containerd.sock"),
            ttrpc: dir.join("containerd.sock.ttrpc"),
            log: dir.join("containerd.log"),
            dir,
        }
    }
}

fn toml_str(p: &Path) -> String {
    // TOML basic strings: escape backslashes and quotes.
    format!("\"{}\"", p.display().to_string().replace('\\', "\\\\").replace('"', "\\\""))
}

/// The containerd config (version 2 format, understood by containerd 1.5+). `oom_score` stays 0:
/// a negative value needs CAP_SYS_RESOURCE, which some hosts lack (HOST-NOTES).
pub fn config_toml(p: &ManagedPaths) -> String {
    format!(
        r#"# Written by skiff; regenerated on every start.
version = 2
root = {root}
state = {state}
oom_score = 0
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = {sock}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""

[metrics]
  address = ""
"#,
        root = toml_str(&p.root),
        state = toml_str(&p.state),
        sock = toml_str(&p.socket),
        ttrpc = toml_str(&p.ttrpc),
    )
}

/// A running managed containerd. Dropping it does not stop containerd; call [`stop`](Self::stop)
/// or cancel the shutdown token given to [`start`](Self::start).
pub struct ManagedContainerd {
    paths: ManagedPaths,
    stop: CancellationToken,
    supervisor: tokio::task::JoinHandle<()>,
    pid: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

async fn answers(socket: &Path) -> bool {
    super::client::Client::connect(socket, "skiff-probe").await.is_ok()
}

fn spawn(binary: &Path, p: &ManagedPaths) -> Result<Child, ManagedError> {
    let io = |e: std::io::Error| ManagedError::Io { path: p.log.display().to_string(), reason: e.to_string() };
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&p.log).map_err(io)?;
    let log2 = log.try_clone().map_err(io)?;
    // A stale socket from a crashed containerd would make it fail to listen.
    let _ = std::fs::remove_file(&p.socket);
    let _ = std::fs::remove_file(&p.ttrpc);
    let mut cmd = Command::new(binary);
    cmd.arg("--config")
        .arg(&p.config)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: a Ctrl-C meant for the agent must not kill containerd before
        // the agent has stopped it in order.
        .process_group(0);
    cmd.spawn().map_err(|e| ManagedError::Spawn { binary: binary.display().to_string(), reason: e.to_string() })
}

async fn wait_ready(socket: &Path, child: &mut Child, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if socket.exists() && answers(socket).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(pid, "containerd ignored SIGTERM for 10s; killing it");
    }
    let _ = child.kill().await;
}

impl ManagedContainerd {
    /// Writes the config, starts `containerd` (the binary at `binary`, or `containerd` on PATH),
    /// waits until it answers, and keeps it running until `shutdown` is cancelled.
    pub async fn start(
        data_dir: &Path,
        binary: Option<&Path>,
        shutdown: CancellationToken,
    ) -> Result<ManagedContainerd, ManagedError> {
        let paths = ManagedPaths::new(data_dir);
        let io =
            |p: &Path, e: std::io::Error| ManagedError::Io { path: p.display().to_string(), reason: e.to_string() };
        for d in [&paths.dir, &paths.root, &paths.state] {
            std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
        }
        std::fs::write(&paths.config, config_toml(&paths)).map_err(|e| io(&paths.config, e))?;
        let binary = binary.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("containerd"));
        let mut child = spawn(&binary, &paths)?;
        let timeout = Duration::from_secs(30);
        if !wait_ready(&paths.socket, &mut child, timeout).await {
            terminate(&mut child).await;
            return Err(ManagedError::NotReady {
                socket: paths.socket.display().to_string(),
                secs: timeout.as_secs(),
                log: paths.log.display().to_string(),
            });
        }
        let pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(child.id().unwrap_or(0)));
        tracing::info!(socket = %paths.socket.display(), pid = child.id(), "managed containerd ready");
        let stop = shutdown.child_token();
        let supervisor = {
            let (paths, stop, pid) = (paths.clone(), stop.clone(), pid.clone());
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(500);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            terminate(&mut child).await;
                            tracing::info!("managed containerd stopped");
                            return;
                        }
                        status = child.wait() => {
                            tracing::warn!(status = ?status, log = %paths.log.display(), "managed containerd exited; restarting");
                        }
                    }
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        match spawn(&binary, &paths) {
                            Ok(mut c) => {
                                if wait_ready(&paths.socket, &mut c, timeout).await {
                                    pid.store(c.id().unwrap_or(0), std::sync::atomic::Ordering::SeqCst);
                                    child = c;
                                    backoff = Duration::from_millis(500);
                                    tracing::info!(pid = child.id(), "managed containerd restarted");
                                    break;
                                }
                                terminate(&mut c).await;
                            }
                            Err(e) => tracing::error!(error = %e, "restarting containerd failed"),
                        }
                    }
                }
            })
        };
        Ok(ManagedContainerd { paths, stop, supervisor, pid })
    }

    /// The gRPC socket to give [`ContainerdRuntime`](super::containerd::ContainerdRuntime).
    pub fn socket(&self) -> &Path {
        &self.paths.socket
    }

    pub fn paths(&self) -> &ManagedPaths {
        &self.paths
    }

    /// PID of the current containerd process.
    pub fn pid(&self) -> u32 {
        self.pid.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops containerd (SIGTERM, SIGKILL after 10 s) and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.supervisor.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_has_private_paths_no_cri_and_no_negative_oom_score() {
        let p = ManagedPaths::new(Path::new("/var/lib/skiff"));
        let c = config_toml(&p);
        assert!(c.contains("root = \"/var/lib/skiff/agent/containerd/root\""));
        assert!(c.contains("address = \"/var/lib/skiff/agent/containerd/containerd.sock\""));
        assert!(c.contains("address = \"/var/lib/skiff/agent/containerd/containerd.sock.ttrpc\""));
        assert!(c.contains("disabled_plugins = [\"io.containerd.grpc.v1.cri\"]"));
        assert!(c.contains("oom_score = 0"));
    }
}
