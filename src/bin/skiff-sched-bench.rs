//! skiff-sched-bench: issue #5's scheduler and controller benchmark. Starts `skiff server` with
//! no agent (a child process, so its memory is measured alone), registers fake nodes (capacity, Ready, a zone label), creates
//! pods with mixed requests (every tenth with required anti-affinity to its group's other
//! pods), and measures how fast the scheduler binds them; then scales a Deployment from 0 to 100
//! and measures how long the controllers take to create the pods. Prints one table.
//!
//! Run: `cargo run --release --features bench --bin skiff-sched-bench -- [--nodes 1000]
//! [--pods 10000] [--skiff PATH]` (the server binary defaults to `skiff` next to this one).
//! Targets (issue #5): ≥ 1,000 pods/s, server RSS < 300 MB, scale to 100 in < 2 s.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use skiff::bench_support::{default_skiff, start_server, Server};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Times = Arc<Mutex<HashMap<String, Instant>>>;

struct Args {
    nodes: usize,
    pods: usize,
    skiff: std::path::PathBuf,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args { nodes: 1000, pods: 10_000, skiff: default_skiff().map_err(|e| anyhow::anyhow!("{e}"))? };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<usize> {
            let v = it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a number"))?;
            v.parse().map_err(|_| anyhow::anyhow!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--nodes" => a.nodes = value()?,
            "--pods" => a.pods = value()?,
            "--skiff" => a.skiff = it.next().ok_or_else(|| anyhow::anyhow!("--skiff needs a path"))?.into(),
            "-h" | "--help" => {
                println!("usage: skiff-sched-bench [--nodes N] [--pods N] [--skiff PATH]");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown flag {other} (try --help)"),
        }
    }
    Ok(a)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn start(skiff: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<(Server, kube::Client)> {
    // Node lifecycle would mark the fake nodes (which renew no Lease) unreachable mid-run.
    start_server(skiff, dir, &["--disable", "nodelifecycle"]).await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// This bench process's own resident set, MiB (its clients and records).
fn own_rss_mib() -> f64 {
    skiff::bench_support::rss_mib(std::process::id())
}

async fn create_node(client: kube::Client, i: usize) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client);
    let name = format!("fake-{i:05}");
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("zone-{}", i % 10)}},
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    let status = json!({"status": {
        "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
        "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake node"}],
    }});
    nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

fn bench_pod(i: usize) -> anyhow::Result<Pod> {
    let cpu = ["100m", "250m", "500m"][i % 3];
    let mem = ["128Mi", "256Mi", "512Mi"][(i / 3) % 3];
    let anti = i % 10 == 0;
    let app = if anti { format!("spread-{}", i % 20) } else { format!("group-{}", i % 50) };
    let mut spec = json!({"containers": [{"name": "c", "image": "registry.local/app:1",
        "resources": {"requests": {"cpu": cpu, "memory": mem}}}]});
    if anti {
        spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "kubernetes.io/hostname"}]}});
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("bench-{i:06}"), "labels": {"app": app, "bench": "sched"}},
        "spec": spec,
    }))?)
}

/// Records when each watched pod is first seen bound (and, for `created`, first seen at all).
fn watch_pods(
    client: kube::Client,
    selector: &str,
    bound: Times,
    created: Option<Times>,
) -> tokio::task::JoinHandle<()> {
    let api: Api<Pod> = Api::namespaced(client, "default");
    let cfg = watcher::Config::default().labels(selector);
    tokio::spawn(async move {
        let mut s = watcher(api, cfg).boxed();
        while let Ok(Some(ev)) = s.try_next().await {
            let now = Instant::now();
            let pods = match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
                _ => continue,
            };
            for p in pods {
                let name = p.metadata.name.clone().unwrap_or_default();
                if let Some(c) = &created {
                    c.lock().unwrap_or_else(|e| e.into_inner()).entry(name.clone()).or_insert(now);
                }
                if p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty()) {
                    bound.lock().unwrap_or_else(|e| e.into_inner()).entry(name).or_insert(now);
                }
            }
        }
    })
}

