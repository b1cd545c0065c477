//! The pure MVCC core shared by the in-memory fake ([`super::memory::MemStore`]) and the Raft
//! state machine ([`super::raft`]): etcd v3's key space with one global revision, per-key
//! generations (create_revision, mod_revision, version), compare-and-swap transactions, reads at
//! past revisions, the event history that watches replay, compaction and TTL bookkeeping.
//!
//! It does no I/O and reads no clock: [`Mvcc::apply`] takes the proposer's wall-clock time as an
//! argument, so replaying the same Raft log on any server yields the same state (Raft's
//! deterministic state machine requirement). [`Mvcc::record_refs`] lists the state as
//! [`Record`]s, which Raft snapshots carry and [`Mvcc::restore`] rebuilds the state from.

use super::*;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

/// One generation entry of a key: its value at `rev` (None = deleted at `rev`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Gen {
    rev: i64,
    /// Position of the change inside its revision (a txn may write several keys).
    sub: u32,
    kv: Option<KeyValue>,
}

/// A [`Record`] borrowed from the state.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub rev: i64,
    pub sub: u32,
    pub key: &'a [u8],
    pub kv: Option<&'a KeyValue>,
    pub deadline_ms: Option<u64>,
}

impl RecordRef<'_> {
    pub fn to_owned(self) -> Record {
        Record {
            rev: self.rev,
            sub: self.sub,
            key: self.key.to_vec(),
            kv: self.kv.cloned(),
            deadline_ms: self.deadline_ms,
        }
    }
}

impl Record {
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef { rev: self.rev, sub: self.sub, key: &self.key, kv: self.kv.as_ref(), deadline_ms: self.deadline_ms }
    }
}

/// One durable change: the key's state after the write at (`rev`, `sub`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub rev: i64,
    pub sub: u32,
    pub key: Vec<u8>,
    /// The new value, or None for a delete (tombstone).
    pub kv: Option<KeyValue>,
    /// Unix milliseconds after which the key expires (a put with a TTL).
    pub deadline_ms: Option<u64>,
}

/// The outcome of applying one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub response: TxnResponse,
    /// Events of the new revision, in op order (empty when nothing was written).
    pub events: Vec<Event>,
}

/// The MVCC state. Not thread-safe by itself: callers wrap it in a lock.
#[derive(Debug, Default)]
pub struct Mvcc {
    rev: i64,
    compact_rev: i64,
    /// Per key, its generations, oldest first. After compaction each key keeps its newest entry
    /// at or below the compaction revision (so reads at that revision still work) and all later
    /// ones; keys whose only remaining entry is an old tombstone are dropped (as etcd does).
    keys: BTreeMap<Vec<u8>, Vec<Gen>>,
    /// Every change after `compact_rev` as (rev, sub, key), in order: the watch history window.
    /// Events are rebuilt from `keys` when replayed, so values are held once, not per event.
    log: VecDeque<(i64, u32, Arc<[u8]>)>,
    /// key -> (deadline in unix ms, mod_revision of the put that set it)
    expiries: HashMap<Vec<u8>, (u64, i64)>,
    /// The same expiries ordered by deadline, so finding due keys does not scan them all.
    by_deadline: BTreeSet<(u64, Vec<u8>)>,
}

impl Mvcc {
    pub fn new() -> Mvcc {
        Mvcc::default()
    }

    /// Current revision (that of the last write).
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// Reads below this revision fail with [`StoreError::Compacted`].
    pub fn compact_revision(&self) -> i64 {
        self.compact_rev
    }

    /// Number of live keys (not counting tombstones).
    pub fn live_keys(&self) -> usize {
        self.keys.values().filter(|h| h.last().is_some_and(|g| g.kv.is_some())).count()
    }

    fn current(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys.get(key).and_then(|h| h.last()).and_then(|g| g.kv.as_ref())
    }

    fn at(&self, key: &[u8], rev: i64) -> Option<&KeyValue> {
        let h = self.keys.get(key)?;
        h.iter().rev().find(|g| g.rev <= rev).and_then(|g| g.kv.as_ref())
    }

