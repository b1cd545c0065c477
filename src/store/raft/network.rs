//! Raft traffic between servers, behind the [`RaftTransport`] trait so the consensus code never
//! sees sockets: the real transport will POST to peers over the API server's HTTPS port (one
//! port for API, joins and Raft, as DESIGN.md decides), tests plug in an in-process transport or
//! a fault-injecting one.
//!
//! Wire format: each RPC is a `POST /raft/{append,vote,snapshot}` with a JSON body (append:
//! the binary encoding of [`super::codec::encode_append`], values as raw bytes); the answer
//! is the JSON of `Result<Response, RaftError>`, so a peer's Raft-level refusal travels back as
//! a value while transport failures surface as [`TransportError`]. [`router`] serves these
//! paths for the API server to mount.

use super::TypeConfig;
use async_trait::async_trait;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

type NodeId = u64;

pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";
/// A follower forwards a client write here on the leader (body: binary [`super::Request`]).
pub const FORWARD_WRITE_PATH: &str = "/raft/forward/write";
/// A follower asks the leader for a read index here before a linearizable read.
pub const READ_INDEX_PATH: &str = "/raft/forward/read-index";

/// The leader's answer to a forwarded write or read-index request.
pub type ForwardResult<T> = Result<T, String>;

/// Why an RPC did not reach its peer or got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached (connection refused, timeout, TLS failure); Raft retries.
    #[error("raft peer {target} at {addr} is unreachable: {reason}")]
    Unreachable { target: NodeId, addr: String, reason: String },
    /// The peer answered something that is not a Raft response (wrong service on that port?).
    #[error("raft peer {target} answered with an unexpected body: {reason}")]
    BadResponse { target: NodeId, reason: String },
    /// This server has no transport for other servers yet (single-server mode).
    #[error("no transport to other servers is configured; a one-server cluster never needs one (peer {target})")]
    NotConfigured { target: NodeId },
}

/// Carries one serialized RPC to a peer and returns the serialized answer.
#[async_trait]
pub trait RaftTransport: Send + Sync + 'static {
    /// POSTs `body` to `path` on node `target` reachable at `addr` (its advertised
    /// `https://host:port`); returns the response body.
    async fn call(&self, target: NodeId, addr: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, TransportError>;
}

/// The transport of a one-server cluster: every call fails with a clear error.
pub struct NoTransport;

#[async_trait]
impl RaftTransport for NoTransport {
    async fn call(&self, target: NodeId, _addr: &str, _path: &str, _body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        Err(TransportError::NotConfigured { target })
    }
}

/// A transport that calls peers' [`router`]s in-process (tests, and a seam for fault injection).
#[derive(Default, Clone)]
pub struct InProcessTransport {
    routers: Arc<std::sync::RwLock<std::collections::HashMap<NodeId, Router>>>,
}

impl InProcessTransport {
    pub fn register(&self, node: NodeId, router: Router) {
        self.routers.write().unwrap_or_else(|e| e.into_inner()).insert(node, router);
    }
    pub fn unregister(&self, node: NodeId) {
        self.routers.write().unwrap_or_else(|e| e.into_inner()).remove(&node);
    }
}

#[async_trait]
impl RaftTransport for InProcessTransport {
    async fn call(&self, target: NodeId, addr: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let router = self.routers.read().unwrap_or_else(|e| e.into_inner()).get(&target).cloned();
        let unreachable = |reason: String| TransportError::Unreachable { target, addr: addr.to_string(), reason };
        let Some(router) = router else {
            return Err(unreachable("not registered".into()));
        };
        let req = axum::http::Request::post(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = router.oneshot(req).await.map_err(|e| unreachable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(TransportError::BadResponse { target, reason: format!("HTTP {}", resp.status()) });
        }
        let bytes = resp.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
        Ok(bytes.to_vec())
    }
}

/// The real transport: POSTs over HTTPS (or plain HTTP for `http://` addresses, used by tests)
/// with a pooled hyper client. TLS identity and trust come from the caller's rustls config: the
/// server's certificate as client certificate, the cluster CA as the only root.
#[derive(Clone)]
pub struct HttpTransport {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        http_body_util::Full<bytes::Bytes>,
    >,
    timeout: std::time::Duration,
}

impl HttpTransport {
    /// `timeout` bounds each RPC (a snapshot chunk included); Raft retries after it.
    pub fn new(tls: rustls::ClientConfig, timeout: std::time::Duration) -> HttpTransport {
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        HttpTransport { client, timeout }
    }
}

#[async_trait]
impl RaftTransport for HttpTransport {
    async fn call(&self, target: NodeId, addr: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        use http_body_util::BodyExt;
        let unreachable = |reason: String| TransportError::Unreachable { target, addr: addr.to_string(), reason };
        let uri = format!("{}{path}", addr.trim_end_matches('/'));
        let body = bytes::Bytes::from(body);
        let make = || {
            hyper::Request::post(&uri)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(body.clone()))
                .map_err(|e| unreachable(format!("bad request for {uri}: {e}")))
        };
        let req = make()?;
        let call = async {
            let resp = match self.client.request(req).await {
                Ok(r) => r,
                // A pooled connection the peer closed while idle fails before any answer;
                // try once more on a fresh one. (Raft RPCs are idempotent; forwarded writes
                // are compare-and-swap transactions in practice.)
                Err(e) if e.is_connect() || format!("{e:?}").contains("SendRequest") => {
                    tracing::debug!(target, error = %e, "retrying a raft call on a new connection");
                    self.client.request(make()?).await.map_err(|e| unreachable(e.to_string()))?
                }
                Err(e) => return Err(unreachable(e.to_string())),
            };
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
                return Err(TransportError::BadResponse { target, reason: format!("HTTP {status}: {text}") });
            }
            Ok(bytes.to_vec())
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| unreachable(format!("no answer within {:?}", self.timeout)))?
    }
}

