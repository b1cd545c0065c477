//! A skiff node: a network namespace plugged into the test's switch, a temp data dir with the
//! busybox image tar in `agent/images/`, and `skiff server` (or `skiff agent`) started inside the
//! namespace with a unique containerd namespace and cgroup root. kubectl runs in the same
//! namespace with the node's kubeconfig.

use super::cleanup::Footprint;
use super::{busybox_tar, run, tail, wait_for, Netns, Run, Switch, MARKER_ENV};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// Path of the skiff binary cargo built for this test run.
pub fn skiff_bin() -> &'static str {
    env!("CARGO_BIN_EXE_skiff")
}

#[derive(Debug, Clone)]
pub enum Role {
    /// `skiff server` (with its agent unless `--disable-agent` is among the extra args).
    Server,
    /// `skiff agent --server URL --token T`.
    Agent { server: String, token: String },
}

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub role: Role,
    /// Node name (default `node-<k>`, k counting nodes of the cluster from 1).
    pub name: Option<String>,
    /// Extra flags for skiff.
    pub args: Vec<String>,
    /// Drop the busybox image tar into `<data-dir>/agent/images/` (default true).
    pub preload_busybox: bool,
    /// Start the server the way the README tells a user to: `sh install.sh` from the checkout
    /// (dev profile, no package installs; the script builds, installs the binary into the node's
    /// dir, preloads busybox itself and starts `skiff server` in the background). Server only.
    pub install_script: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions { role: Role::Server, name: None, args: vec![], preload_busybox: true, install_script: false }
    }
}

pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: Netns,
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub log: PathBuf,
    pub containerd_namespace: String,
    pub cgroup_root: String,
    child: Option<Child>,
    /// The server `install.sh` started in the background (not our child): its pid file.
    pub pid_file: Option<PathBuf>,
    /// How skiff was started (role, flags), to start it again in [`Node::restart`].
    launch: Option<(Role, Vec<String>)>,
    footprint: Mutex<Footprint>,
    dir: Option<tempfile::TempDir>,
    torn_down: bool,
}

impl Node {
    /// Creates the node's namespace on `switch` and starts skiff in it (does not wait for it).
    pub fn start(switch: &Switch, default_name: String, opts: NodeOptions) -> Node {
        let netns = Netns::create();
        let ip = switch.attach(&netns);
        let unique = netns.name.clone(); // skiff-e2e-<pid>-<n>
        let name = opts.name.unwrap_or(default_name);
        let dir = tempfile::Builder::new().prefix(&format!("{unique}-")).tempdir().expect("node data dir");
        let data_dir = dir.path().to_path_buf();
        if opts.preload_busybox {
            let images = data_dir.join("agent/images");
            std::fs::create_dir_all(&images).expect("agent/images");
            std::fs::copy(busybox_tar(), images.join("busybox.tar")).expect("copy busybox.tar");
        }
        let kubeconfig = data_dir.join("kubeconfig.yaml");
        let log = data_dir.join("skiff.log");

        let flags: Vec<String> = [
            "--node-ip".to_string(),
            ip.to_string(),
            "--node-name".to_string(),
            name.clone(),
            "--containerd-namespace".to_string(),
            unique.clone(),
            "--cgroup-root".to_string(),
            unique.clone(),
        ]
        .into_iter()
        .chain(opts.args.iter().cloned())
        .collect();
        let (child, pid_file) = if opts.install_script {
            assert!(matches!(opts.role, Role::Server), "install.sh starts servers only");
            (None, Some(run_install_script(&netns, &unique, &data_dir, &kubeconfig, &log, &flags)))
        } else {
            let child = spawn_skiff(&netns, &opts.role, &name, &data_dir, &kubeconfig, &log, &flags, &unique);
            (Some(child), None)
        };

        let footprint = Footprint {
            marker: unique.clone(),
            netns_inode: Some(netns.inode),
            cgroup_root: unique.clone(),
            data_dir: data_dir.clone(),
            containerd_namespace: unique.clone(),
            pod_uids: Default::default(),
        };
        Node {
            name,
            ip,
            netns,
            data_dir,
            kubeconfig,
            log,
            containerd_namespace: unique.clone(),
            cgroup_root: unique,
            child,
            pid_file,
            launch: (!opts.install_script).then(|| (opts.role.clone(), flags.clone())),
            footprint: Mutex::new(footprint),
            dir: Some(dir),
            torn_down: false,
        }
    }

