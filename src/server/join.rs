//! Servers joining an HA group, and the peer routes on the HTTPS port.
//!
//! A server started with `--cluster-init` initializes a one-voter Raft group whose member
//! address is `https://<advertise-address>:<port>`. A server started with
//! `--server https://HOST:6443 --token T`:
//!
//! 1. fetches the cluster's server CA (`GET /skiff/v1/cacerts`, public, like k3s' `/cacerts`);
//!    a token of the form `K10<sha256 of the CA PEM>::<secret>` pins it, a bare secret trusts
//!    the first answer (and says so in the log);
//! 2. `POST /skiff/v1/join` over TLS verified with that CA, with the token: the leader checks it
//!    against `<data-dir>/server/token`, assigns a node id, adds the joiner as a learner (without
//!    waiting) and returns the CAs, their keys, the service-account key and the member list
//!    (a follower answers 421 with the leader's URL instead, and the joiner retries there);
//! 3. stores the PKI under its own `<data-dir>/server/tls/`, its node id in
//!    `<data-dir>/server/node-id`, and opens its store with `bootstrap: false`;
//! 4. once its API port serves, `POST /skiff/v1/promote`: the leader waits for the learner to
//!    catch up and makes it a voter (Raft §4.2.1).
//!
//! Raft RPCs (`/raft/...`) are accepted only from clients presenting a certificate from the
//! cluster's client CA with CN [`PEER_CN`]; each server's [`HttpTransport`] presents one. They are
//! mounted outside the API's authentication and RBAC layers, so a bearer token never reaches
//! them. `POST /skiff/v1/snapshot` (used by `skiff snapshot save`) needs a `system:masters`
//! client certificate.
//!
//! `kubectl delete node NAME` of a server removes it from the Raft membership, as k3s' etcd
//! member controller does: each server records its node name under
//! `/skiff/servers/<node id>` once its store is up, and watches Node deletions; a deleted
//! Node with a server's name leaves a durable request under `/skiff/server-removals/<id>`
//! that the leader carries out (so a leader change in between loses nothing). The last voter
//! is never removed.

use anyhow::Context;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::User;
use crate::config::ServerConfig;
use crate::pki::{self, ClusterPki, Leaf};
use crate::store::raft::{HttpTransport, NodeId, RaftStore};

/// Common name of the client certificate Raft peers present to each other.
pub const PEER_CN: &str = "skiff-raft-peer";
pub const CACERTS_PATH: &str = "/skiff/v1/cacerts";
pub const JOIN_PATH: &str = "/skiff/v1/join";
pub const PROMOTE_PATH: &str = "/skiff/v1/promote";
pub const SNAPSHOT_PATH: &str = "/skiff/v1/snapshot";
pub const MEMBERS_PATH: &str = "/skiff/v1/members";

/// Files of `<data-dir>/server/tls/` a joiner receives (the CAs and their keys, the
/// service-account key), so every server issues and verifies the same certificates and tokens.
const SHARED_PKI: [&str; 5] =
    ["server-ca.crt", "server-ca.key", "client-ca.crt", "client-ca.key", "service-account.key"];

#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    /// The joiner's Raft address, `https://host:port`.
    pub addr: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_id: NodeId,
    /// File name under `server/tls/` → contents.
    pub pki: Vec<(String, String)>,
    /// (node id, Raft address, voter).
    pub members: Vec<(NodeId, String, bool)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PromoteRequest {
    pub token: String,
    pub node_id: NodeId,
    pub addr: String,
}

/// Answer of a follower asked to do the leader's work.
#[derive(Debug, Serialize, Deserialize)]
pub struct NotLeader {
    pub leader: Option<String>,
}

