//! Facts about this machine for the Node object: CPUs, memory, disk, OS, kernel, machine and
//! boot ids — what cAdvisor and the kubelet's `setters.go` read. The parsers are pure; `gather`
//! does the reads and tolerates any missing file (a container or odd distribution may lack one).

use std::path::Path;

/// What the node status needs from the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostInfo {
    pub hostname: String,
    pub cpu_cores: u64,
    pub memory_bytes: u64,
    pub memory_available_bytes: Option<u64>,
    pub disk_bytes: u64,
    pub disk_available_bytes: Option<u64>,
    pub os_image: String,
    pub kernel_version: String,
    /// Go's GOARCH name: amd64, arm64, arm, …
    pub architecture: String,
    pub machine_id: String,
    pub boot_id: String,
}

/// `runtime.GOARCH` for this build.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

/// A `/proc/meminfo` field in bytes (the file says kB, meaning KiB).
pub fn meminfo_field(meminfo: &str, field: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// `PRETTY_NAME` of `/etc/os-release`, unquoted; upstream's osImage.
pub fn os_pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|l| {
        let v = l.strip_prefix("PRETTY_NAME=")?;
        Some(v.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Total and available bytes of the file system holding `dir` (or its nearest existing parent).
// fsblkcnt_t and c_ulong are 32-bit on armv7, so the widening is not useless there.
#[allow(clippy::useless_conversion)]
fn disk(dir: &Path) -> Option<(u64, u64)> {
    let mut d = dir;
    loop {
        if d.exists() {
            break;
        }
        d = d.parent()?;
    }
    match nix::sys::statvfs::statvfs(d) {
        Ok(s) => {
            let frag = u64::from(s.fragment_size());
            Some((u64::from(s.blocks()) * frag, u64::from(s.blocks_available()) * frag))
        }
        Err(e) => {
            tracing::warn!(dir = %d.display(), error = %e, "statvfs failed; reporting no ephemeral storage");
            None
        }
    }
}

/// Reads the host facts; the data dir is where ephemeral storage is measured.
pub fn gather(data_dir: &Path) -> HostInfo {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let os_release = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cpu_cores = if online > 0 {
        online as u64
    } else {
        std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1)
    };
    let (disk_bytes, disk_available) = match disk(data_dir) {
        Some((t, a)) => (t, Some(a)),
        None => (0, None),
    };
    HostInfo {
        hostname: crate::server::hostname(),
        cpu_cores,
        memory_bytes: meminfo_field(&meminfo, "MemTotal").unwrap_or(0),
        memory_available_bytes: meminfo_field(&meminfo, "MemAvailable"),
        disk_bytes,
        disk_available_bytes: disk_available,
        os_image: os_pretty_name(&os_release).unwrap_or_else(|| "Linux".into()),
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
        architecture: go_arch().into(),
        machine_id: read_trimmed("/etc/machine-id")
            .or_else(|| read_trimmed("/var/lib/dbus/machine-id"))
            .unwrap_or_default(),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_are_read_in_bytes() {
        let m = "MemTotal:        8039828 kB\nMemFree:          123 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(meminfo_field(m, "MemTotal"), Some(8039828 * 1024));
        assert_eq!(meminfo_field(m, "MemAvailable"), Some(4000000 * 1024));
        assert_eq!(meminfo_field(m, "Mem"), None);
    }

    #[test]
    fn os_image_is_the_pretty_name_unquoted() {
        let r = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";
        assert_eq!(os_pretty_name(r).as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
    }

    #[test]
    fn gathering_this_host_finds_cpus_and_memory() {
        let h = gather(Path::new("/nonexistent/skiff/data"));
        assert!(h.cpu_cores >= 1);
        assert!(h.memory_bytes > 0);
        assert!(h.disk_bytes > 0, "measured on the nearest existing parent");
    }
}
