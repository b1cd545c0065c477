//! Stores written by earlier skiff versions kept the Raft log and the state machine as trees of
//! one storage-engine database ([`super::engine`]: `store.redb`, or `sled/` before that). This
//! converts such a store, once, to the current layout (the [`super::wal`] log and a snapshot
//! file) with every record, revision, the vote and the commit index kept.
//!
//! The conversion writes the new log under `wal.migrating`, checks it, and renames it to `wal`
//! (the commit point); the old database is then moved aside to `<store dir>-legacy-<engine>`
//! beside the store directory, for the user to delete. A crash before the rename leaves the old
//! store in charge (the next start converts again); a crash after it only leaves the old
//! database to move aside.

use super::codec;
use super::engine::{self, Engine, Tree};
use super::state_machine::write_snapshot_file;
use super::wal::{LogStore, WAL_DIR};
use super::{Error, NodeId, TypeConfig};
use crate::store::mvcc::Record;
use openraft::storage::SnapshotMeta;
use openraft::{Entry, LogId, RaftLogId, StoredMembership, Vote};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The engines earlier layouts used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// sled 0.34 in `<dir>/sled/`.
    Sled,
    /// redb 2 in `<dir>/store.redb`.
    Redb,
}

impl EngineKind {
    fn path(self, dir: &Path) -> PathBuf {
        match self {
            EngineKind::Sled => dir.join("sled"),
            EngineKind::Redb => dir.join("store.redb"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            EngineKind::Sled => "sled",
            EngineKind::Redb => "redb",
        }
    }

    /// Opens the engine database of an old store in `dir`.
    pub fn open(self, dir: &Path) -> Result<Arc<dyn Engine>, Error> {
        const CACHE: u64 = 8 << 20;
        match self {
            EngineKind::Sled => engine::SledEngine::open(&self.path(dir), CACHE),
            EngineKind::Redb => engine::RedbEngine::open(&self.path(dir), CACHE),
        }
    }
}

/// Which old layout `dir` holds, if any.
pub fn detect(dir: &Path) -> Option<EngineKind> {
    [EngineKind::Redb, EngineKind::Sled].into_iter().find(|k| k.path(dir).exists())
}

/// Everything an old store held.
struct OldStore {
    entries: Vec<Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    counters: (i64, i64),
    records: Vec<Record>,
}

fn get_json<T: serde::de::DeserializeOwned>(tree: &dyn Tree, key: &[u8], what: &str) -> Result<Option<T>, Error> {
    let Some(v) = tree.get(key)? else {
        return Ok(None);
    };
    let payload = codec::unframe(key, &v, what)?;
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|e| Error::Corrupt(format!("{what} {:?} does not decode: {e}", String::from_utf8_lossy(key))))
}

/// Reads and checks every value of an old store (its checksums, as the old layout did at
/// start-up).
fn read_old(db: &Arc<dyn Engine>) -> Result<OldStore, Error> {
    let log = db.tree("log")?;
    let meta = db.tree("raft_meta")?;
    let sm = db.tree("sm")?;
    let mut entries = Vec::new();
    for (k, v) in log.range(Bound::Unbounded, Bound::Unbounded)? {
        let entry = codec::decode_entry(codec::unframe(&k, &v, "a raft log entry")?)?;
        if k[..] != entry.get_log_id().index.to_be_bytes() {
            return Err(Error::Corrupt(format!(
                "raft log entry {} is stored under the wrong index",
                entry.log_id.index
            )));
        }
        entries.push(entry);
    }
    let mut records = Vec::new();
    let (start, end) = ([codec::RECORD_PREFIX], [codec::RECORD_PREFIX + 1]);
    for (k, v) in sm.range(Bound::Included(&start[..]), Bound::Excluded(&end[..]))? {
        let r = codec::decode_record(codec::unframe(&k, &v, "an MVCC record")?)?;
        if codec::record_key(r.rev, r.sub)[..] != k[..] {
            return Err(Error::Corrupt(format!("MVCC record ({}, {}) is stored under the wrong key", r.rev, r.sub)));
        }
        records.push(r);
    }
    Ok(OldStore {
        entries,
        vote: get_json(&*meta, b"vote", "raft metadata")?,
        committed: get_json::<Option<LogId<NodeId>>>(&*meta, b"committed", "raft metadata")?.flatten(),
        purged: get_json(&*meta, b"last_purged", "raft metadata")?,
        applied: get_json::<Option<LogId<NodeId>>>(&*sm, b"m/applied", "state machine metadata")?.flatten(),
        membership: get_json(&*sm, b"m/membership", "state machine metadata")?.unwrap_or_default(),
        counters: get_json(&*sm, b"m/counters", "state machine metadata")?.unwrap_or((0, 0)),
        records,
    })
}