/// `GET /skiff/v1/members` (admins): the Raft membership as this server sees it.
#[derive(Debug, Serialize, Deserialize)]
pub struct MembersResponse {
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    /// (node id, Raft address, voter).
    pub members: Vec<(NodeId, String, bool)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotResponse {
    pub path: String,
    pub revision: i64,
    pub compact_revision: i64,
    pub records: usize,
}

/// The secret part of a join token (`K10<hash>::server:<secret>`, `K10<hash>::<secret>` or a
/// bare secret) and the CA hash it pins, if any.
pub fn parse_token(token: &str) -> (&str, Option<&str>) {
    if let Some(rest) = token.strip_prefix("K10") {
        if let Some((hash, secret)) = rest.split_once("::") {
            let secret = secret.split_once(':').map(|(_, s)| s).unwrap_or(secret);
            return (secret, Some(hash));
        }
    }
    (token, None)
}

/// sha256 of the CA PEM, hex: what a `K10` token pins.
pub fn ca_hash(ca_pem: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(ca_pem.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where a server keeps its Raft node id once it has joined.
pub fn node_id_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server/node-id")
}

/// The server's Raft address.
pub fn raft_addr(cfg: &ServerConfig, port: u16) -> String {
    match cfg.advertise_address {
        std::net::IpAddr::V6(a) => format!("https://[{a}]:{port}"),
        a => format!("https://{a}:{port}"),
    }
}

struct PeerState {
    store: Arc<RaftStore>,
    tls_dir: PathBuf,
    token_path: PathBuf,
    snapshot_dir: PathBuf,
}

impl PeerState {
    fn token_ok(&self, presented: &str) -> bool {
        let Ok(ours) = std::fs::read_to_string(&self.token_path) else { return false };
        let (secret, _) = parse_token(presented);
        let (ours, _) = parse_token(ours.trim());
        constant_time_eq(secret.as_bytes(), ours.as_bytes())
    }

    /// 421 with the leader's URL when this server does not lead.
    fn not_leader(&self) -> Option<Response> {
        match self.store.leader_addr() {
            Some((id, _)) if id == self.store.node_id() => None,
            other => Some(
                (StatusCode::MISDIRECTED_REQUEST, Json(NotLeader { leader: other.map(|(_, addr)| addr) }))
                    .into_response(),
            ),
        }
    }
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, msg.into()).into_response()
}

/// Raft routes behind the peer check, plus the join, promote and snapshot endpoints.
pub fn peer_router(store: Arc<RaftStore>, data_dir: &Path) -> Router {
    let st = Arc::new(PeerState {
        store: store.clone(),
        tls_dir: data_dir.join("server/tls"),
        token_path: data_dir.join("server/token"),
        snapshot_dir: snapshot_dir(data_dir),
    });
    let raft = store.raft_router().layer(axum::middleware::from_fn(require_peer));
    Router::new()
        .route(CACERTS_PATH, get(cacerts))
        .route(JOIN_PATH, post(join))
        .route(PROMOTE_PATH, post(promote))
        .route(SNAPSHOT_PATH, post(snapshot))
        .route(MEMBERS_PATH, get(members))
        .with_state(st)
        .merge(raft)
}

/// Where `skiff snapshot save` and scheduled snapshots write (k3s: `server/db/snapshots`).
pub fn snapshot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("server/snapshots")
}

async fn require_peer(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    // The User extension comes from the TLS layer only (the verified client certificate); the
    // API's bearer-token authentication does not run on these routes.
    match req.extensions().get::<User>() {
        Some(u) if u.name == PEER_CN => next.run(req).await,
        other => {
            let who = other.map(|u| u.name.clone()).unwrap_or_default();
            tracing::warn!(user = %who, "refused a raft request without a peer certificate");
            error(StatusCode::FORBIDDEN, format!("raft endpoints need a {PEER_CN} certificate from the cluster CA"))
        }
    }
}

async fn cacerts(State(st): State<Arc<PeerState>>) -> Response {
    match std::fs::read_to_string(st.tls_dir.join("server-ca.crt")) {
        Ok(pem) => pem.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("reading the server CA: {e}")),
    }
}

async fn join(State(st): State<Arc<PeerState>>, Json(req): Json<JoinRequest>) -> Response {
    if !st.token_ok(&req.token) {
        tracing::warn!(addr = %req.addr, "refused a join with a wrong token");
        return error(StatusCode::UNAUTHORIZED, "wrong join token; use the one in <data-dir>/server/token of a server");
    }
    if let Some(r) = st.not_leader() {
        return r;
    }
    let mut files = Vec::new();
    for name in SHARED_PKI {
        match std::fs::read_to_string(st.tls_dir.join(name)) {
            Ok(c) => files.push((name.to_string(), c)),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("reading {name}: {e}")),
        }
    }
    let node_id = match st.store.add_learner_for(&req.addr).await {
        Ok(id) => id,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    tracing::info!(node_id, addr = %req.addr, "server joining as a learner");
    Json(JoinResponse { node_id, pki: files, members: st.store.members() }).into_response()
}

