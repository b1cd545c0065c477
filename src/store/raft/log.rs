//! The Raft log on the storage engine ([`super::engine`], sled by default): entries keyed by
//! big-endian index in the `log` tree, the vote and the last purged log id in the `raft_meta`
//! tree, every value CRC-framed (see [`super::codec`]).
//!
//! Durability: `append` writes the entries to the engine and hands openraft's completion
//! callback to one flusher task, which fsyncs once (the engine's flush) for every callback that
//! queued up meanwhile and only then reports the entries as persisted. So a write is
//! acknowledged only once its entry is on disk (Raft's rule that a node must persist entries
//! before answering AppendEntries or counting itself in a quorum). openraft 0.9 waits for each
//! append's flush before issuing the next, so concurrent client writes share an fsync through
//! the proposer's batched entries ([`super::Request::Batch`]); the flusher merges callbacks too
//! should appends ever be pipelined.

use super::codec;
use super::engine::{Engine, Tree, WriteBatch};
use super::{Error, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

const VOTE_KEY: &[u8] = b"vote";
const PURGED_KEY: &[u8] = b"last_purged";
const COMMITTED_KEY: &[u8] = b"committed";

/// The log store. Clones share the same trees and flusher.
#[derive(Clone)]
pub struct LogStore {
    engine: Arc<dyn Engine>,
    log: Arc<dyn Tree>,
    meta: Arc<dyn Tree>,
    flusher: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
    /// One past the highest index appended so far (0 = none).
    appended: Arc<AtomicU64>,
    /// One past the highest index known to be on disk (0 = none).
    flushed: Arc<AtomicU64>,
    /// Bytes appended since the store opened (drives size-based snapshots).
    appended_bytes: Arc<AtomicU64>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Opens the log trees and verifies every entry (checksum, index, contiguity), so a damaged
    /// log fails start-up rather than being replayed. Must run inside a tokio runtime (it starts
    /// the flusher task).
    pub fn open(engine: &Arc<dyn Engine>) -> Result<LogStore, Error> {
        let log = engine.tree("log")?;
        let meta = engine.tree("raft_meta")?;
        let (flusher, rx) = mpsc::unbounded_channel();
        let appended = Arc::new(AtomicU64::new(0));
        let flushed = Arc::new(AtomicU64::new(0));
        tokio::spawn(flush_loop(engine.clone(), rx, appended.clone(), flushed.clone()));
        let appended_bytes = Arc::new(AtomicU64::new(0));
        let store = LogStore { engine: engine.clone(), log, meta, flusher, appended, flushed, appended_bytes };
        store.verify()?;
        Ok(store)
    }

    /// A counter of the bytes appended to the log since it was opened.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended_bytes.clone()
    }

    /// A handle reporting how far the log is known to be on disk.
    pub fn durable_progress(&self) -> DurableProgress {
        DurableProgress(self.flushed.clone())
    }

    /// The highest log index present on disk or purged (None for an empty log).
    pub fn last_index(&self) -> Result<Option<u64>, Error> {
        let purged: Option<LogId<NodeId>> = self.get_meta(PURGED_KEY)?;
        let last = match self.log.last()? {
            Some((k, v)) => Some(decode_entry(&k, &v)?.get_log_id().index),
            None => None,
        };
        Ok(last.max(purged.map(|p| p.index)))
    }

    fn verify(&self) -> Result<(), Error> {
        let purged: Option<LogId<NodeId>> = self.get_meta(PURGED_KEY)?;
        let _: Option<Vote<NodeId>> = self.get_meta(VOTE_KEY)?;
        let mut expected: Option<u64> = None;
        for (k, v) in self.log.range(Bound::Unbounded, Bound::Unbounded)? {
            let entry = decode_entry(&k, &v)?;
            let index = entry.get_log_id().index;
            if let Some(want) = expected {
                if index != want {
                    return Err(Error::Corrupt(format!(
                        "the raft log has a gap: entry {want} is missing before entry {index}"
                    )));
                }
            } else if let Some(p) = purged {
                if index > p.index + 1 {
                    return Err(Error::Corrupt(format!(
                        "the raft log starts at entry {index} but only entries up to {} were purged",
                        p.index
                    )));
                }
            }
            expected = Some(index + 1);
        }
        Ok(())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, Error> {
        let Some(v) = self.meta.get(key)? else {
            return Ok(None);
        };
        let payload = codec::unframe(key, &v, "raft metadata")?;
        serde_json::from_slice(payload).map(Some).map_err(|e| {
            Error::Corrupt(format!("raft metadata {:?} does not decode: {e}", String::from_utf8_lossy(key)))
        })
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), Error> {
        let payload = serde_json::to_vec(value).map_err(|e| Error::Internal(format!("encoding raft metadata: {e}")))?;
        let mut batch = WriteBatch::default();
        batch.insert(key, codec::frame(key, &payload));
        self.meta.apply(batch)
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, Error> {
        match self.log.last()? {
            None => Ok(None),
            Some((k, v)) => Ok(Some(*decode_entry(&k, &v)?.get_log_id())),
        }
    }
}

fn encode_entry(entry: &Entry<TypeConfig>) -> Result<([u8; 8], Vec<u8>), Error> {
    let key = entry.get_log_id().index.to_be_bytes();
    let payload = codec::encode_entry(entry)?;
    Ok((key, codec::frame(&key, &payload)))
}

fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry<TypeConfig>, Error> {
    let payload = codec::unframe(key, value, "a raft log entry")?;
    let entry = codec::decode_entry(payload)?;
    if key != entry.get_log_id().index.to_be_bytes() {
        return Err(Error::Corrupt(format!(
            "raft log entry {} is stored under the wrong index",
            entry.get_log_id().index
        )));
    }
    Ok(entry)
}

/// How far the log is known to be on disk; see [`LogStore::durable_progress`].
#[derive(Clone)]
pub struct DurableProgress(Arc<AtomicU64>);

impl DurableProgress {
    /// The highest log index known to be flushed, if any.
    pub fn flushed_index(&self) -> Option<u64> {
        self.0.load(Ordering::Acquire).checked_sub(1)
    }
}

/// Fsyncs once per batch of queued appends, then completes each of them (group commit).
async fn flush_loop(
    engine: Arc<dyn Engine>,
    mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>,
    appended: Arc<AtomicU64>,
    flushed: Arc<AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        // Everything appended before the flush starts is covered by it.
        let upto = appended.load(Ordering::Acquire);
        let result = engine.flush().await;
        if result.is_ok() {
            flushed.fetch_max(upto, Ordering::AcqRel);
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = batch.len(), "flushing the raft log to disk failed");
        }
        for cb in batch {
            cb.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(i.to_be_bytes()),
            Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match &end {
            Bound::Included(k) => Bound::Included(&k[..]),
            Bound::Excluded(k) => Bound::Excluded(&k[..]),
            Bound::Unbounded => Bound::Unbounded,
        };
        let start = start.to_be_bytes();
        let mut out = Vec::new();
        for (k, v) in self.log.range(Bound::Included(&start[..]), end).map_err(read_err)? {
            out.push(decode_entry(&k, &v).map_err(|e| {
                tracing::error!(error = %e, "reading the raft log");
                read_err(e)
            })?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(PURGED_KEY).map_err(read_err)?;
        let last_log_id = self.last_entry_id().map_err(read_err)?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta(VOTE_KEY, vote).map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        // Raft: a vote must be durable before it is answered, or a node could vote twice in a term.
        self.engine.flush().await.map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(VOTE_KEY).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: losing it only means re-learning the commit index from the leader.
        self.put_meta(COMMITTED_KEY, &committed).map_err(write_err)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED_KEY).map_err(read_err)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut last = None;
        let mut bytes = 0;
        for entry in entries {
            let (k, v) = encode_entry(&entry).map_err(write_err)?;
            last = Some(entry.get_log_id().index);
            bytes += v.len() as u64;
            batch.insert(k, v);
        }
        self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.log.apply(batch).map_err(write_err)?;
        if let Some(last) = last {
            self.appended.store(last + 1, Ordering::Release);
        }
        if let Err(mpsc::error::SendError(cb)) = self.flusher.send(callback) {
            // The flusher only stops with the runtime; flush inline rather than lose the ack.
            let r = self.engine.flush().await;
            cb.log_io_completed(r.map_err(|e| std::io::Error::other(e.to_string())));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = WriteBatch::default();
        let from = log_id.index.to_be_bytes();
        for k in self.log.keys(Bound::Included(&from[..]), Bound::Unbounded).map_err(write_err)? {
            batch.remove(k);
        }
        self.log.apply(batch).map_err(write_err)?;
        self.appended.store(log_id.index, Ordering::Release);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.put_meta(PURGED_KEY, &log_id).map_err(write_err)?;
        let mut batch = WriteBatch::default();
        let upto = log_id.index.to_be_bytes();
        for k in self.log.keys(Bound::Unbounded, Bound::Included(&upto[..])).map_err(write_err)? {
            batch.remove(k);
        }
        self.log.apply(batch).map_err(write_err)?;
        Ok(())
    }
}
