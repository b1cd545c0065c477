//! Tests of the Raft store: openraft's storage suite against the write-ahead log and the state machine, the
//! shared store contract, durability across restarts, corruption detection, TTL expiry,
//! compaction and watch resumption.

use super::*;
use futures::StreamExt;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, wal::LogStore, state_machine::StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, wal::LogStore, state_machine::StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().map_err(|e| openraft::StorageIOError::write(&e))?;
        // Small segments, so the suite's logs span several segment files.
        let log = wal::LogStore::open(&dir.path().join(wal::WAL_DIR), 4096)
            .map_err(|e| openraft::StorageIOError::write(&e))?;
        let sm = state_machine::StateMachine::open(dir.path().to_path_buf())
            .map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn the_wal_log_and_state_machine_pass_openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

/// A store with its temp dir, deleted when dropped.
struct TestStore {
    store: Arc<RaftStore>,
    _dir: TempDir,
}

fn fast_config(dir: &std::path::Path) -> RaftStoreConfig {
    let mut cfg = RaftStoreConfig::new(dir.join("db"));
    cfg.expiry_interval = Duration::from_millis(100);
    cfg
}

async fn fresh() -> TestStore {
    let dir = TempDir::new().unwrap();
    let store = open(fast_config(dir.path())).await.unwrap();
    TestStore { store, _dir: dir }
}

#[async_trait]
impl Store for TestStore {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.store.range(req).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.store.txn(txn).await
    }
    async fn watch(&self, prefix: Vec<u8>, after_revision: i64) -> Result<WatchStream> {
        self.store.watch(prefix, after_revision).await
    }
    async fn current_revision(&self) -> Result<i64> {
        self.store.current_revision().await
    }
    async fn compact_revision(&self) -> Result<i64> {
        self.store.compact_revision().await
    }
    async fn compact(&self, revision: i64) -> Result<()> {
        self.store.compact(revision).await
    }
}

fn put(k: &str, v: &str) -> Txn {
    Txn {
        success: vec![Op::Put { key: k.into(), value: bytes::Bytes::copy_from_slice(v.as_bytes()), ttl_seconds: None }],
        ..Default::default()
    }
}