async fn promote(State(st): State<Arc<PeerState>>, Json(req): Json<PromoteRequest>) -> Response {
    if !st.token_ok(&req.token) {
        return error(StatusCode::UNAUTHORIZED, "wrong join token");
    }
    if let Some(r) = st.not_leader() {
        return r;
    }
    if st.store.members().iter().any(|(id, _, voter)| *id == req.node_id && *voter) {
        return StatusCode::NO_CONTENT.into_response();
    }
    {
        use crate::store::Store;
        match st.store.get(format!("{REMOVED_PREFIX}{}", req.node_id).as_bytes()).await {
            Ok((Some(_), _)) => {
                return error(
                    StatusCode::GONE,
                    format!("server {} was removed from the cluster (`kubectl delete node`)", req.node_id),
                )
            }
            Ok((None, _)) => {}
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
    match st.store.add_voter(req.node_id, req.addr.clone()).await {
        Ok(()) => {
            tracing::info!(node_id = req.node_id, addr = %req.addr, "server promoted to voter");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

fn is_admin(user: &Option<Extension<User>>) -> bool {
    user.as_ref().is_some_and(|Extension(u)| u.groups.iter().any(|g| g == "system:masters"))
}

async fn members(State(st): State<Arc<PeerState>>, user: Option<Extension<User>>) -> Response {
    let peer = user.as_ref().is_some_and(|Extension(u)| u.name == PEER_CN);
    if !is_admin(&user) && !peer {
        return error(StatusCode::FORBIDDEN, "the member list needs a system:masters or peer client certificate");
    }
    Json(MembersResponse {
        node_id: st.store.node_id(),
        leader: st.store.leader_addr().map(|(id, _)| id),
        members: st.store.members(),
    })
    .into_response()
}

async fn snapshot(
    State(st): State<Arc<PeerState>>,
    user: Option<Extension<User>>,
    Json(req): Json<SnapshotRequest>,
) -> Response {
    if !is_admin(&user) {
        return error(StatusCode::FORBIDDEN, "snapshots need a system:masters client certificate (admin kubeconfig)");
    }
    match save_named(&st.store, &st.snapshot_dir, &req.name).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

/// Saves `<dir>/<name>-<node id>-<unix seconds>`.
pub async fn save_named(store: &RaftStore, dir: &Path, name: &str) -> anyhow::Result<SnapshotResponse> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        anyhow::bail!("snapshot name {name:?} must be a plain file name");
    }
    let path = dir.join(format!("{name}-{}-{}", store.node_id(), chrono::Utc::now().timestamp()));
    let info = store.save_snapshot(&path).await?;
    tracing::info!(path = %path.display(), revision = info.revision, "snapshot saved");
    Ok(SnapshotResponse {
        path: path.display().to_string(),
        revision: info.revision,
        compact_revision: info.compact_revision,
        records: info.records,
    })
}

// ---- the joining side ----

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client configuration trusting `ca_pem` (or anything, when None), presenting
/// `identity` (certificate PEM, key PEM) if given.
pub fn client_tls(ca_pem: Option<&str>, identity: Option<(&str, &str)>) -> anyhow::Result<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let b = match ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut pem.as_bytes()) {
                roots.add(c.context("parsing the cluster CA")?)?;
            }
            b.with_root_certificates(roots)
        }
        None => b.dangerous().with_custom_certificate_verifier(Arc::new(crate::api::logs::AnyServerCert(provider()))),
    };
    Ok(match identity {
        Some((cert, key)) => {
            let certs: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes()).collect::<Result<_, _>>()?;
            let key = rustls_pemfile::private_key(&mut key.as_bytes())?
                .ok_or_else(|| anyhow::anyhow!("the client key PEM holds no private key"))?;
            b.with_client_auth_cert(certs, key)?
        }
        None => b.with_no_client_auth(),
    })
}

/// One HTTPS request; returns (status, body).
pub async fn https_call(
    tls: rustls::ClientConfig,
    method: hyper::Method,
    url: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<(StatusCode, Vec<u8>)> {
    use http_body_util::BodyExt;
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only().enable_http1().build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body.unwrap_or_default())))
        .with_context(|| format!("bad URL {url}"))?;
    let call = async {
        let resp = client.request(req).await.with_context(|| format!("cannot reach {url}"))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.with_context(|| format!("reading the answer of {url}"))?;
        anyhow::Ok((status, bytes.to_bytes().to_vec()))
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), call)
        .await
        .map_err(|_| anyhow::anyhow!("{url} did not answer within 60s"))?
}

/// POSTs `body` as JSON to `path` at `server`, following a follower's 421 to the leader.
/// A peer's non-success answer.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

async fn post_to_leader<T: Serialize>(
    tls: &rustls::ClientConfig,
    server: &str,
    path: &str,
    body: &T,
) -> anyhow::Result<Vec<u8>> {
    let body = serde_json::to_vec(body)?;
    let mut target = server.trim_end_matches('/').to_string();
    for _ in 0..5 {
        let (status, answer) =
            https_call(tls.clone(), hyper::Method::POST, &format!("{target}{path}"), Some(body.clone())).await?;
        if status == StatusCode::MISDIRECTED_REQUEST {
            let nl: NotLeader = serde_json::from_slice(&answer).unwrap_or(NotLeader { leader: None });
            match nl.leader {
                Some(l) => target = l,
                None => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
            }
            continue;
        }
        if !status.is_success() {
            return Err(Refused {
                status,
                message: format!("{target}{path} answered {status}: {}", String::from_utf8_lossy(&answer)),
            }
            .into());
        }
        return Ok(answer);
    }
    anyhow::bail!("{server} kept redirecting {path} to other servers; is the cluster electing a leader? retry")
}

