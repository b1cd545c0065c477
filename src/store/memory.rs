//! An in-memory implementation of [`Store`] with the full etcd semantics (revisions, compares,
//! history, watches, compaction, TTL) but no durability: the fake for unit tests, and the
//! reference the durable store is checked against.

use super::*;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// How often an idle watch gets a progress notification.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Inner {
    rev: i64,
    compact_rev: i64,
    /// Per key, its history: (revision, value or tombstone), oldest first.
    keys: BTreeMap<Vec<u8>, Vec<(i64, Option<KeyValue>)>>,
    /// Every event after `compact_rev`, in order.
    log: VecDeque<(i64, Event)>,
    /// key -> (deadline, mod_revision of the put that set it)
    expiries: HashMap<Vec<u8>, (Instant, i64)>,
}

impl Inner {
    fn current(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys.get(key).and_then(|h| h.last()).and_then(|(_, v)| v.as_ref())
    }

    fn at(&self, key: &[u8], rev: i64) -> Option<&KeyValue> {
        let h = self.keys.get(key)?;
        h.iter().rev().find(|(r, _)| *r <= rev).and_then(|(_, v)| v.as_ref())
    }

    fn compare(&self, c: &Compare) -> bool {
        let kv = self.current(&c.key);
        let ord = match &c.target {
            CompareTarget::Version(v) => kv.map(|k| k.version).unwrap_or(0).cmp(v),
            CompareTarget::CreateRevision(v) => kv.map(|k| k.create_revision).unwrap_or(0).cmp(v),
            CompareTarget::ModRevision(v) => kv.map(|k| k.mod_revision).unwrap_or(0).cmp(v),
            CompareTarget::Value(v) => match kv {
                Some(k) => k.value.cmp(v),
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

    /// Applies a transaction; returns the response and the events it produced.
    fn apply(&mut self, txn: &Txn, now: Instant) -> (TxnResponse, Vec<Event>) {
        let ok = txn.compare.iter().all(|c| self.compare(c));
        let ops = if ok { &txn.success } else { &txn.failure };
        let writes = ops.iter().any(|o| !matches!(o, Op::Get { .. }));
        let rev = if writes { self.rev + 1 } else { self.rev };
        let mut events = Vec::new();
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
                    self.keys.entry(key.clone()).or_default().push((rev, Some(kv.clone())));
                    match ttl_seconds {
                        Some(t) => {
                            self.expiries.insert(key.clone(), (now + Duration::from_secs(*t), rev));
                        }
                        None => {
                            self.expiries.remove(key);
                        }
                    }
                    events.push(Event { kind: EventKind::Put, kv, prev_kv: prev.clone() });
                    responses.push(OpResponse::Put { prev });
                }
                Op::Delete { key } => {
                    let prev = self.current(key).cloned();
                    if prev.is_some() {
                        self.keys.entry(key.clone()).or_default().push((rev, None));
                        self.expiries.remove(key);
                        let kv = KeyValue {
                            key: key.clone(),
                            value: vec![],
                            create_revision: 0,
                            mod_revision: rev,
                            version: 0,
                        };
                        events.push(Event { kind: EventKind::Delete, kv, prev_kv: prev.clone() });
                    }
                    responses.push(OpResponse::Delete { prev });
                }
            }
        }
        if !events.is_empty() {
            self.rev = rev;
            for e in &events {
                self.log.push_back((rev, e.clone()));
            }
        }
        (TxnResponse { succeeded: ok, revision: self.rev, responses }, events)
    }

    fn compact(&mut self, revision: i64) {
        let revision = revision.min(self.rev);
        if revision <= self.compact_rev {
            return;
        }
        self.compact_rev = revision;
        for h in self.keys.values_mut() {
            // keep the newest entry at or below `revision`, and everything after it
            let keep_from = h.iter().rposition(|(r, _)| *r <= revision).unwrap_or(0);
            h.drain(..keep_from);
        }
        self.keys.retain(|_, h| !(h.len() == 1 && h[0].1.is_none() && h[0].0 <= revision));
        while self.log.front().is_some_and(|(r, _)| *r <= revision) {
            self.log.pop_front();
        }
    }
}

