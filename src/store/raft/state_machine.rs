//! The Raft state machine: applies committed entries to the in-memory [`Mvcc`] core, publishes
//! their events to live watchers, and builds and installs snapshots.
//!
//! It writes nothing per entry. Its durable form is the last Raft snapshot (`snapshot.bin`: the
//! snapshot's meta, then every retained MVCC record and the revision counters); at start-up the
//! state is rebuilt from it, and openraft re-applies the committed log entries after it
//! ([`super::wal`]), which is the state as it was. This is etcd's WAL plus snapshot, without a
//! second on-disk copy of the state: every read is served from memory anyway.
//!
//! `apply` is deterministic (Raft requires every replica to reach the same state from the same
//! log): it reads no clock and no randomness. TTL deadlines come from the wall-clock time the
//! leader stamped into the entry ([`Request::Txn::now_ms`]); compaction is a log entry too.

use super::codec;
use super::{Error, Request, Response, TypeConfig};
use crate::store::mvcc::Mvcc;
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership,
};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;

pub const SNAPSHOT_FILE: &str = "snapshot.bin";

/// What readers and watchers share with the state machine.
pub struct Shared {
    inner: Mutex<Inner>,
    /// Records in the last snapshot written, and records compacted away since: once most of
    /// the snapshot is history that compaction dropped, a new one shrinks the data dir.
    pub snapshot_records: AtomicU64,
    pub compacted_since_snapshot: AtomicU64,
}

/// The MVCC state and the channel its live events go out on, under one lock so a watch's
/// history read and its subscription see the same revision.
pub struct Inner {
    pub mvcc: Mvcc,
    pub hub: super::super::watch::Hub,
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

    fn snapshot_taken(&self, records: u64) {
        self.snapshot_records.store(records, Ordering::Relaxed);
        self.compacted_since_snapshot.store(0, Ordering::Relaxed);
    }
}

pub struct StateMachine {
    shared: Arc<Shared>,
    /// Where the current snapshot file lives.
    dir: PathBuf,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
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

/// Reads and checks `<dir>/snapshot.bin`: its meta and MVCC data, or None when there is none.
pub fn read_snapshot_file(dir: &Path) -> Result<Option<(Meta, Vec<u8>)>, Error> {
    let path = dir.join(SNAPSHOT_FILE);
    let mut buf = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { context: format!("reading {}", path.display()), source: e }),
    };
    let bad = || Error::Corrupt(format!("snapshot file {} is truncated or damaged", path.display()));
    if buf.len() < 4 {
        return Err(bad());
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let header = buf.get(4..4 + len).ok_or_else(bad)?;
    let header = codec::unframe(b"snapshot", header, "the snapshot header")?;
    let header: SnapshotHeader = serde_json::from_slice(header).map_err(|_| bad())?;
    buf.drain(..4 + len);
    Ok(Some((header.meta, buf)))
}