/// Before the PKI is loaded: a server started with `--server` and not yet joined fetches the
/// cluster's PKI and its node id from the group. Returns this server's node id (1 for a server
/// that never joined anyone).
pub async fn prepare(cfg: &ServerConfig, port: u16) -> anyhow::Result<NodeId> {
    let data = &cfg.node.data_dir;
    let id_path = node_id_path(data);
    if let Ok(s) = std::fs::read_to_string(&id_path) {
        return s.trim().parse().with_context(|| format!("{} does not hold a node id; remove it", id_path.display()));
    }
    let Some(server) = cfg.join_server.as_deref() else { return Ok(1) };
    if data.join("server/db").exists() {
        anyhow::bail!(
            "{} holds a store but no node id: this data dir belongs to another cluster; use an empty --data-dir to join {server}",
            data.join("server/db").display()
        );
    }
    let token = cfg.token.as_deref().ok_or_else(|| {
        anyhow::anyhow!("--server needs --token (the contents of <data-dir>/server/token on a server)")
    })?;
    let (_, pinned) = parse_token(token);
    let (status, ca) =
        https_call(client_tls(None, None)?, hyper::Method::GET, &format!("{server}{CACERTS_PATH}"), None)
            .await
            .context("fetching the cluster CA")?;
    if !status.is_success() {
        anyhow::bail!("{server}{CACERTS_PATH} answered {status}; is {server} a skiff server?");
    }
    let ca = String::from_utf8(ca).context("the cluster CA is not text")?;
    match pinned {
        Some(h) if !h.eq_ignore_ascii_case(&ca_hash(&ca)) => {
            anyhow::bail!(
                "the CA of {server} does not match the hash in the token: wrong server, or someone in between"
            )
        }
        Some(_) => {}
        None => {
            tracing::warn!(%server, "the token pins no CA hash (K10<sha256>::secret); trusting the CA the server sent")
        }
    }
    let tls = client_tls(Some(&ca), None)?;
    let me = raft_addr(cfg, port);
    let answer = post_to_leader(&tls, server, JOIN_PATH, &JoinRequest { token: token.to_string(), addr: me.clone() })
        .await
        .context("joining the server group")?;
    let joined: JoinResponse = serde_json::from_slice(&answer).context("undecodable join answer")?;
    let tls_dir = data.join("server/tls");
    for (name, contents) in &joined.pki {
        if !SHARED_PKI.contains(&name.as_str()) {
            anyhow::bail!("the join answer holds an unexpected file {name:?}");
        }
        let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
        pki::write_file(&tls_dir.join(name), contents.as_bytes(), mode)?;
    }
    pki::write_file(&id_path, joined.node_id.to_string().as_bytes(), 0o644)?;
    tracing::info!(node_id = joined.node_id, members = ?joined.members, addr = %me, "joined the server group as a learner");
    Ok(joined.node_id)
}

/// Opens the embedded store for `skiff server`: one server, the first of an HA group
/// (`--cluster-init`), or a joiner (`--server`, after [`prepare`]). Also sets the peer routes
/// and, on a joiner, starts asking the leader for promotion.
pub async fn open_raft(
    cfg: &ServerConfig,
    pki: &ClusterPki,
    listener: &tokio::net::TcpListener,
    serving: (&str, &str),
    node_id: NodeId,
    removal: &Removed,
) -> anyhow::Result<(Arc<RaftStore>, Option<PeerRoutesUntilApi>)> {
    let port = listener.local_addr()?.port();
    use crate::store::raft::{self, RaftStoreConfig};
    let data = &cfg.node.data_dir;
    let dir = data.join("server/db");
    if cfg.cluster_reset {
        let backup = snapshot_dir(data).join(format!("cluster-reset-{}", chrono::Utc::now().timestamp()));
        let mut rc = RaftStoreConfig::new(dir.clone());
        rc.node_id = node_id;
        let info = raft::cluster_reset(&rc, &backup).await.with_context(|| format!("resetting {}", dir.display()))?;
        // Node 1 of its own cluster from now on, even if restarted with --server still set.
        pki::write_file(&node_id_path(data), b"1", 0o644)?;
        tracing::info!(revision = info.revision, backup = %backup.display(), "cluster reset: this server is now a one-server cluster; restart it without --cluster-reset and rejoin the others with empty data dirs");
        let store = open_raft_inner(cfg, pki, port, 1, true, removal).await?;
        watch_membership(&store, &cfg.node.node_name, &raft_addr(cfg, port));
        removal.stop_when_removed(&store, &dir, peer_tls(pki)?);
        return Ok((store, None));
    }
    let joining = cfg.join_server.is_some() && node_id != 1;
    let store = open_raft_inner(cfg, pki, port, node_id, !joining, removal).await?;
    let handoff = serve_joiner_until_voter(cfg, pki, listener, serving, &store, joining, removal).await?;
    watch_membership(&store, &cfg.node.node_name, &raft_addr(cfg, port));
    removal.stop_when_removed(&store, &dir, peer_tls(pki)?);
    Ok((store, handoff))
}