    /// Stops skiff with SIGTERM to its pid only (containerd, shims, loggers and containers keep
    /// running, as when a service manager restarts skiff) and starts it again with the same flags
    /// and data dir, appending to the same log. Panics if it does not stop within `timeout`.
    pub fn restart(&mut self, timeout: Duration) {
        let (role, flags) = self.launch.clone().expect("restart needs a node the harness started itself");
        let child = self.child.as_mut().expect("skiff is running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::time::Instant::now() > deadline {
                panic!("skiff on {} did not stop within {timeout:?} of SIGTERM\n{}", self.name, self.context());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let unique = self.netns.name.clone();
        self.child = Some(spawn_skiff(
            &self.netns,
            &role,
            &self.name,
            &self.data_dir,
            &self.kubeconfig,
            &self.log,
            &flags,
            &unique,
        ));
    }

    /// Pid of the skiff process (while the harness still owns it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// What identifies this node's processes, mounts and cgroups on the host.
    pub fn footprint(&self) -> Footprint {
        self.footprint.lock().unwrap().clone()
    }

    /// `https://<node-ip>:6443`, for agents joining this server.
    pub fn server_url(&self) -> String {
        format!("https://{}:6443", self.ip)
    }

    /// What a failure message needs: whether skiff still runs, and the tail of its log.
    pub fn context(&self) -> String {
        format!("node {} ({}), data dir {}\n{}", self.name, self.ip, self.data_dir.display(), tail(&self.log, 60))
    }

    /// Panics (with the log tail) if skiff has exited.
    pub fn assert_running(&mut self) {
        if let Some(why) = self.pid_file.is_some().then(|| self.exited()).flatten() {
            panic!("skiff on {} exited: {why}\n{}", self.name, self.context());
        }
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                panic!("skiff on {} exited: {st}\n{}", self.name, self.context());
            }
        }
    }

    fn exited(&mut self) -> Option<String> {
        if let Some(pid_file) = &self.pid_file {
            return match pid_from_file(pid_file) {
                Some(_) => None,
                None => Some(format!("the pid in {} no longer runs", pid_file.display())),
            };
        }
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => Some(st.to_string()),
            _ => None,
        }
    }

    /// Stops the server `install.sh` started the way the README says (`kill $(cat PIDFILE)`) and
    /// waits for it to exit. Returns false if it was still running after `timeout`.
    pub fn stop_installed(&mut self, timeout: Duration) -> bool {
        let Some(pid) = self.pid_file.as_deref().and_then(pid_from_file) else { return true };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if !Path::new(&format!("/proc/{pid}")).exists() || super::cleanup::is_zombie(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// `kubectl --kubeconfig <node kubeconfig> --cache-dir <data-dir>/kubectl-cache` inside the
    /// node's namespace. (Its own discovery cache: kubectl keys the cache by server address,
    /// which nodes of different tests share.)
    pub fn kubectl_command(&self) -> std::process::Command {
        let mut cmd = self.netns.command("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--cache-dir").arg(self.data_dir.join("kubectl-cache"));
        cmd
    }

    /// Runs `kubectl ARGS…` inside the node's namespace with the node's kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Run {
        let mut cmd = self.kubectl_command();
        cmd.arg("--request-timeout=20s").args(args);
        run(&mut cmd, Duration::from_secs(40)).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}\n{}", self.context()))
    }

    /// Like [`Node::kubectl`], but as a probe for `wait_for`: Err with the output on failure.
    pub fn try_kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = self.kubectl_command();
        cmd.arg("--request-timeout=10s").args(args);
        let r = run(&mut cmd, Duration::from_secs(30))?;
        if r.ok() {
            Ok(r.stdout)
        } else {
            Err(format!("kubectl {} → {}: {}", args.join(" "), r.status, r.stderr.trim()))
        }
    }

    /// kubectl that must succeed: returns stdout, or panics with its output and the log tail.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let r = self.kubectl(args);
        if !r.ok() {
            panic!("kubectl {} failed: {r}\n{}", args.join(" "), self.context());
        }
        r.stdout
    }

    /// Waits until `probe` succeeds; fails fast if skiff exits, and the failure carries the log.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Node) -> Result<T, String>,
    ) -> T {
        let log = self.log.clone();
        let name = self.name.clone();
        let child = Mutex::new(self.child.take());
        let pid_file = self.pid_file.clone();
        let this = &*self;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(
                what,
                timeout,
                || {
                    if let Some(Ok(Some(st))) = child.lock().unwrap().as_mut().map(|c| c.try_wait()) {
                        panic!("skiff on {name} exited ({st}) while waiting for {what}\n{}", tail(&log, 80));
                    }
                    if let Some(f) = pid_file.as_deref() {
                        if pid_from_file(f).is_none() {
                            panic!(
                                "skiff on {name} (pid file {}) exited while waiting for {what}\n{}",
                                f.display(),
                                tail(&log, 80)
                            );
                        }
                    }
                    probe(this)
                },
                || this.context(),
            )
        }));
        self.child = child.into_inner().unwrap();
        match result {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Waits for the kubeconfig skiff writes at start-up and for the API to answer.
    pub fn wait_api(&mut self, timeout: Duration) {
        self.wait_for("the API server to answer `kubectl version`", timeout, |n| {
            if !n.kubeconfig.exists() {
                return Err(format!("{} not written yet", n.kubeconfig.display()));
            }
            n.try_kubectl(&["version", "-o", "json"]).map(|_| ())
        });
    }

    /// Waits until `kubectl get node <name>` reports condition Ready=True.
    pub fn wait_ready(&mut self, node_name: &str, timeout: Duration) {
        let name = node_name.to_string();
        self.wait_for(&format!("node {name} Ready"), timeout, move |n| {
            let s = n.try_kubectl(&[
                "get",
                "node",
                &name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            if s.trim() == "True" {
                Ok(())
            } else {
                Err(format!("Ready condition is {:?}", s.trim()))
            }
        });
    }

    /// Records pod UIDs so their log directories are removed at teardown.
    pub fn remember_pods(&self, uids: impl IntoIterator<Item = String>) {
        self.footprint.lock().unwrap().pod_uids.extend(uids.into_iter().filter(|u| !u.is_empty()));
    }

    fn collect_pod_uids(&self) {
        if self.kubeconfig.exists() {
            let mut cmd = self.kubectl_command();
            cmd.args(["--request-timeout=5s", "get", "pods", "-A", "-o", "jsonpath={.items[*].metadata.uid}"]);
            if let Ok(r) = run(&mut cmd, Duration::from_secs(10)) {
                if r.ok() {
                    self.remember_pods(r.stdout.split_whitespace().map(String::from));
                }
            }
        }
    }

    /// Stops skiff and removes everything of this node: processes (skiff, containerd, shims,
    /// loggers, containers), mounts, cgroups, runc state, pod logs, the namespace, the data dir.
    /// Returns what could not be removed.
    pub fn teardown(&mut self) -> Vec<String> {
        if self.torn_down {
            return vec![];
        }
        self.torn_down = true;
        if std::thread::panicking() {
            eprintln!("[e2e] test failed; {}", self.context());
        }
        if self.exited().is_none() {
            self.collect_pod_uids();
        }
        let fp = self.footprint.lock().unwrap().clone();
        if self.pid_file.is_some() && !self.stop_installed(Duration::from_secs(15)) {
            eprintln!("[e2e] skiff on {} did not stop on SIGTERM within 15s; killing it", self.name);
        }
        let mut problems = fp.teardown(self.child.as_mut(), Duration::from_secs(15));
        self.child = None;
        self.netns.delete();
        if Path::new(&format!("/var/run/netns/{}", self.netns.name)).exists() {
            problems.push(format!("netns {} still present", self.netns.name));
        }
        if let Some(d) = self.dir.take() {
            if super::keep_files() {
                eprintln!("[e2e] keeping {}", d.keep().display());
            } else if let Err(e) = d.close() {
                problems.push(format!("removing {}: {e}", self.data_dir.display()));
            }
        }
        problems.extend(fp.leftovers());
        problems
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for p in self.teardown() {
            eprintln!("[e2e] cleanup problem on {}: {p}", self.name);
        }
    }
}

/// Nodes on one switch. Nodes are declared first so they are torn down before the switch.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub switch: Switch,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster { nodes: vec![], switch: Switch::new() }
    }

    /// Adds a node (the first is usually a server) and returns its index.
    pub fn add(&mut self, opts: NodeOptions) -> usize {
        let k = self.nodes.len() + 1;
        let node = Node::start(&self.switch, format!("node-{k}"), opts);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// A one-node cluster: `skiff server` with its agent, API answering and the node Ready, all
    /// within `ready_timeout` of the start.
    pub fn single_server(ready_timeout: Duration) -> Cluster {
        Cluster::single_server_with(NodeOptions::default(), ready_timeout)
    }

    /// [`Cluster::single_server`] with other options (e.g. started by `install.sh`).
    pub fn single_server_with(opts: NodeOptions, ready_timeout: Duration) -> Cluster {
        let start = std::time::Instant::now();
        let mut c = Cluster::new();
        let i = c.add(opts);
        let n = &mut c.nodes[i];
        n.wait_api(ready_timeout);
        let name = n.name.clone();
        n.wait_ready(&name, ready_timeout.saturating_sub(start.elapsed()));
        c
    }

    /// Tears every node down (agents first) and returns what could not be removed, so a test can
    /// assert that the cluster left nothing behind.
    pub fn shutdown(mut self) -> Vec<String> {
        let mut problems = Vec::new();
        while let Some(mut n) = self.nodes.pop() {
            problems.extend(n.teardown().into_iter().map(|p| format!("{}: {p}", n.name)));
        }
        problems
    }

    pub fn server(&mut self) -> &mut Node {
        &mut self.nodes[0]
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first, the server (index 0) last.
        while let Some(mut n) = self.nodes.pop() {
            for p in n.teardown() {
                eprintln!("[e2e] cleanup problem on {}: {p}", n.name);
            }
        }
    }
}

/// Only the harness's own settings: no SKIFF_* variable of the caller's environment leaks into
/// what the node runs, and everything carries the node's marker (so teardown finds it).
/// Starts `skiff server|agent` in `netns` with the node's flags, output appended to `log`.
#[allow(clippy::too_many_arguments)]
fn spawn_skiff(
    netns: &Netns,
    role: &Role,
    name: &str,
    data_dir: &Path,
    kubeconfig: &Path,
    log: &Path,
    flags: &[String],
    unique: &str,
) -> Child {
    let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("skiff log file");
    let mut cmd = netns.command(skiff_bin());
    match role {
        Role::Server => {
            cmd.arg("server").arg("--write-kubeconfig").arg(kubeconfig);
        }
        Role::Agent { server, token } => {
            cmd.args(["agent", "--server", server, "--token", token]);
        }
    }
    cmd.arg("--data-dir").arg(data_dir).args(flags);
    clean_env(&mut cmd, unique);
    cmd.stdin(Stdio::null()).stdout(logf.try_clone().expect("log file handle")).stderr(logf);
    // Its own process group, so teardown signals skiff and what it started with it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    eprintln!("[e2e] starting {name} in netns {unique}: {cmd:?}");
    cmd.spawn().unwrap_or_else(|e| panic!("starting skiff: {e}"))
}

fn clean_env(cmd: &mut std::process::Command, marker: &str) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SKIFF_") || k.to_string_lossy().starts_with("INSTALL_SKIFF_") {
            cmd.env_remove(k);
        }
    }
    cmd.env(MARKER_ENV, marker)
        .env("SKIFF_LOG", std::env::var("SKIFF_E2E_LOG").unwrap_or_else(|_| "info".into()))
        .env("RUST_BACKTRACE", "1");
}

