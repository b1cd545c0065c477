//! The Raft log as an append-only, segmented write-ahead log (etcd's WAL, in spirit): every
//! change to the log — entries, the vote, the commit index, a purge or a truncation — is a
//! CRC-checked record appended to the current segment file, and one `fdatasync` makes a whole
//! group of appends durable.
//!
//! Why not a B-tree engine: an append costs the bytes of the entry and nothing else, where a
//! copy-on-write B-tree rewrote whole pages per commit (redb wrote ~14 bytes per logical byte on
//! the store benchmark, etcd ~3.8). The state machine needs no engine either: it lives in memory
//! and is persisted as Raft snapshots ([`super::state_machine`]), with this log replayed on top
//! at start-up, so the data dir holds one snapshot plus the log since it.
//!
//! Layout of `<store>/wal/`: segment files `<seq>.wal` (20 decimal digits) and a `LOCK` file
//! (an exclusive `flock`, so two processes never write one log). A segment starts with a header
//! (magic `SKIFFWAL`, format version, sequence number, CRC-32), then the records of the vote,
//! commit index and purge point as they were when it was created (so older segments can be
//! deleted without losing them), then records:
//!
//! `len u32 | crc32(len ++ body) u32 | body`, where body = kind u8 ++ payload (big-endian).
//!
//! A new segment starts once the current one exceeds the configured size; segments whose every
//! entry is purged are deleted (after the purge record is on disk).
//!
//! Start-up reads every record and checks it. The one thing a crash may leave is a torn tail:
//! the last record of the last segment cut short or failing its checksum where the file ends.
//! That write was never acknowledged (acknowledgement waits for the fsync), so the tail is cut
//! off with a warning, as etcd repairs its WAL. Anything else — a bad record followed by more
//! data, a damaged header, a gap in the entry indexes, a short older segment — is corruption
//! and stops start-up; the durability marker ([`super::marker`]) catches a log cut short at a
//! record boundary.

use super::codec;
use super::{Error, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError, Vote};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::mpsc;

type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

const MAGIC: &[u8; 8] = b"SKIFFWAL";
const VERSION: u32 = 1;
/// magic, version, seq, crc
const HEADER_LEN: u64 = 8 + 4 + 8 + 4;
/// len, crc
const RECORD_HEADER: u64 = 8;
/// No record is larger (a batch of [`super::MAX_BATCH`] requests of at most a few MiB each);
/// a larger length field is damage, not data.
const MAX_RECORD: u64 = 1 << 30;
pub const WAL_DIR: &str = "wal";
const LOCK_FILE: &str = "LOCK";

const KIND_ENTRY: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_COMMITTED: u8 = 3;
const KIND_PURGED: u8 = 4;
const KIND_TRUNCATE: u8 = 5;

/// Where one entry's record lives.
#[derive(Debug, Clone, Copy)]
struct Loc {
    log_id: LogId<NodeId>,
    seg: u64,
    offset: u64,
    len: u64,
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes written (the offset of the next record).
    len: u64,
    /// End of the header and the state records it was created with.
    checkpoint_end: u64,
    /// Highest entry index ever written to it.
    max_index: Option<u64>,
}

/// The log's state, shared by the store and its readers.
struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    /// Every entry in the log by index (in practice contiguous: openraft appends in order).
    entries: BTreeMap<u64, Loc>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    /// Held for the life of the log: the exclusive lock on `LOCK`.
    _lock: nix::fcntl::Flock<File>,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

fn header(seq: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_be_bytes());
    h
}

fn record_crc(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

/// Appends one record (kind + payload) to `out`.
fn put_record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let len = (payload.len() as u32 + 1).to_be_bytes();
    let mut body = Vec::with_capacity(payload.len() + 1);
    body.push(kind);
    body.extend_from_slice(payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&record_crc(&len, &body).to_be_bytes());
    out.extend_from_slice(&body);
}

fn encode_log_id(id: Option<&LogId<NodeId>>) -> Vec<u8> {
    match id {
        None => vec![0],
        Some(l) => {
            let mut v = Vec::with_capacity(25);
            v.push(1);
            v.extend_from_slice(&l.leader_id.term.to_be_bytes());
            v.extend_from_slice(&l.leader_id.node_id.to_be_bytes());
            v.extend_from_slice(&l.index.to_be_bytes());
            v
        }
    }
}