async fn wait_for(what: &str, times: &Times, n: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let have = times.lock().unwrap_or_else(|e| e.into_inner()).len();
        if have >= n {
            return true;
        }
        if Instant::now() > deadline {
            eprintln!("gave up waiting for {what}: {have}/{n}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args()?;
    let dir = tempfile::tempdir()?;
    let (server, client) = start(&a.skiff, dir.path()).await?;
    let mut rows: Vec<(String, String)> = vec![];

    eprintln!("registering {} fake nodes…", a.nodes);
    let t = Instant::now();
    let results: Vec<anyhow::Result<()>> =
        futures::stream::iter(0..a.nodes).map(|i| create_node(client.clone(), i)).buffer_unordered(32).collect().await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    rows.push(("nodes registered".into(), format!("{} in {:.1} s", a.nodes, t.elapsed().as_secs_f64())));
    // Let the scheduler's node watch catch up before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;

    eprintln!("creating {} pods…", a.pods);
    let bound: Times = Default::default();
    let watch = watch_pods(client.clone(), "bench=sched", bound.clone(), None);
    let created_at: Times = Default::default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..a.pods)
        .map(|i| {
            let (pods, created_at) = (pods.clone(), created_at.clone());
            async move {
                let pod = bench_pod(i)?;
                let name = pod.metadata.name.clone().unwrap_or_default();
                let before = Instant::now();
                pods.create(&PostParams::default(), &pod).await?;
                created_at.lock().unwrap_or_else(|e| e.into_inner()).insert(name, before);
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let created_in = start.elapsed();
    let all_bound = wait_for("pods to be bound", &bound, a.pods, Duration::from_secs(600)).await;
    let bound_map = bound.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let created_map = created_at.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let last = bound_map.values().max().copied().unwrap_or(start);
    let mut lat: Vec<Duration> =
        bound_map.iter().filter_map(|(k, b)| created_map.get(k).map(|c| b.saturating_duration_since(*c))).collect();
    lat.sort();
    let secs = last.saturating_duration_since(start).as_secs_f64().max(1e-9);
    watch.abort();
    rows.push((
        "pods created (64 concurrent clients)".into(),
        format!("{} in {:.1} s", a.pods, created_in.as_secs_f64()),
    ));
    rows.push((
        "pods bound".into(),
        format!("{}/{}{}", bound_map.len(), a.pods, if all_bound { "" } else { " (gave up)" }),
    ));
    rows.push((
        "pods bound per second (first create → last bind)".into(),
        format!("{:.0}", bound_map.len() as f64 / secs),
    ));
    rows.push(("creation → binding p50".into(), format!("{:.1} ms", percentile(&lat, 0.50).as_secs_f64() * 1e3)));
    rows.push(("creation → binding p99".into(), format!("{:.1} ms", percentile(&lat, 0.99).as_secs_f64() * 1e3)));
    rows.push(("server RSS after scheduling".into(), format!("{:.0} MiB", server.rss_mib())));
    rows.push(("bench process RSS (clients, records)".into(), format!("{:.0} MiB", own_rss_mib())));

    eprintln!("scaling a Deployment to 100…");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "scale-bench"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"bench": "scale"}},
            "template": {"metadata": {"labels": {"bench": "scale"}},
                "spec": {"containers": [{"name": "c", "image": "registry.local/app:1",
                    "resources": {"requests": {"cpu": "10m"}}}]}}},
    }))?;
    deployments.create(&PostParams::default(), &d).await?;
    // The ReplicaSet for replicas 0 exists before the clock starts, as after a rollout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seen, scale_bound): (Times, Times) = Default::default();
    let watch = watch_pods(client.clone(), "bench=scale", scale_bound.clone(), Some(seen.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    deployments
        .patch_scale("scale-bench", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"replicas": 100}})))
        .await?;
    let created = wait_for("100 pods", &seen, 100, Duration::from_secs(120)).await;
    let created_in =
        seen.lock().unwrap_or_else(|e| e.into_inner()).values().max().map(|m| m.saturating_duration_since(t));
    let all = wait_for("100 pods bound", &scale_bound, 100, Duration::from_secs(120)).await;
    let bound_in =
        scale_bound.lock().unwrap_or_else(|e| e.into_inner()).values().max().map(|m| m.saturating_duration_since(t));
    watch.abort();
    let show = |ok: bool, d: Option<Duration>| match (ok, d) {
        (true, Some(d)) => format!("{:.2} s", d.as_secs_f64()),
        _ => "did not finish".into(),
    };
    rows.push(("scale deployment 0 → 100: all pods created".into(), show(created, created_in)));
    rows.push(("scale deployment 0 → 100: all pods bound".into(), show(all, bound_in)));
    rows.push(("server RSS at the end".into(), format!("{:.0} MiB", server.rss_mib())));

    println!("\nskiff scheduler benchmark: {} nodes, {} pods (10% with required anti-affinity)\n", a.nodes, a.pods);
    println!("| {:<52} | {:>18} |", "measure", "value");
    println!("|{}|{}|", "-".repeat(54), "-".repeat(20));
    for (k, v) in rows {
        println!("| {k:<52} | {v:>18} |");
    }
    drop(server);
    Ok(())
}
