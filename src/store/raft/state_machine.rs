//! The Raft state machine: applies committed entries to the [`Mvcc`] core, persists every change
//! as a CRC-framed record in the `sm` tree of the storage engine (together with the last applied log id and the
//! membership, in one atomic write batch per `apply` call), publishes the events to live watchers,
//! and builds/installs snapshots.
//!
//! `apply` is deterministic (Raft requires every replica to reach the same state from the same
//! log): it reads no clock and no randomness. TTL deadlines come from the wall-clock time the
//! leader stamped into the entry ([`Request::Txn::now_ms`]); compaction is a log entry too.
//!
//! The state machine does not fsync: its changes are re-derived from the (fsynced) log after a
//! crash, since openraft re-applies entries after the persisted last-applied id.

use super::codec;
use super::engine::{Engine, Tree, WriteBatch};
use super::{Error, Request, Response, TypeConfig};
use crate::store::mvcc::{Mvcc, Record};
use crate::store::watch::{Published, LIVE_CAPACITY};
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership,
};
use std::io::Cursor;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::broadcast;

type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

const APPLIED_KEY: &[u8] = b"m/applied";
const MEMBERSHIP_KEY: &[u8] = b"m/membership";
const COUNTERS_KEY: &[u8] = b"m/counters";
pub const SNAPSHOT_FILE: &str = "snapshot.bin";

/// What readers and watchers share with the state machine.
pub struct Shared {
    inner: Mutex<Inner>,
}

/// The MVCC state and the channel its live events go out on, under one lock so a watch's
/// history read and its subscription see the same revision.
pub struct Inner {
    pub mvcc: Mvcc,
    pub tx: broadcast::Sender<Published>,
}

impl std::ops::Deref for Inner {
    type Target = Mvcc;
    fn deref(&self) -> &Mvcc {
        &self.mvcc
    }
}

impl std::ops::DerefMut for Inner {
    fn deref_mut(&mut self) -> &mut Mvcc {
        &mut self.mvcc
    }
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock means a panic mid-apply; openraft then stops the node anyway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct StateMachine {
    shared: Arc<Shared>,
    tree: Arc<dyn Tree>,
    /// Where the current snapshot file lives.
    dir: PathBuf,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

fn get_json<T: serde::de::DeserializeOwned>(tree: &dyn Tree, key: &[u8]) -> Result<Option<T>, Error> {
    let Some(v) = tree.get(key)? else {
        return Ok(None);
    };
    let payload = codec::unframe(key, &v, "state machine metadata")?;
    serde_json::from_slice(payload).map(Some).map_err(|e| {
        Error::Corrupt(format!("state machine metadata {:?} does not decode: {e}", String::from_utf8_lossy(key)))
    })
}

fn json_frame<T: serde::Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>, Error> {
    let payload = serde_json::to_vec(value).map_err(|e| Error::Internal(format!("encoding metadata: {e}")))?;
    Ok(codec::frame(key, &payload))
}

/// The persisted part of a snapshot file: openraft's meta, then the MVCC data.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotHeader {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
}

impl StateMachine {
    /// Opens the state machine and rebuilds the in-memory MVCC index from its records, checking
    /// every checksum on the way.
    pub fn open(engine: &Arc<dyn Engine>, dir: PathBuf) -> Result<StateMachine, Error> {
        let tree = engine.tree("sm")?;
        let applied: Option<LogId<NodeId>> = get_json::<Option<LogId<NodeId>>>(&*tree, APPLIED_KEY)?.flatten();
        let membership = get_json(&*tree, MEMBERSHIP_KEY)?.unwrap_or_default();
        let (rev, compact_rev): (i64, i64) = get_json(&*tree, COUNTERS_KEY)?.unwrap_or((0, 0));
        let mvcc = Mvcc::restore(rev, compact_rev, load_records(&*tree)?);
        let (tx, _) = broadcast::channel(LIVE_CAPACITY);
        Ok(StateMachine {
            shared: Arc::new(Shared { inner: Mutex::new(Inner { mvcc, tx }) }),
            tree,
            dir,
            applied,
            membership,
        })
    }