    fn compare(&self, c: &Compare) -> bool {
        let kv = self.current(&c.key);
        let ord = match &c.target {
            CompareTarget::Version(v) => kv.map(|k| k.version).unwrap_or(0).cmp(v),
            CompareTarget::CreateRevision(v) => kv.map(|k| k.create_revision).unwrap_or(0).cmp(v),
            CompareTarget::ModRevision(v) => kv.map(|k| k.mod_revision).unwrap_or(0).cmp(v),
            CompareTarget::Value(v) => match kv {
                Some(k) => k.value[..].cmp(&v[..]),
                // etcd: a value compare against a missing key fails
                None => return false,
            },
        };
        match c.result {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::NotEqual => ord.is_ne(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
        }
    }

    /// Applies a transaction at wall-clock time `now_ms` (unix ms chosen by the proposer, used
    /// only to turn TTLs into deadlines). A txn that writes anything gets exactly one new
    /// revision, shared by all its events (etcd: one revision per txn, sub-revisions inside).
    pub fn apply(&mut self, txn: &Txn, now_ms: u64) -> Applied {
        let ok = txn.compare.iter().all(|c| self.compare(c));
        let ops = if ok { &txn.success } else { &txn.failure };
        let writes = ops.iter().any(|o| !matches!(o, Op::Get { .. }));
        let rev = if writes { self.rev + 1 } else { self.rev };
        let mut events = Vec::new();
        // Position of the next change inside this revision.
        let mut sub = 0u32;
        let mut responses = Vec::new();
        for op in ops {
            match op {
                Op::Get { key } => responses.push(OpResponse::Get { kv: self.current(key).cloned() }),
                Op::Put { key, value, ttl_seconds } => {
                    let prev = self.current(key).cloned();
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: prev.as_ref().map(|p| p.create_revision).unwrap_or(rev),
                        mod_revision: rev,
                        version: prev.as_ref().map(|p| p.version).unwrap_or(0) + 1,
                    };
                    let deadline_ms = ttl_seconds.map(|t| now_ms.saturating_add(t.saturating_mul(1000)));
                    let record = Record { rev, sub, key: key.clone(), kv: Some(kv), deadline_ms };
                    sub += 1;
                    events.extend(self.push_record(&record, prev.clone()));
                    responses.push(OpResponse::Put { prev });
                }
                Op::Delete { key } => {
                    let prev = self.current(key).cloned();
                    if prev.is_some() {
                        let record = Record { rev, sub, key: key.clone(), kv: None, deadline_ms: None };
                        sub += 1;
                        events.extend(self.push_record(&record, prev.clone()));
                    }
                    responses.push(OpResponse::Delete { prev });
                }
            }
        }
        if !events.is_empty() {
            self.rev = rev;
        }
        Applied { response: TxnResponse { succeeded: ok, revision: self.rev, responses }, events }
    }

    /// Adds one change to the key index, the expiry table and (above the compaction point) the
    /// event history; returns the event.
    fn push_record(&mut self, r: &Record, prev: Option<KeyValue>) -> Option<Event> {
        self.keys.entry(r.key.clone()).or_default().push(Gen { rev: r.rev, sub: r.sub, kv: r.kv.clone() });
        if let Some((d, _)) = self.expiries.remove(&r.key) {
            self.by_deadline.remove(&(d, r.key.clone()));
        }
        if let (Some(_), Some(d)) = (&r.kv, r.deadline_ms) {
            self.expiries.insert(r.key.clone(), (d, r.rev));
            self.by_deadline.insert((d, r.key.clone()));
        }
        if r.rev > self.compact_rev {
            self.log.push_back((r.rev, r.sub, Arc::from(r.key.as_slice())));
        }
        Some(event_of(&r.key, r.rev, r.kv.clone(), prev))
    }

