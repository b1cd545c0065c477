//! Finding and removing everything a test node left behind. Processes are found by what is unique
//! to the node — its network namespace inode, the environment marker the harness set on the
//! process it started, the node's own cgroup root — and killed by pid. Never by name.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// What identifies one node's (or one private containerd's) resources on the host.
#[derive(Debug, Clone, Default)]
pub struct Footprint {
    /// Value of `SKIFF_E2E_MARKER` set on the started process (inherited by its descendants).
    pub marker: String,
    /// Inode of the node's network namespace (containerd and its shims live there too).
    pub netns_inode: Option<u64>,
    /// Name passed as `--cgroup-root` (or used as the cgroup parent of test containers).
    pub cgroup_root: String,
    /// The node's data dir: everything mounted below it is unmounted.
    pub data_dir: PathBuf,
    /// containerd namespace of the node: runc keeps its state in /run/containerd/runc/<ns>.
    pub containerd_namespace: String,
    /// UIDs of pods the node ran, whose /var/log/pods directories are removed.
    pub pod_uids: BTreeSet<String>,
}

fn proc_pids() -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return vec![] };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

fn ns_inode(pid: i32, kind: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix(&format!("{kind}:["))?.strip_suffix(']')?.parse().ok()
}

/// Processes whose network namespace is `inode`.
pub fn pids_in_netns(inode: u64) -> Vec<i32> {
    proc_pids().into_iter().filter(|&p| ns_inode(p, "net") == Some(inode)).collect()
}

