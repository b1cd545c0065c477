//! The embedded, Raft-replicated store that replaces etcd: openraft 0.9 (storage v2) for
//! consensus, an append-only write-ahead log ([`wal`]) for the Raft log, the in-memory MVCC core
//! ([`crate::store::mvcc`]) as the state machine ([`state_machine`]) persisted through Raft
//! snapshots, and a pluggable peer transport ([`network`]).
//!
//! [`RaftStore`] implements [`Store`]: writes go through a batching proposer (group commit:
//! concurrent writes share one entry and one fsync) and are answered once applied, their entry
//! on disk first; a follower forwards them to the leader. Reads confirm leadership with
//! `ensure_linearizable` (etcd's ReadIndex; a follower asks the leader for the index) and are
//! served from the local state machine; watches are served from local applied state. The leader
//! also runs the TTL expiry loop (deadlines travel in the log, so replicas agree) and periodic
//! compaction, as kube-apiserver's compactor does for etcd.
//!
//! A fresh data dir initializes a one-voter cluster automatically. Start-up verifies every
//! checksum and the durability [`marker`]; [`backup`] saves and restores snapshots; [`legacy`]
//! converts stores of earlier versions.
//!
//! Store directory layout (`<data-dir>/server/db`): `wal/`, the Raft log's segments;
//! `snapshot.bin`, the last Raft snapshot (the state machine's durable form); `durable`, the
//! durability marker.

pub mod backup;
pub mod codec;
pub mod engine;
pub mod legacy;
pub mod marker;
pub mod network;
pub mod state_machine;
pub mod wal;

use crate::store::watch;
use crate::store::*;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use backup::{cluster_reset, restore_snapshot, SnapshotInfo};
pub use network::{HttpTransport, InProcessTransport, NoTransport, RaftTransport, TransportError};

/// Raft node identifier.
pub type NodeId = u64;

/// A command in the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Request {
    /// A transaction; `now_ms` is the proposer's wall clock (unix ms), used only to turn TTLs
    /// into deadlines so that every replica computes the same ones.
    Txn { txn: Txn, now_ms: u64 },
    /// Discard history older than `revision` on every replica.
    Compact { revision: i64 },
    /// Several requests proposed together (group commit: one entry, one fsync), applied in
    /// order as if they were separate entries.
    Batch(Vec<Request>),
}

/// The state machine's answer to one log entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Response {
    Txn(TxnResponse),
    /// Entries without a payload answer (blank, membership, compaction).
    Done,
    /// One response per request of a [`Request::Batch`].
    Batch(Vec<Response>),
}

openraft::declare_raft_types!(
    /// openraft's type configuration for skiff.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Errors of the Raft store's storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// On-disk data failed a check (checksum, truncation, gap); nothing is served from it.
    #[error("{0}")]
    Corrupt(String),
    /// The storage engine of an older store layout failed (while converting it).
    #[error("storage engine error while {context}: {message}")]
    Engine { context: String, message: String },
    /// A file operation failed (log segments, snapshot files, the data dir).
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// A bug or an impossible state.
    #[error("{0}")]
    Internal(String),
}

/// What to tell a user whose data dir is damaged.
const CORRUPT_ADVICE: &str = "restore the data dir from a snapshot (`skiff snapshot restore`), or on an HA member \
                              remove it and rejoin the cluster";

impl From<Error> for StoreError {
    fn from(e: Error) -> StoreError {
        match e {
            Error::Corrupt(m) => StoreError::Corrupt(format!("{m}; {CORRUPT_ADVICE}")),
            other => StoreError::Internal(other.to_string()),
        }
    }
}

