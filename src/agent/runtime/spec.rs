//! Pod container → OCI runtime spec (JSON), the way containerd's `populateDefaultUnixSpec` and
//! the CRI plugin build it (guide §4). Pure: every input comes in as data, so the rules are
//! unit-tested without containerd.

use super::ContainerSpec;
use serde_json::{json, Value};
use std::path::PathBuf;

/// Why the image config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The image config blob is not an OCI/Docker image config.
    #[error("image config is not valid JSON ({0}); re-import or re-pull the image")]
    BadImageConfig(String),
    /// Neither the pod nor the image says what to run.
    #[error("container {0:?} has no command: set `command` in the pod or use an image with an entrypoint or cmd")]
    NoCommand(String),
}

/// The parts of an image config (`config` in the OCI image config) a container start uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

impl ImageConfig {
    /// Parses an OCI or Docker image config blob.
    pub fn from_json(bytes: &[u8]) -> Result<ImageConfig, SpecError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| SpecError::BadImageConfig(e.to_string()))?;
        let c = v.get("config").cloned().unwrap_or(Value::Null);
        let strings = |k: &str| -> Vec<String> {
            c.get(k)
                .and_then(|a| a.as_array())
                .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        let string = |k: &str| c.get(k).and_then(|s| s.as_str()).unwrap_or("").to_string();
        Ok(ImageConfig {
            entrypoint: strings("Entrypoint"),
            cmd: strings("Cmd"),
            env: strings("Env"),
            working_dir: string("WorkingDir"),
            user: string("User"),
        })
    }
}

/// Where the pod's pinned namespaces and generated files are.
#[derive(Debug, Clone, PartialEq)]
pub struct PodContext {
    /// Pinned network namespace, or the node's own one for host-network pods (`None`: inherit
    /// containerd's).
    pub netns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub hosts_file: PathBuf,
    pub resolv_file: PathBuf,
    pub hostname_file: PathBuf,
    /// `/<cgroup_root>/pod<uid>/<container id>`.
    pub cgroups_path: String,
    /// Highest NOFILE limit the runtime may set (containerd fails above its own hard limit).
    pub nofile_max: u64,
}

/// The default PATH Docker and containerd give a container whose image sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability, for privileged containers (those the kernel here knows, up to CAP_CHECKPOINT_RESTORE).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Kubernetes rules for what runs: `command` replaces the image entrypoint and drops its cmd;
/// `args` alone replaces only the cmd.
pub fn process_args(spec: &ContainerSpec, image: &ImageConfig) -> Vec<String> {
    if !spec.command.is_empty() {
        spec.command.iter().chain(spec.args.iter()).cloned().collect()
    } else if !spec.args.is_empty() {
        image.entrypoint.iter().chain(spec.args.iter()).cloned().collect()
    } else {
        image.entrypoint.iter().chain(image.cmd.iter()).cloned().collect()
    }
}

/// Image env, then the pod's env; a later variable with the same name replaces the earlier one
/// in place (Docker's and the kubelet's behaviour). PATH is defaulted when neither sets it.
pub fn process_env(spec: &ContainerSpec, image: &ImageConfig) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match out.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => out.push((k.to_string(), v.to_string())),
    };
    for e in &image.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        set(k, v);
    }
    for (k, v) in &spec.env {
        set(k, v);
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        let (k, v) = DEFAULT_PATH.split_once('=').unwrap_or(("PATH", ""));
        out.insert(0, (k.to_string(), v.to_string()));
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// uid and gid: the pod's `runAsUser`/`runAsGroup`, else the image's numeric `User` (`uid[:gid]`).
/// Named users would need the image's /etc/passwd; they fall back to root with a warning.
pub fn process_user(spec: &ContainerSpec, image: &ImageConfig) -> (u32, u32) {
    let (iu, ig) = match image.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image.user.as_str(), None),
    };
    let image_uid = if iu.is_empty() { Some(0) } else { iu.parse::<u32>().ok() };
    if image_uid.is_none() {
        tracing::warn!(user = %image.user, container = %spec.name, "image user is a name, not a number; running as uid 0 (set runAsUser)");
    }
    let uid = spec.run_as_user.or(image_uid).unwrap_or(0);
    let gid = spec.run_as_group.or_else(|| ig.and_then(|g| g.parse().ok())).unwrap_or(0);
    (uid, gid)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Value {
    json!({"destination": dest, "type": typ, "source": source, "options": options})
}

fn bind(dest: &str, source: &std::path::Path, ro: bool) -> Value {
    json!({
        "destination": dest,
        "type": "bind",
        "source": source.to_string_lossy(),
        "options": ["rbind", "rprivate", if ro { "ro" } else { "rw" }],
    })
}

