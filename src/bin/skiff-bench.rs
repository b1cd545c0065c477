//! skiff-bench: issue #3's store benchmark, skiff's embedded store against etcd 3.4 on the same
//! machine, same run, same durability (fsync per commit on both), each through its own client
//! path: skiff's `Store` trait on an in-process `RaftStore` (write-ahead log + snapshots), etcd through `etcd-client`
//! over gRPC on loopback. Prints one table with the ratio skiff/etcd per row.
//!
//! Workloads: (a) 1 client, sequential 256-byte puts; (b) 64 concurrent clients; (c) range over
//! 10,000 keys; (d) put-to-event latency with 100 watchers; (e) disk bytes written per logical
//! byte over N updates (from /proc/<pid>/io), and the data dir size after compaction; plus RSS.
//!
//! Run: `cargo run --release --features bench --bin skiff-bench -- [--quick]`. Needs `etcd`
//! (Debian `etcd-server`) on PATH; it is started on 127.0.0.1 random ports in a temp dir and
//! killed by PID at the end.

use futures::StreamExt;
use skiff::store::raft::{RaftStore, RaftStoreConfig};
use skiff::store::{Op, RangeRequest, Store, Txn, WatchMessage};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// The operations the workloads need, on either system.
#[async_trait::async_trait]
trait Kv: Send + Sync {
    async fn put(&self, key: String, value: Vec<u8>) -> Result<(), BoxErr>;
    async fn range_count(&self, prefix: &str) -> Result<usize, BoxErr>;
    /// Starts a watch on `prefix`; every event's arrival time is sent on `tx`, with its key.
    async fn watch(
        &self,
        prefix: &str,
        tx: tokio::sync::mpsc::UnboundedSender<(String, Instant)>,
    ) -> Result<(), BoxErr>;
    async fn compact_all(&self) -> Result<(), BoxErr>;
    /// (process id whose I/O counts, data dir).
    fn pid(&self) -> u32;
}

struct SkiffKv(Arc<RaftStore>);

