//! skiff-api-bench: issue #4's API benchmark. Starts `skiff server --disable-agent` (a single
//! durable server, as a child process so its memory is measured alone), drives it over HTTPS
//! with N concurrent kube-rs clients and prints one table: ops/s and p50/p99 latency for
//! create, get, list and watch of 1 KiB ConfigMaps, the server's RSS idle and with 10,000
//! objects stored, and the embedded store's raw put throughput measured in the same run (API
//! create throughput should stay above half of it).
//!
//! Run: `cargo run --release --features bench --bin skiff-api-bench -- [--quick]
//! [--clients N] [--skiff PATH] [--creates-only N]`; `--creates-only` runs only the create workload
//! (to profile the write path). The server binary defaults to `skiff` next to this one.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use skiff::bench_support::{default_skiff, start_server};
use skiff::store::{Op, Store, Txn};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

struct Opts {
    quick: bool,
    /// Only the create workload, `n` objects (for profiling the write path).
    creates_only: Option<usize>,
    clients: usize,
    skiff: PathBuf,
}

fn opts() -> Result<Opts, BoxErr> {
    let mut o = Opts { quick: false, creates_only: None, clients: 16, skiff: default_skiff()? };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--creates-only" => o.creates_only = Some(args.next().ok_or("--creates-only N")?.parse()?),
            "--clients" => o.clients = args.next().ok_or("--clients N")?.parse()?,
            "--skiff" => o.skiff = args.next().ok_or("--skiff PATH")?.into(),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(o)
}

fn configmap(name: &str) -> ConfigMap {
    let mut data = BTreeMap::new();
    data.insert("payload".to_string(), "x".repeat(1024));
    ConfigMap {
        metadata: kube::api::ObjectMeta { name: Some(name.to_string()), ..Default::default() },
        data: Some(data),
        ..Default::default()
    }
}

/// Latencies of one workload, in seconds, and its wall time.
struct Sample {
    lat: Vec<f64>,
    wall: f64,
}

impl Sample {
    fn ops(&self) -> f64 {
        self.lat.len() as f64 / self.wall
    }
    fn pct(&mut self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        self.lat.sort_by(|a, b| a.total_cmp(b));
        let i = ((self.lat.len() as f64 * p).ceil() as usize).clamp(1, self.lat.len()) - 1;
        self.lat[i] * 1000.0
    }
}

/// `clients` tasks each run `per_client` calls of `f(client index, call index)`.
async fn concurrent<F, Fut>(clients: usize, per_client: usize, f: F) -> Result<Sample, BoxErr>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), BoxErr>> + Send,
{
    let f = Arc::new(f);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                f(c, i).await?;
                lat.push(t.elapsed().as_secs_f64());
            }
            Ok::<_, BoxErr>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok(Sample { lat, wall: start.elapsed().as_secs_f64() })
}

/// The embedded store's raw put throughput: `clients` concurrent writers of 1 KiB values on a
/// fresh durable Raft store, in this process.
async fn store_puts(dir: &Path, clients: usize, per_client: usize) -> Result<Sample, BoxErr> {
    let store = skiff::store::raft::open(skiff::store::raft::RaftStoreConfig::new(dir.to_path_buf())).await?;
    let s = store.clone();
    let sample = concurrent(clients, per_client, move |c, i| {
        let s = s.clone();
        async move {
            let op = Op::Put {
                key: format!("/bench/{c}/{i}").into_bytes(),
                value: vec![b'x'; 1024].into(),
                ttl_seconds: None,
            };
            s.txn(Txn { success: vec![op], ..Default::default() }).await?;
            Ok(())
        }
    })
    .await?;
    store.shutdown().await?;
    Ok(sample)
}

