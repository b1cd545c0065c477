//! Pod sandboxes without a sandbox process: the pod's network, UTS and IPC namespaces are created
//! by a short-lived OS thread (`unshare`, `sethostname`) and pinned by bind-mounting
//! `/proc/self/task/<tid>/ns/{net,uts,ipc}` onto files in the pod's run directory, the way
//! `ip netns add` and CRI-O's `pinns` do. Containers join them by `path` in their OCI spec.
//! The directory also holds the pod's `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`, and a
//! `sandbox.json` record so sandboxes can be listed after an agent restart.

use super::{DnsConfig, PodRef, SandboxSpec};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Errors creating or removing a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Creating a namespace or bind-mounting it failed.
    #[error("pin {ns} namespace for pod {uid}: {reason}; the agent needs root (CAP_SYS_ADMIN)")]
    Pin { uid: String, ns: &'static str, reason: String },
    /// A file in the pod directory could not be written or read.
    #[error("pod directory {path}: {reason}")]
    Io { path: String, reason: String },
}

fn io_err(p: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |e| SandboxError::Io { path: p.display().to_string(), reason: e.to_string() }
}

/// What is persisted about a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    pub host_network: bool,
    pub ip: Option<IpAddr>,
}

impl SandboxRecord {
    pub fn pod(&self) -> PodRef {
        PodRef { uid: self.uid.clone(), namespace: self.namespace.clone(), name: self.name.clone() }
    }
}

/// The files of one pod under `<run>/pods/<uid>/`.
#[derive(Debug, Clone)]
pub struct PodDir {
    pub dir: PathBuf,
}

impl PodDir {
    pub fn new(run_dir: &Path, uid: &str) -> PodDir {
        PodDir { dir: run_dir.join("pods").join(uid) }
    }
    pub fn netns(&self) -> PathBuf {
        self.dir.join("ns-net")
    }
    pub fn utsns(&self) -> PathBuf {
        self.dir.join("ns-uts")
    }
    pub fn ipcns(&self) -> PathBuf {
        self.dir.join("ns-ipc")
    }
    pub fn hosts(&self) -> PathBuf {
        self.dir.join("hosts")
    }
    pub fn resolv(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    pub fn hostname(&self) -> PathBuf {
        self.dir.join("hostname")
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join("sandbox.json")
    }

    pub fn read_record(&self) -> Option<SandboxRecord> {
        let b = std::fs::read(self.record()).ok()?;
        serde_json::from_slice(&b).ok()
    }

    pub fn write_record(&self, r: &SandboxRecord) -> Result<(), SandboxError> {
        let p = self.record();
        let b = serde_json::to_vec_pretty(r)
            .map_err(|e| SandboxError::Io { path: p.display().to_string(), reason: e.to_string() })?;
        write_atomic(&p, &b)
    }

    /// Is every namespace the record needs still pinned (mounted)?
    pub fn pinned(&self, host_network: bool) -> bool {
        let mut want = vec![self.ipcns()];
        if !host_network {
            want.push(self.netns());
            want.push(self.utsns());
        }
        want.iter().all(|p| is_nsfs(p))
    }
}

fn write_atomic(p: &Path, data: &[u8]) -> Result<(), SandboxError> {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, p).map_err(io_err(p))
}

/// A pinned namespace file is a mount of nsfs: its device differs from the directory's.
fn is_nsfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC).unwrap_or(false)
}

/// Creates the pod's namespaces on a dedicated thread and pins them. With host networking only
/// IPC is new; network and UTS stay the node's (Kubernetes `hostNetwork` semantics).
pub async fn pin_namespaces(pod: &PodDir, uid: &str, hostname: &str, host_network: bool) -> Result<(), SandboxError> {
    let dir = pod.clone();
    let uid = uid.to_string();
    let hostname = hostname.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let pin_err = |uid: &str, ns: &'static str, reason: String| SandboxError::Pin { uid: uid.to_string(), ns, reason };
    std::thread::Builder::new()
        .name("skiff-pinns".into())
        .spawn(move || {
            let run = || -> Result<(), SandboxError> {
                let mut flags = CloneFlags::CLONE_NEWIPC;
                if !host_network {
                    flags |= CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS;
                }
                // unshare() affects only this thread for net/uts/ipc; the thread ends right after,
                // so no other work ever runs inside the pod's namespaces.
                unshare(flags).map_err(|e| pin_err(&uid, "pod", e.to_string()))?;
                if !host_network {
                    nix::unistd::sethostname(&hostname)
                        .map_err(|e| pin_err(&uid, "uts", format!("sethostname: {e}")))?;
                }
                let tid = nix::unistd::gettid();
                let mut which: Vec<(&'static str, PathBuf)> = vec![("ipc", dir.ipcns())];
                if !host_network {
                    which.push(("net", dir.netns()));
                    which.push(("uts", dir.utsns()));
                }
                for (ns, target) in which {
                    if is_nsfs(&target) {
                        let _ = umount2(&target, MntFlags::MNT_DETACH);
                    }
                    std::fs::File::create(&target).map_err(io_err(&target))?;
                    let src = format!("/proc/self/task/{tid}/ns/{ns}");
                    mount(Some(src.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                        .map_err(|e| pin_err(&uid, ns, format!("bind {src} on {}: {e}", target.display())))?;
                }
                Ok(())
            };
            let _ = tx.send(run());
        })
        .map_err(|e| SandboxError::Pin { uid: pod.dir.display().to_string(), ns: "pod", reason: e.to_string() })?;
    rx.await.map_err(|_| SandboxError::Pin {
        uid: pod.dir.display().to_string(),
        ns: "pod",
        reason: "pin thread panicked".into(),
    })?
}

/// Unmounts the pinned namespaces (a namespace dies with its last reference) and removes the
/// pod directory. Idempotent.
pub fn unpin_and_remove(pod: &PodDir) -> Result<(), SandboxError> {
    for p in [pod.netns(), pod.utsns(), pod.ipcns()] {
        if is_nsfs(&p) {
            if let Err(e) = umount2(&p, MntFlags::MNT_DETACH) {
                tracing::warn!(path = %p.display(), error = %e, "unmounting pinned namespace failed");
                return Err(SandboxError::Io { path: p.display().to_string(), reason: format!("umount: {e}") });
            }
        }
    }
    match std::fs::remove_dir_all(&pod.dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&pod.dir)(e)),
    }
}

/// The pod's /etc/hosts, as the kubelet writes it for pods with their own network.
pub fn hosts_file(spec: &SandboxSpec, ip: Option<IpAddr>) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{}\n", spec.hostname));
    }
    s.push_str(&alias_block(spec));
    s
}