/// How to open a [`RaftStore`].
#[derive(Clone)]
pub struct RaftStoreConfig {
    /// The store's directory (`<data-dir>/server/db`); created if missing.
    pub dir: PathBuf,
    /// This server's Raft node id (1 for the first server).
    pub node_id: NodeId,
    /// Address peers reach this server's `/raft/...` routes at (`https://host:6443`).
    pub advertise_addr: String,
    /// Carries Raft RPCs to other servers ([`NoTransport`] for one server).
    pub transport: Arc<dyn RaftTransport>,
    /// Initialize a one-voter cluster when the data dir is fresh, and wait for a leader before
    /// returning. False for a server joining an existing cluster: it stays uninitialized until
    /// the leader adds it ([`RaftStore::add_voter`]).
    pub bootstrap: bool,
    /// How often the leader compacts history (kube-apiserver's `--etcd-compaction-interval`,
    /// 5 minutes by default): each run compacts to the revision seen at the previous run, so
    /// watchers can resume from anything at most one or two intervals old.
    pub compaction_interval: Duration,
    /// Cap on retained history, in revisions, whatever the interval (bounds disk and memory
    /// under write bursts).
    pub max_history_revisions: i64,
    /// How long a write or a linearizable read waits for a quorum before answering
    /// `Unavailable` (etcd's request timeout; kube-apiserver retries).
    pub request_timeout: Duration,
    /// How often the leader looks for expired TTL keys.
    pub expiry_interval: Duration,
    /// Take a Raft snapshot (and purge the log before it) every this many entries at most.
    pub snapshot_every_entries: u64,
    /// Also take one once the log has grown by more than the last snapshot's size, and at least
    /// this many bytes: the log then never holds much more than the state itself, and
    /// snapshotting costs at most about one extra write of each logged byte (the rule
    /// log-structured stores use to bound space and write amplification together).
    pub snapshot_min_log_bytes: u64,
    /// Log entries kept before the last snapshot, so briefly lagging followers catch up from the
    /// log rather than a full snapshot.
    pub keep_logs_after_snapshot: u64,
    /// Size at which the log moves on to a new segment file (old segments are deleted once
    /// their entries are in a snapshot).
    pub segment_bytes: u64,
}

impl RaftStoreConfig {
    /// Defaults for a one-server cluster in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> RaftStoreConfig {
        RaftStoreConfig {
            dir: dir.into(),
            node_id: 1,
            advertise_addr: "https://127.0.0.1:6443".into(),
            transport: Arc::new(NoTransport),
            bootstrap: true,
            compaction_interval: Duration::from_secs(300),
            max_history_revisions: 100_000,
            request_timeout: Duration::from_secs(10),
            expiry_interval: Duration::from_secs(1),
            snapshot_every_entries: 20_000,
            snapshot_min_log_bytes: 8 << 20,
            keep_logs_after_snapshot: 1000,
            segment_bytes: 8 << 20,
        }
    }
}

/// Most requests one log entry carries.
pub const MAX_BATCH: usize = 512;

/// A write waiting for the proposer, with where to send its answer.
type Pending = (Request, tokio::sync::oneshot::Sender<Result<Response, StoreError>>);

/// The durable, replicated store.
pub struct RaftStore {
    /// Writes go through one proposer task that batches whatever queued up while the previous
    /// entry was being committed (openraft 0.9 appends and fsyncs one client write at a time).
    proposals: tokio::sync::mpsc::Sender<Pending>,
    raft: Raft<TypeConfig>,
    shared: Arc<state_machine::Shared>,
    /// The Raft log (openraft holds the other handles): synced at shutdown.
    log: wal::LogStore,
    node_id: NodeId,
    request_timeout: Duration,
    transport: Arc<dyn RaftTransport>,
    dir: PathBuf,
    durable: wal::DurableProgress,
    /// The index last written to the durability marker.
    marked: Mutex<Option<u64>>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Routes the server mounts for peers (Raft behind peer authentication, server joins); set
    /// once by the server, served through [`Store::peer_router`].
    peer_routes: std::sync::OnceLock<axum::Router>,
}

/// Unix milliseconds now: stamped into txns by the proposer (restamped by the leader when
/// forwarded) to turn TTLs into deadlines.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn unavailable<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> StoreError + '_ {
    move |e| {
        tracing::warn!(error = %e, "{what} failed");
        StoreError::Unavailable(format!("{what}: {e}"))
    }
}

