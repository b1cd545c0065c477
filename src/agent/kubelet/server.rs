//! The kubelet API on `kubelet_port` (10250 by default): HTTPS with client certificates from
//! the kubelet client CA, authorised for group `system:masters` only (the API server's
//! kubelet-client identity) until SubjectAccessReview delegation exists. Serves `GET /containerLogs/{namespace}/{pod}/{container}` — the
//! endpoint the API server proxies `pods/{name}/log` to — `GET /stats/summary` (resource usage
//! in the Summary API shape, `super::stats`, read by the API server's metrics.k8s.io),
//! `GET /metrics/resource` (the same as Prometheus text) and
//! `GET /healthz`.
//!
//! Logs are read from the CRI files under the log root (`<ns>_<pod>_<uid>/<container>/<n>.log`);
//! `follow` keeps streaming appended lines until the container is no longer running or the
//! client goes away (upstream `ReadLogs` with follow, which re-checks the container every
//! second).

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cri_log::{tail_start, LogOptions, Renderer};
use crate::agent::runtime::{ContainerState, Runtime};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Accepting connections failed for good.
    #[error("kubelet server: accept: {0}")]
    Accept(std::io::Error),
}

/// Whether the container writing a log file still runs (so `follow` should keep waiting).
#[async_trait]
pub trait ContainerLiveness: Send + Sync {
    async fn is_running(&self, log_path: &Path) -> bool;
}

/// Liveness from the runtime's container list.
pub struct RuntimeLiveness(pub Arc<dyn Runtime>);

#[async_trait]
impl ContainerLiveness for RuntimeLiveness {
    async fn is_running(&self, log_path: &Path) -> bool {
        match self.0.list_containers().await {
            Ok(cs) => cs.iter().any(|c| c.log_path == log_path && matches!(c.state, ContainerState::Running { .. })),
            // Unknown: keep following; the client can always disconnect.
            Err(e) => {
                tracing::debug!(error = %e, "listing containers for log follow failed");
                true
            }
        }
    }
}

#[derive(Clone)]
pub struct ServerState {
    pub log_root: PathBuf,
    pub liveness: Arc<dyn ContainerLiveness>,
    /// Serves exec/attach (`super::streaming`) when set.
    pub runtime: Option<Arc<dyn Runtime>>,
    /// Serves `/stats/summary` (`super::stats`) when set.
    pub stats: Option<Arc<super::stats::StatsProvider>>,
}

pub fn router(state: ServerState) -> Router {
    let streaming = state.runtime.clone().map(super::streaming::router).unwrap_or_default();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{namespace}/{pod}/{container}", get(container_logs))
        .route("/stats/summary", get(stats_summary))
        .route("/metrics/resource", get(resource_metrics))
        .with_state(state)
        .merge(streaming)
}

/// `GET /stats/summary`: the Summary API (stats/v1alpha1) of this node.
async fn stats_summary(State(st): State<ServerState>) -> Response {
    let Some(stats) = st.stats.clone() else {
        return (StatusCode::NOT_FOUND, "stats are not collected on this node").into_response();
    };
    match stats.summary().await {
        Ok(v) => ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("failed to get node info: {e}")).into_response(),
    }
}

/// `GET /metrics/resource`: the same numbers as Prometheus text (what metrics-server scrapes).
async fn resource_metrics(State(st): State<ServerState>) -> Response {
    let Some(stats) = st.stats.clone() else {
        return (StatusCode::NOT_FOUND, "stats are not collected on this node").into_response();
    };
    match stats.summary().await {
        Ok(v) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            super::stats::resource_metrics_text(&v),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("failed to get node info: {e}")).into_response(),
    }
}