/// Set when this server finds that it was removed from the store's membership (`kubectl
/// delete node` of a server, carried out by the leader): the server then stops, and
/// [`super::run`] returns the reason as its error.
#[derive(Clone)]
pub struct Removed {
    pub why: Arc<std::sync::OnceLock<String>>,
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Removed {
    pub fn new(shutdown: tokio_util::sync::CancellationToken) -> Removed {
        Removed { why: Arc::default(), shutdown }
    }

    /// Watches the store's membership: once this server has been a member and no longer is,
    /// records why and stops the server. A removed server often never sees the final
    /// membership (the leader stops replicating to it once the change is committed); it only
    /// loses its leader. So while it has none, it asks the other members whether it is still
    /// one of them, and a member that follows a leader answers with the membership it knows.
    fn stop_when_removed(&self, store: &Arc<RaftStore>, dir: &Path, tls: rustls::ClientConfig) {
        let mut metrics = store.raft().metrics();
        let (this, weak, dir) = (self.clone(), Arc::downgrade(store), dir.to_path_buf());
        tokio::spawn(async move {
            let mut was_member = false;
            let mut leaderless_since: Option<tokio::time::Instant> = None;
            loop {
                let Some(store) = weak.upgrade() else { return };
                let id = store.node_id();
                let (member, leader, peers) = {
                    let m = metrics.borrow_and_update();
                    let membership = m.membership_config.membership();
                    let peers: Vec<String> =
                        membership.nodes().filter(|(n, _)| **n != id).map(|(_, n)| n.addr.clone()).collect();
                    (membership.get_node(&id).is_some(), m.current_leader, peers)
                };
                let mut removed = !member && was_member;
                was_member |= member;
                if leader.is_some() {
                    leaderless_since = None;
                } else if was_member && !removed {
                    let since = *leaderless_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= std::time::Duration::from_secs(3) {
                        removed = peers_say_removed(&tls, &peers, id).await;
                    }
                }
                if removed {
                    let why = removed_message(id, &dir);
                    tracing::error!("{why}");
                    let _ = this.why.set(why);
                    this.shutdown.cancel();
                    return;
                }
                drop(store);
                tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    _ = this.shutdown.cancelled() => return,
                }
            }
        });
    }
}

/// True when a member that follows a leader reports a membership without `id`.
async fn peers_say_removed(tls: &rustls::ClientConfig, peers: &[String], id: NodeId) -> bool {
    for addr in peers {
        let url = format!("{}{MEMBERS_PATH}", addr.trim_end_matches('/'));
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            https_call(tls.clone(), hyper::Method::GET, &url, None),
        );
        let Ok(Ok((StatusCode::OK, body))) = answer.await else { continue };
        let Ok(m) = serde_json::from_slice::<MembersResponse>(&body) else { continue };
        if m.leader.is_some() && !m.members.is_empty() && !m.members.iter().any(|(n, _, _)| *n == id) {
            return true;
        }
    }
    false
}

/// The TLS client a server uses towards its peers (the raft peer certificate).
fn peer_tls(pki: &ClusterPki) -> anyhow::Result<rustls::ClientConfig> {
    let (cert, key) = pki.leaf("client-raft-peer", &Leaf::Client { cn: PEER_CN.into(), groups: vec![] })?;
    client_tls(Some(&pki.server_ca.cert_pem), Some((&cert, &key)))
}

fn removed_message(node_id: NodeId, dir: &Path) -> String {
    format!(
        "this server (store member {node_id}) was removed from the cluster (`kubectl delete node`); it stops. \
         To join again, move {} away and start it with --server and --token; \
         to make it a one-server cluster with its data instead, start it with --cluster-reset",
        dir.display()
    )
}

/// Why this server must not start, if it was removed from the store's membership: its own log
/// says so, or (its log ending before the change was final) another member that follows a
/// leader says so. A fresh joiner (no membership yet) was not removed.
async fn removed_from(store: &RaftStore, dir: &Path, tls: &rustls::ClientConfig) -> Option<String> {
    let (id, members) = (store.node_id(), store.members());
    if members.is_empty() {
        return None;
    }
    let peers: Vec<String> = members.iter().filter(|(n, _, _)| *n != id).map(|(_, a, _)| a.clone()).collect();
    let removed = !members.iter().any(|(n, _, _)| *n == id) || peers_say_removed(tls, &peers, id).await;
    removed.then(|| removed_message(id, dir))
}

/// Starts recording this server's node name (retrying: a restarted member may wait for its
/// quorum) and turning Node deletions into membership removals.
fn watch_membership(store: &Arc<RaftStore>, name: &str, addr: &str) {
    let (weak, name, addr) = (Arc::downgrade(store), name.to_string(), addr.to_string());
    tokio::spawn(async move {
        loop {
            let Some(s) = weak.upgrade() else { return };
            match record_server(&s, &name, &addr).await {
                Ok(()) => break,
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "recording this server's node name; retrying"),
            }
            drop(s);
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
        remove_deleted_servers(weak).await;
    });
}

/// A joiner's peer routes, served on its own copy of the API listener until the API server
/// serves them (drop it once the API server accepts connections).
pub type PeerRoutesUntilApi = tokio_util::sync::DropGuard;