async fn reopen(dir: &std::path::Path, store: Arc<RaftStore>) -> Arc<RaftStore> {
    store.shutdown().await.unwrap();
    drop(store);
    open(fast_config(dir)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_store_conforms_to_the_store_contract() {
    crate::store::conformance::run_all(fresh).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_an_older_layout_is_converted_with_its_data_and_revisions() {
    for kind in [legacy::EngineKind::Redb, legacy::EngineKind::Sled] {
        let dir = TempDir::new().unwrap();
        // Keys /old/1..=5 applied, and two more committed entries only in the log.
        legacy::tests::write_old_store(&dir.path().join("db"), kind, 5);
        let s = open(fast_config(dir.path())).await.unwrap();
        for i in 1..=7i64 {
            let kv = s.get(format!("/old/{i}").as_bytes()).await.unwrap().0;
            assert_eq!(kv.map(|kv| kv.mod_revision), Some(i), "{kind:?}: /old/{i}");
        }
        assert_eq!(s.txn(put("/new", "x")).await.unwrap().revision, 8);
        s.shutdown().await.unwrap();
        drop(s);
        let s = open(fast_config(dir.path())).await.unwrap();
        assert_eq!(s.get(b"/new").await.unwrap().0.map(|kv| kv.mod_revision), Some(8));
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_restart_with_its_revisions() {
    let dir = TempDir::new().unwrap();
    let store = open(fast_config(dir.path())).await.unwrap();
    // Concurrent writers share flushes; all of them must be acknowledged and durable.
    let mut handles = Vec::new();
    for i in 0..20 {
        let s = store.clone();
        handles.push(tokio::spawn(async move { s.txn(put(&format!("/k/{i:02}"), &i.to_string())).await }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    store.txn(put("/k/00", "again")).await.unwrap();
    store.txn(Txn { success: vec![Op::Delete { key: b"/k/01".to_vec() }], ..Default::default() }).await.unwrap();
    let before = store.range(RangeRequest { prefix: b"/k/".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(before.revision, 22);

    let store = reopen(dir.path(), store).await;
    let after = store.range(RangeRequest { prefix: b"/k/".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(after, before);
    let kv = store.get(b"/k/00").await.unwrap().0.unwrap();
    assert_eq!((kv.version, kv.mod_revision, &kv.value[..]), (2, 21, &b"again"[..]));
    // The revision counter continues where it stopped.
    assert_eq!(store.txn(put("/k/new", "x")).await.unwrap().revision, 23);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_from_a_revision_after_restart_and_compacted_history_is_refused() {
    let dir = TempDir::new().unwrap();
    let store = open(fast_config(dir.path())).await.unwrap();
    for i in 0..6 {
        store.txn(put("/w/a", &i.to_string())).await.unwrap();
    }
    store.compact(3).await.unwrap();
    let store = reopen(dir.path(), store).await;
    assert_eq!(store.compact_revision().await.unwrap(), 3);
    assert!(matches!(store.watch(b"/w/".to_vec(), 2).await, Err(StoreError::Compacted { .. })));
    let mut w = store.watch(b"/w/".to_vec(), 4).await.unwrap();
    store.txn(put("/w/a", "live")).await.unwrap();
    let mut revs = Vec::new();
    while revs.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap() {
            Some(Ok(WatchMessage::Events(e))) => {
                assert_eq!(e[0].prev_kv.as_ref().unwrap().mod_revision, e[0].kv.mod_revision - 1);
                revs.push(e[0].kv.mod_revision)
            }
            Some(Ok(WatchMessage::Progress(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(revs, vec![5, 6, 7]);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_keys_are_deleted_by_the_leader_after_their_deadline() {
    let s = fresh().await;
    s.txn(Txn {
        success: vec![Op::Put { key: b"/e".to_vec(), value: bytes::Bytes::from_static(b"x"), ttl_seconds: Some(1) }],
        ..Default::default()
    })
    .await
    .unwrap();
    s.txn(put("/keep", "x")).await.unwrap();
    let mut w = s.watch(b"/e".to_vec(), 0).await.unwrap();
    assert!(s.get(b"/e").await.unwrap().0.is_some());
    let deleted = loop {
        match tokio::time::timeout(Duration::from_secs(5), w.next()).await.unwrap() {
            Some(Ok(WatchMessage::Events(e))) => break e,
            Some(Ok(WatchMessage::Progress(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(deleted[0].kind, EventKind::Delete);
    assert!(s.get(b"/e").await.unwrap().0.is_none());
    assert!(s.get(b"/keep").await.unwrap().0.is_some());
    s.store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_compaction_bounds_the_history() {
    let dir = TempDir::new().unwrap();
    let mut cfg = fast_config(dir.path());
    cfg.compaction_interval = Duration::from_millis(100);
    cfg.max_history_revisions = 5;
    let store = open(cfg).await.unwrap();
    for i in 0..20 {
        store.txn(put("/c", &i.to_string())).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.compact_revision().await.unwrap() < 15 {
        assert!(tokio::time::Instant::now() < deadline, "history was not compacted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_built_and_the_store_reopens_from_them() {
    let dir = TempDir::new().unwrap();
    let mut cfg = fast_config(dir.path());
    cfg.snapshot_every_entries = 10;
    let store = open(cfg.clone()).await.unwrap();
    for i in 0..40 {
        store.txn(put(&format!("/s/{}", i % 7), &i.to_string())).await.unwrap();
    }
    store.raft().trigger().snapshot().await.unwrap();
    store
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some_and(|s| s.index >= 30), "snapshot taken")
        .await
        .unwrap();
    let before = store.range(RangeRequest { prefix: b"/s/".to_vec(), ..Default::default() }).await.unwrap();
    store.shutdown().await.unwrap();
    drop(store);
    let store = open(cfg).await.unwrap();
    let after = store.range(RangeRequest { prefix: b"/s/".to_vec(), ..Default::default() }).await.unwrap();
    assert_eq!(after, before);
    store.shutdown().await.unwrap();
}

/// Waits until a (follower) store has applied `revision`.
async fn wait_for_revision(s: &RaftStore, revision: i64) {
    let t = std::time::Instant::now();
    while s.shared.lock().revision() < revision {
        assert!(t.elapsed() < Duration::from_secs(10), "store {} never reached revision {revision}", s.node_id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes some data, closes the store and returns its log segment.
async fn closed_store_with_data(dir: &std::path::Path) -> std::path::PathBuf {
    let store = open(fast_config(dir)).await.unwrap();
    for i in 0..50 {
        store.txn(put(&format!("/x/{i}"), &"v".repeat(100))).await.unwrap();
    }
    store.shutdown().await.unwrap();
    drop(store);
    let wal = dir.join("db").join(wal::WAL_DIR);
    let mut segments: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    segments.pop().unwrap()
}

fn assert_refused(opened: std::result::Result<Arc<RaftStore>, StoreError>, want: &str) {
    match opened {
        Err(StoreError::Corrupt(msg)) => {
            assert!(msg.contains("snapshot restore"), "{msg}");
            assert!(msg.contains(want), "{msg}");
        }
        Err(other) => panic!("expected Corrupt, got {other:?}"),
        Ok(_) => panic!("a damaged store was opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_data_file_is_refused_at_start_up() {
    let dir = TempDir::new().unwrap();
    let file = closed_store_with_data(dir.path()).await;
    let mut bytes = std::fs::read(&file).unwrap();
    // Flip bits in the middle of the log, where entries live.
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&file, bytes).unwrap();
    assert_refused(open(fast_config(dir.path())).await, "raft log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_data_file_is_refused_at_start_up() {
    let dir = TempDir::new().unwrap();
    let file = closed_store_with_data(dir.path()).await;
    let len = std::fs::metadata(&file).unwrap().len();
    // Cut at half: what looks like a torn tail is cut off, and the durability marker then
    // shows that acknowledged entries went with it.
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap();
    assert_refused(open(fast_config(dir.path())).await, "truncated or damaged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_snapshot_is_refused_at_start_up() {
    let dir = TempDir::new().unwrap();
    let mut cfg = fast_config(dir.path());
    cfg.snapshot_every_entries = 10;
    let store = open(cfg.clone()).await.unwrap();
    for i in 0..30 {
        store.txn(put(&format!("/x/{i}"), "v")).await.unwrap();
    }
    store.raft().trigger().snapshot().await.unwrap();
    store
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some(), "a snapshot was built")
        .await
        .unwrap();
    store.shutdown().await.unwrap();
    drop(store);
    let file = dir.path().join("db").join(state_machine::SNAPSHOT_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    assert_refused(open(cfg).await, "checksum");
}

/// Rough throughput figures (run with `cargo test store::raft::tests::throughput -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let s = fresh().await;
    let value = "v".repeat(256);
    let n = 500;
    let t = std::time::Instant::now();
    for i in 0..n {
        s.txn(put(&format!("/seq/{i}"), &value)).await.unwrap();
    }
    let seq = n as f64 / t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let mut hs = Vec::new();
    for c in 0..64 {
        let st = s.store.clone();
        let value = value.clone();
        hs.push(tokio::spawn(async move {
            for i in 0..40 {
                st.txn(put(&format!("/par/{c}/{i}"), &value)).await.unwrap();
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    let par = (64 * 40) as f64 / t.elapsed().as_secs_f64();
    eprintln!("sequential puts/s: {seq:.0}; 64 concurrent clients puts/s: {par:.0}");
    s.store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_replicate_and_survive_the_loss_of_the_leader() {
    let transport = InProcessTransport::default();
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let mut stores = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as u64 + 1;
        let mut cfg = fast_config(dir.path());
        cfg.node_id = id;
        cfg.advertise_addr = format!("node-{id}");
        cfg.transport = Arc::new(transport.clone());
        cfg.bootstrap = id == 1;
        let s = open(cfg).await.unwrap();
        transport.register(id, s.raft_router());
        stores.push(s);
    }
    stores[0].add_voter(2, "node-2".into()).await.unwrap();
    stores[0].add_voter(3, "node-3".into()).await.unwrap();
    let mut w = stores[2].watch(b"/r/".to_vec(), 0).await.unwrap();
    let r = stores[0].txn(put("/r/a", "1")).await.unwrap();
    let e = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap() {
            Some(Ok(WatchMessage::Events(e))) => break e,
            Some(Ok(WatchMessage::Progress(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(e[0].kv.mod_revision, r.revision, "a follower serves watches from its own applied state");

    // Stop the leader; the other two elect a new one and keep accepting writes. (How fast is a
    // benchmark figure: skiff-bench prints the failover time.)
    transport.unregister(1);
    let old = stores.remove(0);
    old.shutdown().await.unwrap();
    drop(old);
    let t = std::time::Instant::now();
    let new_leader = loop {
        if let Some(l) = stores.iter().find(|s| s.leader() == Some(s.node_id)) {
            break l.clone();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let r2 = new_leader.txn(put("/r/b", "2")).await.unwrap();
    assert_eq!(r2.revision, r.revision + 1);
    eprintln!("first write after the leader stopped: {:?}", t.elapsed());
    assert_eq!(&new_leader.get(b"/r/a").await.unwrap().0.unwrap().value[..], b"1");
    // The follower forwards writes to the leader and reads linearizably through its read index.
    let follower = stores.iter().find(|s| s.node_id != new_leader.node_id).unwrap().clone();
    let r3 = follower.txn(put("/r/c", "3")).await.unwrap();
    assert_eq!(r3.revision, r2.revision + 1);
    assert_eq!(follower.get(b"/r/c").await.unwrap().0.unwrap().mod_revision, r3.revision);
    assert_eq!(follower.current_revision().await.unwrap(), r3.revision);

    // The old leader comes back on its data dir as a follower and catches up on what it missed.
    let mut cfg = fast_config(dirs[0].path());
    cfg.advertise_addr = "node-1".into();
    cfg.transport = Arc::new(transport.clone());
    cfg.bootstrap = false;
    let back = open(cfg).await.unwrap();
    transport.register(1, back.raft_router());
    // (Read the index first: a metrics borrow held across the await would block the leader.)
    let leader_applied = new_leader.raft().metrics().borrow().last_applied.map(|l| l.index);
    back.raft().wait(Some(Duration::from_secs(10))).applied_index_at_least(leader_applied, "caught up").await.unwrap();
    let local = |key: &str| RangeRequest { prefix: key.as_bytes().to_vec(), serializable: true, ..Default::default() };
    let got = back.range(local("/r/c")).await.unwrap();
    assert_eq!(got.kvs.iter().map(|kv| kv.mod_revision).collect::<Vec<_>>(), vec![r3.revision]);
    assert_ne!(back.leader(), Some(1), "the restarted server follows the new leader");
    stores.push(back);
    for s in stores {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_server_behind_the_purged_log_catches_up_from_a_snapshot() {
    let transport = InProcessTransport::default();
    let (d1, d2) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let mut c1 = fast_config(d1.path());
    c1.transport = Arc::new(transport.clone());
    c1.snapshot_every_entries = 10;
    c1.keep_logs_after_snapshot = 0;
    let s1 = open(c1).await.unwrap();
    transport.register(1, s1.raft_router());
    for i in 0..30 {
        s1.txn(put(&format!("/j/{}", i % 4), &i.to_string())).await.unwrap();
    }
    s1.raft().trigger().snapshot().await.unwrap();
    s1.raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= 20), "log purged")
        .await
        .unwrap();
    let mut c2 = fast_config(d2.path());
    c2.node_id = 2;
    c2.transport = Arc::new(transport.clone());
    c2.bootstrap = false;
    let s2 = open(c2).await.unwrap();
    transport.register(2, s2.raft_router());
    s1.add_voter(2, "node-2".into()).await.unwrap();
    let want = s1.range(RangeRequest { prefix: b"/j/".to_vec(), ..Default::default() }).await.unwrap();
    wait_for_revision(&s2, want.revision).await;
    s2.raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some(), "the follower installed a snapshot")
        .await
        .unwrap();
    let (rev, got) = {
        let m = s2.shared.lock();
        (m.revision(), m.range(&RangeRequest { prefix: b"/j/".to_vec(), ..Default::default() }).unwrap())
    };
    assert_eq!((rev, got), (want.revision, want));
    s1.shutdown().await.unwrap();
    s2.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_traffic_flows_over_http_between_two_servers() {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let transport = Arc::new(network::HttpTransport::new(tls, Duration::from_secs(5)));
    let (d1, d2) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let mut stores = Vec::new();
    let mut addrs = Vec::new();
    for (i, dir) in [&d1, &d2].into_iter().enumerate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let mut cfg = fast_config(dir.path());
        cfg.node_id = i as u64 + 1;
        cfg.advertise_addr = addr.clone();
        cfg.transport = transport.clone();
        cfg.bootstrap = i == 0;
        let s = open(cfg).await.unwrap();
        let router = s.raft_router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        stores.push(s);
        addrs.push(addr);
    }
    stores[0].add_voter(2, addrs[1].clone()).await.unwrap();
    let r = stores[0].txn(put("/h/a", "1")).await.unwrap();
    wait_for_revision(&stores[1], r.revision).await;
    for s in stores {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_snapshot_restores_into_a_new_data_dir_with_identical_contents_and_revisions() {
    let (d1, d2) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let s1 = open(fast_config(d1.path())).await.unwrap();
    for i in 0..12 {
        s1.txn(put(&format!("/b/{}", i % 5), &i.to_string())).await.unwrap();
    }
    s1.txn(Txn { success: vec![Op::Delete { key: b"/b/0".to_vec() }], ..Default::default() }).await.unwrap();
    s1.compact(8).await.unwrap();
    let file = d1.path().join("save.snap");
    let info = s1.save_snapshot(&file).await.unwrap();
    assert_eq!((info.revision, info.compact_revision), (13, 8));
    let want = s1.range(RangeRequest { prefix: b"/b/".to_vec(), ..Default::default() }).await.unwrap();
    let want_past =
        s1.range(RangeRequest { prefix: b"/b/".to_vec(), revision: 9, ..Default::default() }).await.unwrap();
    s1.shutdown().await.unwrap();

    assert_eq!(backup::restore_snapshot(&file, &fast_config(d2.path())).unwrap(), info);
    assert!(backup::restore_snapshot(&file, &fast_config(d2.path())).is_err(), "restore refuses a non-empty dir");
    let s2 = open(fast_config(d2.path())).await.unwrap();
    assert_eq!(s2.range(RangeRequest { prefix: b"/b/".to_vec(), ..Default::default() }).await.unwrap(), want);
    let past = s2.range(RangeRequest { prefix: b"/b/".to_vec(), revision: 9, ..Default::default() }).await.unwrap();
    assert_eq!(past, want_past);
    assert_eq!(s2.compact_revision().await.unwrap(), 8);
    assert_eq!(s2.txn(put("/b/new", "x")).await.unwrap().revision, 14);
    s2.shutdown().await.unwrap();

    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&file, bytes).unwrap();
    let d3 = TempDir::new().unwrap();
    assert!(matches!(backup::restore_snapshot(&file, &fast_config(d3.path())), Err(StoreError::Corrupt(_))));
}

/// The child half of the kill -9 test: writes keys under concurrent load and prints each
/// acknowledged one. Runs only when the parent test starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn crash_child() {
    let Ok(dir) = std::env::var("SKIFF_CRASH_DIR") else { return };
    let store = open(fast_config(std::path::Path::new(&dir))).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for c in 0..8 {
        let (s, tx) = (store.clone(), tx.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/crash/{c}/{i}");
                s.txn(put(&key, "v")).await.unwrap();
                if tx.send(key).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    use std::io::Write;
    let mut out = std::io::stdout();
    while let Some(key) = rx.recv().await {
        writeln!(out, "ACK {key}").unwrap();
        out.flush().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_kill_dash_nine() {
    use tokio::io::AsyncBufReadExt;
    let dir = TempDir::new().unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store::raft::tests::crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("SKIFF_CRASH_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    // Long enough for the durability marker to be rewritten under load.
    while acked.len() < 1500 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap();
        match line {
            Some(l) if l.starts_with("ACK ") => acked.push(l[4..].to_string()),
            Some(_) => {}
            None => panic!("the child exited early after {} acks", acked.len()),
        }
    }
    // SIGKILL mid-load: no shutdown, no final flush.
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    while let Ok(Some(l)) = lines.next_line().await {
        if let Some(k) = l.strip_prefix("ACK ") {
            acked.push(k.to_string());
        }
    }
    let store = open(fast_config(dir.path())).await.unwrap();
    let have = store.range(RangeRequest { prefix: b"/crash/".to_vec(), ..Default::default() }).await.unwrap();
    let have: std::collections::HashSet<Vec<u8>> = have.kvs.into_iter().map(|kv| kv.key).collect();
    let missing: Vec<&String> = acked.iter().filter(|k| !have.contains(k.as_bytes())).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(have.len() >= acked.len());
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_each_gets_its_own_revision() {
    let s = fresh().await;
    s.txn(put("/g/warm", "x")).await.unwrap();
    let before = s.store.raft().metrics().borrow().last_log_index.unwrap_or(0);
    let mut hs = Vec::new();
    for i in 0..64 {
        let st = s.store.clone();
        hs.push(tokio::spawn(async move { st.txn(put(&format!("/g/{i}"), "v")).await.unwrap().revision }));
    }
    let mut revs = Vec::new();
    for h in hs {
        revs.push(h.await.unwrap());
    }
    revs.sort();
    assert_eq!(revs, (2..66).collect::<Vec<i64>>(), "one revision per txn, none shared or skipped");
    let t = std::time::Instant::now();
    let after = loop {
        let m = s.store.raft().metrics().borrow().clone();
        if m.last_applied.map(|l| l.index) == m.last_log_index || t.elapsed() > Duration::from_secs(5) {
            break m.last_log_index.unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(after - before < 64, "64 writes took {} log entries", after - before);
    s.store.shutdown().await.unwrap();
}

/// Disk use after compaction relative to live data (run with `-- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn space_amplification() {
    fn du(p: &std::path::Path) -> u64 {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => du(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    let dir = TempDir::new().unwrap();
    let mut cfg = fast_config(dir.path());
    cfg.keep_logs_after_snapshot = 10;
    let s = TestStore { store: open(cfg.clone()).await.unwrap(), _dir: dir };
    let value = "v".repeat(1024);
    let keys = 5000;
    for round in 0..8 {
        let mut hs = Vec::new();
        for c in 0..50 {
            let (st, value) = (s.store.clone(), value.clone());
            hs.push(tokio::spawn(async move {
                for i in (c..keys).step_by(50) {
                    st.txn(put(&format!("/sp/{i:06}"), &format!("{round}{value}"))).await.unwrap();
                }
            }));
        }
        for h in hs {
            h.await.unwrap();
        }
        // Compact every round, as the periodic compactor would.
        let rev = s.store.current_revision().await.unwrap();
        s.store.compact(rev).await.unwrap();
    }
    let rev = s.store.current_revision().await.unwrap();
    s.store.compact(rev).await.unwrap();
    s.store.raft().trigger().snapshot().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live = keys as u64 * (1024 + 12);
    let dir = s._dir.path();
    {
        let m = s.store.raft().metrics().borrow().clone();
        eprintln!("log: last {:?}, purged {:?}, snapshot {:?}", m.last_log_index, m.purged, m.snapshot);
    }
    eprintln!("live {} KiB; data dir {} KiB; ratio {:.2}", live / 1024, du(dir) / 1024, du(dir) as f64 / live as f64);
    s.store.shutdown().await.unwrap();
    eprintln!("after shutdown: data dir {} KiB", du(dir) / 1024);
    let TestStore { store, _dir } = s;
    drop(store);
    let store = open(cfg).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    store.shutdown().await.unwrap();
    eprintln!("after reopen: data dir {} KiB", du(_dir.path()) / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_grown_past_the_state_size_is_snapshotted_and_purged() {
    let dir = TempDir::new().unwrap();
    let mut cfg = fast_config(dir.path());
    cfg.snapshot_min_log_bytes = 20_000;
    cfg.keep_logs_after_snapshot = 0;
    let s = open(cfg).await.unwrap();
    for i in 0..40 {
        s.txn(put("/big", &format!("{i}{}", "x".repeat(1000)))).await.unwrap();
    }
    s.raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some(), "log purged after a size-triggered snapshot")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
}

/// A per-node view of an [`InProcessTransport`] that can cut links, for partition tests.
#[derive(Clone)]
struct Partitionable {
    me: NodeId,
    inner: InProcessTransport,
    /// Nodes cut off from everyone else.
    isolated: Arc<std::sync::RwLock<std::collections::HashSet<NodeId>>>,
}

#[async_trait]
impl RaftTransport for Partitionable {
    async fn call(&self, target: NodeId, addr: &str, path: &str, body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        let cut = {
            let iso = self.isolated.read().unwrap();
            iso.contains(&self.me) != iso.contains(&target)
        };
        if cut {
            return Err(TransportError::Unreachable { target, addr: addr.into(), reason: "partitioned".into() });
        }
        self.inner.call(target, addr, path, body).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_refuses_writes_while_the_majority_continues_and_then_converges() {
    let inner = InProcessTransport::default();
    let isolated = Arc::new(std::sync::RwLock::new(std::collections::HashSet::new()));
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let mut stores = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as u64 + 1;
        let mut cfg = fast_config(dir.path());
        cfg.node_id = id;
        cfg.advertise_addr = format!("node-{id}");
        cfg.transport = Arc::new(Partitionable { me: id, inner: inner.clone(), isolated: isolated.clone() });
        cfg.bootstrap = id == 1;
        cfg.request_timeout = Duration::from_secs(2);
        let s = open(cfg).await.unwrap();
        inner.register(id, s.raft_router());
        stores.push(s);
    }
    stores[0].add_voter(2, "node-2".into()).await.unwrap();
    stores[0].add_voter(3, "node-3".into()).await.unwrap();
    stores[0].txn(put("/p/a", "1")).await.unwrap();

    // Cut the leader (node 1) off: it cannot commit, the other two elect a leader and go on.
    isolated.write().unwrap().insert(1);
    let e = stores[0].txn(put("/p/minority", "x")).await;
    assert!(matches!(e, Err(StoreError::Unavailable(_))), "{e:?}");
    assert!(matches!(
        stores[0].range(RangeRequest { prefix: b"/p/".to_vec(), ..Default::default() }).await,
        Err(StoreError::Unavailable(_))
    ));
    let t = std::time::Instant::now();
    let r = loop {
        match stores[1].txn(put("/p/b", "2")).await {
            Ok(r) => break r,
            Err(_) if t.elapsed() < Duration::from_secs(10) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("the majority never accepted writes: {e:?}"),
        }
    };

    // Heal: the old leader rejoins, drops its uncommitted entry and catches up.
    isolated.write().unwrap().clear();
    wait_for_revision(&stores[0], r.revision).await;
    let t = std::time::Instant::now();
    loop {
        match stores[0].range(RangeRequest { prefix: b"/p/".to_vec(), ..Default::default() }).await {
            Ok(got) => {
                let keys: Vec<Vec<u8>> = got.kvs.into_iter().map(|kv| kv.key).collect();
                assert!(keys.contains(&b"/p/b".to_vec()));
                break;
            }
            Err(_) if t.elapsed() < Duration::from_secs(10) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("the healed node never served reads: {e:?}"),
        }
    }
    // All three converge on the same contents; the uncommitted write of the cut-off leader is gone.
    let all = RangeRequest { prefix: b"/p/".to_vec(), ..Default::default() };
    let want = stores[1].range(all.clone()).await.unwrap();
    for s in &stores {
        wait_for_revision(s, want.revision).await;
        assert_eq!(s.shared.lock().range(&all).unwrap().kvs, want.kvs);
    }
    assert!(want.kvs.iter().all(|kv| kv.key != b"/p/minority"));
    for s in stores {
        s.shutdown().await.unwrap();
    }
}

/// One completed operation of the linearizability test, with its real-time interval.
#[derive(Debug, Clone)]
enum Observed {
    /// A read: the key's mod revision (0 = absent) at store revision `rev`.
    Read { mod_rev: i64, rev: i64 },
    /// A successful compare-and-swap from `expected` (mod revision) that wrote at `rev`.
    Cas { expected: i64, rev: i64 },
    /// A compare-and-swap that failed because the key's mod revision was `actual` at `rev`.
    CasFailed { expected: i64, actual: i64, rev: i64 },
}

#[derive(Debug, Clone)]
struct HistOp {
    start: std::time::Instant,
    end: std::time::Instant,
    what: Observed,
}

/// Checks a single-key history against the revision order the store claims, the way etcd's
/// robustness tests validate with revisions: (1) successful writes have distinct revisions;
/// (2) real time: an operation that finished before another started has a revision no larger
/// (strictly smaller for two writes); (3) a successful CAS from `expected` means no write landed
/// strictly between `expected` and its own revision; (4) a
/// read or failed CAS saw the last write at or below its revision. Writes whose outcome was
/// unknown (timeouts) are not in the history; rules 3 and 4 only use writes known to exist, so
/// they never blame the store for those.
fn check_history(ops: &[HistOp]) -> Result<(), String> {
    let writes: std::collections::BTreeSet<i64> = ops
        .iter()
        .filter_map(|o| match o.what {
            Observed::Cas { rev, .. } => Some(rev),
            _ => None,
        })
        .collect();
    let n_writes = ops.iter().filter(|o| matches!(o.what, Observed::Cas { .. })).count();
    if writes.len() != n_writes {
        return Err("two successful writes share a revision".into());
    }
    // Is there a known write with lo < rev <= hi?
    let any_between = |lo: i64, hi: i64| lo < hi && writes.range(lo + 1..=hi).next().is_some();
    let rev_of = |o: &HistOp| match o.what {
        Observed::Read { rev, .. } | Observed::Cas { rev, .. } | Observed::CasFailed { rev, .. } => rev,
    };
    for a in ops {
        for b in ops {
            if a.end < b.start {
                let (ra, rb) = (rev_of(a), rev_of(b));
                let both_writes = matches!(a.what, Observed::Cas { .. }) && matches!(b.what, Observed::Cas { .. });
                if ra > rb || (both_writes && ra == rb) {
                    return Err(format!("real-time order violated: {a:?} finished before {b:?} started"));
                }
            }
        }
    }
    for o in ops {
        match o.what {
            Observed::Cas { expected, rev } => {
                if any_between(expected, rev - 1) {
                    return Err(format!("{o:?} succeeded although another write landed after {expected}"));
                }
            }
            Observed::Read { mod_rev: seen, rev } | Observed::CasFailed { actual: seen, rev, .. } => {
                if any_between(seen, rev) {
                    return Err(format!("{o:?} missed a write at or below its revision"));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn the_history_checker_rejects_stale_reads_and_lost_updates() {
    let t0 = std::time::Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let op = |s, e, what| HistOp { start: at(s), end: at(e), what };
    let good = vec![
        op(0, 1, Observed::Cas { expected: 0, rev: 1 }),
        op(2, 3, Observed::Read { mod_rev: 1, rev: 1 }),
        op(4, 5, Observed::Cas { expected: 1, rev: 2 }),
        op(4, 6, Observed::CasFailed { expected: 1, actual: 2, rev: 2 }),
    ];
    assert!(check_history(&good).is_ok());
    let mut stale = good.clone();
    stale.push(op(7, 8, Observed::Read { mod_rev: 1, rev: 1 }));
    assert!(check_history(&stale).is_err(), "a read after a completed write must see it");
    let mut lost = good.clone();
    lost.push(op(9, 10, Observed::Cas { expected: 1, rev: 3 }));
    assert!(check_history(&lost).is_err(), "a CAS from an overwritten revision must fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_histories_stay_linearizable_across_a_leader_kill() {
    let transport = InProcessTransport::default();
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let mut stores = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as u64 + 1;
        let mut cfg = fast_config(dir.path());
        cfg.node_id = id;
        cfg.advertise_addr = format!("node-{id}");
        cfg.transport = Arc::new(transport.clone());
        cfg.bootstrap = id == 1;
        cfg.request_timeout = Duration::from_secs(2);
        let s = open(cfg).await.unwrap();
        transport.register(id, s.raft_router());
        stores.push(s);
    }
    stores[0].add_voter(2, "node-2".into()).await.unwrap();
    stores[0].add_voter(3, "node-3".into()).await.unwrap();
    let live = Arc::new(std::sync::RwLock::new(stores.clone()));
    let history = Arc::new(std::sync::Mutex::new(Vec::<HistOp>::new()));
    // The clients run until the main task says stop: a while after the first write that
    // succeeded on the new leader, or after a generous limit on a slow (debug, loaded) machine.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4usize {
        let (live, history, stop) = (live.clone(), history.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut n = c;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let s = {
                    let l = live.read().unwrap();
                    l[n % l.len()].clone()
                };
                let start = std::time::Instant::now();
                let Ok((kv, rev)) = s.get(b"/lin").await else { continue };
                let mod_rev = kv.map(|kv| kv.mod_revision).unwrap_or(0);
                history.lock().unwrap().push(HistOp {
                    start,
                    end: std::time::Instant::now(),
                    what: Observed::Read { mod_rev, rev },
                });
                let start = std::time::Instant::now();
                let t = txn::update(b"/lin", format!("{c}-{n}").into_bytes(), mod_rev, None);
                let what = match s.txn(t).await {
                    Ok(r) if r.succeeded => Observed::Cas { expected: mod_rev, rev: r.revision },
                    Ok(r) => match &r.responses[0] {
                        OpResponse::Get { kv } => Observed::CasFailed {
                            expected: mod_rev,
                            actual: kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0),
                            rev: r.revision,
                        },
                        other => panic!("unexpected {other:?}"),
                    },
                    // Outcome unknown (leader died mid-write): leave it out of the history.
                    Err(_) => continue,
                };
                history.lock().unwrap().push(HistOp { start, end: std::time::Instant::now(), what });
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Kill the leader mid-load.
    let leader = stores[0].leader().unwrap();
    let victim = stores.iter().find(|s| s.node_id == leader).unwrap().clone();
    live.write().unwrap().retain(|s| s.node_id != leader);
    transport.unregister(leader);
    let killed_at = std::time::Instant::now();
    victim.shutdown().await.unwrap();
    let limit = killed_at + Duration::from_secs(15);
    while std::time::Instant::now() < limit {
        let recovered =
            history.lock().unwrap().iter().any(|o| matches!(o.what, Observed::Cas { .. }) && o.start > killed_at);
        if recovered {
            tokio::time::sleep(Duration::from_millis(500)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let history = history.lock().unwrap().clone();
    let writes = history.iter().filter(|o| matches!(o.what, Observed::Cas { .. })).count();
    assert!(writes > 10, "too few successful writes ({writes}) to mean anything");
    assert!(
        history.iter().any(|o| matches!(o.what, Observed::Cas { .. }) && o.start > killed_at),
        "no write succeeded after the leader was killed"
    );
    check_history(&history).unwrap();
    let survivors: Vec<_> = live.read().unwrap().clone();
    for s in survivors {
        s.shutdown().await.unwrap();
    }
}