/// Writes `<dir>/snapshot.bin` atomically (temporary file, fsync, rename, fsync of the dir).
pub fn write_snapshot_file(dir: &Path, meta: &Meta, data: &[u8]) -> Result<(), Error> {
    let header = json_frame(b"snapshot", &SnapshotHeader { meta: meta.clone() })?;
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let io = |context: &str, source| Error::Io { context: format!("{context} {}", tmp.display()), source };
    {
        use std::io::Write;
        let f = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        let mut w = std::io::BufWriter::new(&f);
        w.write_all(&(header.len() as u32).to_be_bytes()).map_err(|e| io("writing", e))?;
        w.write_all(&header).map_err(|e| io("writing", e))?;
        w.write_all(data).map_err(|e| io("writing", e))?;
        w.flush().map_err(|e| io("writing", e))?;
        drop(w);
        f.sync_all().map_err(|e| io("syncing", e))?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE)).map_err(|e| io("renaming", e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Applies one request to the MVCC state and publishes its events. A batch applies its requests
/// in order, each txn getting its own revision, exactly as if they had been separate entries.
fn apply_request(inner: &mut Inner, compacted: &AtomicU64, req: Request) -> Response {
    match req {
        Request::Txn { txn, now_ms } => {
            let applied = inner.mvcc.apply(&txn, now_ms);
            if !applied.events.is_empty() {
                // Published under the lock, so watchers see revisions in order and a new
                // watch's history read never misses or repeats one.
                inner.hub.publish(applied.response.revision, applied.events);
            }
            Response::Txn(applied.response)
        }
        Request::Compact { revision } => {
            let removed = inner.mvcc.compact(revision).len() as u64;
            compacted.fetch_add(removed, Ordering::Relaxed);
            Response::Done
        }
        Request::Batch(reqs) => Response::Batch(reqs.into_iter().map(|r| apply_request(inner, compacted, r)).collect()),
    }
}

impl StateMachine {
    /// Opens the state machine in `dir`: the state of the snapshot there (checked), or an empty
    /// one. openraft then re-applies the committed log after it.
    pub fn open(dir: PathBuf) -> Result<StateMachine, Error> {
        let (mvcc, applied, membership, records) = match read_snapshot_file(&dir)? {
            Some((meta, data)) => {
                let (rev, compact_rev, records) = codec::decode_snapshot(&data)?;
                let n = records.len() as u64;
                (Mvcc::restore(rev, compact_rev, records), meta.last_log_id, meta.last_membership, n)
            }
            None => (Mvcc::new(), None, StoredMembership::default(), 0),
        };
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner { mvcc, hub: Default::default() }),
            snapshot_records: AtomicU64::new(records),
            compacted_since_snapshot: AtomicU64::new(0),
        });
        Ok(StateMachine { shared, dir, applied, membership })
    }

    /// Index of the last applied log entry, if any.
    pub fn applied_index(&self) -> Option<u64> {
        self.applied.map(|l| l.index)
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
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
        let mut responses = Vec::new();
        let mut inner = self.shared.lock();
        for entry in entries {
            self.applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(Response::Done),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    responses.push(Response::Done);
                }
                EntryPayload::Normal(req) => {
                    responses.push(apply_request(&mut inner, &self.shared.compacted_since_snapshot, req))
                }
            }
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Capture the state now, inside the state-machine task: openraft builds the snapshot on
        // another task while later entries keep being applied.
        let (data, records) = {
            let mvcc = self.shared.lock();
            let refs = mvcc.record_refs();
            (codec::encode_snapshot(mvcc.revision(), mvcc.compact_revision(), &refs), refs.len() as u64)
        };
        SnapshotBuilder {
            data,
            records,
            shared: self.shared.clone(),
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
        let write_err = |e: Error| StorageError::from(StorageIOError::write_snapshot(signature.clone(), &e));
        // The file first: it is this state machine's durable state from now on.
        write_snapshot_file(&self.dir, meta, &data).map_err(write_err)?;
        self.shared.snapshot_taken(records.len() as u64);
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        {
            let mut inner = self.shared.lock();
            inner.mvcc = Mvcc::restore(rev, compact_rev, records);
            // Live watchers cannot follow a jump over revisions they never saw: replacing the
            // channel ends their streams with `WatchLagged`, and they re-watch from their last
            // revision (history) or re-list (`Compacted`), as after an etcd watch cancel.
            inner.hub.reset();
        }
        tracing::info!(revision = rev, "installed a raft snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let snap = read_snapshot_file(&self.dir).map_err(|e| {
            tracing::error!(error = %e, "reading the current raft snapshot");
            StorageError::from(StorageIOError::read_snapshot(None, &e))
        })?;
        Ok(snap.map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

pub struct SnapshotBuilder {
    data: Vec<u8>,
    records: u64,
    shared: Arc<Shared>,
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
        self.shared.snapshot_taken(self.records);
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(std::mem::take(&mut self.data))) })
    }
}