/// On a joiner, serves the peer routes until this server is a caught-up voter, and goes on
/// serving them (the returned guard) until the API server takes the listener over: between the
/// two, the server's first reads need the leader to reach this server's Raft routes.
async fn serve_joiner_until_voter(
    cfg: &ServerConfig,
    pki: &ClusterPki,
    listener: &tokio::net::TcpListener,
    serving: (&str, &str),
    store: &Arc<RaftStore>,
    joining: bool,
    removal: &Removed,
) -> anyhow::Result<Option<PeerRoutesUntilApi>> {
    if !joining {
        return Ok(None);
    }
    let port = listener.local_addr()?.port();
    let node_id = store.node_id();
    // The API server (and with it the peer routes) starts only once the store answers, but a
    // joiner's store answers only once the leader has replicated to it: serve the peer routes
    // alone, on a duplicate of the API listener's socket, until the API server starts.
    let tls = crate::api::tls_config(serving.0, serving.1, &pki.client_ca.cert_pem)?;
    let router = peer_router(store.clone(), &cfg.node.data_dir);
    let copy = {
        use std::os::fd::AsFd;
        let fd = listener.as_fd().try_clone_to_owned().context("duplicating the API listener")?;
        let std_listener = std::net::TcpListener::from(fd);
        std_listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(std_listener)?
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move { serve_until(&copy, tls, router, until.cancelled_owned()).await });
    let guard = stop.drop_guard();
    let s = store.clone();
    let voter = async move {
        use crate::store::Store;
        loop {
            // Also wait for a linearizable read to go through: the server's first reads (the
            // RBAC policy) come next.
            if s.members().iter().any(|(id, _, v)| *id == s.node_id() && *v)
                && s.leader_addr().is_some()
                && s.current_revision().await.is_ok()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        r = tokio::time::timeout(std::time::Duration::from_secs(300), voter) => r.map_err(|_| {
            anyhow::anyhow!(
                "this server was not made a voter within 5 minutes; check that the leader can reach {} (--advertise-address, firewalls)",
                raft_addr(cfg, port)
            )
        })?,
        // Refused as a removed server (promote_until_voter), or stopped.
        _ = removal.shutdown.cancelled() => match removal.why.get() {
            Some(why) => anyhow::bail!("{why}"),
            None => anyhow::bail!("stopped before this server became a voter"),
        },
    }
    tracing::info!(node_id, "caught up with the leader as a voter");
    Ok(Some(guard))
}

/// Serves `router` over TLS on `listener` until `done` completes (connections accepted so far
/// keep being served). The client certificate's identity goes into the request extensions as
/// the API server does it, for [`require_peer`].
async fn serve_until(
    listener: &tokio::net::TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    done: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    tokio::pin!(done);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut done => return,
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::api::user_from_cert(c.as_ref()))
                .unwrap_or_else(User::anonymous);
            let svc = hyper_util::service::TowerToHyperService::new(router.layer(Extension(user)));
            let io = hyper_util::rt::TokioIo::new(tls);
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder.serve_connection_with_upgrades(io, svc).await {
                tracing::debug!(%peer, error = %e, "peer connection ended with error");
            }
        });
    }
}

async fn open_raft_inner(
    cfg: &ServerConfig,
    pki: &ClusterPki,
    port: u16,
    node_id: NodeId,
    bootstrap: bool,
    removal: &Removed,
) -> anyhow::Result<Arc<RaftStore>> {
    use crate::store::raft::{self, RaftStoreConfig};
    let data = &cfg.node.data_dir;
    let dir = data.join("server/db");
    let tls = peer_tls(pki)?;
    let mut rc = RaftStoreConfig::new(dir.clone());
    rc.node_id = node_id;
    rc.advertise_addr = raft_addr(cfg, port);
    rc.transport = Arc::new(HttpTransport::new(tls.clone(), std::time::Duration::from_secs(10)));
    rc.bootstrap = bootstrap;
    let store = raft::open(rc).await.with_context(|| format!("opening the cluster store in {}", dir.display()))?;
    // A server removed (`kubectl delete node`) while it was down, or that stopped before it
    // learnt of its removal: it must not serve its stale copy, nor ask to be a voter again.
    if let Some(why) = removed_from(&store, &dir, &tls).await {
        store.shutdown().await.ok();
        anyhow::bail!(why);
    }
    store.set_peer_router(peer_router(store.clone(), data));
    if !bootstrap {
        if let (Some(server), Some(token)) = (cfg.join_server.clone(), cfg.token.clone()) {
            let ca = pki.server_ca.cert_pem.clone();
            let addr = raft_addr(cfg, port);
            tokio::spawn(promote_until_voter(server, token, ca, node_id, addr, removal.clone(), dir.clone()));
        }
    }
    Ok(store)
}

