//! The runtime layer against a real containerd: a private managed containerd per test (own root,
//! state, socket and containerd namespace), the busybox test image from `tests/images/mkimage.py`,
//! and a network namespace the test creates as the "node". Everything is cleaned up by PID and
//! path: containerd, shims, pinned namespaces, the node namespace, cgroups.
//!
//! Needs root, containerd, runc, python3, busybox-static and iproute2; skips with a message
//! otherwise. Run: `cargo test --test runtime -- --nocapture`.

use skiff::agent::runtime::{
    AttachOptions, ContainerSpec, ContainerState, ContainerdRuntime, DnsConfig, ImageRef, ManagedContainerd, PodRef,
    PullPolicy, Resources, Runtime, RuntimeError, RuntimeEvent, RuntimeOptions, SandboxSpec, TermSize,
};
use skiff::config::Cidr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "docker.io/library/busybox:1.36";

fn have(bin: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {bin}")).output().map(|o| o.status.success()).unwrap_or(false)
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("needs root".into());
    }
    for b in ["containerd", "runc", "python3", "ip", "busybox"] {
        if !have(b) {
            return Some(format!("needs {b} on PATH"));
        }
    }
    None
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?} failed");
}

fn build_image(out: &Path, name: &str) {
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    run(
        "python3",
        &[repo().join("tests/images/mkimage.py").to_str().unwrap(), "--name", name, "--out", out.to_str().unwrap()],
    );
}

/// Everything one test created, torn down on drop even when the test panics.
struct Node {
    dir: tempfile::TempDir,
    netns: String,
    namespace: String,
    cgroup_root: String,
    containerd: Option<ManagedContainerd>,
    containerd_pid: u32,
    shutdown: CancellationToken,
}

impl Node {
    async fn start(tag: &str) -> Node {
        let pid = std::process::id();
        // Short paths: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new().prefix("skrt").tempdir_in("/tmp").unwrap();
        let netns = format!("skrt-{tag}-{pid}");
        run("ip", &["netns", "add", &netns]);
        run("ip", &["-n", &netns, "link", "set", "lo", "up"]);
        let shutdown = CancellationToken::new();
        let mut node = Node {
            dir,
            netns,
            namespace: format!("skrt-{tag}-{pid}"),
            cgroup_root: format!("skrt-{tag}-{pid}"),
            containerd: None,
            containerd_pid: 0,
            shutdown: shutdown.clone(),
        };
        let m = ManagedContainerd::start(node.dir.path(), None, shutdown).await.expect("managed containerd starts");
        node.containerd_pid = m.pid();
        node.containerd = Some(m);
        node
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    fn options(&self) -> RuntimeOptions {
        let m = self.containerd.as_ref().expect("containerd");
        let mut o = RuntimeOptions::new(m.socket(), &self.namespace, self.data(), &self.cgroup_root);
        o.node_netns = Some(PathBuf::from(format!("/var/run/netns/{}", self.netns)));
        o.logger_binary = Some(PathBuf::from(env!("CARGO_BIN_EXE_skiff")));
        o
    }

    fn in_node(&self, script: &str) -> String {
        let o = Command::new("ip").args(["netns", "exec", &self.netns, "sh", "-c", script]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    }
}

fn kill_pid(pid: i32) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Shims of our namespace, by the PID files containerd keeps in the bundle directories.
        let bundles = self.data().join("agent/containerd/state/io.containerd.runtime.v2.task").join(&self.namespace);
        if let Ok(rd) = std::fs::read_dir(&bundles) {
            for b in rd.flatten() {
                for f in ["init.pid", "shim.pid"] {
                    if let Ok(p) = std::fs::read_to_string(b.path().join(f)) {
                        kill_pid(p.trim().parse().unwrap_or(0));
                    }
                }
            }
        }
        // Shims (and their loggers) run in their bundle directory: anything whose cwd is under
        // our data dir is ours.
        let root = self.data().to_path_buf();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for p in rd.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
                if pid == std::process::id() as i32 {
                    continue;
                }
                let cwd = std::fs::read_link(p.path().join("cwd")).unwrap_or_default();
                if cwd.starts_with(&root) {
                    kill_pid(pid);
                }
            }
        }
        self.shutdown.cancel();
        kill_pid(self.containerd_pid as i32);
        std::thread::sleep(Duration::from_millis(200));
        // Pinned namespaces and overlay mounts under the data dir, deepest first.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let root = self.data().display().to_string();
            let mut ours: Vec<String> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(1))
                .filter(|m| m.starts_with(&root))
                .map(String::from)
                .collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ours {
                let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        let _ = std::fs::remove_dir_all(format!("/run/containerd/runc/{}", self.namespace));
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in rd.flatten() {
                let root = h.path().join(&self.cgroup_root);
                if root.is_dir() {
                    let _ = Command::new("find")
                        .arg(&root)
                        .args(["-depth", "-type", "d", "-exec", "rmdir", "{}", ";"])
                        .status();
                }
            }
        }
    }
}