#[async_trait::async_trait]
impl Kv for SkiffKv {
    async fn put(&self, key: String, value: Vec<u8>) -> Result<(), BoxErr> {
        let txn = Txn {
            success: vec![Op::Put { key: key.into_bytes(), value: value.into(), ttl_seconds: None }],
            ..Default::default()
        };
        self.0.txn(txn).await?;
        Ok(())
    }
    async fn range_count(&self, prefix: &str) -> Result<usize, BoxErr> {
        let r = self.0.range(RangeRequest { prefix: prefix.as_bytes().to_vec(), ..Default::default() }).await?;
        Ok(r.kvs.len())
    }
    async fn watch(
        &self,
        prefix: &str,
        tx: tokio::sync::mpsc::UnboundedSender<(String, Instant)>,
    ) -> Result<(), BoxErr> {
        let mut s = self.0.watch(prefix.as_bytes().to_vec(), 0).await?;
        tokio::spawn(async move {
            while let Some(Ok(m)) = s.next().await {
                if let WatchMessage::Events(evs) = m {
                    let now = Instant::now();
                    for e in evs {
                        if tx.send((String::from_utf8_lossy(&e.kv.key).into_owned(), now)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(())
    }
    async fn compact_all(&self) -> Result<(), BoxErr> {
        let rev = self.0.current_revision().await?;
        self.0.compact(rev).await?;
        Ok(())
    }
    fn pid(&self) -> u32 {
        std::process::id()
    }
}

struct EtcdKv {
    client: etcd_client::Client,
    pid: u32,
}

#[async_trait::async_trait]
impl Kv for EtcdKv {
    async fn put(&self, key: String, value: Vec<u8>) -> Result<(), BoxErr> {
        self.client.kv_client().put(key, value, None).await?;
        Ok(())
    }
    async fn range_count(&self, prefix: &str) -> Result<usize, BoxErr> {
        let r = self.client.kv_client().get(prefix, Some(etcd_client::GetOptions::new().with_prefix())).await?;
        Ok(r.kvs().len())
    }
    async fn watch(
        &self,
        prefix: &str,
        tx: tokio::sync::mpsc::UnboundedSender<(String, Instant)>,
    ) -> Result<(), BoxErr> {
        let mut s =
            self.client.watch_client().watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix())).await?;
        tokio::spawn(async move {
            while let Some(Ok(resp)) = s.next().await {
                let now = Instant::now();
                for e in resp.events() {
                    if let Some(kv) = e.kv() {
                        if tx.send((String::from_utf8_lossy(kv.key()).into_owned(), now)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(())
    }
    async fn compact_all(&self) -> Result<(), BoxErr> {
        let rev = self.client.kv_client().get("x", None).await?.header().map(|h| h.revision()).unwrap_or(0);
        self.client.kv_client().compact(rev, Some(etcd_client::CompactionOptions::new().with_physical())).await?;
        self.client.maintenance_client().defragment().await?;
        Ok(())
    }
    fn pid(&self) -> u32 {
        self.pid
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn proc_field(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn dir_size_or_file(p: &Path) -> u64 {
    if p.is_dir() {
        dir_size(p)
    } else {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

struct Sizes {
    seq: usize,
    conc: usize,
    range_keys: usize,
    watch_puts: usize,
    updates: usize,
}

/// One system's figures, in table order.
type Row = Vec<(String, f64, bool)>; // (label, value, higher is better)

async fn run(kv: Arc<dyn Kv>, dir: &Path, z: &Sizes) -> Result<Row, BoxErr> {
    let mut row = Row::new();
    let value = vec![b'v'; 256];
    // (a) sequential puts.
    let mut lat = Vec::with_capacity(z.seq);
    let t = Instant::now();
    for i in 0..z.seq {
        let s = Instant::now();
        kv.put(format!("/a/{i:08}"), value.clone()).await?;
        lat.push(s.elapsed());
    }
    let secs = t.elapsed().as_secs_f64();
    lat.sort();
    row.push(("(a) 1 client puts/s".into(), z.seq as f64 / secs, true));
    row.push(("(a) p50 ms".into(), percentile(&lat, 0.5).as_secs_f64() * 1e3, false));
    row.push(("(a) p99 ms".into(), percentile(&lat, 0.99).as_secs_f64() * 1e3, false));
    // (b) 64 concurrent clients.
    let clients = 64;
    let per = z.conc / clients;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (kv, value) = (kv.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let s = Instant::now();
                kv.put(format!("/b/{c:02}/{i:06}"), value.clone()).await?;
                lat.push(s.elapsed());
            }
            Ok::<_, BoxErr>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = t.elapsed().as_secs_f64();
    lat.sort();
    row.push(("(b) 64 clients puts/s".into(), (per * clients) as f64 / secs, true));
    row.push(("(b) p99 ms".into(), percentile(&lat, 0.99).as_secs_f64() * 1e3, false));
    // (c) range over 10,000 keys.
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (kv, value) = (kv.clone(), value.clone());
        let n = z.range_keys;
        tasks.push(tokio::spawn(async move {
            for i in (c..n).step_by(clients) {
                kv.put(format!("/c/{i:08}"), value.clone()).await?;
            }
            Ok::<_, BoxErr>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut times = Vec::new();
    for _ in 0..5 {
        let s = Instant::now();
        let n = kv.range_count("/c/").await?;
        times.push(s.elapsed());
        if n != z.range_keys {
            return Err(format!("range returned {n} keys, expected {}", z.range_keys).into());
        }
    }
    times.sort();
    row.push((
        format!("(c) range {} keys ms (median)", z.range_keys),
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        false,
    ));
    // (d) put-to-event latency with 100 watchers.
    let watchers = 100;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..watchers {
        kv.watch("/d/", tx.clone()).await?;
    }
    drop(tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut lat = Vec::new();
    for i in 0..z.watch_puts {
        let key = format!("/d/{i:06}");
        let s = Instant::now();
        kv.put(key.clone(), value.clone()).await?;
        let mut got = 0;
        while got < watchers {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some((k, at))) if k == key => {
                    got += 1;
                    lat.push(at.saturating_duration_since(s));
                }
                Ok(Some(_)) => {}
                _ => return Err(format!("watchers missed {key}").into()),
            }
        }
    }
    lat.sort();
    row.push(("(d) put→event p50 ms (100 watchers)".into(), percentile(&lat, 0.5).as_secs_f64() * 1e3, false));
    row.push(("(d) put→event p99 ms".into(), percentile(&lat, 0.99).as_secs_f64() * 1e3, false));
    // (e) write amplification over N updates of 1,000 keys, then compaction.
    let before = proc_field(kv.pid(), "io", "write_bytes:");
    let keys = 1000;
    let mut logical = 0u64;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (kv, value) = (kv.clone(), value.clone());
        let n = z.updates;
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            for i in (c..n).step_by(clients) {
                let key = format!("/e/{:06}", i % keys);
                bytes += (key.len() + value.len()) as u64;
                kv.put(key, value.clone()).await?;
            }
            Ok::<_, BoxErr>(bytes)
        }));
    }
    for t in tasks {
        logical += t.await??;
    }
    let written = proc_field(kv.pid(), "io", "write_bytes:").saturating_sub(before);
    row.push((
        format!("(e) disk bytes/logical byte ({}k updates)", z.updates / 1000),
        written as f64 / logical as f64,
        false,
    ));
    kv.compact_all().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let live = ((z.seq + z.conc + z.range_keys + z.watch_puts + keys) * (256 + 16)) as f64;
    let size = dir_size(dir) as f64;
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut parts: Vec<String> = rd
            .flatten()
            .map(|e| format!("{} {:.1} MB", e.file_name().to_string_lossy(), dir_size_or_file(&e.path()) as f64 / 1e6))
            .collect();
        parts.sort();
        eprintln!("data dir after compaction: {}", parts.join(", "));
    }
    row.push(("(e) data dir MB after compaction".into(), size / 1e6, false));
    row.push(("(e) data dir / live data".into(), size / live, false));
    row.push(("RSS MB".into(), proc_field(kv.pid(), "status", "VmRSS:") as f64 / 1024.0, false));
    // The memory target: 100,000 keys of 1 KiB.
    let big = vec![b'm'; 1024];
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (kv, big) = (kv.clone(), big.clone());
        tasks.push(tokio::spawn(async move {
            for i in (c..100_000).step_by(clients) {
                kv.put(format!("/m/{i:08}"), big.clone()).await?;
            }
            Ok::<_, BoxErr>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // At rest: after the load, as a server holding the data would be.
    tokio::time::sleep(Duration::from_secs(12)).await;
    row.push(("RSS MB with 100k × 1 KiB keys".into(), proc_field(kv.pid(), "status", "VmRSS:") as f64 / 1024.0, false));
    Ok(row)
}

/// Leader failover in a three-server group (in-process servers on an in-process transport, each
/// with its own data dir and fsync): the time from stopping the leader to the first write
/// acknowledged by the survivors, `rounds` times (the stopped server rejoins between rounds).
async fn failover(dir: &Path, rounds: usize) -> Result<Vec<Duration>, BoxErr> {
    use skiff::store::raft::InProcessTransport;
    let transport = InProcessTransport::default();
    let config = |id: u64| {
        let mut cfg = RaftStoreConfig::new(dir.join(format!("node-{id}")));
        cfg.node_id = id;
        cfg.advertise_addr = format!("node-{id}");
        cfg.transport = Arc::new(transport.clone());
        cfg.bootstrap = id == 1;
        cfg
    };
    let mut stores = Vec::new();
    for id in 1..=3 {
        let s = skiff::store::raft::open(config(id)).await?;
        transport.register(id, s.raft_router());
        stores.push(s);
    }
    stores[0].add_voter(2, "node-2".into()).await?;
    stores[0].add_voter(3, "node-3".into()).await?;
    let mut took = Vec::new();
    for round in 0..rounds {
        let leader = stores.iter().find_map(|s| s.leader()).ok_or("no leader")?;
        let pos = stores.iter().position(|s| s.node_id() == leader).ok_or("leader not found")?;
        let victim = stores.remove(pos);
        transport.unregister(leader);
        let killed = Instant::now();
        victim.shutdown().await?;
        drop(victim);
        let survivor = stores[0].clone();
        let mut n = 0;
        loop {
            n += 1;
            let put = Txn {
                success: vec![Op::Put {
                    key: format!("/f/{round}/{n}").into_bytes(),
                    value: vec![b'f'].into(),
                    ttl_seconds: None,
                }],
                ..Default::default()
            };
            if survivor.txn(put).await.is_ok() {
                break;
            }
            if killed.elapsed() > Duration::from_secs(30) {
                return Err("no write succeeded within 30 s of the leader stopping".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took.push(killed.elapsed());
        let mut cfg = config(leader);
        cfg.bootstrap = false;
        let back = skiff::store::raft::open(cfg).await?;
        transport.register(leader, back.raft_router());
        stores.push(back);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for s in stores {
        s.shutdown().await?;
    }
    Ok(took)
}

fn free_port() -> Result<u16, BoxErr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// etcd child, killed by PID on drop.
struct Etcd(std::process::Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_etcd(dir: &Path) -> Result<(Etcd, etcd_client::Client), BoxErr> {
    let (cp, pp) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{cp}");
    let peer_url = format!("http://127.0.0.1:{pp}");
    let child = std::process::Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir)
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}"), "--log-level", "error"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting etcd (install Debian etcd-server): {e}"))?;
    let etcd = Etcd(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = etcd_client::Client::connect([client_url.as_str()], None).await {
            if c.status().await.is_ok() {
                return Ok((etcd, c));
            }
        }
        if Instant::now() > deadline {
            return Err("etcd did not answer within 20s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxErr> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let z = if quick {
        Sizes { seq: 300, conc: 3200, range_keys: 10_000, watch_puts: 50, updates: 10_000 }
    } else {
        Sizes { seq: 2000, conc: 32_000, range_keys: 10_000, watch_puts: 200, updates: 100_000 }
    };
    let tmp = tempfile::tempdir()?;
    // etcd first, so skiff's in-process I/O counters start after etcd's run.
    let edir = tmp.path().join("etcd");
    let (etcd, client) = start_etcd(&edir).await?;
    let ekv: Arc<dyn Kv> = Arc::new(EtcdKv { client, pid: etcd.0.id() });
    eprintln!("running the workloads on etcd…");
    let erow = run(ekv, &edir, &z).await?;
    drop(etcd);
    let sdir = tmp.path().join("skiff");
    let mut cfg = RaftStoreConfig::new(sdir.clone());
    cfg.compaction_interval = Duration::from_secs(3600);
    let store = skiff::store::raft::open(cfg).await?;
    eprintln!("running the workloads on skiff…");
    let srow = run(Arc::new(SkiffKv(store.clone())), &sdir, &z).await?;
    store.shutdown().await?;
    let name = "skiff";
    println!("{:<44} {:>12} {:>12} {:>10}", "workload", name, "etcd 3.4", "skiff/etcd");
    for ((label, s, higher), (_, e, _)) in srow.iter().zip(&erow) {
        let ratio = if *e > 0.0 { s / e } else { f64::NAN };
        let better = if *higher { ratio >= 1.0 } else { ratio <= 1.0 };
        println!("{label:<44} {s:>12.2} {e:>12.2} {ratio:>9.2}{}", if better { " " } else { "*" });
    }
    println!(
        "(* = skiff misses the issue's target on this row; sizes: {} seq, {} concurrent, {} updates)",
        z.seq, z.conc, z.updates
    );
    eprintln!("measuring leader failover in a three-server group…");
    let took = failover(&tmp.path().join("failover"), if quick { 3 } else { 5 }).await?;
    let worst = took.iter().max().copied().unwrap_or_default();
    let all: Vec<String> = took.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect();
    println!(
        "leader stopped -> next write acknowledged, s: {} (worst {:.2}; target < 3 s){}",
        all.join(" "),
        worst.as_secs_f64(),
        if worst < Duration::from_secs(3) { "" } else { " *" }
    );
    Ok(())
}