/// Serves the router over TLS on an already-bound listener until shutdown.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: ServerState,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(state);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends pass; keep serving after a pause.
                    tracing::warn!(error = %e, "kubelet server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "kubelet TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // Authorization: upstream asks the API server (SubjectAccessReview on nodes/proxy);
            // until skiff serves that, only superusers (group system:masters, which RBAC always
            // allows; the API server's kubelet-client identity) get in. Other holders of a
            // cluster client certificate, such as other nodes, are refused.
            let identity =
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| identity(c.as_ref()));
            let app = match identity {
                Some(id) if id.groups.iter().any(|g| g == "system:masters") => app,
                other => {
                    let user = other.map(|i| i.user).unwrap_or_default();
                    tracing::info!(%peer, %user, "kubelet API request refused: not authorized");
                    let msg = format!("Forbidden (user={user}, verb=get, resource=nodes, subresource(s)=[proxy])");
                    Router::new().fallback(move || async move { (StatusCode::FORBIDDEN, msg) })
                }
            };
            let svc = TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Upgrades: exec/attach switch to WebSocket (super::streaming).
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(%peer, error = %e, "kubelet connection ended with error") },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// Who a client certificate names: user = CN, groups = O (as the API server reads it).
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

pub fn identity(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject.iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_string();
    let groups = subject.iter_organization().filter_map(|a| a.as_str().ok()).map(str::to_string).collect();
    Some(Identity { user, groups })
}

/// Go's `strconv.ParseBool`, which the kubelet's query decoding uses.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "" => Some(false),
        _ => None,
    }
}

#[derive(Debug, PartialEq)]
struct LogQuery {
    opts: LogOptions,
    previous: bool,
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, msg).into_response()
}

/// The `PodLogOptions` query, validated as the API server does.
fn parse_query(q: &HashMap<String, String>, now: DateTime<Utc>) -> Result<LogQuery, String> {
    let boolean = |k: &str| match q.get(k) {
        None => Ok(false),
        Some(v) => parse_bool(v).ok_or_else(|| format!("{k}: invalid boolean {v:?}")),
    };
    let int = |k: &str| match q.get(k) {
        None => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|_| format!("{k}: invalid integer {v:?}")),
    };
    let mut opts = LogOptions { follow: boolean("follow")?, timestamps: boolean("timestamps")?, ..Default::default() };
    let previous = boolean("previous")?;
    if let Some(n) = int("tailLines")? {
        // Negative means "all", as the kubelet treats it.
        opts.tail_lines = u64::try_from(n).ok();
    }
    if let Some(n) = int("limitBytes")? {
        if n < 1 {
            return Err("limitBytes: must be greater than 0".into());
        }
        opts.limit_bytes = Some(n as u64);
    }
    let since_seconds = int("sinceSeconds")?;
    let since_time = q.get("sinceTime");
    if since_seconds.is_some() && since_time.is_some() {
        return Err("at most one of sinceTime or sinceSeconds may be specified".into());
    }
    if let Some(s) = since_seconds {
        if s < 1 {
            return Err("sinceSeconds: must be greater than 0".into());
        }
        opts.since = Some(now - chrono::Duration::seconds(s));
    }
    if let Some(t) = since_time {
        let t = DateTime::parse_from_rfc3339(t).map_err(|_| format!("sinceTime: {t:?} is not an RFC3339 time"))?;
        opts.since = Some(t.with_timezone(&Utc));
    }
    Ok(LogQuery { opts, previous })
}

#[derive(Debug, PartialEq)]
enum FindError {
    PodNotFound,
    ContainerNotFound,
    NoPrevious,
}

/// The log file of a container: the pod's newest log directory (a re-created pod of the same
/// name has a new UID), then the highest restart number, or the one before it for `previous`.
fn find_log_file(root: &Path, ns: &str, pod: &str, container: &str, previous: bool) -> Result<PathBuf, FindError> {
    // Names and namespaces are DNS labels/subdomains: no '_' inside, so the prefix is exact.
    let prefix = format!("{ns}_{pod}_");
    let dirs = std::fs::read_dir(root).map_err(|_| FindError::PodNotFound)?;
    let pod_dir = dirs
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .ok_or(FindError::PodNotFound)?
        .path();
    let files = std::fs::read_dir(pod_dir.join(container)).map_err(|_| FindError::ContainerNotFound)?;
    let mut numbered: Vec<(u64, PathBuf)> = files
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_suffix(".log")?.parse::<u64>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    numbered.sort();
    let pick = if previous { numbered.len().checked_sub(2) } else { numbered.len().checked_sub(1) };
    match pick {
        Some(i) => Ok(numbered[i].1.clone()),
        None if previous => Err(FindError::NoPrevious),
        None => Err(FindError::ContainerNotFound),
    }
}