/// Opens `n` watches on the namespace's ConfigMaps, then writes `writes` ConfigMaps one at a
/// time; for each write, the time from just before the write to its event reaching the last
/// watcher.
async fn watch_fanout(client: &kube::Client, ns: &str, n: usize, writes: usize) -> Result<Sample, BoxErr> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let rv = api.list_metadata(&ListParams::default().limit(1)).await?.metadata.resource_version.unwrap_or_default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let api = api.clone();
        let tx = tx.clone();
        let rv = rv.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(stream) = api.watch(&WatchParams::default().timeout(290), &rv).await else { return };
            let mut stream = stream.boxed();
            while let Ok(Some(ev)) = stream.try_next().await {
                if let WatchEvent::Added(cm) = ev {
                    if tx.send((cm.metadata.name.unwrap_or_default(), Instant::now())).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    // Give the watches time to be established.
    tokio::time::sleep(Duration::from_secs(if n > 100 { 5 } else { 1 })).await;
    let start = Instant::now();
    let mut lat = Vec::new();
    for w in 0..writes {
        let name = format!("watched-{w}");
        let t = Instant::now();
        api.create(&PostParams::default(), &configmap(&name)).await?;
        let mut seen = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((got, at))) if got == name => {
                    seen += 1;
                    if seen == n {
                        lat.push(at.duration_since(t).as_secs_f64());
                    }
                }
                Ok(Some(_)) => {}
                _ => return Err(format!("only {seen}/{n} watchers saw {name} within 10 s").into()),
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    Ok(Sample { lat, wall })
}

#[tokio::main]
async fn main() -> Result<(), BoxErr> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let o = opts()?;
    // 100 lists, so the list's p99 is a percentile and not the one slowest of 20.
    let (mut per_client_create, get_calls, lists, watchers, watch_writes) =
        if o.quick { (50, 200, 5, 100, 20) } else { (5000 / o.clients, 2000, 100, 1000, 100) };
    if let Some(n) = o.creates_only {
        per_client_create = n.div_ceil(o.clients.max(1));
    }
    let tmp = tempfile::tempdir()?;

    let mut raw = if o.creates_only.is_some() {
        Sample { lat: vec![], wall: 1.0 }
    } else {
        eprintln!("raw store puts…");
        store_puts(&tmp.path().join("store"), o.clients, per_client_create).await?
    };

    eprintln!("starting {}…", o.skiff.display());
    let (server, client) = start_server(&o.skiff, tmp.path(), &[]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = server.rss_mib();

    let ns = "default";
    eprintln!("create with {} clients…", o.clients);
    let cpu_before = (server.cpu_seconds(), skiff::bench_support::cpu_seconds(std::process::id()));
    let c = client.clone();
    let mut create = concurrent(o.clients, per_client_create, move |ci, i| {
        let api: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
        async move {
            api.create(&PostParams::default(), &configmap(&format!("cm-{ci}-{i}"))).await?;
            Ok(())
        }
    })
    .await?;
    let created = create.lat.len();
    // Where the create phase's CPU went: the server, and this process (the clients).
    let create_cpu = (
        (server.cpu_seconds() - cpu_before.0) / created.max(1) as f64 * 1e6,
        (skiff::bench_support::cpu_seconds(std::process::id()) - cpu_before.1) / created.max(1) as f64 * 1e6,
    );
    if o.creates_only.is_some() {
        println!(
            "API create ConfigMap 1 KiB, {} clients: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            o.clients,
            create.ops(),
            create.pct(0.5),
            create.pct(0.99)
        );
        println!("CPU per create: server {:.0} µs, bench clients {:.0} µs", create_cpu.0, create_cpu.1);
        return Ok(());
    }

    eprintln!("get with {} clients…", o.clients);
    let c = client.clone();
    let per = per_client_create;
    let mut get = concurrent(o.clients, get_calls / o.clients.max(1), move |ci, i| {
        let api: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
        async move {
            api.get(&format!("cm-{ci}-{}", i % per.max(1))).await?;
            Ok(())
        }
    })
    .await?;

    eprintln!("list of {created} objects…");
    let c = client.clone();
    let mut list = concurrent(1, lists, move |_, _| {
        let api: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
        async move {
            let l = api.list(&ListParams::default()).await?;
            if l.items.len() < created {
                return Err(format!("the list returned {} of {created} objects", l.items.len()).into());
            }
            Ok(())
        }
    })
    .await?;

    eprintln!("one write to {watchers} watchers…");
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let wns = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta { name: Some("watched".into()), ..Default::default() },
        ..Default::default()
    };
    api.create(&PostParams::default(), &wns).await?;
    let mut watch = watch_fanout(&client, "watched", watchers, watch_writes).await?;

    // Fill up to 10,000 stored objects for the memory figure.
    let more = 10_000usize.saturating_sub(created + watch_writes);
    if !o.quick && more > 0 {
        eprintln!("storing {more} more objects…");
        let c = client.clone();
        concurrent(o.clients, more.div_ceil(o.clients), move |ci, i| {
            let api: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
            async move {
                api.create(&PostParams::default(), &configmap(&format!("fill-{ci}-{i}"))).await?;
                Ok(())
            }
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let full_rss = server.rss_mib();

    println!("{:<48} {:>10} {:>10} {:>10}  target", "workload", "ops/s", "p50 ms", "p99 ms");
    let row = |label: &str, s: &mut Sample, target: &str| {
        let (ops, p50, p99) = (s.ops(), s.pct(0.5), s.pct(0.99));
        println!("{label:<48} {ops:>10.0} {p50:>10.2} {p99:>10.2}  {target}");
    };
    row(&format!("store raw put, 1 KiB, {} writers", o.clients), &mut raw, "");
    row(&format!("API create ConfigMap 1 KiB, {} clients", o.clients), &mut create, ">= 1000/s");
    row(&format!("API get, {} clients", o.clients), &mut get, ">= 10000/s");
    row(&format!("API list of {created} ConfigMaps"), &mut list, "< 100 ms");
    row(&format!("a write reaching {watchers} watchers"), &mut watch, "p99 < 100 ms");
    let ratio = create.ops() / raw.ops();
    println!("API create / store put throughput: {ratio:.2} (target > 0.5)");
    println!(
        "CPU per API create: server {:.0} µs, bench clients {:.0} µs (2 cores: {:.0} µs of CPU per op at the measured rate)",
        create_cpu.0,
        create_cpu.1,
        2e6 / create.ops()
    );
    println!("server RSS idle: {idle_rss:.1} MiB (target < 50)");
    if o.quick {
        println!(
            "server RSS with {} objects: {full_rss:.1} MiB (--quick: the 10,000-object figure needs a full run)",
            created + watch_writes
        );
    } else {
        println!("server RSS with 10,000 objects: {full_rss:.1} MiB (target < 200)");
    }
    drop(server);
    Ok(())
}
