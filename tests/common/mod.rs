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
        match TestServer::try_start(extra) {
            Ok(s) => s,
            Err(e) => panic!("server start: {e}"),
        }
    }

    /// [`TestServer::start`], returning why the server refused to start instead of panicking.
    pub fn try_start(extra: &[&str]) -> Result<TestServer, String> {
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
                let running = match skiff::server::start(cfg, listener, sd.clone()).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                tx.send(Ok(running.port)).expect("send port");
                sd.cancelled().await;
                for t in running.tasks {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), t).await;
                }
            });
        });
        let port = match rx.recv().expect("server thread answered") {
            Ok(p) => p,
            Err(e) => {
                let _ = thread.join();
                return Err(e);
            }
        };
        Ok(TestServer { dir, kubeconfig, port, shutdown, thread: Some(thread), etcd })
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

/// Raw HTTPS requests to a [`TestServer`] (for status codes and bodies kubectl hides), as the
/// admin (client certificate), with a bearer token, or anonymously.
pub struct Http {
    rt: tokio::runtime::Runtime,
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    >,
    base: String,
    token: Option<String>,
}

/// Who an [`Http`] client is.
pub enum As<'a> {
    Admin,
    Token(&'a str),
    Anonymous,
}

impl TestServer {
    pub fn http(&self, who: As<'_>) -> Http {
        use base64::Engine;
        let kc: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&self.kubeconfig).expect("kubeconfig")).expect("yaml");
        let b64 = |p: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(kc.pointer(p).and_then(|v| v.as_str()).expect(p))
                .expect("base64")
        };
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &b64("/clusters/0/cluster/certificate-authority-data")[..]) {
            roots.add(c.expect("ca")).expect("add ca");
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_root_certificates(roots);
        let cfg = match who {
            As::Admin => {
                let certs: Vec<_> = rustls_pemfile::certs(&mut &b64("/users/0/user/client-certificate-data")[..])
                    .collect::<Result<_, _>>()
                    .expect("cert");
                let key = rustls_pemfile::private_key(&mut &b64("/users/0/user/client-key-data")[..])
                    .expect("key")
                    .expect("a key");
                builder.with_client_auth_cert(certs, key).expect("client cert")
            }
            _ => builder.with_no_client_auth(),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(cfg).https_only().enable_http1().build();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        let token = match who {
            As::Token(t) => Some(t.to_string()),
            _ => None,
        };
        Http { rt, client, base: format!("https://127.0.0.1:{}", self.port), token }
    }
}

impl Http {
    /// Sends a request; returns the status code and the body as text. A stream (watch) is read
    /// for at most `read_for` when given.
    pub fn send(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> (u16, String) {
        self.send_with(method, path, content_type, body, None)
    }

    pub fn send_with(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
        read_for: Option<std::time::Duration>,
    ) -> (u16, String) {
        use http_body_util::BodyExt;
        let mut req = http::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(body))).expect("request");
        self.rt.block_on(async {
            let resp = self.client.request(req).await.expect("request sent");
            let code = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut out = Vec::new();
            let read = async {
                while let Some(f) = body.frame().await {
                    match f {
                        Ok(f) => {
                            if let Ok(d) = f.into_data() {
                                out.extend_from_slice(&d);
                            }
                        }
                        Err(_) => break,
                    }
                }
            };
            match read_for {
                Some(d) => {
                    let _ = tokio::time::timeout(d, read).await;
                }
                None => read.await,
            }
            (code, String::from_utf8_lossy(&out).into_owned())
        })
    }

    /// [`Http::send`] with a JSON answer (a `Status` for errors); panics if it is not JSON.
    pub fn json(&self, method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> (u16, serde_json::Value) {
        let (code, text) = self.send(method, path, content_type, body);
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {code} {text:?}: {e}"));
        (code, v)
    }
}
