//! An in-memory implementation of [`Store`] with the full etcd semantics (revisions, compares,
//! history, watches, compaction, TTL) but no durability: the fake for unit tests, and the
//! reference the durable store is checked against.

use super::mvcc::Mvcc;
use super::watch;
use super::*;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use super::watch::PROGRESS_INTERVAL;

/// The in-memory store. Cheap to clone.
#[derive(Clone)]
pub struct MemStore {
    inner: Arc<Mutex<Mvcc>>,
    hub: Arc<watch::Hub>,
    /// TTL deadlines are kept in milliseconds since this instant (the MVCC core takes plain
    /// numbers so the Raft state machine can use the proposer's wall clock instead).
    epoch: Instant,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore { inner: Arc::new(Mutex::new(Mvcc::new())), hub: Arc::new(watch::Hub::new()), epoch: Instant::now() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mvcc> {
        // A poisoned lock means a panic mid-apply; the data is still consistent per key.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn apply(&self, txn: &Txn, now: Instant) -> TxnResponse {
        let mut g = self.lock();
        let applied = g.apply(txn, self.millis(now));
        // Send under the lock so live events are published in revision order.
        if !applied.events.is_empty() {
            self.hub.publish(applied.response.revision, applied.events);
        }
        applied.response
    }

    /// Deletes keys whose TTL has passed. Call periodically (the server runs it every second).
    pub fn expire(&self, now: Instant) {
        let due = self.lock().due_expiries(self.millis(now));
        for (k, r) in due {
            self.apply(&txn::delete(&k, r), now);
        }
    }
}

#[async_trait]
impl Store for MemStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.lock().range(&req)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        Ok(self.apply(&txn, Instant::now()))
    }

    async fn watch(&self, prefix: Vec<u8>, after_revision: i64) -> Result<WatchStream> {
        let (history, live, start_rev) = {
            let g = self.lock();
            let (history, start_rev) = g.history(&prefix, after_revision)?;
            (history, self.hub.subscribe(&prefix), start_rev)
        };
        Ok(watch::stream(history, live, start_rev, prefix))
    }

    async fn current_revision(&self) -> Result<i64> {
        Ok(self.lock().revision())
    }

    async fn compact_revision(&self) -> Result<i64> {
        Ok(self.lock().compact_revision())
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
    use std::time::Duration;

    #[tokio::test]
    async fn conforms_to_the_store_contract() {
        crate::store::conformance::run_all(|| async { MemStore::new() }).await;
    }

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
        assert!(matches!(&r.responses[0], OpResponse::Get { kv: Some(kv) } if kv.value[..] == b"v1"[..]));
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
        assert_eq!(&r.kvs[0].value[..], b"1");
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
                assert_eq!(&a[0].prev_kv.as_ref().unwrap().value[..], b"1");
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
            success: vec![Op::Put {
                key: b"/e".to_vec(),
                value: bytes::Bytes::from_static(b"x"),
                ttl_seconds: Some(1),
            }],
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