    /// Index of the last applied log entry, if any.
    pub fn applied_index(&self) -> Option<u64> {
        self.applied.map(|l| l.index)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    fn read_snapshot_file(&self) -> Result<Option<(Meta, Vec<u8>)>, Error> {
        let buf = match std::fs::read(self.snapshot_path()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Io { context: format!("reading {}", self.snapshot_path().display()), source: e })
            }
        };
        let bad =
            || Error::Corrupt(format!("snapshot file {} is truncated or damaged", self.snapshot_path().display()));
        if buf.len() < 4 {
            return Err(bad());
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let header = buf.get(4..4 + len).ok_or_else(bad)?;
        let header = codec::unframe(b"snapshot", header, "the snapshot header")?;
        let header: SnapshotHeader = serde_json::from_slice(header).map_err(|_| bad())?;
        let data = buf[4 + len..].to_vec();
        codec::decode_snapshot(&data)?;
        Ok(Some((header.meta, data)))
    }
}

/// Writes `<dir>/snapshot.bin` atomically.
fn write_snapshot_file(
    dir: &std::path::Path,
    meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
    data: &[u8],
) -> Result<(), Error> {
    let header = json_frame(b"snapshot", &SnapshotHeader { meta: meta.clone() })?;
    let mut buf = Vec::with_capacity(4 + header.len() + data.len());
    buf.extend_from_slice(&(header.len() as u32).to_be_bytes());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(data);
    // Write a temporary file, fsync it, then rename: a crash leaves the old or the new one.
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let io = |context: &str, source| Error::Io { context: format!("{context} {}", tmp.display()), source };
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        f.write_all(&buf).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE)).map_err(|e| io("renaming", e))?;
    Ok(())
}

/// Applies one request to the MVCC state, adding its changes to `batch` and publishing its
/// events. A batch applies its requests in order, each txn getting its own revision, exactly as
/// if they had been separate entries.
fn apply_request(inner: &mut Inner, batch: &mut WriteBatch, req: Request) -> Response {
    match req {
        Request::Txn { txn, now_ms } => {
            let applied = inner.mvcc.apply(&txn, now_ms);
            for r in &applied.records {
                put_record(batch, r);
            }
            if !applied.events.is_empty() {
                // Published under the lock, so watchers see revisions in order and a new
                // watch's history read never misses or repeats one.
                let _ = inner.tx.send(Arc::new((applied.response.revision, applied.events)));
            }
            Response::Txn(applied.response)
        }
        Request::Compact { revision } => {
            for (rev, sub) in inner.mvcc.compact(revision) {
                batch.remove(&codec::record_key(rev, sub)[..]);
            }
            Response::Done
        }
        Request::Batch(reqs) => Response::Batch(reqs.into_iter().map(|r| apply_request(inner, batch, r)).collect()),
    }
}

/// Seeds a fresh state-machine tree with MVCC data (snapshot restore): the records and the
/// revision counters, no applied log id, so a new cluster's log starts on top of it.
pub fn seed(engine: &Arc<dyn Engine>, rev: i64, compact_rev: i64, records: &[Record]) -> Result<(), Error> {
    let tree = engine.tree("sm")?;
    if !tree.is_empty()? {
        return Err(Error::Internal("the target store already holds data; restore into an empty data dir".into()));
    }
    let mut batch = WriteBatch::default();
    for r in records {
        put_record(&mut batch, r);
    }
    batch.insert(COUNTERS_KEY, json_frame(COUNTERS_KEY, &(rev, compact_rev))?);
    tree.apply(batch)?;
    engine.flush_blocking()?;
    Ok(())
}

fn load_records(tree: &dyn Tree) -> Result<Vec<Record>, Error> {
    let mut out = Vec::new();
    let (start, end) = ([codec::RECORD_PREFIX], [codec::RECORD_PREFIX + 1]);
    for (k, v) in tree.range(Bound::Included(&start[..]), Bound::Excluded(&end[..]))? {
        let r = codec::decode_record(codec::unframe(&k, &v, "an MVCC record")?)?;
        if codec::record_key(r.rev, r.sub)[..] != k[..] {
            return Err(Error::Corrupt(format!("MVCC record ({}, {}) is stored under the wrong key", r.rev, r.sub)));
        }
        out.push(r);
    }
    Ok(out)
}