/// Converts an old store in `dir` to the current layout; does nothing for a current one.
pub fn migrate_if_needed(dir: &Path, segment_bytes: u64) -> Result<(), Error> {
    let Some(kind) = detect(dir) else { return Ok(()) };
    let aside = {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "db".into());
        dir.with_file_name(format!("{name}-legacy-{}", kind.name()))
    };
    if !dir.join(WAL_DIR).exists() {
        convert(dir, kind, segment_bytes)?;
    }
    std::fs::rename(kind.path(dir), &aside).map_err(|e| Error::Io {
        context: format!("moving the converted {} database aside to {}", kind.name(), aside.display()),
        source: e,
    })?;
    tracing::warn!(
        old = %aside.display(),
        "converted the store to the write-ahead log layout; the old database was kept at this path and can be deleted"
    );
    Ok(())
}

fn convert(dir: &Path, kind: EngineKind, segment_bytes: u64) -> Result<(), Error> {
    tracing::info!(dir = %dir.display(), engine = kind.name(), "converting the store to the write-ahead log layout");
    let old = {
        let db = kind.open(dir)?;
        read_old(&db)?
    };
    let applied_index = old.applied.map(|l| l.index);
    if old.applied.is_some() || !old.records.is_empty() {
        let data = codec::encode_snapshot(
            old.counters.0,
            old.counters.1,
            &old.records.iter().map(Record::as_ref).collect::<Vec<_>>(),
        );
        let meta = SnapshotMeta {
            last_log_id: old.applied,
            last_membership: old.membership.clone(),
            snapshot_id: format!("converted-{}", applied_index.map_or_else(|| "empty".into(), |i| i.to_string())),
        };
        write_snapshot_file(dir, &meta, &data)?;
    }
    let tmp = dir.join(format!("{WAL_DIR}.migrating"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .map_err(|e| Error::Io { context: format!("removing the unfinished {}", tmp.display()), source: e })?;
    }
    {
        let log = LogStore::open(&tmp, segment_bytes)?;
        // Entries the snapshot already holds are not needed; a lagging follower gets the snapshot.
        let rest: Vec<_> =
            old.entries.into_iter().filter(|e| applied_index.is_none_or(|a| e.log_id.index > a)).collect();
        log.append_now(&rest)?;
        log.set_hard_state(old.vote, old.committed, old.applied.max(old.purged))?;
    }
    std::fs::rename(&tmp, dir.join(WAL_DIR))
        .map_err(|e| Error::Io { context: format!("renaming {} into place", tmp.display()), source: e })?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Io { context: format!("syncing {}", dir.display()), source: e })?;
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::store::raft::Request;
    use crate::store::{KeyValue, Op, Txn};
    use engine::WriteBatch;
    use openraft::{CommittedLeaderId, EntryPayload, Membership};

    fn framed_json<T: serde::Serialize>(key: &[u8], v: &T) -> Vec<u8> {
        codec::frame(key, &serde_json::to_vec(v).unwrap())
    }

    /// Writes a store in the old layout: `puts` keys `/old/<i>` at revisions 1..=puts, applied
    /// through log index `puts` (entry 0 is the membership), with two more entries logged after
    /// it (committed, not applied).
    pub fn write_old_store(dir: &Path, kind: EngineKind, puts: i64) {
        std::fs::create_dir_all(dir).unwrap();
        let db = kind.open(dir).unwrap();
        let lid = |i: u64| LogId::new(CommittedLeaderId::new(1, 1), i);
        let membership = Membership::new(
            vec![std::collections::BTreeSet::from([1u64])],
            std::collections::BTreeMap::from([(1u64, openraft::BasicNode { addr: "https://127.0.0.1:6443".into() })]),
        );
        let mut log = WriteBatch::default();
        let mut entries =
            vec![Entry::<TypeConfig> { log_id: lid(0), payload: EntryPayload::Membership(membership.clone()) }];
        for i in 1..=(puts as u64 + 2) {
            let put = Op::Put {
                key: format!("/old/{i}").into_bytes(),
                value: bytes::Bytes::from_static(b"v"),
                ttl_seconds: None,
            };
            let txn = Txn { success: vec![put], ..Default::default() };
            entries.push(Entry { log_id: lid(i), payload: EntryPayload::Normal(Request::Txn { txn, now_ms: 0 }) });
        }
        for e in &entries {
            let k = e.log_id.index.to_be_bytes();
            log.insert(k, codec::frame(&k, &codec::encode_entry(e).unwrap()));
        }
        db.tree("log").unwrap().apply(log).unwrap();
        let mut meta = WriteBatch::default();
        meta.insert(b"vote".to_vec(), framed_json(b"vote", &Vote::<NodeId>::new_committed(1, 1)));
        meta.insert(b"committed".to_vec(), framed_json(b"committed", &Some(lid(puts as u64 + 2))));
        db.tree("raft_meta").unwrap().apply(meta).unwrap();
        let mut sm = WriteBatch::default();
        for rev in 1..=puts {
            let key = format!("/old/{rev}").into_bytes();
            let kv = KeyValue {
                key: key.clone(),
                value: bytes::Bytes::from_static(b"v"),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
            };
            let r = Record { rev, sub: 0, key, kv: Some(kv), deadline_ms: None };
            let k = codec::record_key(rev, 0);
            sm.insert(k.to_vec(), codec::frame(&k, &codec::encode_record(&r)));
        }
        sm.insert(b"m/applied".to_vec(), framed_json(b"m/applied", &Some(lid(puts as u64))));
        sm.insert(
            b"m/membership".to_vec(),
            framed_json(b"m/membership", &StoredMembership::new(Some(lid(0)), membership)),
        );
        sm.insert(b"m/counters".to_vec(), framed_json(b"m/counters", &(puts, 0i64)));
        db.tree("sm").unwrap().apply(sm).unwrap();
        db.flush_blocking().unwrap();
    }

    #[test]
    fn an_old_store_converts_to_a_snapshot_and_the_unapplied_log_tail() {
        for kind in [EngineKind::Redb, EngineKind::Sled] {
            let tmp = tempfile::TempDir::new().unwrap();
            let dir = tmp.path().join("db");
            write_old_store(&dir, kind, 5);
            // The conversion writes the log through its flusher task: inside a runtime.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { migrate_if_needed(&dir, 1 << 20) }).unwrap();
            assert!(detect(&dir).is_none(), "{kind:?}: the old database was moved aside");
            assert!(tmp.path().join(format!("db-legacy-{}", kind.name())).exists());
            let (meta, data) = super::super::state_machine::read_snapshot_file(&dir).unwrap().unwrap();
            assert_eq!(meta.last_log_id.map(|l| l.index), Some(5));
            let (rev, _, records) = codec::decode_snapshot(&data).unwrap();
            assert_eq!((rev, records.len()), (5, 5));
            rt.block_on(async {
                let log = LogStore::open(&dir.join(WAL_DIR), 1 << 20).unwrap();
                let hard = log.hard_state();
                assert_eq!(hard.vote, Some(Vote::new_committed(1, 1)));
                assert_eq!((hard.committed.map(|l| l.index), hard.purged.map(|l| l.index)), (Some(7), Some(5)));
                assert_eq!(log.last_index(), Some(7));
            });
            // Converting again is a no-op.
            rt.block_on(async { migrate_if_needed(&dir, 1 << 20) }).unwrap();
        }
    }
}