/// Runs the README's first command, `sh install.sh`, from this checkout inside `netns`, with every
/// path pointed into the node's data dir, and returns the pid file of the server it started.
/// Packages are not installed (`tests/run` installed them) and the build uses the dev profile,
/// which the test build has just made, so the script's `cargo build` is a no-op.
fn run_install_script(
    netns: &Netns,
    marker: &str,
    data_dir: &Path,
    kubeconfig: &Path,
    log: &Path,
    flags: &[String],
) -> PathBuf {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pid_file = data_dir.join("skiff.pid");
    let bin_dir = data_dir.join("bin");
    let mut cmd = netns.command("sh");
    cmd.arg(checkout.join("install.sh")).current_dir(checkout);
    clean_env(&mut cmd, marker);
    cmd.env("SKIFF_DATA_DIR", data_dir)
        .env("SKIFF_WRITE_KUBECONFIG", kubeconfig)
        .env("INSTALL_SKIFF_BIN_DIR", &bin_dir)
        .env("INSTALL_SKIFF_LOG_FILE", log)
        .env("INSTALL_SKIFF_PID_FILE", &pid_file)
        .env("INSTALL_SKIFF_PROFILE", "dev")
        .env("INSTALL_SKIFF_SKIP_DEPS", "true")
        .env("INSTALL_SKIFF_WAIT", "90")
        .env("INSTALL_SKIFF_EXEC", flags.join(" "));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    eprintln!("[e2e] sh install.sh in netns {marker} (flags: {})", flags.join(" "));
    let r = run(&mut cmd, Duration::from_secs(900)).unwrap_or_else(|e| panic!("sh install.sh: {e}"));
    if !r.ok() {
        panic!("sh install.sh failed: {r}\n{}", tail(log, 60));
    }
    assert!(
        r.stdout.contains("skiff is running"),
        "install.sh did not report a running server:\n{}\n{}",
        r.stdout,
        r.stderr
    );
    pid_file
}

/// The pid in `pid_file`, if that process still runs.
fn pid_from_file(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}
