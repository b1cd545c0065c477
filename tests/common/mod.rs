//! Shared helpers for integration tests: an in-process `skiff server` on a loopback port 0,
//! and real kubectl 1.32 pointed at it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use tokio_util::sync::CancellationToken;

/// kubectl 1.32 (the version users have here), or None when it is not installed.
pub fn kubectl_path() -> Option<PathBuf> {
    for p in ["/usr/lib/google-cloud-sdk/bin/kubectl.1.32", "/usr/bin/kubectl", "/usr/local/bin/kubectl"] {
        if std::path::Path::new(p).exists() {
            return Some(p.into());
        }
    }
    None
}

/// Whether tests that need a tool must fail (CI) rather than skip when it is missing.
pub fn must_run() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub port: u16,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The private etcd under SKIFF_TEST_DATASTORE=etcd; dropped (killed) after the server.
    pub etcd: Option<skiff::store::etcd::testing::LocalEtcd>,
}

impl TestServer {
    /// Starts a control plane with no agent on 127.0.0.1:<random port>.
    pub fn start(extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig.yaml");
        let data = dir.path().join("data");
        let mut args: Vec<String> = vec![
            "skiff".into(),
            "server".into(),
            "--disable-agent".into(),
            "--node-ip".into(),
            "127.0.0.1".into(),
            "--node-name".into(),
            "test-node".into(),
            "--bind-address".into(),
            "127.0.0.1".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--write-kubeconfig".into(),
            kubeconfig.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let etcd = test_datastore(dir.path());
        if let Some(e) = &etcd {
            args.extend(e.server_flags());
        }
        let cli = <skiff::cli::Cli as clap::Parser>::parse_from(args);
        let skiff::cli::Command::Server(sa) = cli.command else { panic!("not a server command") };
        let host = skiff::config::HostFacts { hostname: "test".into(), first_ip: None };
        let cfg = skiff::config::resolve_server(&sa, &host).expect("config");
        let shutdown = CancellationToken::new();
        let (tx, rx) = std::sync::mpsc::channel();
        let sd = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let running = skiff::server::start(cfg, listener, sd.clone()).await.expect("server start");
                tx.send(running.port).expect("send port");
                sd.cancelled().await;
                for t in running.tasks {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
                }
            });
        });
        let port = rx.recv().expect("server started");
        TestServer { dir, kubeconfig, port, shutdown, thread: Some(thread), etcd }
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        use std::io::Write;
        let k = kubectl_path().expect("kubectl");
        let mut cmd = Command::new(k);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kubectl");
        if let Some(s) = stdin {
            child.stdin.take().expect("stdin").write_all(s.as_bytes()).expect("write stdin");
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs kubectl and panics with its output unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args);
        assert!(ok, "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}");
        out
    }

    pub fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        let (ok, out, err) = self.kubectl_stdin(args, Some(stdin));
        assert!(ok, "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}");
        out
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Returns None (and prints why) when kubectl is missing outside CI; panics in CI.
pub fn require_kubectl() -> Option<()> {
    if kubectl_path().is_some() {
        return Some(());
    }
    if must_run() {
        panic!("kubectl is required in CI");
    }
    eprintln!("skipping: kubectl not installed");
    None
}

/// With SKIFF_TEST_DATASTORE=etcd, a private etcd (Debian's etcd-server, mutual TLS, free
/// loopback ports, data under `dir`) for a [`TestServer`] to use through `--datastore-endpoint`,
/// so the API tests run on both backends. None otherwise (the embedded store).
pub fn test_datastore(dir: &std::path::Path) -> Option<skiff::store::etcd::testing::LocalEtcd> {
    match std::env::var("SKIFF_TEST_DATASTORE").as_deref() {
        Ok("etcd") => {}
        Ok("") | Ok("embedded") | Err(_) => return None,
        Ok(other) => panic!("SKIFF_TEST_DATASTORE={other}: use etcd or embedded"),
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let etcd = rt
        .block_on(skiff::store::etcd::testing::LocalEtcd::start(&dir.join("etcd"), true))
        .unwrap_or_else(|e| panic!("SKIFF_TEST_DATASTORE=etcd: {e}"));
    Some(etcd)
}
