//! What the bench binaries share: a `skiff server --disable-agent` child process (so its memory
//! is measured alone), started in a temporary directory and killed by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// The server child, killed by PID when dropped.
pub struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// The server's resident set, MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }

    /// CPU time (user + system) the server has used so far, seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }
}

/// CPU time (user + system, all threads) process `pid` has used, seconds (NaN if unreadable).
pub fn cpu_seconds(pid: u32) -> f64 {
    // /proc/PID/stat: the command may hold spaces, so fields are counted after its ')'.
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
        let rest = s.get(s.rfind(')')? + 1..)?.to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are the 12th and 13th after the ')'.
        Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
    });
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks.map(|t| t / if hz > 0.0 { hz } else { 100.0 }).unwrap_or(f64::NAN)
}

/// The resident set of process `pid`, MiB (NaN if it cannot be read).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// The `skiff` binary next to the running bench binary.
pub fn default_skiff() -> Result<PathBuf, BoxErr> {
    Ok(std::env::current_exe()?.parent().ok_or("no exe dir")?.join("skiff"))
}

fn free_port() -> Result<u16, BoxErr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `bin server --disable-agent` on a free loopback port with its data in `dir` (plus
/// `extra` arguments) and returns it with an admin client once it answers.
pub async fn start_server(bin: &Path, dir: &Path, extra: &[&str]) -> Result<(Server, kube::Client), BoxErr> {
    let port = free_port()?;
    let kubeconfig = dir.join("kubeconfig.yaml");
    let log = std::fs::File::create(dir.join("server.log"))?;
    let child = Command::new(bin)
        .args(["server", "--disable-agent", "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1"])
        .args(["--node-ip", "127.0.0.1", "--https-listen-port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .args(extra)
        .env("SKIFF_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let server = Server { child };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(yaml) = std::fs::read_to_string(&kubeconfig) {
            if let Ok(cfg) = crate::server::kube_config(&yaml).await {
                let client = kube::Client::try_from(cfg)?;
                let ns: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
                if ns.get("default").await.is_ok() {
                    return Ok((server, client));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("the server did not become ready; see {}", dir.join("server.log").display()).into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