/// The in-memory store. Cheap to clone.
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Arc<(i64, Vec<Event>)>>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        let (tx, _) = broadcast::channel(4096);
        MemStore { inner: Arc::new(Mutex::new(Inner::default())), tx }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a panic mid-apply; the data is still consistent per key.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes keys whose TTL has passed. Call periodically (the server runs it every second).
    pub fn expire(&self, now: Instant) {
        let due: Vec<(Vec<u8>, i64)> = {
            let g = self.lock();
            g.expiries.iter().filter(|(_, (d, _))| *d <= now).map(|(k, (_, r))| (k.clone(), *r)).collect()
        };
        for (k, r) in due {
            let (_, events) = self.lock().apply(&txn::delete(&k, r), now);
            if !events.is_empty() {
                let rev = events[0].kv.mod_revision;
                let _ = self.tx.send(Arc::new((rev, events)));
            }
        }
    }
}

#[async_trait]
impl Store for MemStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        let g = self.lock();
        let rev = if req.revision == 0 { g.rev } else { req.revision };
        if rev > g.rev {
            return Err(StoreError::FutureRevision { requested: rev, current: g.rev });
        }
        if req.revision != 0 && rev < g.compact_rev {
            return Err(StoreError::Compacted { requested: rev, compact_revision: g.compact_rev });
        }
        let mut kvs = Vec::new();
        let mut count = 0;
        let mut more = false;
        let start = if req.start_after.is_empty() {
            std::ops::Bound::Included(req.prefix.clone())
        } else {
            std::ops::Bound::Excluded(req.start_after.clone())
        };
        for (k, _) in g.keys.range((start, std::ops::Bound::Unbounded)) {
            if !k.starts_with(&req.prefix) {
                break;
            }
            if let Some(kv) = g.at(k, rev) {
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

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let (resp, events) = {
            let mut g = self.lock();
            let out = g.apply(&txn, Instant::now());
            // Send under the lock so live events are published in revision order.
            if !out.1.is_empty() {
                let _ = self.tx.send(Arc::new((out.0.revision, out.1.clone())));
            }
            out
        };
        drop(events);
        Ok(resp)
    }

    async fn watch(&self, prefix: Vec<u8>, after_revision: i64) -> Result<WatchStream> {
        let (history, mut live, start_rev) = {
            let g = self.lock();
            if after_revision > 0 && after_revision < g.compact_rev {
                return Err(StoreError::Compacted { requested: after_revision + 1, compact_revision: g.compact_rev });
            }
            let after = if after_revision == 0 { g.rev } else { after_revision };
            let mut history: Vec<Vec<Event>> = Vec::new();
            let mut last_rev = -1;
            for (r, e) in g.log.iter().filter(|(r, e)| *r > after && e.kv.key.starts_with(&prefix)) {
                if *r != last_rev {
                    history.push(Vec::new());
                    last_rev = *r;
                }
                if let Some(h) = history.last_mut() {
                    h.push(e.clone());
                }
            }
            (history, self.tx.subscribe(), g.rev)
        };
        let (out, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            for batch in history {
                if out.send(Ok(WatchMessage::Events(batch))).await.is_err() {
                    return;
                }
            }
            let mut seen = start_rev;
            let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
            tick.tick().await;
            loop {
                tokio::select! {
                    m = live.recv() => match m {
                        Ok(b) => {
                            let (rev, ref evs) = *b;
                            if rev <= seen { continue; }
                            seen = rev;
                            let evs: Vec<Event> = evs.iter().filter(|e| e.kv.key.starts_with(&prefix)).cloned().collect();
                            if !evs.is_empty() && out.send(Ok(WatchMessage::Events(evs))).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let _ = out.send(Err(StoreError::WatchLagged)).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tick.tick() => {
                        if out.send(Ok(WatchMessage::Progress(seen))).await.is_err() { return; }
                    }
                    _ = out.closed() => return,
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<i64> {
        Ok(self.lock().rev)
    }

    async fn compact_revision(&self) -> Result<i64> {
        Ok(self.lock().compact_rev)
    }

    async fn compact(&self, revision: i64) -> Result<()> {
        self.lock().compact(revision);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn put(k: &str, v: &str) -> Txn {
        Txn { success: vec![Op::Put { key: k.into(), value: v.into(), ttl_seconds: None }], ..Default::default() }
    }

    #[tokio::test]
    async fn revisions_count_up_and_versions_per_key() {
        let s = MemStore::new();
        assert_eq!(s.txn(put("/a", "1")).await.unwrap().revision, 1);
        assert_eq!(s.txn(put("/a", "2")).await.unwrap().revision, 2);
        let (kv, rev) = s.get(b"/a").await.unwrap();
        let kv = kv.unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version, rev), (1, 2, 2, 2));
    }

    #[tokio::test]
    async fn failed_create_returns_current_value() {
        let s = MemStore::new();
        s.txn(txn::create(b"/k", b"v1".to_vec(), None)).await.unwrap();
        let r = s.txn(txn::create(b"/k", b"v2".to_vec(), None)).await.unwrap();
        assert!(!r.succeeded);
        assert!(matches!(&r.responses[0], OpResponse::Get { kv: Some(kv) } if kv.value == b"v1"));
    }

    #[tokio::test]
    async fn update_needs_matching_mod_revision() {
        let s = MemStore::new();
        s.txn(txn::create(b"/k", b"v1".to_vec(), None)).await.unwrap();
        assert!(!s.txn(txn::update(b"/k", b"x".to_vec(), 7, None)).await.unwrap().succeeded);
        assert!(s.txn(txn::update(b"/k", b"x".to_vec(), 1, None)).await.unwrap().succeeded);
    }

    #[tokio::test]
    async fn range_reads_past_revisions_until_compacted() {
        let s = MemStore::new();
        s.txn(put("/p/a", "1")).await.unwrap();
        s.txn(put("/p/b", "1")).await.unwrap();
        s.txn(put("/p/a", "2")).await.unwrap();
        let r = s.range(RangeRequest { prefix: b"/p/".to_vec(), revision: 1, ..Default::default() }).await.unwrap();
        assert_eq!(r.kvs.len(), 1);
        assert_eq!(r.kvs[0].value, b"1");
        s.compact(2).await.unwrap();
        let e = s.range(RangeRequest { prefix: b"/p/".to_vec(), revision: 1, ..Default::default() }).await;
        assert!(matches!(e, Err(StoreError::Compacted { .. })));
        let r = s.range(RangeRequest { prefix: b"/p/".to_vec(), revision: 2, ..Default::default() }).await.unwrap();
        assert_eq!(r.kvs.len(), 2);
    }

    #[tokio::test]
    async fn range_pages_with_limit_and_start_after() {
        let s = MemStore::new();
        for k in ["/p/a", "/p/b", "/p/c", "/q/x"] {
            s.txn(put(k, "v")).await.unwrap();
        }
        let r = s.range(RangeRequest { prefix: b"/p/".to_vec(), limit: 2, ..Default::default() }).await.unwrap();
        assert_eq!((r.kvs.len(), r.more, r.count), (2, true, 3));
        let r = s
            .range(RangeRequest {
                prefix: b"/p/".to_vec(),
                start_after: b"/p/b".to_vec(),
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((r.kvs.len(), r.more), (1, false));
        assert_eq!(r.kvs[0].key, b"/p/c");
    }

    #[tokio::test]
    async fn watch_replays_history_then_streams_live_in_order() {
        let s = MemStore::new();
        s.txn(put("/w/a", "1")).await.unwrap();
        s.txn(put("/other", "1")).await.unwrap();
        s.txn(put("/w/a", "2")).await.unwrap();
        let mut w = s.watch(b"/w/".to_vec(), 1).await.unwrap();
        s.txn(Txn { success: vec![Op::Delete { key: b"/w/a".to_vec() }], ..Default::default() }).await.unwrap();
        let m1 = w.next().await.unwrap().unwrap();
        let m2 = w.next().await.unwrap().unwrap();
        match (m1, m2) {
            (WatchMessage::Events(a), WatchMessage::Events(b)) => {
                assert_eq!(a[0].kv.mod_revision, 3);
                assert_eq!(a[0].prev_kv.as_ref().unwrap().value, b"1");
                assert_eq!(b[0].kind, EventKind::Delete);
                assert_eq!(b[0].kv.mod_revision, 4);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn watch_from_compacted_revision_fails() {
        let s = MemStore::new();
        for i in 0..5 {
            s.txn(put("/a", &i.to_string())).await.unwrap();
        }
        s.compact(4).await.unwrap();
        assert!(matches!(s.watch(b"/".to_vec(), 2).await, Err(StoreError::Compacted { .. })));
        assert!(s.watch(b"/".to_vec(), 4).await.is_ok());
    }

    #[tokio::test]
    async fn ttl_keys_expire() {
        let s = MemStore::new();
        s.txn(Txn {
            success: vec![Op::Put { key: b"/e".to_vec(), value: b"x".to_vec(), ttl_seconds: Some(1) }],
            ..Default::default()
        })
        .await
        .unwrap();
        s.expire(Instant::now());
        assert!(s.get(b"/e").await.unwrap().0.is_some());
        s.expire(Instant::now() + Duration::from_secs(2));
        assert!(s.get(b"/e").await.unwrap().0.is_none());
    }
}