    /// Rebuilds the event of the change at (rev, sub) to `key` from its generations.
    fn event_at(&self, key: &[u8], rev: i64, sub: u32) -> Option<Event> {
        let h = self.keys.get(key)?;
        let i = h.binary_search_by(|g| (g.rev, g.sub).cmp(&(rev, sub))).ok()?;
        let prev = i.checked_sub(1).and_then(|p| h[p].kv.clone());
        Some(event_of(key, rev, h[i].kv.clone(), prev))
    }

    /// Rebuilds the state from persisted records, which must come in (rev, sub) order.
    /// `rev` and `compact_rev` are the persisted counters (a compacted-away tombstone can have
    /// been the newest write, so the revision is not always the newest record's).
    pub fn restore(rev: i64, compact_rev: i64, records: impl IntoIterator<Item = Record>) -> Mvcc {
        let mut m = Mvcc { compact_rev, ..Mvcc::default() };
        for r in records {
            let prev = m.current(&r.key).cloned();
            m.push_record(&r, prev);
            m.rev = m.rev.max(r.rev);
        }
        m.rev = m.rev.max(rev);
        m
    }

    /// Every record a [`Mvcc::restore`] needs to rebuild this state, in (rev, sub) order: what a
    /// Raft snapshot carries.
    pub fn records(&self) -> Vec<Record> {
        self.record_refs().into_iter().map(RecordRef::to_owned).collect()
    }

    /// [`Mvcc::records`] borrowed from the state: a snapshot is encoded from these without a
    /// second copy of every value.
    pub fn record_refs(&self) -> Vec<RecordRef<'_>> {
        let mut out: Vec<RecordRef<'_>> = Vec::new();
        for (key, h) in &self.keys {
            for g in h {
                let deadline_ms = match self.expiries.get(key) {
                    Some((d, r)) if *r == g.rev && g.kv.is_some() => Some(*d),
                    _ => None,
                };
                out.push(RecordRef { rev: g.rev, sub: g.sub, key, kv: g.kv.as_ref(), deadline_ms });
            }
        }
        out.sort_by_key(|r| (r.rev, r.sub));
        out
    }

    /// Discards history older than `revision` (clamped to the current revision). Returns the
    /// (rev, sub) of every record that is no longer needed, for the durable layer to delete.
    pub fn compact(&mut self, revision: i64) -> Vec<(i64, u32)> {
        let revision = revision.min(self.rev);
        let mut removed = Vec::new();
        if revision <= self.compact_rev {
            return removed;
        }
        self.compact_rev = revision;
        self.keys.retain(|_, h| {
            // keep the newest entry at or below `revision`, and everything after it
            let keep_from = h.iter().rposition(|g| g.rev <= revision).unwrap_or(0);
            removed.extend(h.drain(..keep_from).map(|g| (g.rev, g.sub)));
            // etcd drops a key whose last generation ended in a compacted tombstone
            if h.len() == 1 && h[0].kv.is_none() && h[0].rev <= revision {
                removed.push((h[0].rev, h[0].sub));
                return false;
            }
            true
        });
        while self.log.front().is_some_and(|(r, _, _)| *r <= revision) {
            self.log.pop_front();
        }
        removed
    }

    /// Range read with etcd's semantics (see [`RangeRequest`]).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let rev = if req.revision == 0 { self.rev } else { req.revision };
        if rev > self.rev {
            return Err(StoreError::FutureRevision { requested: rev, current: self.rev });
        }
        if req.revision != 0 && rev < self.compact_rev {
            return Err(StoreError::Compacted { requested: rev, compact_revision: self.compact_rev });
        }
        let mut kvs = Vec::new();
        let mut count = 0;
        let mut more = false;
        let start = if req.start_after.is_empty() {
            Bound::Included(req.prefix.clone())
        } else {
            Bound::Excluded(req.start_after.clone())
        };
        for (k, _) in self.keys.range((start, Bound::Unbounded)) {
            if !k.starts_with(&req.prefix) {
                break;
            }
            if let Some(kv) = self.at(k, rev) {
                count += 1;
                if req.count_only {
                    continue;
                }
                if req.limit > 0 && kvs.len() >= req.limit {
                    more = true;
                    continue;
                }
                kvs.push(kv.clone());
            }
        }
        Ok(RangeResponse { kvs, more, count, revision: rev })
    }

    /// The events a new watch replays: those under `prefix` after `after_revision` (0 = none,
    /// start from now), grouped per revision, plus the revision the live stream continues from.
    /// Fails with [`StoreError::Compacted`] when the history no longer reaches back that far
    /// (kube-apiserver turns this into `410 Gone`).
    pub fn history(&self, prefix: &[u8], after_revision: i64) -> Result<(Vec<Vec<Event>>, i64)> {
        if after_revision > 0 && after_revision < self.compact_rev {
            return Err(StoreError::Compacted { requested: after_revision + 1, compact_revision: self.compact_rev });
        }
        let after = if after_revision == 0 { self.rev } else { after_revision };
        let mut history: Vec<Vec<Event>> = Vec::new();
        let mut last_rev = -1;
        // The log is in revision order: skip to the first revision after `after`.
        let start = self.log.partition_point(|(r, _, _)| *r <= after);
        for (r, sub, key) in self.log.range(start..).filter(|(_, _, k)| k.starts_with(prefix)) {
            let Some(e) = self.event_at(key, *r, *sub) else {
                // Cannot happen: compaction keeps every generation an event refers to.
                tracing::error!(revision = r, key = %String::from_utf8_lossy(key), "watch history refers to a missing generation");
                continue;
            };
            if *r != last_rev {
                history.push(Vec::new());
                last_rev = *r;
            }
            if let Some(h) = history.last_mut() {
                h.push(e);
            }
        }
        // A watch from a future revision (etcd allows it) starts streaming after that revision.
        Ok((history, self.rev.max(after)))
    }

    /// Keys whose TTL has passed at `now_ms`, with the mod revision of the put that set the TTL
    /// (delete them with [`txn::delete`] so a newer put is never removed).
    pub fn due_expiries(&self, now_ms: u64) -> Vec<(Vec<u8>, i64)> {
        self.by_deadline
            .iter()
            .take_while(|(d, _)| *d <= now_ms)
            .filter_map(|(_, k)| self.expiries.get(k).map(|(_, r)| (k.clone(), *r)))
            .collect()
    }

    /// Oldest revision whose events are still in the history window (0 = none).
    pub fn oldest_event_revision(&self) -> i64 {
        self.log.front().map(|(r, _, _)| *r).unwrap_or(0)
    }
}