/// CPU shares from a request, as the kubelet computes them (1 CPU = 1024 shares, minimum 2).
pub fn cpu_shares(request_millis: Option<u64>) -> u64 {
    match request_millis {
        Some(m) => (m * 1024 / 1000).max(2),
        None => 2,
    }
}

/// CFS quota for a limit over a 100 ms period (minimum 1 ms, as the kubelet clamps it).
pub fn cpu_quota(limit_millis: u64) -> i64 {
    ((limit_millis * 100_000 / 1000) as i64).max(1000)
}

/// Builds the OCI runtime spec for one container of a pod.
pub fn build(spec: &ContainerSpec, image: &ImageConfig, pod: &PodContext) -> Result<Value, SpecError> {
    let args = process_args(spec, image);
    if args.is_empty() {
        return Err(SpecError::NoCommand(spec.name.clone()));
    }
    let (uid, gid) = process_user(spec, image);
    let cwd = spec
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| Some(image.working_dir.clone()).filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    let caps: &[&str] = if spec.privileged { ALL_CAPS } else { DEFAULT_CAPS };
    // Above the daemon's hard limit runc fails with "error setting rlimit type 7" (guide §4).
    let nofile = pod.nofile_max.min(1_048_576);

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", if spec.privileged { "rw" } else { "ro" }]),
        mount("/run", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
    ];
    // The kubelet manages these three files for every container of the pod; a volume mounted
    // on the same path wins, as in Kubernetes.
    for (dest, src) in
        [("/etc/hosts", &pod.hosts_file), ("/etc/resolv.conf", &pod.resolv_file), ("/etc/hostname", &pod.hostname_file)]
    {
        if !spec.mounts.iter().any(|m| m.container_path == dest) {
            mounts.push(bind(dest, src, false));
        }
    }
    for m in &spec.mounts {
        mounts.push(bind(&m.container_path, &m.host_path, m.read_only));
    }

    let ns = |typ: &str, path: &Option<PathBuf>| match path {
        Some(p) => json!({"type": typ, "path": p.to_string_lossy()}),
        None => json!({"type": typ}),
    };
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "mount"}), ns("ipc", &pod.ipcns)];
    // A namespace without a path makes runc create a new one; to share the host's (containerd's)
    // namespace the entry is left out instead.
    if pod.utsns.is_some() {
        namespaces.push(ns("uts", &pod.utsns));
    }
    if pod.netns.is_some() {
        namespaces.push(ns("network", &pod.netns));
    }

    let mut resources = json!({
        "devices": [{"allow": spec.privileged, "access": "rwm"}],
        "cpu": {"shares": cpu_shares(spec.resources.cpu_request_millis)},
    });
    if let Some(limit) = spec.resources.cpu_limit_millis {
        resources["cpu"]["quota"] = json!(cpu_quota(limit));
        resources["cpu"]["period"] = json!(100_000u64);
    }
    if let Some(mem) = spec.resources.memory_limit_bytes {
        resources["memory"] = json!({"limit": mem});
    }

    let mut linux = json!({
        "resources": resources,
        "cgroupsPath": pod.cgroups_path,
        "namespaces": namespaces,
    });
    if !spec.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }

    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": spec.tty,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": process_env(spec, image),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            // Kubernetes' allowPrivilegeEscalation defaults to true. oomScoreAdj is left unset:
            // a negative one fails on hosts without CAP_SYS_RESOURCE (guide §4).
            "noNewPrivileges": false,
        },
        "root": {"path": "rootfs", "readonly": false},
        "mounts": mounts,
        "linux": linux,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::runtime::{ImageRef, Mount, PodRef, Resources};

    fn cspec() -> ContainerSpec {
        ContainerSpec {
            pod: PodRef { uid: "u1".into(), namespace: "default".into(), name: "p".into() },
            name: "c".into(),
            image: ImageRef { name: "docker.io/library/busybox:1.36".into(), id: "sha256:x".into() },
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
            log_path: "/tmp/x.log".into(),
            restart_count: 0,
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["c1".into(), "c2".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            working_dir: "/work".into(),
            user: "".into(),
        }
    }

    fn pod() -> PodContext {
        PodContext {
            netns: Some("/run/pods/u1/net".into()),
            utsns: Some("/run/pods/u1/uts".into()),
            ipcns: Some("/run/pods/u1/ipc".into()),
            hosts_file: "/run/pods/u1/hosts".into(),
            resolv_file: "/run/pods/u1/resolv.conf".into(),
            hostname_file: "/run/pods/u1/hostname".into(),
            cgroups_path: "/skiff/podu1/cid".into(),
            nofile_max: 20000,
        }
    }

    #[test]
    fn with_neither_command_nor_args_the_image_entrypoint_and_cmd_run() {
        assert_eq!(process_args(&cspec(), &image()), vec!["/ep", "c1", "c2"]);
    }

    #[test]
    fn command_replaces_entrypoint_and_drops_the_image_cmd() {
        let mut s = cspec();
        s.command = vec!["sh".into()];
        assert_eq!(process_args(&s, &image()), vec!["sh"]);
        s.args = vec!["-c".into(), "x".into()];
        assert_eq!(process_args(&s, &image()), vec!["sh", "-c", "x"]);
    }

    #[test]
    fn args_alone_replace_only_the_image_cmd() {
        let mut s = cspec();
        s.args = vec!["a".into()];
        assert_eq!(process_args(&s, &image()), vec!["/ep", "a"]);
    }

    #[test]
    fn pod_env_overrides_image_env_in_place_and_path_is_defaulted() {
        let mut s = cspec();
        s.env = vec![("A".into(), "2".into()), ("B".into(), "3".into())];
        assert_eq!(process_env(&s, &image()), vec!["PATH=/bin", "A=2", "B=3"]);
        let empty = ImageConfig::default();
        assert_eq!(process_env(&cspec(), &empty), vec![DEFAULT_PATH.to_string()]);
    }

    #[test]
    fn run_as_user_beats_the_image_user() {
        let mut img = image();
        img.user = "1000:2000".into();
        assert_eq!(process_user(&cspec(), &img), (1000, 2000));
        let mut s = cspec();
        s.run_as_user = Some(5);
        s.run_as_group = Some(6);
        assert_eq!(process_user(&s, &img), (5, 6));
        img.user = "nobody".into();
        assert_eq!(process_user(&cspec(), &img), (0, 0));
    }

    #[test]
    fn the_spec_joins_the_pinned_namespaces_and_binds_the_pod_files() {
        let v = build(&cspec(), &image(), &pod()).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n["type"] == "network" && n["path"] == "/run/pods/u1/net"));
        assert!(ns.iter().any(|n| n["type"] == "pid" && n.get("path").is_none()));
        let mounts = v["mounts"].as_array().unwrap();
        assert!(mounts
            .iter()
            .any(|m| m["destination"] == "/etc/resolv.conf" && m["source"] == "/run/pods/u1/resolv.conf"));
        assert_eq!(v["linux"]["cgroupsPath"], "/skiff/podu1/cid");
        assert_eq!(v["process"]["cwd"], "/work");
        assert_eq!(v["linux"]["maskedPaths"].as_array().unwrap().len(), 10);
        assert!(v["process"].get("oomScoreAdj").is_none());
    }

    #[test]
    fn host_network_pods_leave_network_and_uts_out_of_the_spec() {
        let mut p = pod();
        p.netns = None;
        p.utsns = None;
        let v = build(&cspec(), &image(), &p).unwrap();
        let ns = v["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network" || n["type"] == "uts"));
    }

    #[test]
    fn resources_become_memory_limit_cpu_shares_and_quota() {
        let mut s = cspec();
        s.resources = Resources {
            cpu_request_millis: Some(250),
            cpu_limit_millis: Some(500),
            memory_limit_bytes: Some(64 << 20),
        };
        let v = build(&s, &image(), &pod()).unwrap();
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64u64 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 256);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(cpu_shares(None), 2);
    }

    #[test]
    fn nofile_is_clamped_to_what_the_daemon_may_set() {
        let v = build(&cspec(), &image(), &pod()).unwrap();
        assert_eq!(v["process"]["rlimits"][0]["hard"], 20000);
    }

    #[test]
    fn volumes_are_bound_read_only_when_asked_and_may_replace_pod_files() {
        let mut s = cspec();
        s.mounts = vec![Mount { container_path: "/etc/hosts".into(), host_path: "/v/hosts".into(), read_only: true }];
        let v = build(&s, &image(), &pod()).unwrap();
        let hosts: Vec<_> =
            v["mounts"].as_array().unwrap().iter().filter(|m| m["destination"] == "/etc/hosts").collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0]["source"], "/v/hosts");
        assert!(hosts[0]["options"].as_array().unwrap().iter().any(|o| o == "ro"));
    }

    #[test]
    fn a_container_with_nothing_to_run_is_an_error() {
        let s = cspec();
        assert!(build(&s, &ImageConfig::default(), &pod()).is_err());
    }

    #[test]
    fn image_config_is_read_from_oci_json() {
        let c =
            ImageConfig::from_json(br#"{"config":{"Cmd":["sh"],"Env":["A=1"],"WorkingDir":"/w","User":"1"}}"#).unwrap();
        assert_eq!(c.cmd, vec!["sh"]);
        assert_eq!(c.working_dir, "/w");
        assert!(ImageConfig::from_json(b"nope").is_err());
    }
}
