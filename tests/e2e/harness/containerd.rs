//! A private containerd started by the harness itself, inside a test namespace, with its root,
//! state, sockets and plugin dirs under a temp dir. skiff normally starts its own; this one is
//! for checking the harness and the test image without skiff, and for tests of
//! `--container-runtime-endpoint` later.

use super::cleanup::Footprint;
use super::{run, run_ok, unique_name, Netns, Run, MARKER_ENV};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Containerd {
    pub socket: PathBuf,
    /// containerd namespace for this instance's containers (unique: runc's state dir is
    /// /run/containerd/runc/<namespace> whatever containerd's own state dir).
    pub namespace: String,
    /// cgroup parent for containers started through [`Containerd::ctr`] (`--cgroup /<name>/<id>`).
    pub cgroup_root: String,
    pub log: PathBuf,
    child: Option<Child>,
    footprint: Footprint,
    dir: Option<tempfile::TempDir>,
}

impl Containerd {
    /// Starts containerd inside `netns` and waits until it answers.
    pub fn start(netns: &Netns) -> Containerd {
        let marker = unique_name();
        let dir = tempfile::Builder::new().prefix(&format!("{marker}-")).tempdir().expect("temp dir");
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("write containerd config");
        let log = d.join("containerd.log");
        let logf = std::fs::File::create(&log).expect("containerd log");
        let mut cmd = netns.command("containerd");
        cmd.arg("--config")
            .arg(d.join("config.toml"))
            .env(MARKER_ENV, &marker)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("start containerd");
        let footprint = Footprint {
            marker: marker.clone(),
            netns_inode: None, // the netns may hold other things; the marker and cgroup suffice
            cgroup_root: marker.clone(),
            data_dir: d.to_path_buf(),
            containerd_namespace: marker.clone(),
            pod_uids: Default::default(),
        };
        let mut c = Containerd {
            socket,
            namespace: marker.clone(),
            cgroup_root: marker,
            log,
            child: Some(child),
            footprint,
            dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.ctr(&["version"]) {
                Ok(r) if r.ok() => break,
                other => {
                    if let Some(Ok(Some(st))) = c.child.as_mut().map(|ch| ch.try_wait()) {
                        panic!("containerd exited ({st}) before answering\n{}", super::tail(&c.log, 40));
                    }
                    if Instant::now() > deadline {
                        panic!("containerd did not answer within 20s: {other:?}\n{}", super::tail(&c.log, 40));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        c
    }

    pub fn dir(&self) -> &Path {
        &self.footprint.data_dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn footprint(&self) -> &Footprint {
        &self.footprint
    }

    /// `ctr -a SOCKET -n NAMESPACE ARGS…` (ctr reaches containerd by its socket; no netns needed).
    pub fn ctr(&self, args: &[&str]) -> Result<Run, String> {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(&self.socket).arg("-n").arg(&self.namespace).args(args);
        run(&mut cmd, Duration::from_secs(60))
    }

    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(&self.socket).arg("-n").arg(&self.namespace).args(args);
        run_ok(&mut cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}\n{}", super::tail(&self.log, 30)))
    }

    /// Stops containerd and everything it started; returns what could not be cleaned.
    pub fn shutdown(&mut self) -> Vec<String> {
        let problems = self.footprint.teardown(self.child.as_mut(), Duration::from_secs(5));
        self.child = None;
        if let Some(d) = self.dir.take() {
            if super::keep_files() {
                eprintln!("[e2e] keeping {}", d.keep().display());
            }
        }
        problems
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() || self.dir.is_some() {
            for p in self.shutdown() {
                eprintln!("[e2e] cleanup problem: {p}");
            }
        }
    }
}