/// Asks the leader to make this server a voter, retrying until it is one.
async fn promote_until_voter(
    server: String,
    token: String,
    ca: String,
    node_id: NodeId,
    addr: String,
    removal: Removed,
    dir: PathBuf,
) {
    let tls = match client_tls(Some(&ca), None) {
        Ok(t) => t,
        Err(e) => return tracing::error!(error = %e, "cannot build a TLS client to ask for promotion"),
    };
    let req = PromoteRequest { token, node_id, addr };
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        match post_to_leader(&tls, &server, PROMOTE_PATH, &req).await {
            Ok(_) => return tracing::info!(node_id, "this server is a voter"),
            Err(e) if e.downcast_ref::<Refused>().is_some_and(|r| r.status == StatusCode::GONE) => {
                let why = removed_message(node_id, &dir);
                tracing::error!("{why}");
                let _ = removal.why.set(why);
                removal.shutdown.cancel();
                return;
            }
            Err(e) => tracing::info!(error = %format!("{e:#}"), "promotion to voter not done yet; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(10));
    }
}

// ---- servers leaving: `kubectl delete node NAME` of a server ----

/// `/skiff/servers/<node id>` → [`ServerRecord`]: which node name each Raft member runs as.
pub const SERVERS_PREFIX: &str = "/skiff/servers/";
/// `/skiff/server-removals/<node id>` → node name: removals the leader still has to make.
pub const REMOVALS_PREFIX: &str = "/skiff/server-removals/";
/// `/skiff/removed-servers/<node id>` → node name: members removed so far (never voters again;
/// a server that joins anew gets a new node id).
pub const REMOVED_PREFIX: &str = "/skiff/removed-servers/";

/// What a server records about itself in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub node_id: NodeId,
    pub name: String,
    pub addr: String,
}

/// The Node objects' key prefix (`/registry/core/nodes/`).
fn nodes_prefix() -> String {
    crate::registry::find("", "v1", "nodes")
        .map(|r| r.key_prefix())
        .unwrap_or_else(|| "/registry/core/nodes/".to_string())
}

/// Writes this server's record unless it is already there, unchanged.
async fn record_server(store: &RaftStore, name: &str, addr: &str) -> anyhow::Result<()> {
    use crate::store::Store;
    let rec = ServerRecord { node_id: store.node_id(), name: name.to_string(), addr: addr.to_string() };
    let key = format!("{SERVERS_PREFIX}{}", rec.node_id);
    let value = serde_json::to_vec(&rec)?;
    let (current, _) = store.get(key.as_bytes()).await.context("reading this server's member record")?;
    if current.as_ref().map(|kv| &kv.value[..]) != Some(&value[..]) {
        let put = crate::store::Op::Put { key: key.into_bytes(), value: value.into(), ttl_seconds: None };
        store
            .txn(crate::store::Txn { success: vec![put], ..Default::default() })
            .await
            .context("recording this server's node name")?;
    }
    Ok(())
}

/// Every server record.
async fn server_records(store: &RaftStore) -> Result<Vec<ServerRecord>, crate::store::StoreError> {
    use crate::store::{RangeRequest, Store};
    let r = store.range(RangeRequest { prefix: SERVERS_PREFIX.as_bytes().to_vec(), ..Default::default() }).await?;
    Ok(r.kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
}

/// What the leader does with a removal request for `id`, given the membership
/// `(node id, address, voter)`. Pure, for the unit tests.
#[derive(Debug, PartialEq, Eq)]
pub enum Removal {
    /// Not a member (any more): just drop the request.
    Gone,
    /// The only voter: refuse (the group would have nobody left to commit anything).
    LastVoter,
    Remove,
}

pub fn plan_removal(id: NodeId, members: &[(NodeId, String, bool)]) -> Removal {
    let Some((_, _, voter)) = members.iter().find(|(m, _, _)| *m == id) else { return Removal::Gone };
    let voters = members.iter().filter(|(_, _, v)| *v).count();
    if *voter && voters <= 1 {
        Removal::LastVoter
    } else {
        Removal::Remove
    }
}

/// Runs on every server for the life of its store: turns Node deletions of servers into
/// removal requests, and on the leader, carries the requests out.
async fn remove_deleted_servers(store: std::sync::Weak<RaftStore>) {
    use crate::store::{EventKind, Store, StoreError, WatchMessage};
    use futures::StreamExt;
    let prefix = nodes_prefix();
    let mut from: i64 = 0;
    loop {
        let Some(s) = store.upgrade() else { return };
        if from == 0 {
            from = s.current_revision().await.unwrap_or(0);
        }
        let mut w = match s.watch(prefix.as_bytes().to_vec(), from).await {
            Ok(w) => w,
            Err(StoreError::Compacted { .. }) => {
                from = 0;
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "watching node deletions failed; retrying");
                drop(s);
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        drop(s);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            let msg = tokio::select! {
                m = w.next() => m,
                _ = tick.tick() => {
                    let Some(s) = store.upgrade() else { return };
                    carry_out_removals(&s).await;
                    continue;
                }
            };
            let Some(s) = store.upgrade() else { return };
            match msg {
                Some(Ok(WatchMessage::Events(evs))) => {
                    for e in evs {
                        from = from.max(e.kv.mod_revision);
                        if e.kind != EventKind::Delete {
                            continue;
                        }
                        let name = String::from_utf8_lossy(&e.kv.key[prefix.len().min(e.kv.key.len())..]).into_owned();
                        if let Err(e) = request_removal(&s, &name).await {
                            tracing::warn!(node = %name, error = %e, "recording a server removal failed");
                        }
                    }
                    carry_out_removals(&s).await;
                }
                Some(Ok(WatchMessage::Progress(r))) => from = from.max(r),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "node deletion watch ended; re-watching");
                    break;
                }
                None => break,
            }
        }
    }
}

