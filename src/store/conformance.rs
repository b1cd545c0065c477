//! The behaviour every [`Store`] backend must share, as one generic test suite: run against the
//! in-memory fake, the Raft store and a real etcd so all follow etcd's contract identically.
//!
//! Each case counts revisions from the store's revision when it starts (`b`): the embedded
//! stores start at 0, etcd at 1, and an etcd reused between cases further on. A fresh store
//! from `make` must hold no keys.

use super::*;
use futures::StreamExt;
use std::future::Future;
use std::time::Duration;

fn put(k: &str, v: &str) -> Txn {
    Txn {
        success: vec![Op::Put { key: k.into(), value: bytes::Bytes::copy_from_slice(v.as_bytes()), ttl_seconds: None }],
        ..Default::default()
    }
}

fn del(k: &str) -> Txn {
    Txn { success: vec![Op::Delete { key: k.into() }], ..Default::default() }
}

async fn next_events(w: &mut WatchStream) -> Vec<Event> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), w.next()).await;
        match m {
            Ok(Some(Ok(WatchMessage::Events(e)))) => return e,
            Ok(Some(Ok(WatchMessage::Progress(_)))) => continue,
            other => panic!("expected events, got {other:?}"),
        }
    }
}

/// Runs every case, each against a fresh store from `make`.
pub async fn run_all<F, Fut, S>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
    S: Store,
{
    revisions_count_up_and_versions_per_key(&make().await).await;
    failed_compares_return_the_current_value(&make().await).await;
    range_pages_and_reads_past_revisions_until_compacted(&make().await).await;
    watch_replays_history_then_streams_live_in_order(&make().await).await;
    watch_below_the_compaction_point_is_refused(&make().await).await;
    future_revisions_are_refused(&make().await).await;
}

async fn revisions_count_up_and_versions_per_key(s: &impl Store) {
    let b = s.current_revision().await.unwrap();
    assert_eq!(s.txn(put("/a", "1")).await.unwrap().revision, b + 1);
    assert_eq!(s.txn(put("/a", "2")).await.unwrap().revision, b + 2);
    let (kv, rev) = s.get(b"/a").await.unwrap();
    let kv = kv.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version, rev), (b + 1, b + 2, 2, b + 2));
    let r = s.txn(del("/a")).await.unwrap();
    assert!(matches!(&r.responses[0], OpResponse::Delete { prev: Some(p) } if p.value[..] == b"2"[..]));
    s.txn(put("/a", "3")).await.unwrap();
    let kv = s.get(b"/a").await.unwrap().0.unwrap();
    assert_eq!((kv.create_revision, kv.version), (b + 4, 1));
    assert_eq!(s.current_revision().await.unwrap(), b + 4);
}

async fn failed_compares_return_the_current_value(s: &impl Store) {
    let b = s.current_revision().await.unwrap();
    s.txn(txn::create(b"/k", b"v1".to_vec(), None)).await.unwrap();
    let r = s.txn(txn::create(b"/k", b"v2".to_vec(), None)).await.unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.revision, b + 1);
    assert!(matches!(&r.responses[0], OpResponse::Get { kv: Some(kv) } if kv.value[..] == b"v1"[..]));
    assert!(!s.txn(txn::update(b"/k", b"x".to_vec(), b + 7, None)).await.unwrap().succeeded);
    let r = s.txn(txn::update(b"/k", b"x".to_vec(), b + 1, None)).await.unwrap();
    assert!(r.succeeded);
    assert!(matches!(&r.responses[0], OpResponse::Put { prev: Some(p) } if p.value[..] == b"v1"[..]));
    let r = s.txn(txn::delete(b"/k", b + 1)).await.unwrap();
    assert!(!r.succeeded);
    assert!(matches!(&r.responses[0], OpResponse::Get { kv: Some(kv) } if kv.value[..] == b"x"[..]));
    assert!(s.txn(txn::delete(b"/k", b + 2)).await.unwrap().succeeded);
    assert!(s.get(b"/k").await.unwrap().0.is_none());
}