/// Opens (or creates) the store in `cfg.dir`, verifies it, starts Raft and, on a fresh dir,
/// initializes a one-voter cluster; returns once this node leads (or follows) a leader.
pub async fn open(cfg: RaftStoreConfig) -> Result<Arc<RaftStore>, StoreError> {
    RaftStore::open(cfg).await
}

impl RaftStore {
    pub async fn open(cfg: RaftStoreConfig) -> Result<Arc<RaftStore>, StoreError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| {
            StoreError::Internal(format!("cannot create the store directory {}: {e}", cfg.dir.display()))
        })?;
        legacy::migrate_if_needed(&cfg.dir, cfg.segment_bytes).map_err(|e| {
            tracing::error!(error = %e, dir = %cfg.dir.display(), "converting the store from an older layout failed");
            StoreError::from(e)
        })?;
        let log = wal::LogStore::open(&cfg.dir.join(wal::WAL_DIR), cfg.segment_bytes).map_err(|e| {
            tracing::error!(error = %e, dir = %cfg.dir.display(), "the raft log failed verification");
            StoreError::from(e)
        })?;
        let sm = state_machine::StateMachine::open(cfg.dir.clone()).map_err(|e| {
            tracing::error!(error = %e, dir = %cfg.dir.display(), "the state machine's snapshot failed verification");
            StoreError::from(e)
        })?;
        let on_disk = log.last_index().max(sm.applied_index());
        marker::check(&cfg.dir, on_disk).map_err(|e| {
            tracing::error!(error = %e, dir = %cfg.dir.display(), "the store lost data it had acknowledged");
            StoreError::from(e)
        })?;
        let durable = log.durable_progress();
        let appended_bytes = log.appended_bytes();
        let shared = sm.shared();
        let config = openraft::Config {
            cluster_name: "skiff".into(),
            // openraft also uses the heartbeat interval as each AppendEntries RPC's timeout, and
            // that RPC includes the follower's fsync: 100 ms timed out on a loaded 2-core host
            // (and would on an SD card), leaving a leader unable to confirm itself for reads.
            // 200 ms heartbeats with 0.6-0.9 s elections (etcd: 100 ms / 1 s) keep a leader
            // kill's recovery under 3 s.
            heartbeat_interval: 200,
            election_timeout_min: 600,
            election_timeout_max: 900,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_every_entries),
            max_in_snapshot_log_to_keep: cfg.keep_logs_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Internal(format!("invalid raft configuration: {e}")))?;
        let network = network::NetworkFactory::new(cfg.transport.clone());
        let log_handle = log.clone();
        let raft = Raft::new(cfg.node_id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| StoreError::Internal(format!("starting raft: {e}")))?;
        if cfg.bootstrap && !raft.is_initialized().await.map_err(unavailable("checking raft state"))? {
            let members = BTreeMap::from([(cfg.node_id, BasicNode { addr: cfg.advertise_addr.clone() })]);
            match raft.initialize(members).await {
                Ok(()) => tracing::info!(node_id = cfg.node_id, "initialized a new one-server cluster"),
                Err(RaftError::APIError(e)) => tracing::debug!(error = %e, "raft already initialized"),
                Err(e) => return Err(unavailable("initializing the cluster")(e)),
            }
        }
        if cfg.bootstrap {
            raft.wait(Some(Duration::from_secs(30)))
                .metrics(|m| m.current_leader.is_some(), "a raft leader is known")
                .await
                .map_err(unavailable("waiting for a raft leader"))?;
        }
        let (proposals, proposals_rx) = tokio::sync::mpsc::channel(4 * MAX_BATCH);
        let store = Arc::new(RaftStore {
            proposals,
            raft,
            shared,
            log: log_handle,
            node_id: cfg.node_id,
            request_timeout: cfg.request_timeout,
            transport: cfg.transport.clone(),
            dir: cfg.dir.clone(),
            durable,
            marked: Mutex::new(on_disk),
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            peer_routes: std::sync::OnceLock::new(),
        });
        let tasks = vec![
            tokio::spawn(proposer_loop(Arc::downgrade(&store), proposals_rx, store.cancel.clone())),
            tokio::spawn(marker_loop(Arc::downgrade(&store), store.cancel.clone())),
            tokio::spawn(snapshot_loop(
                Arc::downgrade(&store),
                appended_bytes,
                cfg.snapshot_min_log_bytes,
                store.cancel.clone(),
            )),
            tokio::spawn(expiry_loop(Arc::downgrade(&store), cfg.expiry_interval, store.cancel.clone())),
            tokio::spawn(compaction_loop(
                Arc::downgrade(&store),
                cfg.compaction_interval,
                cfg.max_history_revisions,
                store.cancel.clone(),
            )),
        ];
        store.tasks.lock().unwrap_or_else(|e| e.into_inner()).extend(tasks);
        Ok(store)
    }

    /// The `/raft/...` routes for the API server to mount (peer traffic on the HTTPS port).
    pub fn raft_router(&self) -> axum::Router {
        network::router(self.raft.clone())
    }

    /// Sets the routes [`Store::peer_router`] returns (the server's authenticated Raft routes
    /// and join endpoint). Only the first call counts.
    pub fn set_peer_router(&self, router: axum::Router) {
        let _ = self.peer_routes.set(router);
    }

    /// This server's Raft node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Every member: (node id, Raft address, is a voter).
    pub fn members(&self) -> Vec<(NodeId, String, bool)> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: std::collections::BTreeSet<NodeId> = m.membership().voter_ids().collect();
        m.membership().nodes().map(|(id, n)| (*id, n.addr.clone(), voters.contains(id))).collect()
    }

    /// The leader's node id and Raft address, if one is known.
    pub fn leader_addr(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// First step of a server joining (call on the leader): gives the server at `addr` a node
    /// id (its old one if that address is already a member) and adds it as a learner without
    /// waiting, so the leader starts replicating as soon as the new server listens.
    pub async fn add_learner_for(&self, addr: &str) -> Result<NodeId, StoreError> {
        let members = self.members();
        let id = match members.iter().find(|(_, a, _)| a == addr) {
            Some((id, _, _)) => *id,
            None => members.iter().map(|(id, _, _)| *id).max().unwrap_or(0) + 1,
        };
        self.raft
            .add_learner(id, BasicNode { addr: addr.to_string() }, false)
            .await
            .map_err(unavailable("adding the server as a learner"))?;
        Ok(id)
    }

    /// Waits up to the request timeout for a leader to be known (a fresh joiner waits for the
    /// leader's first heartbeat; any server waits out an election).
    async fn wait_for_leader(&self) {
        if self.raft.metrics().borrow().current_leader.is_some() {
            return;
        }
        let _ = self
            .raft
            .wait(Some(self.request_timeout))
            .metrics(|m| m.current_leader.is_some(), "a raft leader is known")
            .await;
    }

    /// The underlying Raft handle (membership changes, metrics).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Stops the background loops and Raft, and syncs the log. The store answers `Unavailable`
    /// afterwards; drop it to release the data dir.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.cancel.cancel();
        let tasks: Vec<_> = self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        self.log.sync().map_err(StoreError::from)?;
        self.update_marker(true).map_err(StoreError::from)?;
        // openraft's log and state-machine tasks hold the log too and exit on their own once
        // the core is gone. Wait for them, so that when this returns (and the caller drops the
        // store) the log's lock is released and the store can be opened again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.log.shared_elsewhere() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self.log.shared_elsewhere() {
            tracing::warn!("the raft log is still in use after shutdown");
        }
        Ok(())
    }

    /// Records in the durability marker how far the store is known to be on disk: applied
    /// entries (committed, so never truncated) whose log entry was flushed.
    /// `all_flushed`: the log was just synced, so everything applied is on disk.
    fn update_marker(&self, all_flushed: bool) -> Result<(), Error> {
        let applied = self.raft.metrics().borrow().last_applied.map(|l| l.index);
        let durable = if all_flushed { applied } else { applied.min(self.durable.flushed_index()) };
        let mut marked = self.marked.lock().unwrap_or_else(|e| e.into_inner());
        if durable > *marked {
            marker::write(&self.dir, durable.unwrap_or(0))?;
            *marked = durable;
        }
        Ok(())
    }

    /// Adds a server as a voter: first as a learner that catches up (log or snapshot), then
    /// promoted, so a slow joiner never stalls the quorum (Raft §4.2.1). Call on the leader.
    pub async fn add_voter(&self, node_id: NodeId, addr: String) -> Result<(), StoreError> {
        self.raft
            .add_learner(node_id, BasicNode { addr }, true)
            .await
            .map_err(unavailable("adding the server as a learner"))?;
        let mut voters: std::collections::BTreeSet<NodeId> =
            self.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        voters.insert(node_id);
        self.raft.change_membership(voters, false).await.map_err(unavailable("promoting the server to voter"))?;
        Ok(())
    }

    /// Removes a server from the membership (`kubectl delete node` of a server). Call on the leader.
    pub async fn remove_member(&self, node_id: NodeId) -> Result<(), StoreError> {
        let voters: std::collections::BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != node_id)
            .collect();
        self.raft.change_membership(voters, false).await.map_err(unavailable("removing the server"))?;
        Ok(())
    }

    /// The current leader's id, if one is known.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Proposes a write through the batching proposer and waits for its result.
    async fn propose(&self, req: Request) -> Result<Response, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.proposals
            .send((req, tx))
            .await
            .map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the store stopped before the write was answered; retry".into()))?
    }

    /// Proposes one log entry now (forwarding it to the leader from a follower).
    async fn propose_now(&self, req: Request) -> Result<Response, StoreError> {
        self.wait_for_leader().await;
        // Keep a copy only when a follower may have to forward it.
        let copy = (!self.is_leader()).then(|| req.clone());
        let written = tokio::time::timeout(self.request_timeout, self.raft.client_write(req)).await.map_err(|_| {
            tracing::warn!(timeout = ?self.request_timeout, "a write was not committed in time");
            StoreError::Unavailable(format!(
                "the write was not committed within {:?} (no quorum?); it may still be applied, re-read before retrying",
                self.request_timeout
            ))
        })?;
        match written {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                let req = copy.ok_or_else(|| StoreError::Unavailable("raft leadership changed; retry".into()))?;
                let (leader, addr) = leader_of(f.leader_id, f.leader_node)?;
                let body = codec::encode_request(&req);
                let answer = self.forward(leader, &addr, network::FORWARD_WRITE_PATH, body).await?;
                let answer: network::ForwardResult<Response> = decode_answer(leader, &answer)?;
                answer
                    .map_err(|e| StoreError::Unavailable(format!("the leader (node {leader}) refused the write: {e}")))
            }
            Err(e) => Err(unavailable("proposing a write")(e)),
        }
    }

    async fn forward(&self, leader: NodeId, addr: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.transport.call(leader, addr, path, body).await.map_err(|e| {
            tracing::warn!(leader, addr, path, error = %e, "forwarding to the raft leader failed");
            StoreError::Unavailable(format!("cannot reach the raft leader: {e}"))
        })
    }

    /// Makes the next local read linearizable: on the leader, openraft's ReadIndex; on a
    /// follower, the leader's read index, then wait until this server has applied that far.
    async fn linearize(&self) -> Result<(), StoreError> {
        self.wait_for_leader().await;
        let confirmed =
            tokio::time::timeout(self.request_timeout, self.raft.ensure_linearizable()).await.map_err(|_| {
                StoreError::Unavailable("leadership could not be confirmed for a read (no quorum?); retry".into())
            })?;
        let f = match confirmed {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => f,
            Err(e) => return Err(unavailable("confirming raft leadership for a read")(e)),
        };
        let (leader, addr) = leader_of(f.leader_id, f.leader_node)?;
        let answer = self.forward(leader, &addr, network::READ_INDEX_PATH, Vec::new()).await?;
        let index: network::ForwardResult<Option<u64>> = decode_answer(leader, &answer)?;
        let index = index
            .map_err(|e| StoreError::Unavailable(format!("the leader (node {leader}) refused a read index: {e}")))?;
        self.raft
            .wait(Some(self.request_timeout))
            .applied_index_at_least(index, "applied up to the leader's read index")
            .await
            .map_err(unavailable("catching up with the leader for a read"))?;
        Ok(())
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// Deletes keys whose TTL has passed (the leader's expiry loop calls this every interval).
    pub async fn expire_now(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let due = self.shared.lock().due_expiries(now);
        let mut n = 0;
        // One entry per chunk rather than one fsync per key: a burst of expiring Events (one
        // hour after a busy spell) must not stall other writes.
        for chunk in due.chunks(MAX_BATCH) {
            // Compare on the mod revision: a key re-put since keeps living (etcd lease semantics).
            let reqs =
                chunk.iter().map(|(key, rev)| Request::Txn { txn: txn::delete(key, *rev), now_ms: now }).collect();
            if let Response::Batch(rs) = self.propose(Request::Batch(reqs)).await? {
                n += rs.iter().filter(|r| matches!(r, Response::Txn(t) if t.succeeded)).count();
            }
        }
        Ok(n)
    }
}