fn pod(uid: &str, name: &str) -> PodRef {
    PodRef { uid: uid.into(), namespace: "default".into(), name: name.into() }
}

fn container(p: &PodRef, name: &str, image: &ImageRef, script: &str, log: PathBuf) -> ContainerSpec {
    ContainerSpec {
        pod: p.clone(),
        name: name.into(),
        image: image.clone(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        args: vec![],
        env: vec![("GREETING".into(), "hello-from-skiff".into())],
        working_dir: None,
        mounts: vec![],
        resources: Resources::default(),
        tty: false,
        stdin: false,
        stdin_once: false,
        privileged: false,
        run_as_user: None,
        run_as_group: None,
        log_path: log,
        restart_count: 0,
    }
}

async fn wait_exit(rx: &mut tokio::sync::broadcast::Receiver<RuntimeEvent>, id: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(RuntimeEvent::ContainerExited { container_id, .. })) if container_id == id => return,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("event stream: {e}"),
            Err(_) => panic!("no exit event for {id} within {secs}s"),
        }
    }
}

async fn state_of(rt: &ContainerdRuntime, id: &str) -> ContainerState {
    let all = rt.list_containers().await.expect("list containers");
    all.into_iter().find(|c| c.id == id).map(|c| c.state).unwrap_or(ContainerState::Unknown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_in_its_own_namespaces_with_an_ip_and_logs_in_cri_format() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let node = Node::start("pod").await;
    build_image(&node.data().join("agent/images/busybox.tar"), IMAGE);
    let rt = ContainerdRuntime::new(node.options()).await.expect("runtime connects");
    let mut events = rt.events();

    // Import at start, then name normalisation finds it.
    let names = rt.import_images().await;
    assert!(names.contains(&IMAGE.to_string()), "imported {names:?}");
    let image = rt.ensure_image("busybox:1.36", PullPolicy::IfNotPresent).await.expect("local image");
    assert_eq!(image.name, IMAGE);
    assert!(image.id.starts_with("sha256:"));
    match rt.ensure_image("busybox:absent", PullPolicy::Never).await {
        Err(RuntimeError::ImageNotAvailable { .. }) => {}
        other => panic!("expected ImageNotAvailable, got {other:?}"),
    }

    rt.set_pod_cidr(Cidr::parse("10.244.7.0/24").unwrap()).await.expect("pod cidr");
    assert!(node.in_node("ip -4 addr show skiff0").contains("10.244.7.1/24"));
    assert_eq!(node.in_node("cat /proc/sys/net/ipv4/ip_forward").trim(), "1");

    let pa = pod("uid-a", "web-a");
    let sspec = SandboxSpec {
        pod: pa.clone(),
        hostname: "web-a".into(),
        host_network: false,
        dns: DnsConfig {
            nameservers: vec!["10.43.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec![],
        },
        host_aliases: vec![],
    };
    let sb = rt.run_sandbox(&sspec).await.expect("sandbox");
    assert_eq!(sb.ip, Some("10.244.7.2".parse().unwrap()));
    assert_eq!(rt.run_sandbox(&sspec).await.expect("idempotent").ip, sb.ip);

    let log = node.data().join("logs/default_web-a_uid-a/main/0.log");
    let script = "echo $GREETING; echo oops >&2; cat /etc/hostname; ip -4 addr show eth0; \
                  grep nameserver /etc/resolv.conf; ping -c 1 -W 3 10.244.7.1 >/dev/null && echo ping-ok";
    let id = rt.start_container(&sb, &container(&pa, "main", &image, script, log.clone())).await.expect("start");
    wait_exit(&mut events, &id, 30).await;
    match state_of(&rt, &id).await {
        ContainerState::Exited { exit_code: 0, reason, .. } => assert_eq!(reason, "Completed"),
        other => panic!("main: {other:?}"),
    }
    // The logger may flush just after the exit event.
    let mut text = String::new();
    for _ in 0..50 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("ping-ok") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{text}");
    assert!(text.lines().any(|l| l.ends_with(" stdout F hello-from-skiff")), "{text}");
    assert!(text.lines().any(|l| l.ends_with(" stderr F oops")), "{text}");
    assert!(text.contains("stdout F web-a"), "hostname: {text}");
    assert!(text.contains("inet 10.244.7.2/24"), "pod ip: {text}");
    assert!(text.contains("nameserver 10.43.0.10"), "resolv.conf: {text}");
    assert!(text.contains("stdout F ping-ok"), "gateway reachable: {text}");
    let first = text.lines().next().unwrap_or("");
    assert!(chrono::DateTime::parse_from_rfc3339(first.split(' ').next().unwrap_or("")).is_ok(), "timestamp: {first}");

    // A fresh runtime (agent restart) rebuilds statuses from labels and sandboxes from disk.
    {
        let rt2 = ContainerdRuntime::new(node.options()).await.expect("second runtime");
        let all = rt2.list_containers().await.unwrap();
        let main = all.iter().find(|c| c.id == id).expect("main listed after restart");
        assert_eq!((main.name.as_str(), main.pod.uid.as_str(), main.restart_count), ("main", "uid-a", 0));
        assert_eq!(main.log_path, log);
        assert!(matches!(main.state, ContainerState::Exited { exit_code: 0, .. }));
        assert_eq!(rt2.list_sandboxes().await.unwrap().len(), 1);
    }

    // SIGTERM is ignored by a PID 1 without a handler: SIGKILL after the grace period.
    let sleeper = rt
        .start_container(&sb, &container(&pa, "sleeper", &image, "exec sleep 1000", node.data().join("logs/s.log")))
        .await
        .expect("start sleeper");
    assert!(matches!(state_of(&rt, &sleeper).await, ContainerState::Running { .. }));
    rt.stop_container(&sleeper, Duration::from_millis(500)).await.expect("stop");
    match state_of(&rt, &sleeper).await {
        ContainerState::Exited { exit_code: 137, reason, .. } => assert_eq!(reason, "Error"),
        other => panic!("sleeper: {other:?}"),
    }

    // Over its memory limit the container is OOM-killed and says so.
    let mut hog = container(
        &pa,
        "hog",
        &image,
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        node.data().join("logs/h.log"),
    );
    hog.resources.memory_limit_bytes = Some(16 << 20);
    let hog_id = rt.start_container(&sb, &hog).await.expect("start hog");
    wait_exit(&mut events, &hog_id, 60).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    match state_of(&rt, &hog_id).await {
        ContainerState::Exited { reason, .. } => assert_eq!(reason, "OOMKilled"),
        other => panic!("hog: {other:?}"),
    }

    for c in [&id, &sleeper, &hog_id] {
        rt.remove_container(c).await.expect("remove");
    }
    assert!(rt.list_containers().await.unwrap().is_empty());
    rt.remove_sandbox("uid-a").await.expect("remove sandbox");
    assert!(!node.data().join("agent/run/pods/uid-a").exists());
    assert!(rt.network().ip_of("uid-a").is_none());
    assert!(!node.in_node("ip link").contains("veth"), "veth left behind");
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory/{}/poduid-a", node.cgroup_root)).exists());
    assert!(rt.list_sandboxes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pods_share_the_node_namespace_and_docker_archives_import() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let node = Node::start("host").await;
    let oci = node.data().join("img/busybox.tar");
    build_image(&oci, IMAGE);
    let rt = ContainerdRuntime::new(node.options()).await.expect("runtime connects");
    let mut events = rt.events();
    rt.import_image_tar(&oci).await.expect("oci import");

    // docker-archive, when skopeo is there to convert the OCI layout.
    if have("skopeo") {
        let dock = node.data().join("img/docker.tar");
        run(
            "skopeo",
            &[
                "copy",
                &format!("oci-archive:{}", oci.display()),
                &format!("docker-archive:{}:docker.io/library/busybox:dock", dock.display()),
            ],
        );
        let names = rt.import_image_tar(&dock).await.expect("docker-archive import");
        assert_eq!(names, vec!["docker.io/library/busybox:dock".to_string()]);
        rt.ensure_image("busybox:dock", PullPolicy::Never).await.expect("docker-archive image usable");
    } else {
        eprintln!("skopeo missing: docker-archive import not checked");
    }
    let image = rt.ensure_image(IMAGE, PullPolicy::Never).await.expect("image");

    rt.set_pod_cidr(Cidr::parse("10.244.8.0/24").unwrap()).await.expect("cidr");
    let ph = pod("uid-h", "hostnet");
    let sb = rt
        .run_sandbox(&SandboxSpec {
            pod: ph.clone(),
            hostname: "ignored".into(),
            host_network: true,
            dns: DnsConfig::default(),
            host_aliases: vec![("10.9.9.9".into(), vec!["alias.local".into()])],
        })
        .await
        .expect("sandbox");
    assert_eq!(sb.ip, None);
    let log = node.data().join("logs/h.log");
    let id = rt
        .start_container(
            &sb,
            &container(
                &ph,
                "c",
                &image,
                "ip link show skiff0 >/dev/null && echo hostnet-ok; grep alias.local /etc/hosts",
                log.clone(),
            ),
        )
        .await
        .expect("start");
    wait_exit(&mut events, &id, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("stdout F hostnet-ok"), "{text}");
    assert!(text.contains("10.9.9.9\talias.local"), "{text}");
    rt.remove_container(&id).await.expect("remove");
    rt.remove_sandbox("uid-h").await.expect("remove sandbox");

    // The managed containerd is restarted when it dies.
    let m = node.containerd.as_ref().unwrap();
    let old = m.pid();
    kill_pid(old as i32);
    let mut restarted = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if m.pid() != old && m.pid() != 0 {
            restarted = true;
            break;
        }
    }
    assert!(restarted, "managed containerd was not restarted");
    let mut node = node;
    node.containerd_pid = node.containerd.as_ref().unwrap().pid();
    rt.list_containers().await.expect("runtime works against the restarted containerd");
    if let Some(m) = node.containerd.take() {
        m.stop().await;
    }
}

/// Children of this process that have exited but were not reaped.
fn zombie_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else { continue };
        // pid (comm) state ppid …: split after the comm, which may contain spaces.
        let Some((_, rest)) = stat.rsplit_once(") ") else { continue };
        let f: Vec<&str> = rest.split(' ').collect();
        if f.first() == Some(&"Z") && f.get(1) == Some(&me.as_str()) {
            out.push(stat);
        }
    }
    out
}