/// Processes started with `SKIFF_E2E_MARKER=<marker>` in their environment.
pub fn pids_with_marker(marker: &str) -> Vec<i32> {
    let needle = format!("{}={marker}", super::MARKER_ENV).into_bytes();
    proc_pids()
        .into_iter()
        .filter(|p| match std::fs::read(format!("/proc/{p}/environ")) {
            Ok(env) => env.split(|&b| b == 0).any(|kv| kv == needle.as_slice()),
            Err(_) => false,
        })
        .collect()
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub root: String,
    pub mount_point: String,
    pub fstype: String,
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn mounts() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountInfo {
                root: unescape(f.get(3)?),
                mount_point: unescape(f.get(4)?),
                fstype: f.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// Directories of cgroup hierarchies mounted on this machine (v1 controllers and v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| PathBuf::from(m.mount_point))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Every cgroup directory named `name` within three levels of a hierarchy's root (runc places
/// an absolute cgroupsPath at the root; a relative one lands under the caller's own cgroup).
pub fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let p = e.path();
            if e.file_name().to_str() == Some(name) {
                out.push(p);
            } else if depth > 0 {
                walk(&p, name, depth - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    if name.is_empty() {
        return out;
    }
    for m in cgroup_mounts() {
        walk(&m, name, 3, &mut out);
    }
    out
}

/// Processes in the cgroup directories or any cgroup below them.
pub fn pids_in_cgroups(dirs: &[PathBuf]) -> Vec<i32> {
    fn walk(dir: &Path, out: &mut BTreeSet<i32>) {
        if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for d in dirs {
        walk(d, &mut out);
    }
    out.into_iter().collect()
}

/// Removes cgroup directories depth-first (a cgroup can only be removed once empty of children
/// and processes). Returns the ones that could not be removed.
pub fn remove_cgroups(dirs: &[PathBuf]) -> Vec<String> {
    fn rm(dir: &Path, failed: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rm(&e.path(), failed);
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                failed.push(format!("{}: {e}", dir.display()));
            }
        }
    }
    let mut failed = Vec::new();
    for d in dirs {
        rm(d, &mut failed);
    }
    failed
}

impl Footprint {
    /// Every live process that belongs to this footprint (never the test process itself).
    pub fn pids(&self) -> BTreeSet<i32> {
        let me = std::process::id() as i32;
        let mut s = BTreeSet::new();
        if let Some(ino) = self.netns_inode {
            s.extend(pids_in_netns(ino));
        }
        if !self.marker.is_empty() {
            s.extend(pids_with_marker(&self.marker));
        }
        s.extend(pids_in_cgroups(&cgroup_dirs(&self.cgroup_root)));
        s.remove(&me);
        s.retain(|p| *p > 1);
        // Zombies cannot be killed and hold nothing; they go when their parent reaps them.
        s.retain(|p| !is_zombie(*p));
        s
    }

    /// Namespace inodes (net, uts, ipc, mnt) of the given processes: pod namespaces pinned by
    /// bind mounts are recognised by them after the processes are gone.
    /// Never the test process's own namespaces (the host's, which skiff and containerd share),
    /// nor the node's network namespace, which its `Netns` deletes.
    fn ns_inodes(&self, pids: &BTreeSet<i32>) -> BTreeSet<String> {
        let me = std::process::id() as i32;
        let mut s = BTreeSet::new();
        for p in pids {
            for kind in ["net", "uts", "ipc"] {
                if let Some(i) = ns_inode(*p, kind) {
                    if ns_inode(me, kind) != Some(i) && !(kind == "net" && self.netns_inode == Some(i)) {
                        s.insert(format!("{kind}:[{i}]"));
                    }
                }
            }
        }
        s
    }

    /// Stops everything: SIGTERM to `leader`'s process group (the process the harness started,
    /// in its own group), a grace period, then SIGKILL to the group and to every process of the
    /// footprint; then unmounts, removes cgroups, runc state, shim sockets and pod logs.
    /// Returns what could not be cleaned (empty when all is gone).
    pub fn teardown(&self, leader: Option<&mut std::process::Child>, grace: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        let before = self.pids();
        let pinned = self.ns_inodes(&before);
        let shim_sockets = self.shim_sockets();

        // The process group id is the leader's pid, which cannot be reused while the leader is
        // unreaped; so the group is signalled only while `try_wait` says it has not been reaped.
        if let Some(child) = leader {
            let pgid = Pid::from_raw(child.id() as i32);
            if let Ok(None) = child.try_wait() {
                let _ = killpg(pgid, Signal::SIGTERM);
                let deadline = Instant::now() + grace;
                let mut exited = false;
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        exited = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                if !exited {
                    let _ = killpg(pgid, Signal::SIGKILL);
                    let _ = child.wait();
                }
            }
        }

        // Whatever is left (containerd in another group, shims re-parented to init, loggers,
        // container processes) is killed by pid until none remain.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = self.pids();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!("processes still alive after SIGKILL: {left:?}"));
                break;
            }
            for p in &left {
                let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }

        problems.extend(self.unmount(&pinned));

        for s in shim_sockets {
            let _ = std::fs::remove_file(s);
        }
        if !self.containerd_namespace.is_empty() {
            let runc = Path::new("/run/containerd/runc").join(&self.containerd_namespace);
            if runc.exists() {
                if let Err(e) = std::fs::remove_dir_all(&runc) {
                    problems.push(format!("{}: {e}", runc.display()));
                }
            }
        }
        self.remove_pod_logs();

        // The kernel frees a cgroup's processes a moment after they die.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let failed = remove_cgroups(&cgroup_dirs(&self.cgroup_root));
            if failed.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!("cgroups not removed: {failed:?}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        problems
    }

    /// Unmounts (lazily, deepest first) everything mounted under the data dir, anything whose
    /// path carries the marker, and namespace pins of the footprint's processes.
    fn unmount(&self, pinned: &BTreeSet<String>) -> Vec<String> {
        let dir = self.data_dir.to_string_lossy().into_owned();
        let mut targets: Vec<String> = mounts()
            .into_iter()
            // The harness's own namespace pins are left to `Netns::delete` (`ip netns delete`).
            .filter(|m| {
                !m.mount_point.starts_with("/run/netns/skiff-e2e-")
                    && !m.mount_point.starts_with("/var/run/netns/skiff-e2e-")
            })
            .filter(|m| {
                (!dir.is_empty() && (m.mount_point == dir || m.mount_point.starts_with(&format!("{dir}/"))))
                    || (!self.marker.is_empty() && m.mount_point.contains(&self.marker))
                    || (m.fstype == "nsfs" && pinned.contains(&m.root))
            })
            .map(|m| m.mount_point)
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        targets.dedup();
        let mut problems = Vec::new();
        for t in targets {
            if let Err(e) = nix::mount::umount2(t.as_str(), nix::mount::MntFlags::MNT_DETACH) {
                if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
                    problems.push(format!("umount {t}: {e}"));
                }
            }
        }
        problems
    }

    /// containerd's runc shims listen on /run/containerd/s/<hash> whatever the state dir; each
    /// task's bundle (under the data dir) records the address in a file named `address`.
    fn shim_sockets(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(dir) else { return };
            for e in rd.flatten() {
                let p = e.path();
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() && depth > 0 && !ft.is_symlink() {
                    // Never descend into container root filesystems.
                    if e.file_name() != "rootfs" {
                        walk(&p, depth - 1, out);
                    }
                } else if ft.is_file() && e.file_name() == "address" {
                    if let Ok(a) = std::fs::read_to_string(&p) {
                        if let Some(path) = a.trim().strip_prefix("unix://") {
                            if path.starts_with("/run/containerd/s/") {
                                out.push(PathBuf::from(path));
                            }
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        if !self.data_dir.as_os_str().is_empty() {
            walk(&self.data_dir, 8, &mut out);
        }
        out
    }

    /// Removes /var/log/pods/<ns>_<name>_<uid> of the footprint's pods and the
    /// /var/log/containers links into them.
    fn remove_pod_logs(&self) {
        if self.pod_uids.is_empty() {
            return;
        }
        let mut removed = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/var/log/pods") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if self.pod_uids.iter().any(|u| name.ends_with(&format!("_{u}"))) {
                    let _ = std::fs::remove_dir_all(e.path());
                    removed.push(e.path());
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir("/var/log/containers") {
            for e in rd.flatten() {
                if let Ok(target) = std::fs::read_link(e.path()) {
                    if removed.iter().any(|r| target.starts_with(r)) {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }

    /// What of this footprint is still on the machine (empty when nothing is).
    pub fn leftovers(&self) -> Vec<String> {
        let mut v = Vec::new();
        let pids = self.pids();
        if !pids.is_empty() {
            v.push(format!("processes {pids:?}"));
        }
        let dir = self.data_dir.to_string_lossy().into_owned();
        for m in mounts() {
            if (!dir.is_empty() && m.mount_point.starts_with(&dir))
                || (!self.marker.is_empty() && m.mount_point.contains(&self.marker))
            {
                v.push(format!("mount {}", m.mount_point));
            }
        }
        for d in cgroup_dirs(&self.cgroup_root) {
            v.push(format!("cgroup {}", d.display()));
        }
        if !self.containerd_namespace.is_empty() {
            let runc = Path::new("/run/containerd/runc").join(&self.containerd_namespace);
            if runc.exists() {
                v.push(format!("runc state {}", runc.display()));
            }
        }
        v
    }
}

pub fn is_zombie(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(s) => s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')).unwrap_or(false),
        Err(_) => true, // gone
    }
}

/// Inode of a path (e.g. a /var/run/netns entry).
pub fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// `P` of a name `skiff-e2e-P-N…` when process `P` is gone (a test run that died uncleanly,
/// e.g. killed by a timeout, so its `Drop`s never ran). Our own pid is never stale.
fn stale_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("skiff-e2e-")?;
    let pid: u32 = rest.split('-').next()?.parse().ok()?;
    let n = rest.split('-').nth(1)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    Some(pid)
}

/// `skiff-e2e-P-N` from a temp dir name `skiff-e2e-P-N-XXXXXX`.
fn base_name(name: &str) -> String {
    name.splitn(5, '-').take(4).collect::<Vec<_>>().join("-")
}

/// Cleans up after earlier test processes that died without cleaning up: their namespaces, the
/// processes inside them, their data dirs, mounts, cgroups and runc state. Names carry the owner's
/// pid, so only leftovers of dead test processes are touched. Runs once per test process.
pub fn reap_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut netns = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/var/run/netns") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if stale_owner(&name).is_some() {
                    netns.push((name, inode(&e.path())));
                }
            }
        }
        let mut dirs = Vec::new();
        if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if stale_owner(&name).is_some() && e.path().is_dir() {
                    dirs.push((base_name(&name), e.path()));
                }
            }
        }
        for (name, ino) in &netns {
            eprintln!("[e2e] removing leftovers of a dead test run: netns {name}");
            let fp = Footprint {
                marker: name.clone(),
                netns_inode: *ino,
                cgroup_root: name.clone(),
                containerd_namespace: name.clone(),
                ..Default::default()
            };
            for p in fp.teardown(None, Duration::ZERO) {
                eprintln!("[e2e] warning: {p}");
            }
        }
        for (name, dir) in &dirs {
            eprintln!("[e2e] removing leftovers of a dead test run: {}", dir.display());
            let fp = Footprint {
                marker: name.clone(),
                cgroup_root: name.clone(),
                containerd_namespace: name.clone(),
                data_dir: dir.clone(),
                ..Default::default()
            };
            for p in fp.teardown(None, Duration::ZERO) {
                eprintln!("[e2e] warning: {p}");
            }
            let _ = std::fs::remove_dir_all(dir);
        }
        for (name, _) in &netns {
            let _ = std::process::Command::new("ip").args(["netns", "delete", name]).status();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_live_processes_are_never_stale() {
        assert_eq!(stale_owner(&format!("skiff-e2e-{}-3", std::process::id())), None);
        assert_eq!(stale_owner("skiff-e2e-1-0"), None, "pid 1 is alive");
        assert_eq!(stale_owner("skiff-e2e-image-abc"), None);
        assert_eq!(stale_owner("other-1-2"), None);
    }

    #[test]
    fn temp_dir_names_map_to_their_node_name() {
        assert_eq!(base_name("skiff-e2e-123-4-AbCdEf"), "skiff-e2e-123-4");
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