/// The leader to forward to, or `Unavailable` while none is known (an election is running).
fn leader_of(id: Option<NodeId>, node: Option<BasicNode>) -> Result<(NodeId, String), StoreError> {
    match (id, node) {
        (Some(id), Some(node)) => Ok((id, node.addr)),
        _ => Err(StoreError::Unavailable("no raft leader is known right now (election in progress?); retry".into())),
    }
}

fn decode_answer<T: serde::de::DeserializeOwned>(leader: NodeId, body: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(body).map_err(|e| {
        tracing::warn!(leader, error = %e, "undecodable answer from the raft leader");
        StoreError::Unavailable(format!("the raft leader (node {leader}) sent an undecodable answer: {e}"))
    })
}

/// Group commit: takes every write queued while the previous entry was in flight and proposes
/// them as one [`Request::Batch`] entry, so concurrent writers share one append and one fsync
/// (etcd batches its raft proposals the same way).
async fn proposer_loop(
    store: std::sync::Weak<RaftStore>,
    mut rx: tokio::sync::mpsc::Receiver<Pending>,
    cancel: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let mut pending = vec![first];
        while pending.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(_) => break,
            }
        }
        let Some(store) = store.upgrade() else { return };
        if pending.len() == 1 {
            if let Some((req, tx)) = pending.pop() {
                let _ = tx.send(store.propose_now(req).await);
            }
            continue;
        }
        let (reqs, txs): (Vec<Request>, Vec<_>) = pending.into_iter().unzip();
        match store.propose_now(Request::Batch(reqs)).await {
            Ok(Response::Batch(rs)) if rs.len() == txs.len() => {
                for (tx, r) in txs.into_iter().zip(rs) {
                    let _ = tx.send(Ok(r));
                }
            }
            Ok(other) => {
                tracing::error!(answer = ?other, "the state machine answered a batch with the wrong shape");
                for tx in txs {
                    let _ = tx.send(Err(StoreError::Internal("the state machine answered a batch wrongly".into())));
                }
            }
            Err(e) => {
                for tx in txs {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Triggers a snapshot (after which openraft purges the log) once the log has grown by more than
/// the state's size, measured by the last snapshot file, or once compaction has dropped more
/// than half of the records the last snapshot holds (so the data dir shrinks with the history).
async fn snapshot_loop(
    store: std::sync::Weak<RaftStore>,
    appended: Arc<std::sync::atomic::AtomicU64>,
    min_bytes: u64,
    cancel: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut at_last = 0u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(store) = store.upgrade() else { return };
        let now = appended.load(Ordering::Relaxed);
        let state = std::fs::metadata(store.dir.join(state_machine::SNAPSHOT_FILE)).map(|m| m.len()).unwrap_or(0);
        let compacted = store.shared.compacted_since_snapshot.load(Ordering::Relaxed);
        let in_snapshot = store.shared.snapshot_records.load(Ordering::Relaxed);
        let mostly_compacted = compacted >= 1000 && compacted * 2 > in_snapshot;
        if now.saturating_sub(at_last) > state.max(min_bytes) || mostly_compacted {
            at_last = now;
            if let Err(e) = store.raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "triggering a raft snapshot failed");
            }
        }
    }
}