fn decode_log_id(b: &[u8], what: &str) -> Result<Option<LogId<NodeId>>, Error> {
    let bad = || Error::Corrupt(format!("a {what} record in the raft log does not decode"));
    match b.first() {
        Some(0) if b.len() == 1 => Ok(None),
        Some(1) if b.len() == 25 => {
            let n = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes).ok_or_else(bad);
            Ok(Some(LogId::new(openraft::CommittedLeaderId::new(n(1)?, n(9)?), n(17)?)))
        }
        _ => Err(bad()),
    }
}

/// A record read back from a segment.
enum Parsed<'a> {
    Record {
        kind: u8,
        payload: &'a [u8],
        end: u64,
    },
    /// The segment ends here.
    End,
    /// A torn write at the end of the file starting at this offset.
    Torn,
    Bad(String),
}

/// Parses the record at `off` of a segment's bytes.
fn parse_at(buf: &[u8], off: u64) -> Parsed<'_> {
    let len_total = buf.len() as u64;
    if off == len_total {
        return Parsed::End;
    }
    let rest = &buf[off as usize..];
    if rest.iter().all(|b| *b == 0) {
        // Preallocated or never-written space after the last record.
        return Parsed::Torn;
    }
    if (rest.len() as u64) < RECORD_HEADER {
        return Parsed::Torn;
    }
    let len = u64::from(u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]));
    let crc = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len > MAX_RECORD {
        return Parsed::Bad(format!("a record at offset {off} has an impossible length {len}"));
    }
    let end = off + RECORD_HEADER + len;
    if end > len_total {
        return Parsed::Torn;
    }
    let body = &rest[RECORD_HEADER as usize..(RECORD_HEADER + len) as usize];
    if record_crc(&rest[..4], body) != crc {
        if end == len_total {
            return Parsed::Torn;
        }
        return Parsed::Bad(format!("the record at offset {off} fails its checksum"));
    }
    Parsed::Record { kind: body[0], payload: &body[1..], end }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, replaying and checking every record.
    fn open(dir: &Path, segment_bytes: u64) -> Result<Wal, Error> {
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        let lock =
            nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
                Error::Io {
                    context: format!(
                        "locking {} (is another skiff server running on this data dir?)",
                        lock_path.display()
                    ),
                    source: std::io::Error::from(e),
                }
            })?;
        let mut seqs = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))? {
            let e = e.map_err(io_err(format!("listing {}", dir.display())))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".wal").and_then(|s| s.parse::<u64>().ok()) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: BTreeMap::new(),
            entries: BTreeMap::new(),
            vote: None,
            committed: None,
            purged: None,
            _lock: lock,
        };
        for (i, seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            if let Some(prev) = i.checked_sub(1).map(|p| seqs[p]) {
                if *seq != prev + 1 {
                    return Err(Error::Corrupt(format!(
                        "raft log segment {} is missing (found {} after {})",
                        segment_name(prev + 1),
                        segment_name(*seq),
                        segment_name(prev)
                    )));
                }
            }
            wal.replay_segment(*seq, last)?;
        }
        if wal.segments.is_empty() {
            let seq = seqs.last().map_or(1, |s| s + 1);
            wal.create_segment(seq)?;
        }
        Ok(wal)
    }

    fn replay_segment(&mut self, seq: u64, last: bool) -> Result<(), Error> {
        let path = self.dir.join(segment_name(seq));
        let buf = std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
        let name = segment_name(seq);
        let header_ok = buf.len() as u64 >= HEADER_LEN && buf[..HEADER_LEN as usize] == header(seq)[..];
        if !header_ok {
            if last && buf.len() as u64 <= HEADER_LEN {
                // Created, but the crash came before its header was on disk: nothing in it.
                tracing::warn!(segment = %path.display(), "removing a raft log segment left empty by a crash");
                std::fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
                return Ok(());
            }
            return Err(Error::Corrupt(format!("raft log segment {name} has a damaged header")));
        }
        let mut off = HEADER_LEN;
        let mut checkpoint_end = None;
        let mut max_index = None;
        loop {
            match parse_at(&buf, off) {
                Parsed::End => break,
                Parsed::Record { kind, payload, end } => {
                    self.replay_record(seq, kind, payload, off, end - off, &name)?;
                    if kind == KIND_ENTRY {
                        checkpoint_end.get_or_insert(off);
                        max_index = self.last_entry().map(|l| l.log_id.index).max(max_index);
                    }
                    off = end;
                }
                Parsed::Torn if last => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = off,
                        dropped_bytes = buf.len() as u64 - off,
                        "cutting off a torn write at the end of the raft log (it was never acknowledged)"
                    );
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(format!("opening {}", path.display())))?;
                    f.set_len(off).map_err(io_err(format!("truncating {}", path.display())))?;
                    f.sync_all().map_err(io_err(format!("syncing {}", path.display())))?;
                    break;
                }
                Parsed::Torn => {
                    return Err(Error::Corrupt(format!(
                        "raft log segment {name} is truncated or damaged at offset {off}, and later segments follow it"
                    )))
                }
                Parsed::Bad(why) => return Err(Error::Corrupt(format!("raft log segment {name}: {why}"))),
            }
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        self.segments.insert(
            seq,
            Segment { file: Arc::new(file), path, len: off, checkpoint_end: checkpoint_end.unwrap_or(off), max_index },
        );
        Ok(())
    }

    fn replay_record(
        &mut self,
        seq: u64,
        kind: u8,
        payload: &[u8],
        off: u64,
        len: u64,
        name: &str,
    ) -> Result<(), Error> {
        match kind {
            KIND_ENTRY => {
                let entry = codec::decode_entry(payload)?;
                let log_id = *entry.get_log_id();
                if let Some(back) = self.last_entry() {
                    if log_id.index <= back.log_id.index {
                        return Err(Error::Corrupt(format!(
                            "raft log segment {name} has entry {} after entry {} without a truncation",
                            log_id.index, back.log_id.index
                        )));
                    }
                }
                self.entries.insert(log_id.index, Loc { log_id, seg: seq, offset: off, len });
            }
            KIND_VOTE => {
                self.vote = Some(serde_json::from_slice(payload).map_err(|e| {
                    Error::Corrupt(format!("a vote record in raft log segment {name} does not decode: {e}"))
                })?);
            }
            KIND_COMMITTED => self.committed = decode_log_id(payload, "commit index")?,
            KIND_PURGED => {
                if let Some(p) = decode_log_id(payload, "purge")? {
                    self.forget_upto(p);
                }
            }
            KIND_TRUNCATE => {
                let idx: [u8; 8] = payload.try_into().map_err(|_| {
                    Error::Corrupt(format!("a truncate record in raft log segment {name} does not decode"))
                })?;
                self.forget_from(u64::from_be_bytes(idx));
            }
            other => {
                return Err(Error::Corrupt(format!("raft log segment {name} has a record of unknown kind {other}")))
            }
        }
        Ok(())
    }

    /// Drops entries up to `p` from the index and records the purge point.
    fn forget_upto(&mut self, p: LogId<NodeId>) {
        self.entries = self.entries.split_off(&(p.index + 1));
        self.purged = Some(p).max(self.purged);
    }

    /// Drops entries at and after `index` from the index.
    fn forget_from(&mut self, index: u64) {
        self.entries.split_off(&index);
    }

    fn last_entry(&self) -> Option<&Loc> {
        self.entries.values().next_back()
    }

    fn current(&self) -> Result<(u64, &Segment), Error> {
        self.segments
            .iter()
            .next_back()
            .map(|(s, seg)| (*s, seg))
            .ok_or_else(|| Error::Internal("the raft log has no open segment".into()))
    }

    fn current_file(&self) -> Result<Arc<File>, Error> {
        Ok(self.current()?.1.file.clone())
    }

    /// The records that restate the vote, commit index and purge point.
    fn checkpoint(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        if let Some(v) = &self.vote {
            let json = serde_json::to_vec(v).map_err(|e| Error::Internal(format!("encoding the vote: {e}")))?;
            put_record(&mut out, KIND_VOTE, &json);
        }
        put_record(&mut out, KIND_COMMITTED, &encode_log_id(self.committed.as_ref()));
        if let Some(p) = &self.purged {
            put_record(&mut out, KIND_PURGED, &encode_log_id(Some(p)));
        }
        Ok(out)
    }

    fn create_segment(&mut self, seq: u64) -> Result<(), Error> {
        let path = self.dir.join(segment_name(seq));
        let mut buf = header(seq);
        buf.extend_from_slice(&self.checkpoint()?);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        file.write_all_at(&buf, 0).map_err(io_err(format!("writing {}", path.display())))?;
        file.sync_all().map_err(io_err(format!("syncing {}", path.display())))?;
        sync_dir(&self.dir)?;
        let len = buf.len() as u64;
        self.segments.insert(seq, Segment { file: Arc::new(file), path, len, checkpoint_end: len, max_index: None });
        Ok(())
    }

    /// Appends encoded records to the current segment, starting a new one first when the current
    /// one is full. `max_index`: the highest entry index among them.
    fn write(&mut self, buf: &[u8], max_index: Option<u64>) -> Result<(u64, u64), Error> {
        let (seq, cur) = self.current()?;
        if cur.len + buf.len() as u64 > self.segment_bytes && cur.len > cur.checkpoint_end {
            // The old segment must be complete on disk before records go to the next one.
            cur.file.sync_data().map_err(io_err(format!("syncing {}", cur.path.display())))?;
            self.create_segment(seq + 1)?;
        }
        let (seq, _) = self.current()?;
        let cur = self.segments.get_mut(&seq).ok_or_else(|| Error::Internal("the raft log lost its segment".into()))?;
        let at = cur.len;
        cur.file.write_all_at(buf, at).map_err(io_err(format!("writing {}", cur.path.display())))?;
        cur.len += buf.len() as u64;
        if max_index.is_some() {
            cur.max_index = cur.max_index.max(max_index);
        }
        Ok((seq, at))
    }

    fn sync_current(&self) -> Result<(), Error> {
        let (_, cur) = self.current()?;
        cur.file.sync_data().map_err(io_err(format!("syncing {}", cur.path.display())))
    }

    /// Deletes the oldest segments whose entries are all purged (never the current one).
    fn delete_purged_segments(&mut self) -> Result<(), Error> {
        let Some(p) = self.purged else { return Ok(()) };
        let (current, _) = self.current()?;
        let mut deleted = false;
        while let Some((&seq, seg)) = self.segments.iter().next() {
            if seq == current || seg.max_index.is_some_and(|m| m > p.index) {
                break;
            }
            std::fs::remove_file(&seg.path).map_err(io_err(format!("removing {}", seg.path.display())))?;
            self.segments.remove(&seq);
            deleted = true;
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.last_entry().map(|l| l.log_id).or(self.purged)
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(format!("syncing the directory {}", dir.display())))
}

