//! The end-to-end harness: whole skiff nodes, each in a network namespace this test creates, with
//! its own data dir, its own containerd (started by skiff), its own containerd namespace and its
//! own cgroup root, driven with the real `skiff` binary and the real `kubectl`.
//!
//! Nothing here touches the host's network: every interface, address and route lives inside
//! namespaces the harness creates (`skiff-e2e-<pid>-<n>`), and every process, mount, cgroup and
//! file the harness (or what it started) leaves is removed in `Drop`, found by process id,
//! network-namespace inode, cgroup, an environment marker or path — never by process name.

// An API for the tests to come (multi-node, agents): not every helper has a caller yet.
#![allow(dead_code, unused_imports)]

pub mod cleanup;
pub mod containerd;
pub mod net;
pub mod node;

pub use net::{Netns, Switch};
pub use node::{Cluster, Node, NodeOptions, Role};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The image every e2e test uses. A non-`latest` tag, so `imagePullPolicy` defaults to
/// `IfNotPresent` and the copy imported from `<data-dir>/agent/images/` is used offline.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:1.36";

/// Environment variable set on every process the harness starts; it is inherited by what those
/// processes start (containerd, shims, loggers), so leftovers are found by it, not by name.
pub const MARKER_ENV: &str = "SKIFF_E2E_MARKER";

/// True when running under CI (`CI=true`): missing prerequisites then fail instead of skipping.
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1") | Ok("yes"))
}

/// A name unique to this test process: `skiff-e2e-<pid>-<n>`. Used for network namespaces,
/// containerd namespaces, cgroup roots and the process marker, so concurrent runs never collide.
pub fn unique_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("skiff-e2e-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// Finds a program on PATH, falling back to the sbin directories a non-login root shell may miss.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin"])
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file());
    found
}

/// Returns why the prerequisites are not met, or `None` when they are.
pub fn missing(programs: &[&str]) -> Option<String> {
    let mut why = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        why.push("not root (network namespaces, containerd and cgroups need root)".to_string());
    }
    for p in programs {
        if which(p).is_none() {
            why.push(format!("`{p}` not found"));
        }
    }
    if programs.contains(&"busybox") && !Path::new("/bin/busybox").is_file() {
        why.push("/bin/busybox missing (apt-get install busybox-static)".to_string());
    }
    if why.is_empty() {
        None
    } else {
        Some(why.join("; "))
    }
}

/// Programs a test that starts skiff nodes needs.
pub const NODE_TOOLS: &[&str] =
    &["ip", "nsenter", "containerd", "containerd-shim-runc-v2", "runc", "kubectl", "python3", "busybox"];

/// Checks prerequisites. Returns `false` (and prints why) when the test should be skipped; under
/// CI a missing prerequisite is a failure, never a skip.
pub fn require(programs: &[&str]) -> bool {
    match missing(programs) {
        None => {
            cleanup::reap_stale();
            true
        }
        Some(reason) if in_ci() => panic!("e2e prerequisites missing under CI=true: {reason}"),
        Some(reason) => {
            eprintln!("SKIPPED (set CI=true to make this a failure): {reason}");
            false
        }
    }
}

/// The output of a finished command.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n--- stdout ---\n{}--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs a command to completion with a time limit, capturing its output. A command still running
/// at the limit is killed (by its pid) and reported as an error.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Run, String> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {desc}: {e}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}: {desc}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {desc}: {e}")),
        }
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Ok(Run { status, stdout, stderr })
}

/// Runs a command that must succeed; the error carries its full output.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<String, String> {
    let desc = format!("{cmd:?}");
    let r = run(cmd, timeout)?;
    if r.ok() {
        Ok(r.stdout)
    } else {
        Err(format!("{desc} failed: {r}"))
    }
}

/// Polls `probe` until it returns `Ok`, at most `timeout`. On timeout, panics with `what`, the
/// probe's last error and whatever `context` says (e.g. the tail of a server log).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
    context: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        let last = match probe() {
            Ok(v) => {
                eprintln!("[e2e] {what}: after {:.1}s", start.elapsed().as_secs_f64());
                return v;
            }
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}\nlast attempt: {last}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The busybox OCI-layout image tar, built by `tests/images/mkimage.py` once per test process
/// into cargo's per-target temp dir (`target/tmp`), so it leaves nothing elsewhere.
pub fn busybox_tar() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(dir).expect("cargo's target tmp dir");
        let out = dir.join("skiff-e2e-busybox-1.36.tar");
        let partial = dir.join(format!("skiff-e2e-busybox-1.36.tar.{}", std::process::id()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/images/mkimage.py");
        run_ok(
            Command::new("python3").arg(&script).args(["--name", BUSYBOX_IMAGE, "--out"]).arg(&partial),
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("building the busybox test image: {e}"));
        std::fs::rename(&partial, &out).expect("move the image tar into place");
        out
    })
    .clone()
}

/// The last `n` lines of a text file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            format!("--- last {} lines of {} ---\n{}", lines.len() - from, path.display(), lines[from..].join("\n"))
        }
        Err(e) => format!("--- {} unreadable: {e} ---", path.display()),
    }
}

/// Whether to keep data dirs and logs after a test, for debugging (`SKIFF_E2E_KEEP=1`).
/// Processes, mounts, cgroups and namespaces are removed all the same.
pub fn keep_files() -> bool {
    std::env::var("SKIFF_E2E_KEEP").map(|v| !v.is_empty() && v != "0").unwrap_or(false)
}