async fn range_pages_and_reads_past_revisions_until_compacted(s: &impl Store) {
    let b = s.current_revision().await.unwrap();
    for k in ["/p/a", "/p/b", "/p/c", "/q/x"] {
        s.txn(put(k, "1")).await.unwrap();
    }
    s.txn(put("/p/a", "2")).await.unwrap(); // rev 5
    let r = s.range(RangeRequest { prefix: b"/p/".to_vec(), limit: 2, ..Default::default() }).await.unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count, r.revision), (2, true, 3, b + 5));
    let r = s
        .range(RangeRequest { prefix: b"/p/".to_vec(), start_after: b"/p/b".to_vec(), limit: 2, ..Default::default() })
        .await
        .unwrap();
    assert_eq!((r.kvs.len(), r.more), (1, false));
    assert_eq!(r.kvs[0].key, b"/p/c");
    let r = s.range(RangeRequest { prefix: b"/p/".to_vec(), count_only: true, ..Default::default() }).await.unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 3));
    let r = s.range(RangeRequest { prefix: b"/p/".to_vec(), revision: b + 2, ..Default::default() }).await.unwrap();
    assert_eq!((r.kvs.len(), r.revision), (2, b + 2));
    assert_eq!(&r.kvs[0].value[..], b"1");
    s.compact(b + 3).await.unwrap();
    assert_eq!(s.compact_revision().await.unwrap(), b + 3);
    let e = s.range(RangeRequest { prefix: b"/p/".to_vec(), revision: b + 2, ..Default::default() }).await;
    assert!(matches!(e, Err(StoreError::Compacted { .. })), "{e:?}");
    let r = s.range(RangeRequest { prefix: b"/p/".to_vec(), revision: b + 3, ..Default::default() }).await.unwrap();
    assert_eq!(r.kvs.len(), 3);
    assert_eq!(&r.kvs[0].value[..], b"1");
}

async fn watch_replays_history_then_streams_live_in_order(s: &impl Store) {
    let b = s.current_revision().await.unwrap();
    s.txn(put("/w/a", "1")).await.unwrap();
    s.txn(put("/other", "1")).await.unwrap();
    s.txn(put("/w/a", "2")).await.unwrap();
    let mut w = s.watch(b"/w/".to_vec(), b + 1).await.unwrap();
    s.txn(del("/w/a")).await.unwrap();
    s.txn(Txn {
        success: vec![
            Op::Put { key: b"/w/b".to_vec(), value: bytes::Bytes::from_static(b"1"), ttl_seconds: None },
            Op::Put { key: b"/w/c".to_vec(), value: bytes::Bytes::from_static(b"1"), ttl_seconds: None },
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let a = next_events(&mut w).await;
    assert_eq!(a[0].kv.mod_revision, b + 3);
    assert_eq!(&a[0].prev_kv.as_ref().unwrap().value[..], b"1");
    let d = next_events(&mut w).await;
    assert_eq!(d[0].kind, EventKind::Delete);
    assert_eq!(d[0].kv.mod_revision, b + 4);
    assert_eq!(&d[0].prev_kv.as_ref().unwrap().value[..], b"2");
    let c = next_events(&mut w).await;
    assert_eq!(c.len(), 2, "all events of one revision arrive in one message");
    assert!(c.iter().all(|e| e.kv.mod_revision == b + 5));
    // A watch from "now" sees only later writes; one from a future revision only those after it.
    let mut now = s.watch(b"/w/".to_vec(), 0).await.unwrap();
    let mut future = s.watch(b"/w/".to_vec(), b + 6).await.unwrap();
    s.txn(put("/w/d", "1")).await.unwrap(); // 6
    s.txn(put("/w/e", "1")).await.unwrap(); // 7
    assert_eq!(next_events(&mut now).await[0].kv.key, b"/w/d");
    assert_eq!(next_events(&mut future).await[0].kv.key, b"/w/e");
}

async fn watch_below_the_compaction_point_is_refused(s: &impl Store) {
    let b = s.current_revision().await.unwrap();
    for i in 0..5 {
        s.txn(put("/a", &i.to_string())).await.unwrap();
    }
    s.compact(b + 4).await.unwrap();
    assert!(matches!(s.watch(b"/".to_vec(), b + 2).await, Err(StoreError::Compacted { .. })));
    let mut w = s.watch(b"/".to_vec(), b + 4).await.unwrap();
    assert_eq!(next_events(&mut w).await[0].kv.mod_revision, b + 5);
}

async fn future_revisions_are_refused(s: &impl Store) {
    let b = s.current_revision().await.unwrap();
    s.txn(put("/a", "1")).await.unwrap();
    let e = s.range(RangeRequest { prefix: b"/".to_vec(), revision: b + 9, ..Default::default() }).await;
    let (requested, current) = (b + 9, b + 1);
    assert!(
        matches!(e, Err(StoreError::FutureRevision { requested: r, current: c }) if r == requested && c == current),
        "{e:?}"
    );
}