/// openraft's network factory over a [`RaftTransport`].
#[derive(Clone)]
pub struct NetworkFactory {
    transport: Arc<dyn RaftTransport>,
}

impl NetworkFactory {
    pub fn new(transport: Arc<dyn RaftTransport>) -> NetworkFactory {
        NetworkFactory { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Network {
        Network { target, addr: node.addr.clone(), transport: self.transport.clone() }
    }
}

/// A connection to one peer.
pub struct Network {
    target: NodeId,
    addr: String,
    transport: Arc<dyn RaftTransport>,
}

impl Network {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.rpc_raw(path, body).await
    }

    async fn rpc_raw<Resp, E>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer = self.transport.call(self.target, &self.addr, path, body).await.map_err(|e| {
            tracing::debug!(target = self.target, addr = %self.addr, path, error = %e, "raft rpc failed");
            RPCError::Unreachable(Unreachable::new(&e))
        })?;
        let decoded: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&answer).map_err(|e| {
            let e = TransportError::BadResponse { target: self.target, reason: e.to_string() };
            tracing::warn!(target = self.target, addr = %self.addr, path, error = %e, "raft rpc answer undecodable");
            RPCError::Network(NetworkError::new(&e))
        })?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let body = super::codec::encode_append(&rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.rpc_raw(APPEND_PATH, body).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.rpc(SNAPSHOT_PATH, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.rpc(VOTE_PATH, &rpc).await
    }
}

/// The `/raft/...` routes a server answers its peers on. The API server mounts this behind its
/// peer authentication (server certificates from the cluster CA).
pub fn router(raft: Raft<TypeConfig>) -> Router {
    Router::new()
        .route(APPEND_PATH, post(append))
        .route(VOTE_PATH, post(vote))
        .route(SNAPSHOT_PATH, post(snapshot))
        .route(FORWARD_WRITE_PATH, post(forward_write))
        .route(READ_INDEX_PATH, post(read_index))
        .with_state(raft)
}

async fn forward_write(
    State(raft): State<Raft<TypeConfig>>,
    body: bytes::Bytes,
) -> Json<ForwardResult<super::Response>> {
    let mut req = match super::codec::decode_request_bytes(&body) {
        Ok(r) => r,
        Err(e) => return Json(Err(format!("undecodable forwarded write: {e}"))),
    };
    // TTL deadlines follow the leader's clock, whichever server took the write.
    restamp(&mut req, super::now_ms());
    // Executed here only, never forwarded again: a stale leader answers with an error and the
    // follower retries once it learns the new leader.
    Json(raft.client_write(req).await.map(|r| r.data).map_err(|e| e.to_string()))
}

fn restamp(req: &mut super::Request, now: u64) {
    match req {
        super::Request::Txn { now_ms, .. } => *now_ms = now,
        super::Request::Compact { .. } => {}
        super::Request::Batch(reqs) => reqs.iter_mut().for_each(|r| restamp(r, now)),
    }
}

async fn read_index(State(raft): State<Raft<TypeConfig>>) -> Json<ForwardResult<Option<u64>>> {
    // ReadIndex (Raft §6.4): the leader confirms it still leads and names the index a read must
    // wait for; the follower then serves the read from its own state machine.
    Json(raft.ensure_linearizable().await.map(|l| l.map(|l| l.index)).map_err(|e| e.to_string()))
}

async fn append(
    State(raft): State<Raft<TypeConfig>>,
    body: bytes::Bytes,
) -> Result<Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>, (axum::http::StatusCode, String)> {
    let req = super::codec::decode_append(&body).map_err(|e| {
        tracing::warn!(error = %e, "undecodable AppendEntries request");
        (axum::http::StatusCode::BAD_REQUEST, e.to_string())
    })?;
    Ok(Json(raft.append_entries(req).await))
}

async fn vote(
    State(raft): State<Raft<TypeConfig>>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(raft.vote(req).await)
}

async fn snapshot(
    State(raft): State<Raft<TypeConfig>>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(raft.install_snapshot(req).await)
}