fn event_of(key: &[u8], rev: i64, kv: Option<KeyValue>, prev_kv: Option<KeyValue>) -> Event {
    match kv {
        Some(kv) => Event { kind: EventKind::Put, kv, prev_kv },
        None => Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                value: bytes::Bytes::new(),
                create_revision: 0,
                mod_revision: rev,
                version: 0,
            },
            prev_kv,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Txn {
        Txn {
            success: vec![Op::Put {
                key: k.into(),
                value: bytes::Bytes::copy_from_slice(v.as_bytes()),
                ttl_seconds: None,
            }],
            ..Default::default()
        }
    }

    fn del(k: &str) -> Txn {
        Txn { success: vec![Op::Delete { key: k.into() }], ..Default::default() }
    }

    #[test]
    fn a_txn_writing_two_keys_uses_one_revision_with_sub_positions() {
        let mut m = Mvcc::new();
        let t = Txn {
            success: vec![
                Op::Put { key: b"/a".to_vec(), value: bytes::Bytes::from_static(b"1"), ttl_seconds: None },
                Op::Put { key: b"/b".to_vec(), value: bytes::Bytes::from_static(b"1"), ttl_seconds: None },
            ],
            ..Default::default()
        };
        let a = m.apply(&t, 0);
        assert_eq!(a.response.revision, 1);
        assert_eq!(m.record_refs().iter().map(|r| (r.rev, r.sub)).collect::<Vec<_>>(), vec![(1, 0), (1, 1)]);
    }

    #[test]
    fn a_read_only_or_failed_txn_does_not_bump_the_revision() {
        let mut m = Mvcc::new();
        m.apply(&put("/a", "1"), 0);
        let a = m.apply(&txn::create(b"/a", b"2".to_vec(), None), 0);
        assert!(!a.response.succeeded);
        assert_eq!((a.response.revision, a.events.len()), (1, 0));
        let a = m.apply(&del("/missing"), 0);
        assert_eq!((a.response.revision, a.events.len()), (1, 0));
    }

    #[test]
    fn restoring_from_records_reproduces_state_history_and_expiries() {
        let mut m = Mvcc::new();
        m.apply(&put("/a", "1"), 0);
        m.apply(&put("/b", "1"), 0);
        m.apply(
            &Txn {
                success: vec![Op::Put {
                    key: b"/e".to_vec(),
                    value: bytes::Bytes::from_static(b"x"),
                    ttl_seconds: Some(2),
                }],
                ..Default::default()
            },
            1000,
        );
        m.apply(&del("/a"), 0);
        let records = m.records();
        assert_eq!(records.len(), 4);
        let r = Mvcc::restore(m.revision(), m.compact_revision(), records.clone());
        assert_eq!(r.revision(), 4);
        assert_eq!(r.history(b"/", 1).unwrap(), m.history(b"/", 1).unwrap());
        assert_eq!(r.due_expiries(3000), vec![(b"/e".to_vec(), 3)]);
        assert!(r.due_expiries(2999).is_empty());
        assert_eq!(r.records(), records);
    }

    #[test]
    fn compaction_drops_old_generations_and_compacted_tombstones() {
        let mut m = Mvcc::new();
        m.apply(&put("/a", "1"), 0); // 1
        m.apply(&put("/a", "2"), 0); // 2
        m.apply(&put("/b", "1"), 0); // 3
        m.apply(&del("/b"), 0); // 4
        m.apply(&put("/a", "3"), 0); // 5
        let mut removed = m.compact(4);
        removed.sort();
        assert_eq!(removed, vec![(1, 0), (3, 0), (4, 0)]);
        // reads at the compaction revision still see /a=2
        let r = m.range(&RangeRequest { prefix: b"/".to_vec(), revision: 4, ..Default::default() }).unwrap();
        assert_eq!(r.kvs.len(), 1);
        assert_eq!(&r.kvs[0].value[..], b"2");
        let restored = Mvcc::restore(m.revision(), m.compact_revision(), m.records());
        assert_eq!(restored.range(&RangeRequest { prefix: b"/".to_vec(), ..Default::default() }).unwrap().kvs.len(), 1);
        assert_eq!(restored.history(b"/", 4).unwrap(), m.history(b"/", 4).unwrap());
    }

    #[test]
    fn compaction_past_the_current_revision_is_clamped() {
        let mut m = Mvcc::new();
        m.apply(&put("/a", "1"), 0);
        m.compact(100);
        assert_eq!(m.compact_revision(), 1);
    }

    #[test]
    fn restoring_keeps_a_revision_whose_only_record_was_compacted() {
        let mut m = Mvcc::new();
        m.apply(&put("/a", "1"), 0);
        m.apply(&del("/a"), 0);
        m.compact(2);
        assert!(m.records().is_empty());
        let r = Mvcc::restore(m.revision(), m.compact_revision(), m.records());
        assert_eq!((r.revision(), r.compact_revision()), (2, 2));
    }

    #[test]
    fn a_put_without_ttl_clears_an_earlier_ttl() {
        let mut m = Mvcc::new();
        m.apply(
            &Txn {
                success: vec![Op::Put {
                    key: b"/e".to_vec(),
                    value: bytes::Bytes::from_static(b"x"),
                    ttl_seconds: Some(1),
                }],
                ..Default::default()
            },
            0,
        );
        m.apply(&put("/e", "y"), 0);
        assert!(m.due_expiries(u64::MAX).is_empty());
    }
}