/// Hands memory that the allocator holds free back to the system (glibc's `malloc_trim`).
/// glibc keeps one arena per thread that allocated and returns little of what is freed in
/// them: after 100,000 writes of 1 KiB the process sat at ~360 MB where its live data needed
/// ~210 MB (skiff-bench). Limiting arenas instead halved concurrent write throughput.
pub fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

async fn marker_loop(store: std::sync::Weak<RaftStore>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        ticks += 1;
        if ticks % 10 == 0 {
            tokio::task::spawn_blocking(trim_allocator);
        }
        let Some(store) = store.upgrade() else { return };
        if let Err(e) = store.update_marker(false) {
            tracing::warn!(error = %e, "updating the durability marker failed; will retry");
        }
    }
}

async fn expiry_loop(store: std::sync::Weak<RaftStore>, every: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(store) = store.upgrade() else { return };
        if store.is_leader() {
            if let Err(e) = store.expire_now().await {
                tracing::warn!(error = %e, "expiring TTL keys failed; will retry");
            }
        }
    }
}

async fn compaction_loop(
    store: std::sync::Weak<RaftStore>,
    every: Duration,
    max_history: i64,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    // kube-apiserver's compactor: compact to the revision observed one interval ago, so history
    // always reaches back at least one interval.
    let mut previous: i64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(store) = store.upgrade() else { return };
        if !store.is_leader() {
            continue;
        }
        let (current, compacted) = {
            let m = store.shared.lock();
            (m.revision(), m.compact_revision())
        };
        let target = previous.max(current - max_history);
        previous = current;
        if target > compacted {
            match store.propose(Request::Compact { revision: target }).await {
                Ok(_) => tracing::debug!(revision = target, "compacted store history"),
                Err(e) => tracing::warn!(error = %e, "compaction failed; will retry"),
            }
        }
    }
}