/// What the log records besides entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardState {
    pub vote: Option<Vote<NodeId>>,
    pub committed: Option<LogId<NodeId>>,
    pub purged: Option<LogId<NodeId>>,
}

/// The log store. Clones share the same log and flusher.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<Wal>>,
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
    /// Opens the log in `dir` (`<store>/wal`), checking every record, with segments of about
    /// `segment_bytes`. Must run inside a tokio runtime (it starts the flusher task).
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<LogStore, Error> {
        let wal = Wal::open(dir, segment_bytes)?;
        let next = wal.last_entry().map_or(0, |l| l.log_id.index + 1);
        let wal = Arc::new(Mutex::new(wal));
        let (flusher, rx) = mpsc::unbounded_channel();
        // Everything replayed was read back from the file, and start-up trusts it as durable.
        let appended = Arc::new(AtomicU64::new(next));
        let flushed = Arc::new(AtomicU64::new(next));
        tokio::spawn(flush_loop(Arc::downgrade(&wal), rx, appended.clone(), flushed.clone()));
        Ok(LogStore { wal, flusher, appended, flushed, appended_bytes: Arc::new(AtomicU64::new(0)) })
    }

    fn lock(&self) -> MutexGuard<'_, Wal> {
        // A panic while holding the lock leaves the index as it was before the failed call's
        // writes; openraft stops on the error anyway.
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A counter of the bytes appended to the log since it was opened.
    pub fn appended_bytes(&self) -> Arc<AtomicU64> {
        self.appended_bytes.clone()
    }

    /// A handle reporting how far the log is known to be on disk.
    pub fn durable_progress(&self) -> DurableProgress {
        DurableProgress(self.flushed.clone())
    }

    /// The highest log index present or purged (None for an empty log).
    pub fn last_index(&self) -> Option<u64> {
        self.lock().last_log_id().map(|l| l.index)
    }

    /// The vote, commit index and last purged id as recorded.
    pub fn hard_state(&self) -> HardState {
        let w = self.lock();
        HardState { vote: w.vote, committed: w.committed, purged: w.purged }
    }

    /// Makes everything written so far durable (shutdown).
    pub fn sync(&self) -> Result<(), Error> {
        self.lock().sync_current()
    }

    /// Whether another clone of this log is still alive (openraft's tasks exit on their own
    /// after a shutdown): the files and the lock are released once the last clone is dropped.
    pub fn shared_elsewhere(&self) -> bool {
        Arc::strong_count(&self.wal) > 1
    }

    /// Writes entries without going through openraft (migration from an older store layout and
    /// tests): appended and made durable at once.
    pub fn append_now(&self, entries: &[Entry<TypeConfig>]) -> Result<(), Error> {
        let mut w = self.lock();
        append_locked(&mut w, entries, &self.appended)?;
        w.sync_current()?;
        self.flushed.fetch_max(self.appended.load(Ordering::Acquire), Ordering::AcqRel);
        Ok(())
    }

    /// Records the vote, commit index and purge point without openraft (migration), durably.
    pub fn set_hard_state(
        &self,
        vote: Option<Vote<NodeId>>,
        committed: Option<LogId<NodeId>>,
        purged: Option<LogId<NodeId>>,
    ) -> Result<(), Error> {
        let mut w = self.lock();
        let mut buf = Vec::new();
        if let Some(v) = &vote {
            let json = serde_json::to_vec(v).map_err(|e| Error::Internal(format!("encoding the vote: {e}")))?;
            put_record(&mut buf, KIND_VOTE, &json);
            w.vote = vote;
        }
        if let Some(p) = purged {
            put_record(&mut buf, KIND_PURGED, &encode_log_id(Some(&p)));
            w.forget_upto(p);
        }
        put_record(&mut buf, KIND_COMMITTED, &encode_log_id(committed.as_ref()));
        w.committed = committed;
        w.write(&buf, None)?;
        w.sync_current()
    }
}