async fn container_logs(
    State(st): State<ServerState>,
    UrlPath((ns, pod, container)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let query = match parse_query(&q, Utc::now()) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let root = st.log_root.clone();
    let (ns2, pod2, c2, prev) = (ns.clone(), pod.clone(), container.clone(), query.previous);
    let found = tokio::task::spawn_blocking(move || find_log_file(&root, &ns2, &pod2, &c2, prev)).await;
    let path = match found {
        Ok(Ok(p)) => p,
        Ok(Err(FindError::PodNotFound)) => {
            return (StatusCode::NOT_FOUND, format!("pod \"{pod}\" in namespace \"{ns}\" not found on this node"))
                .into_response()
        }
        // Upstream messages for a container without output yet and for a missing --previous.
        Ok(Err(FindError::ContainerNotFound)) => {
            return bad_request(format!(
                "container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"
            ))
        }
        Ok(Err(FindError::NoPrevious)) => {
            return bad_request(format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"))
        }
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(stream_log(path, query.opts, st.liveness.clone(), tx));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// Renders the complete lines of `buf` and keeps an unfinished last line for later.
fn take_lines(buf: &mut Vec<u8>, r: &mut Renderer) -> Vec<u8> {
    match buf.iter().rposition(|b| *b == b'\n') {
        Some(end) => {
            let out = r.render_all(&buf[..end]);
            buf.drain(..=end);
            out
        }
        None => Vec::new(),
    }
}

async fn stream_log(
    path: PathBuf,
    opts: LogOptions,
    liveness: Arc<dyn ContainerLiveness>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let follow = opts.follow;
    let tail = opts.tail_lines;
    let mut renderer = Renderer::new(opts);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "opening log file failed");
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let mut chunk = vec![0u8; 64 * 1024];
    // What has been read but not rendered: an unfinished last line (the logger is mid-write).
    let mut pending: Vec<u8> = Vec::new();
    if let Some(n) = tail {
        // tailLines needs the end of the file; rotation keeps files small, so read it whole.
        let mut data = Vec::new();
        if let Err(e) = file.read_to_end(&mut data).await {
            let _ = tx.send(Err(e)).await;
            return;
        }
        let complete = data.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0);
        let out = renderer.render_all(&data[tail_start(&data[..complete], n)..complete]);
        pending = data[complete..].to_vec();
        if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
            return;
        }
    } else {
        // Otherwise stream the file in chunks, never holding all of it.
        loop {
            match file.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    pending.extend_from_slice(&chunk[..n]);
                    let out = take_lines(&mut pending, &mut renderer);
                    if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                        return;
                    }
                    if renderer.exhausted() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "reading log file failed");
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }
    if !follow {
        return;
    }
    let mut last_check = Instant::now();
    loop {
        if renderer.exhausted() || tx.is_closed() {
            return;
        }
        match file.read(&mut chunk).await {
            Ok(0) => {
                // Nothing new: every second ask whether the container still runs; once it has
                // stopped, whatever it wrote is already in the file, so the stream ends.
                if last_check.elapsed() >= Duration::from_secs(1) {
                    last_check = Instant::now();
                    if !liveness.is_running(&path).await {
                        let mut rest = Vec::new();
                        let _ = file.read_to_end(&mut rest).await;
                        pending.extend_from_slice(&rest);
                        pending.push(b'\n');
                        let out = take_lines(&mut pending, &mut renderer);
                        if !out.is_empty() {
                            let _ = tx.send(Ok(Bytes::from(out))).await;
                        }
                        return;
                    }
                }
                // A rotated (truncated) file starts over.
                if let (Ok(meta), Ok(pos)) = (file.metadata().await, file.stream_position().await) {
                    if meta.len() < pos {
                        let _ = file.seek(std::io::SeekFrom::Start(0)).await;
                        pending.clear();
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                let out = take_lines(&mut pending, &mut renderer);
                if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "reading log file failed");
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(AtomicBool);
    #[async_trait]
    impl ContainerLiveness for Flag {
        async fn is_running(&self, _: &Path) -> bool {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_log_query_is_parsed_and_validated_like_pod_log_options() {
        let now = Utc::now();
        let p =
            parse_query(&q(&[("follow", "true"), ("tailLines", "10"), ("timestamps", "1"), ("limitBytes", "5")]), now)
                .unwrap();
        assert!(p.opts.follow && p.opts.timestamps);
        assert_eq!((p.opts.tail_lines, p.opts.limit_bytes), (Some(10), Some(5)));
        let p = parse_query(&q(&[("sinceSeconds", "300")]), now).unwrap();
        assert_eq!(p.opts.since, Some(now - chrono::Duration::seconds(300)));
        let p = parse_query(&q(&[("sinceTime", "2025-01-01T00:00:00Z"), ("previous", "true")]), now).unwrap();
        assert!(p.previous);
        assert_eq!(p.opts.since.unwrap().to_rfc3339(), "2025-01-01T00:00:00+00:00");
        assert!(parse_query(&q(&[("sinceTime", "2025-01-01T00:00:00Z"), ("sinceSeconds", "3")]), now).is_err());
        assert!(parse_query(&q(&[("follow", "maybe")]), now).is_err());
        assert!(parse_query(&q(&[("limitBytes", "0")]), now).is_err());
        assert_eq!(parse_query(&q(&[("tailLines", "-1")]), now).unwrap().opts.tail_lines, None);
    }

    #[test]
    fn the_newest_restart_is_current_and_the_one_before_is_previous() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("ns_web_uid1/app");
        std::fs::create_dir_all(&c).unwrap();
        for n in [0, 1, 2] {
            std::fs::write(c.join(format!("{n}.log")), "").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("ns_web2_uid2/app")).unwrap();
        assert_eq!(find_log_file(dir.path(), "ns", "web", "app", false).unwrap(), c.join("2.log"));
        assert_eq!(find_log_file(dir.path(), "ns", "web", "app", true).unwrap(), c.join("1.log"));
        assert_eq!(find_log_file(dir.path(), "ns", "web2", "app", false), Err(FindError::ContainerNotFound));
        assert_eq!(find_log_file(dir.path(), "ns", "nope", "app", false), Err(FindError::PodNotFound));
    }

    async fn collect(path: PathBuf, opts: LogOptions) -> String {
        let (tx, mut rx) = mpsc::channel(16);
        tokio::spawn(stream_log(path, opts, Arc::new(Flag(AtomicBool::new(false))), tx));
        let mut out = Vec::new();
        while let Some(Ok(b)) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn a_file_larger_than_one_read_streams_whole_lines_and_stops_at_limit_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut data = String::new();
        for i in 0..10_000 {
            data.push_str(&format!("2024-01-01T00:00:00Z stdout F line number {i:05}\n"));
        }
        data.push_str("2024-01-01T00:00:00Z stdout F unfinished");
        std::fs::write(&path, &data).unwrap();
        let out = collect(path.clone(), LogOptions::default()).await;
        assert_eq!(out.lines().count(), 10_000, "an unfinished last line is not shown");
        assert!(out.lines().enumerate().all(|(i, l)| l == format!("line number {i:05}")));
        let out = collect(path.clone(), LogOptions { limit_bytes: Some(100_000), ..Default::default() }).await;
        assert_eq!(out.len(), 100_000);
        let out = collect(path, LogOptions { tail_lines: Some(2), ..Default::default() }).await;
        assert_eq!(out, "line number 09998\nline number 09999\n");
    }

    // --- over real TLS, with a client certificate ---

    fn client_config(client_cert: Option<(String, String)>, server_ca_pem: &str) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut server_ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let cfg = match client_cert {
            Some((c, k)) => b
                .with_client_auth_cert(
                    rustls_pemfile::certs(&mut c.as_bytes()).map(|c| c.unwrap()).collect(),
                    rustls_pemfile::private_key(&mut k.as_bytes()).unwrap().unwrap(),
                )
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        Arc::new(cfg)
    }

    /// A kubelet client CA and one client certificate from it (what the API server holds).
    /// A kubelet client CA and two client certificates from it: the API server's (group
    /// system:masters) and a node's (group system:nodes).
    fn client_pki() -> (String, (String, String), (String, String)) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |cn: &str, o: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.distinguished_name.push(DnType::OrganizationName, o);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let apiserver = leaf("kube-apiserver-kubelet-client", "system:masters");
        let node = leaf("system:node:n2", "system:nodes");
        (ca_pem, apiserver, node)
    }

    async fn get(
        addr: std::net::SocketAddr,
        cfg: Arc<rustls::ClientConfig>,
        path: &str,
    ) -> Result<(u16, String), String> {
        use http_body_util::BodyExt;
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("n1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path).header("host", "n1").body(http_body_util::Empty::<Bytes>::new()).unwrap();
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    #[tokio::test]
    async fn logs_are_served_over_tls_only_to_superusers_with_a_certificate_from_the_kubelet_client_ca() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("pods");
        let cdir = logs.join("default_web_u1/app");
        std::fs::create_dir_all(&cdir).unwrap();
        let log = cdir.join("0.log");
        std::fs::write(&log, "2024-01-01T00:00:00.000000001Z stdout F one\n2024-01-01T00:00:01Z stdout P tw\n2024-01-01T00:00:01Z stdout F o\n").unwrap();

        let (client_ca, client_cert, node_cert) = client_pki();
        let (crt, key) =
            super::super::serving_cert::load_or_create(dir.path(), "127.0.0.1".parse().unwrap(), "n1").unwrap();
        let tls = super::super::serving_cert::server_config(&crt, &key, &client_ca).unwrap();
        let running = Arc::new(Flag(AtomicBool::new(true)));
        let state = ServerState { log_root: logs.clone(), liveness: running.clone(), runtime: None, stats: None };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, tls, state, shutdown.clone()));

        // The serving chain is leaf + its CA; a client pins the CA.
        let server_ca = crt.split_inclusive("-----END CERTIFICATE-----\n").nth(1).unwrap().to_string();
        let good = client_config(Some(client_cert), &server_ca);
        let (code, body) = get(addr, good.clone(), "/healthz").await.unwrap();
        assert_eq!((code, body.as_str()), (200, "ok"));
        let (code, body) = get(addr, good.clone(), "/containerLogs/default/web/app").await.unwrap();
        assert_eq!((code, body.as_str()), (200, "one\ntwo\n"));
        let (_, body) =
            get(addr, good.clone(), "/containerLogs/default/web/app?tailLines=1&timestamps=true").await.unwrap();
        assert_eq!(body, "2024-01-01T00:00:01.000000000Z o\n");
        let (code, _) = get(addr, good.clone(), "/containerLogs/default/web/app?previous=true").await.unwrap();
        assert_eq!(code, 400);
        let (code, _) = get(addr, good.clone(), "/containerLogs/default/gone/app").await.unwrap();
        assert_eq!(code, 404);

        // follow: lines appended later arrive; the stream ends once the container stops.
        let follow = tokio::spawn({
            let good = good.clone();
            async move { get(addr, good, "/containerLogs/default/web/app?follow=true&tailLines=0").await }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            f.write_all(b"2024-01-01T00:00:02Z stderr F three\n").unwrap();
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        running.0.store(false, Ordering::SeqCst);
        let (code, body) = tokio::time::timeout(Duration::from_secs(10), follow).await.unwrap().unwrap().unwrap();
        assert_eq!((code, body.as_str()), (200, "three\n"));

        // A client certificate from the CA without superuser rights is authenticated but refused.
        let other_node = client_config(Some(node_cert), &server_ca);
        let (code, body) = get(addr, other_node, "/containerLogs/default/web/app").await.unwrap();
        assert_eq!(code, 403);
        assert!(body.contains("user=system:node:n2"), "{body}");

        // Without a client certificate the handshake (or the first request) fails.
        let anonymous = client_config(None, &server_ca);
        assert!(get(addr, anonymous, "/healthz").await.is_err());

        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