/// Collects a session's stdout until it contains `want` (or 20 s pass).
async fn read_until(rx: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>, want: &str) -> String {
    let mut got = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !got.contains(want) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(b)) => got.push_str(&String::from_utf8_lossy(&b)),
            _ => panic!("no {want:?} in the output; got {got:?}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_with_stdin_is_attached_through_its_logger_and_never_waits_for_a_client() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let node = Node::start("stdin").await;
    build_image(&node.data().join("agent/images/busybox.tar"), IMAGE);
    let rt = ContainerdRuntime::new(node.options()).await.expect("runtime connects");
    let mut events = rt.events();
    rt.import_images().await;
    let image = rt.ensure_image(IMAGE, PullPolicy::Never).await.expect("image");
    rt.set_pod_cidr(Cidr::parse("10.244.10.0/24").unwrap()).await.expect("cidr");
    let ps = pod("uid-s", "stdin");
    let sb = rt
        .run_sandbox(&SandboxSpec {
            pod: ps.clone(),
            hostname: "stdin".into(),
            host_network: false,
            dns: DnsConfig::default(),
            host_aliases: vec![],
        })
        .await
        .expect("sandbox");
    let all = AttachOptions { stdin: true, stdout: true, stderr: true };

    // stdin + stdinOnce: input reaches `read`, the end of the client's stdin is EOF for `cat`.
    let log = node.data().join("logs/once.log");
    let mut spec = container(&ps, "once", &image, "read x; echo got $x; echo err >&2; cat; echo eof", log.clone());
    spec.stdin = true;
    spec.stdin_once = true;
    let id = rt.start_container(&sb, &spec).await.expect("start");
    let mut s = rt.attach(&id, &all).await.expect("attach").expect("a live stream for a stdin container");
    assert!(s.stdin_once && !s.tty);
    let input = s.stdin.take().expect("stdin");
    input.send(bytes::Bytes::from_static(b"hello\nrest\n")).await.unwrap();
    read_until(&mut s.stdout, "got hello").await;
    drop(input);
    read_until(&mut s.stdout, "eof").await;
    assert_eq!(tokio::time::timeout(Duration::from_secs(10), &mut s.end).await.expect("end"), Ok(Ok(())));
    wait_exit(&mut events, &id, 30).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains(" stdout F got hello\n") && text.contains(" stdout F rest\n"), "{text}");
    assert!(text.contains(" stderr F err\n"), "{text}");
    // The exit event may come before the logger has read the last output; soon after, attach
    // says the container is gone.
    let mut gone = false;
    for _ in 0..50 {
        if matches!(rt.attach(&id, &all).await, Err(RuntimeError::NotFound(_))) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "no attach after the exit");
    // The logger was our child (the agent's, in production): it is reaped, not left a zombie.
    let mut zombies = Vec::new();
    for _ in 0..50 {
        zombies = zombie_children();
        if zombies.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(zombies.is_empty(), "unreaped children: {zombies:?}");
    rt.remove_container(&id).await.expect("remove");
    assert!(!node.data().join("agent/run/attach").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false));

    // A client that never reads is dropped; the container writes 8 MB and exits regardless.
    let mut spec = container(
        &ps,
        "loud",
        &image,
        "read go; head -c 8000000 /dev/zero | tr '\\0' y; echo; echo done",
        node.data().join("logs/loud.log"),
    );
    spec.stdin = true;
    let id = rt.start_container(&sb, &spec).await.expect("start");
    let s = rt.attach(&id, &all).await.expect("attach").expect("live");
    s.stdin.as_ref().expect("stdin").send(bytes::Bytes::from_static(b"go\n")).await.unwrap();
    wait_exit(&mut events, &id, 60).await;
    let mut loud = 0;
    for _ in 0..50 {
        loud = std::fs::read_to_string(node.data().join("logs/loud.log")).map(|t| t.len()).unwrap_or(0);
        if loud > 8_000_000 && std::fs::read_to_string(node.data().join("logs/loud.log")).unwrap().contains("F done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(loud > 8_000_000, "everything reached the log ({loud} bytes)");
    drop(s);
    rt.remove_container(&id).await.expect("remove");

    // A tty: resizes reach the pty through ResizePty; a fresh runtime (agent restart) attaches
    // to the same logger.
    let mut spec = container(&ps, "tty", &image, "read x; stty size; echo got $x", node.data().join("logs/tty.log"));
    spec.stdin = true;
    spec.stdin_once = true;
    spec.tty = true;
    let id = rt.start_container(&sb, &spec).await.expect("start");
    let rt2 = ContainerdRuntime::new(node.options()).await.expect("second runtime");
    let mut s = rt2.attach(&id, &all).await.expect("attach").expect("live");
    assert!(s.tty);
    s.resize.send(TermSize { width: 91, height: 17 }).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.stdin.as_ref().expect("stdin").send(bytes::Bytes::from_static(b"hi\r")).await.unwrap();
    let out = read_until(&mut s.stdout, "got hi").await;
    assert!(out.contains("17 91"), "{out:?}");
    wait_exit(&mut events, &id, 30).await;
    drop(s);
    rt.remove_container(&id).await.expect("remove");
    rt.remove_sandbox("uid-s").await.expect("remove sandbox");
}

/// A Debian `docker-registry` on a free loopback port, killed by PID on drop.
struct Registry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::Builder::new().prefix("skreg").tempdir_in("/tmp").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start docker-registry");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, port, _dir: dir }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_missing_locally_is_pulled_over_http_from_a_loopback_registry() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    if !have("docker-registry") || !have("skopeo") {
        eprintln!("skipping: needs docker-registry and skopeo");
        return;
    }
    let registry = Registry::start();
    let node = Node::start("pull").await;
    let oci = node.data().join("img/busybox.tar");
    build_image(&oci, IMAGE);
    let remote = format!("127.0.0.1:{}/test/busybox:pull", registry.port);
    run(
        "skopeo",
        &["copy", "--dest-tls-verify=false", &format!("oci-archive:{}", oci.display()), &format!("docker://{remote}")],
    );
    let rt = ContainerdRuntime::new(node.options()).await.expect("runtime connects");
    let mut events = rt.events();

    let image = rt.ensure_image(&remote, PullPolicy::IfNotPresent).await.expect("pull");
    assert_eq!(image.name, remote);
    assert!(image.id.starts_with("sha256:"));
    // Always re-resolves against the registry; the blobs are already there.
    assert_eq!(rt.ensure_image(&remote, PullPolicy::Always).await.expect("re-pull").id, image.id);
    match rt.ensure_image(&format!("127.0.0.1:{}/test/absent:1", registry.port), PullPolicy::IfNotPresent).await {
        Err(RuntimeError::ImageNotAvailable { .. }) => {}
        other => panic!("expected ImageNotAvailable, got {other:?}"),
    }

    // The pulled image runs.
    rt.set_pod_cidr(Cidr::parse("10.244.9.0/24").unwrap()).await.expect("cidr");
    let pp = pod("uid-p", "pulled");
    let sb = rt
        .run_sandbox(&SandboxSpec {
            pod: pp.clone(),
            hostname: "pulled".into(),
            host_network: false,
            dns: DnsConfig::default(),
            host_aliases: vec![],
        })
        .await
        .expect("sandbox");
    let log = node.data().join("logs/p.log");
    let id = rt.start_container(&sb, &container(&pp, "c", &image, "echo $GREETING", log.clone())).await.expect("start");
    wait_exit(&mut events, &id, 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("stdout F hello-from-skiff"), "{text}");
    rt.remove_container(&id).await.expect("remove");
    rt.remove_sandbox("uid-p").await.expect("remove sandbox");
}