/// The `spec.hostAliases` block the kubelet appends to /etc/hosts.
fn alias_block(spec: &SandboxSpec) -> String {
    let mut s = String::new();
    if !spec.host_aliases.is_empty() {
        s.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in &spec.host_aliases {
            s.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
    }
    s
}

/// The pod's /etc/resolv.conf; with no nameservers given, the node's own file is used (what the
/// kubelet does for `dnsPolicy: Default`).
pub fn resolv_conf(dns: &DnsConfig, host_resolv: &str) -> String {
    if dns.nameservers.is_empty() && dns.searches.is_empty() && dns.options.is_empty() {
        return host_resolv.to_string();
    }
    let mut s = String::new();
    for n in &dns.nameservers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

/// Writes hosts, resolv.conf and hostname into the pod directory.
pub fn write_pod_files(pod: &PodDir, spec: &SandboxSpec, ip: Option<IpAddr>) -> Result<(), SandboxError> {
    let hosts = if spec.host_network {
        // Host-network pods see the node's hosts file, plus their aliases.
        let mut h = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        h.push_str(&alias_block(spec));
        h
    } else {
        hosts_file(spec, ip)
    };
    write_atomic(&pod.hosts(), hosts.as_bytes())?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    write_atomic(&pod.resolv(), resolv_conf(&spec.dns, &host_resolv).as_bytes())?;
    let hostname = if spec.host_network {
        nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| spec.hostname.clone())
    } else {
        spec.hostname.clone()
    };
    write_atomic(&pod.hostname(), format!("{hostname}\n").as_bytes())
}

/// Every sandbox record under `<run>/pods`.
pub fn list_records(run_dir: &Path) -> Vec<SandboxRecord> {
    let Ok(rd) = std::fs::read_dir(run_dir.join("pods")) else { return Vec::new() };
    rd.filter_map(|e| e.ok()).filter_map(|e| PodDir { dir: e.path() }.read_record()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            pod: PodRef { uid: "u".into(), namespace: "default".into(), name: "web".into() },
            hostname: "web".into(),
            host_network: false,
            dns: DnsConfig::default(),
            host_aliases: vec![("10.0.0.9".into(), vec!["db".into(), "db.local".into()])],
        }
    }

    #[test]
    fn hosts_file_names_the_pod_ip_and_lists_host_aliases() {
        let h = hosts_file(&spec(), Some("10.42.0.2".parse().unwrap()));
        assert!(h.contains("127.0.0.1\tlocalhost\n"));
        assert!(h.contains("10.42.0.2\tweb\n"));
        assert!(h.contains("10.0.0.9\tdb\tdb.local\n"));
    }

    #[test]
    fn resolv_conf_lists_servers_searches_and_options() {
        let d = DnsConfig {
            nameservers: vec!["10.43.0.10".into()],
            searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&d, "nameserver 1.1.1.1\n"),
            "nameserver 10.43.0.10\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(&DnsConfig::default(), "nameserver 1.1.1.1\n"), "nameserver 1.1.1.1\n");
    }

    #[test]
    fn records_round_trip_through_the_pod_directory() {
        let d = tempfile::tempdir().unwrap();
        let pod = PodDir::new(d.path(), "u");
        std::fs::create_dir_all(&pod.dir).unwrap();
        let r = SandboxRecord {
            uid: "u".into(),
            namespace: "default".into(),
            name: "web".into(),
            hostname: "web".into(),
            host_network: false,
            ip: Some("10.42.0.2".parse().unwrap()),
        };
        pod.write_record(&r).unwrap();
        assert_eq!(list_records(d.path()), vec![r]);
        assert!(!pod.pinned(false));
        unpin_and_remove(&pod).unwrap();
        assert!(list_records(d.path()).is_empty());
    }
}