/// A Node named `name` was deleted: if a server runs under that name, ask for its removal.
async fn request_removal(store: &RaftStore, name: &str) -> Result<(), crate::store::StoreError> {
    use crate::store::Store;
    for rec in server_records(store).await?.into_iter().filter(|r| r.name == name) {
        let key = format!("{REMOVALS_PREFIX}{}", rec.node_id);
        let r = store.txn(crate::store::txn::create(key.as_bytes(), name.as_bytes().to_vec(), None)).await?;
        if r.succeeded {
            tracing::info!(node = %name, node_id = rec.node_id, "node of a server deleted: removing it from the store's membership");
        }
    }
    Ok(())
}

/// On the leader: makes the membership changes requested, then drops the requests.
async fn carry_out_removals(store: &RaftStore) {
    use crate::store::{RangeRequest, Store};
    if store.leader() != Some(store.node_id()) {
        return;
    }
    let pending =
        match store.range(RangeRequest { prefix: REMOVALS_PREFIX.as_bytes().to_vec(), ..Default::default() }).await {
            Ok(r) => r.kvs,
            Err(e) => return tracing::debug!(error = %e, "reading server removals failed"),
        };
    for kv in pending {
        let Some(id) = std::str::from_utf8(&kv.key[REMOVALS_PREFIX.len().min(kv.key.len())..])
            .ok()
            .and_then(|s| s.parse::<NodeId>().ok())
        else {
            continue;
        };
        let name = String::from_utf8_lossy(&kv.value).into_owned();
        let members = store.members();
        let done = match plan_removal(id, &members) {
            Removal::Gone => true,
            Removal::LastVoter => {
                tracing::warn!(node = %name, node_id = id, "not removing the last voter of the store; its node object is gone but the server stays");
                true
            }
            Removal::Remove => {
                let gone = std::collections::BTreeSet::from([id]);
                // A voter goes with RemoveVoters (not retained as a learner); a learner with
                // RemoveNodes (openraft refuses RemoveNodes of a voter).
                let change = if members.iter().any(|(m, _, v)| *m == id && *v) {
                    openraft::ChangeMembers::RemoveVoters(gone)
                } else {
                    openraft::ChangeMembers::RemoveNodes(gone)
                };
                match store.raft().change_membership(change, false).await {
                    Ok(_) => {
                        tracing::info!(node = %name, node_id = id, "removed the server from the store's membership");
                        // Remembered, so that the removed server, restarted on its old data,
                        // is refused when it asks to be a voter again.
                        let key = format!("{REMOVED_PREFIX}{id}");
                        let put = crate::store::Txn {
                            success: vec![crate::store::Op::Put {
                                key: key.into_bytes(),
                                value: name.clone().into_bytes().into(),
                                ttl_seconds: None,
                            }],
                            ..Default::default()
                        };
                        if let Err(e) = store.txn(put).await {
                            tracing::warn!(node_id = id, error = %e, "recording the removed server failed");
                        }
                        true
                    }
                    Err(e) => {
                        tracing::warn!(node = %name, node_id = id, error = %e, "removing the server from the membership failed; will retry");
                        false
                    }
                }
            }
        };
        if done {
            let dels = vec![
                crate::store::Op::Delete { key: kv.key.clone() },
                crate::store::Op::Delete { key: format!("{SERVERS_PREFIX}{id}").into_bytes() },
            ];
            if let Err(e) = store.txn(crate::store::Txn { success: dels, ..Default::default() }).await {
                tracing::debug!(error = %e, "dropping a done server removal failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(v: &[(NodeId, bool)]) -> Vec<(NodeId, String, bool)> {
        v.iter().map(|(id, voter)| (*id, format!("https://10.0.0.{id}:6443"), *voter)).collect()
    }

    #[test]
    fn a_deleted_server_is_removed_unless_it_is_the_last_voter() {
        assert_eq!(plan_removal(3, &m(&[(1, true), (2, true), (3, true)])), Removal::Remove);
        assert_eq!(plan_removal(1, &m(&[(1, true)])), Removal::LastVoter);
        // A learner may go even beside a single voter.
        assert_eq!(plan_removal(2, &m(&[(1, true), (2, false)])), Removal::Remove);
        assert_eq!(plan_removal(9, &m(&[(1, true), (2, true)])), Removal::Gone);
    }

    #[test]
    fn join_tokens_yield_their_secret_and_pinned_ca_hash() {
        assert_eq!(parse_token("K10abc::server:s3cret"), ("s3cret", Some("abc")));
        assert_eq!(parse_token("K10abc::s3cret"), ("s3cret", Some("abc")));
        assert_eq!(parse_token("bare"), ("bare", None));
    }
}