fn append_locked(w: &mut Wal, entries: &[Entry<TypeConfig>], appended: &AtomicU64) -> Result<u64, Error> {
    let mut buf = Vec::new();
    let mut placed = Vec::with_capacity(entries.len());
    for entry in entries {
        let log_id = *entry.get_log_id();
        let last =
            placed.last().map(|p: &(LogId<NodeId>, u64, u64)| p.0.index).or(w.last_entry().map(|l| l.log_id.index));
        if let Some(last) = last.filter(|l| *l >= log_id.index) {
            return Err(Error::Internal(format!(
                "raft asked to append entry {} after entry {last} without truncating first",
                log_id.index
            )));
        }
        let start = buf.len() as u64;
        put_record(&mut buf, KIND_ENTRY, &codec::encode_entry(entry)?);
        placed.push((log_id, start, buf.len() as u64 - start));
    }
    let Some(last) = placed.last().map(|p| p.0.index) else { return Ok(0) };
    let (seq, at) = w.write(&buf, Some(last))?;
    for (log_id, start, len) in placed {
        w.entries.insert(log_id.index, Loc { log_id, seg: seq, offset: at + start, len });
    }
    appended.store(last + 1, Ordering::Release);
    Ok(buf.len() as u64)
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
    wal: std::sync::Weak<Mutex<Wal>>,
    mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>,
    appended: Arc<AtomicU64>,
    flushed: Arc<AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        // Everything appended before this point is in the current segment or in an older one
        // that was synced when the log moved on from it.
        let target = match wal.upgrade() {
            Some(wal) => {
                let w = wal.lock().unwrap_or_else(|e| e.into_inner());
                w.current_file().map(|f| (appended.load(Ordering::Acquire), f))
            }
            None => Err(Error::Internal("the raft log was closed before its flush".into())),
        };
        let result = match target {
            Ok((upto, file)) => match tokio::task::spawn_blocking(move || file.sync_data().map(|_| upto)).await {
                Ok(Ok(upto)) => {
                    flushed.fetch_max(upto, Ordering::AcqRel);
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(e) => Err(std::io::Error::other(format!("the fsync task failed: {e}"))),
            },
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = batch.len(), "flushing the raft log to disk failed");
        }
        for cb in batch {
            cb.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::new(e.kind(), e.to_string())));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        // Find the records under the lock, read them outside it.
        let spans: Vec<(Arc<File>, Vec<Loc>)> = {
            let w = self.lock();
            let mut spans: Vec<(Arc<File>, Vec<Loc>)> = Vec::new();
            let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
            // BTreeMap::range panics on a reversed range or an empty one excluded at both ends.
            let valid = match bounds {
                (Bound::Excluded(a), Bound::Excluded(b)) => a < b,
                (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => a <= b,
                _ => true,
            };
            if valid {
                for loc in w.entries.range(bounds).map(|(_, l)| l) {
                    match spans.last_mut() {
                        Some((_, locs)) if locs.last().is_some_and(|l| l.seg == loc.seg) => locs.push(*loc),
                        _ => {
                            let seg = w.segments.get(&loc.seg).ok_or_else(|| {
                                read_err(Error::Internal(format!("raft log segment {} is gone", loc.seg)))
                            })?;
                            spans.push((seg.file.clone(), vec![*loc]));
                        }
                    }
                }
            }
            spans
        };
        let mut out = Vec::new();
        for (file, locs) in spans {
            let (Some(a), Some(b)) = (locs.first(), locs.last()) else { continue };
            let mut buf = vec![0u8; (b.offset + b.len - a.offset) as usize];
            file.read_exact_at(&mut buf, a.offset).map_err(read_err)?;
            for loc in &locs {
                let start = (loc.offset - a.offset) as usize;
                let rec = &buf[start..start + loc.len as usize];
                let entry = match parse_at(rec, 0) {
                    Parsed::Record { kind: KIND_ENTRY, payload, .. } => {
                        codec::decode_entry(payload).map_err(read_err)?
                    }
                    _ => {
                        let e =
                            Error::Corrupt(format!("raft log entry {} fails its checksum on read", loc.log_id.index));
                        tracing::error!(error = %e, "reading the raft log");
                        return Err(read_err(e));
                    }
                };
                if entry.log_id != loc.log_id {
                    return Err(read_err(Error::Corrupt(format!(
                        "raft log entry {} reads back as entry {}",
                        loc.log_id.index, entry.log_id.index
                    ))));
                }
                out.push(entry);
            }
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let w = self.lock();
        Ok(LogState { last_purged_log_id: w.purged, last_log_id: w.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let vote_err = |e: Error| StorageError::from(StorageIOError::write_vote(&e));
        let json =
            serde_json::to_vec(vote).map_err(|e| vote_err(Error::Internal(format!("encoding the vote: {e}"))))?;
        let mut buf = Vec::new();
        put_record(&mut buf, KIND_VOTE, &json);
        let mut w = self.lock();
        w.write(&buf, None).map_err(vote_err)?;
        // Raft: a vote must be durable before it is answered, or a node could vote twice in a term.
        w.sync_current().map_err(vote_err)?;
        w.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not synced: it reaches the disk with the next append's fsync (or the page cache keeps
        // it across a process kill); losing it only means re-learning the commit index.
        let mut buf = Vec::new();
        put_record(&mut buf, KIND_COMMITTED, &encode_log_id(committed.as_ref()));
        let mut w = self.lock();
        w.write(&buf, None).map_err(write_err)?;
        w.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let bytes = append_locked(&mut self.lock(), &entries, &self.appended).map_err(write_err)?;
        self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(cb)) = self.flusher.send(callback) {
            // The flusher only stops with the runtime; sync inline rather than lose the ack.
            let r = self.sync();
            cb.log_io_completed(r.map_err(|e| std::io::Error::other(e.to_string())));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Durable with the next append's fsync, which precedes any answer about the new entries.
        let mut buf = Vec::new();
        put_record(&mut buf, KIND_TRUNCATE, &log_id.index.to_be_bytes());
        let mut w = self.lock();
        w.write(&buf, None).map_err(write_err)?;
        w.forget_from(log_id.index);
        self.appended.store(log_id.index, Ordering::Release);
        self.flushed.fetch_min(log_id.index, Ordering::AcqRel);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut buf = Vec::new();
        put_record(&mut buf, KIND_PURGED, &encode_log_id(Some(&log_id)));
        let mut w = self.lock();
        w.write(&buf, None).map_err(write_err)?;
        // The purge point must be on disk before the segments holding those entries go.
        w.sync_current().map_err(write_err)?;
        w.forget_upto(log_id);
        w.delete_purged_segments().map_err(write_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn lid(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: lid(term, index),
            payload: EntryPayload::Normal(super::super::Request::Compact { revision: index as i64 }),
        }
    }

    async fn indexes(log: &mut LogStore) -> Vec<u64> {
        log.try_get_log_entries(..).await.unwrap().iter().map(|e| e.log_id.index).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn entries_votes_and_purges_survive_a_reopen_across_segments() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let log = LogStore::open(dir.path(), 600).unwrap();
            for i in 0..20 {
                log.append_now(&[entry(1, i)]).unwrap();
            }
            log.set_hard_state(Some(Vote::new_committed(1, 1)), Some(lid(1, 15)), Some(lid(1, 9))).unwrap();
        }
        assert!(segment_files(dir.path()).len() > 1, "small segments rotate");
        let mut log = LogStore::open(dir.path(), 600).unwrap();
        assert_eq!(indexes(&mut log).await, (10..20).collect::<Vec<_>>());
        let want =
            HardState { vote: Some(Vote::new_committed(1, 1)), committed: Some(lid(1, 15)), purged: Some(lid(1, 9)) };
        assert_eq!(log.hard_state(), want);
        assert_eq!(log.last_index(), Some(19));
        // Fully purged segments are gone, and the vote survives the loss of the one holding it.
        let before = segment_files(dir.path()).len();
        log.purge(lid(1, 18)).await.unwrap();
        assert!(segment_files(dir.path()).len() < before);
        drop(log);
        let mut log = LogStore::open(dir.path(), 600).unwrap();
        assert_eq!(indexes(&mut log).await, vec![19]);
        assert_eq!(log.hard_state().vote, Some(Vote::new_committed(1, 1)));
    }

    #[tokio::test]
    async fn a_truncation_replaces_the_tail_after_a_reopen() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let mut log = LogStore::open(dir.path(), 1 << 20).unwrap();
            log.append_now(&[entry(1, 0), entry(1, 1), entry(1, 2)]).unwrap();
            log.truncate(lid(1, 1)).await.unwrap();
            log.append_now(&[entry(2, 1)]).unwrap();
        }
        let mut log = LogStore::open(dir.path(), 1 << 20).unwrap();
        let got = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(got.iter().map(|e| e.log_id).collect::<Vec<_>>(), vec![lid(1, 0), lid(2, 1)]);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_but_damage_before_later_records_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let log = LogStore::open(dir.path(), 1 << 20).unwrap();
            for i in 0..5 {
                log.append_now(&[entry(1, i)]).unwrap();
            }
        }
        let file = segment_files(dir.path()).pop().unwrap();
        let bytes = std::fs::read(&file).unwrap();
        // A write cut short by a crash: the last entry is dropped, the rest is kept.
        std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
        let mut log = LogStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(indexes(&mut log).await, vec![0, 1, 2, 3]);
        drop(log);
        // A flipped byte inside an earlier record is corruption, not a torn write.
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = HEADER_LEN as usize + 60;
        bytes[mid] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        match LogStore::open(dir.path(), 1 << 20) {
            Err(Error::Corrupt(msg)) => assert!(msg.contains("checksum") || msg.contains("length"), "{msg}"),
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("a damaged log was opened"),
        }
    }

    #[tokio::test]
    async fn a_missing_middle_segment_or_a_damaged_header_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let log = LogStore::open(dir.path(), 300).unwrap();
            for i in 0..30 {
                log.append_now(&[entry(1, i)]).unwrap();
            }
        }
        let files = segment_files(dir.path());
        assert!(files.len() >= 3);
        let mut header = std::fs::read(&files[1]).unwrap();
        header[2] ^= 1;
        std::fs::write(&files[1], &header).unwrap();
        assert!(matches!(LogStore::open(dir.path(), 300), Err(Error::Corrupt(m)) if m.contains("header")));
        std::fs::remove_file(&files[1]).unwrap();
        assert!(matches!(LogStore::open(dir.path(), 300), Err(Error::Corrupt(m)) if m.contains("missing")));
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_log_is_refused_while_the_first_is_open() {
        let dir = tempfile::TempDir::new().unwrap();
        let first = LogStore::open(dir.path(), 1 << 20).unwrap();
        match LogStore::open(dir.path(), 1 << 20) {
            Err(e) => assert!(e.to_string().contains("another skiff"), "{e}"),
            Ok(_) => panic!("opened twice"),
        }
        drop(first);
        assert!(LogStore::open(dir.path(), 1 << 20).is_ok(), "the lock goes with the last clone");
    }
}