fn put_record(batch: &mut WriteBatch, r: &Record) {
    let k = codec::record_key(r.rev, r.sub);
    batch.insert(&k[..], codec::frame(&k, &codec::encode_record(r)));
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>)> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut responses = Vec::new();
        let mut touched = false;
        let mut membership_changed = false;
        let (rev, compact_rev) = {
            let mut mvcc = self.shared.lock();
            for entry in entries {
                self.applied = Some(entry.log_id);
                touched = true;
                match entry.payload {
                    EntryPayload::Blank => responses.push(Response::Done),
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        membership_changed = true;
                        responses.push(Response::Done);
                    }
                    EntryPayload::Normal(req) => responses.push(apply_request(&mut mvcc, &mut batch, req)),
                }
            }
            (mvcc.revision(), mvcc.compact_revision())
        };
        if touched {
            batch.insert(APPLIED_KEY, json_frame(APPLIED_KEY, &self.applied).map_err(sm_write_err)?);
            batch.insert(COUNTERS_KEY, json_frame(COUNTERS_KEY, &(rev, compact_rev)).map_err(sm_write_err)?);
            if membership_changed {
                batch.insert(MEMBERSHIP_KEY, json_frame(MEMBERSHIP_KEY, &self.membership).map_err(sm_write_err)?);
            }
            self.tree.apply(batch).map_err(|e| {
                tracing::error!(error = %e, "writing applied raft entries to the state machine failed");
                sm_write_err(e)
            })?;
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Capture the state now, inside the state-machine task: openraft builds the snapshot on
        // another task while later entries keep being applied.
        let mvcc = self.shared.lock();
        SnapshotBuilder {
            data: codec::encode_snapshot(mvcc.revision(), mvcc.compact_revision(), &mvcc.record_refs()),
            applied: self.applied,
            membership: self.membership.clone(),
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let signature = Some(meta.signature());
        let read_err = |e: Error| StorageError::from(StorageIOError::read_snapshot(signature.clone(), &e));
        let (rev, compact_rev, records) = codec::decode_snapshot(&data).map_err(read_err)?;
        // Replace the whole state machine in one batch: old records out, snapshot records in.
        let mut batch = WriteBatch::default();
        for k in self.tree.keys(Bound::Unbounded, Bound::Unbounded).map_err(sm_read_err)? {
            batch.remove(k);
        }
        for r in &records {
            put_record(&mut batch, r);
        }
        let write_err = |e: Error| StorageError::from(StorageIOError::write_snapshot(signature.clone(), &e));
        batch.insert(APPLIED_KEY, json_frame(APPLIED_KEY, &meta.last_log_id).map_err(write_err)?);
        batch.insert(MEMBERSHIP_KEY, json_frame(MEMBERSHIP_KEY, &meta.last_membership).map_err(write_err)?);
        batch.insert(COUNTERS_KEY, json_frame(COUNTERS_KEY, &(rev, compact_rev)).map_err(write_err)?);
        write_snapshot_file(&self.dir, meta, &data).map_err(write_err)?;
        self.tree.apply(batch).map_err(sm_write_err)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        {
            let mut inner = self.shared.lock();
            inner.mvcc = Mvcc::restore(rev, compact_rev, records);
            // Live watchers cannot follow a jump over revisions they never saw: replacing the
            // channel ends their streams with `WatchLagged`, and they re-watch from their last
            // revision (history) or re-list (`Compacted`), as after an etcd watch cancel.
            inner.tx = broadcast::channel(LIVE_CAPACITY).0;
        }
        tracing::info!(revision = rev, "installed a raft snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let snap = self.read_snapshot_file().map_err(|e| {
            tracing::error!(error = %e, "reading the current raft snapshot");
            StorageError::from(StorageIOError::read_snapshot(None, &e))
        })?;
        Ok(snap.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

pub struct SnapshotBuilder {
    data: Vec<u8>,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let snapshot_id = match self.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta { last_log_id: self.applied, last_membership: self.membership.clone(), snapshot_id };
        write_snapshot_file(&self.dir, &meta, &self.data).map_err(|e| {
            tracing::error!(error = %e, "writing a raft snapshot failed");
            StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), &e))
        })?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(self.data.clone())) })
    }
}