#[async_trait]
impl Store for RaftStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        // A read pinned to a revision this server has applied is consistent as it is (the
        // later pages of a list); only a read of "now", or of a revision not applied here
        // yet, asks the leader first.
        let applied = req.revision > 0 && req.revision <= self.shared.lock().revision();
        if !req.serializable && !applied {
            self.linearize().await?;
        }
        self.shared.lock().range(&req)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let read_only = txn.success.iter().chain(&txn.failure).all(|op| matches!(op, Op::Get { .. }));
        if read_only {
            // Like etcd, serve a read-only txn through ReadIndex instead of the log: it changes
            // nothing, so it needs no entry and no fsync.
            self.linearize().await?;
            return Ok(self.shared.lock().apply(&txn, 0).response);
        }
        match self.propose(Request::Txn { txn, now_ms: now_ms() }).await? {
            Response::Txn(r) => Ok(r),
            other => Err(StoreError::Internal(format!("the state machine answered a txn with {other:?}"))),
        }
    }

    async fn watch(&self, prefix: Vec<u8>, after_revision: i64) -> Result<WatchStream> {
        let (history, live, start_rev) = {
            let m = self.shared.lock();
            let (history, start_rev) = m.history(&prefix, after_revision)?;
            (history, m.hub.subscribe(&prefix), start_rev)
        };
        Ok(watch::stream(history, live, start_rev, prefix))
    }

    async fn current_revision(&self) -> Result<i64> {
        self.linearize().await?;
        Ok(self.shared.lock().revision())
    }

    async fn compact_revision(&self) -> Result<i64> {
        Ok(self.shared.lock().compact_revision())
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.propose(Request::Compact { revision }).await.map(|_| ())
    }

    fn peer_router(&self) -> Option<axum::Router> {
        self.peer_routes.get().cloned()
    }
}

#[cfg(test)]
mod tests;
