//! Helpers for the tests that run `skiff server` as child processes on loopback (tests/ha.rs,
//! tests/ha_membership.rs): spawning servers, admin calls through their HTTPS port, and the
//! test directory kept for its logs when HA_TEST_KEEP is set.
#![allow(dead_code)]

use skiff::server::join::{self, MembersResponse};
use skiff::server::snapshot::admin_credentials;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The test's directory: removed afterwards unless HA_TEST_KEEP is set (then its path is printed).
pub enum TestDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl TestDir {
    pub fn new() -> TestDir {
        let d = tempfile::tempdir().expect("tempdir");
        if std::env::var("HA_TEST_KEEP").is_ok() {
            let p = d.keep();
            eprintln!("keeping {}", p.display());
            TestDir::Kept(p)
        } else {
            TestDir::Temp(d)
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            TestDir::Temp(d) => d.path(),
            TestDir::Kept(p) => p,
        }
    }
}

/// A `skiff server` child process, killed (by PID) when dropped.
pub struct Proc {
    pub child: Child,
    pub data: PathBuf,
    pub port: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts `skiff server` with data dir `<root>/<name>` and log `<root>/<log>.log`.
pub fn spawn(root: &Path, name: &str, log: &str, extra: &[String]) -> Proc {
    let data = root.join(name);
    std::fs::create_dir_all(&data).expect("mkdir");
    let port = free_port();
    let log = std::fs::File::create(root.join(format!("{log}.log"))).expect("log");
    let mut args: Vec<String> = [
        "server",
        "--disable-agent",
        "--node-ip",
        "127.0.0.1",
        "--advertise-address",
        "127.0.0.1",
        "--bind-address",
        "127.0.0.1",
        "--node-name",
        name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "--https-listen-port".into(),
        port.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--write-kubeconfig".into(),
        data.join("kubeconfig.yaml").display().to_string(),
    ]);
    args.extend(extra.iter().cloned());
    let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(&args)
        .env("SKIFF_LOG", std::env::var("HA_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn skiff");
    Proc { child, data, port }
}

pub fn rt() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Runtime::new().expect("runtime")
}

/// One admin request to a server; (status, body).
pub async fn call(
    p: &Proc,
    method: hyper::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Option<(u16, serde_json::Value)> {
    call_as(p, p.port, method, path, body).await
}

/// One request with `creds`' admin credentials (and CA) to the server on `port`.
pub async fn call_as(
    creds: &Proc,
    port: u16,
    method: hyper::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Option<(u16, serde_json::Value)> {
    let (_, ca, cert, key) = admin_credentials(&creds.data.join("server/cred/admin.kubeconfig")).ok()?;
    let tls = join::client_tls(Some(&ca), Some((&cert, &key))).ok()?;
    let url = format!("https://127.0.0.1:{port}{path}");
    let body = body.map(|b| serde_json::to_vec(&b).expect("json"));
    let (status, bytes) =
        tokio::time::timeout(Duration::from_secs(15), join::https_call(tls, method, &url, body)).await.ok()?.ok()?;
    Some((status.as_u16(), serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
}

pub fn log_of(root: &Path, log: &str) -> String {
    std::fs::read_to_string(root.join(format!("{log}.log"))).unwrap_or_default()
}

pub async fn wait_ready(p: &Proc, root: &Path, log: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Some((200, _)) = call(p, hyper::Method::GET, "/api/v1/namespaces/default", None).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{log} did not become ready; its log:\n{}\n{}", log_of(root, log), other_logs(root, log));
}

/// The last lines of every other server's log under `root`, for a failure message.
pub fn other_logs(root: &Path, except: &str) -> String {
    let mut out = String::new();
    let mut names: Vec<String> = std::fs::read_dir(root)
        .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    for name in names {
        let Some(stem) = name.strip_suffix(".log") else { continue };
        if stem == except {
            continue;
        }
        let text = log_of(root, stem);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        out.push_str(&format!("--- {stem}.log (last 25 lines) ---\n{tail}\n"));
    }
    out
}

pub async fn members(p: &Proc) -> Option<MembersResponse> {
    let (status, v) = call(p, hyper::Method::GET, join::MEMBERS_PATH, None).await?;
    (status == 200).then(|| serde_json::from_value(v).ok()).flatten()
}

pub fn configmap(name: &str, value: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": value}})
}

pub async fn create_cm(p: &Proc, name: &str, value: &str) -> Option<u16> {
    call(p, hyper::Method::POST, "/api/v1/namespaces/default/configmaps", Some(configmap(name, value)))
        .await
        .map(|(s, _)| s)
}

pub async fn get_cm(p: &Proc, name: &str) -> Option<serde_json::Value> {
    match call(p, hyper::Method::GET, &format!("/api/v1/namespaces/default/configmaps/{name}"), None).await {
        Some((200, v)) => Some(v),
        _ => None,
    }
}
