//! The scheduler and controllers end to end against an in-process `skiff server` with no agent:
//! fake Node objects stand in for kubelets, and the test plays the kubelet's part by marking
//! bound pods Running and Ready.

use clap::Parser;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use skiff::cli::{Cli, Command};
use skiff::config::{resolve_server, HostFacts};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

struct Server {
    client: kube::Client,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn server() -> Server {
    server_with(&[]).await
}

/// A server started with extra command-line flags (e.g. `--disable nodelifecycle`).
async fn server_with(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    let mut argv = vec![
        "skiff",
        "server",
        "--data-dir",
        &d,
        "--disable-agent",
        "--write-kubeconfig",
        &format!("{d}/kubeconfig.yaml"),
        "--node-ip",
        "127.0.0.1",
        "--node-name",
        "test-server",
        "--bind-address",
        "127.0.0.1",
    ]
    .into_iter()
    .map(|s| s.to_string())
    .collect::<Vec<String>>();
    argv.extend(extra.iter().map(|s| s.to_string()));
    let cli = Cli::parse_from(argv);
    let Command::Server(args) = cli.command else { panic!("server args") };
    let host = HostFacts { hostname: "test-server".into(), first_ip: Some("127.0.0.1".parse().expect("ip")) };
    let cfg = resolve_server(&args, &host).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    let running = skiff::server::start(cfg, listener, shutdown.clone()).await.expect("server starts");
    let kc = skiff::server::kube_config(&running.admin_kubeconfig).await.expect("kubeconfig");
    let client = kube::Client::try_from(kc).expect("client");
    Server { client, shutdown, _dir: dir }
}

/// Polls `f` until it returns `Some`, failing the test after `secs`.
async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fake_node(client: &kube::Client, name: &str, cpu: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
    }))
    .expect("node");
    nodes.create(&PostParams::default(), &node).await.expect("create node");
    let status = json!({"status": {
        "capacity": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
        "allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake"}],
    }});
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("node status");
}

/// The kubelet's part: every bound pod becomes Running and Ready.
async fn run_bound_pods(pods: &Api<Pod>) {
    kubelet(pods, true).await
}

/// Like [`run_bound_pods`], optionally leaving terminating pods terminating.
async fn kubelet(pods: &Api<Pod>, finish_deletions: bool) {
    let Ok(list) = pods.list(&ListParams::default()).await else { return };
    for p in list.items {
        let bound = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
        let ready = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if bound && !ready && p.metadata.deletion_timestamp.is_none() {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = json!({"status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            }});
            let name = p.metadata.name.clone().unwrap_or_default();
            let _ = pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await;
        }
        // Graceful deletion needs a kubelet to finish it: do that too.
        if finish_deletions && p.metadata.deletion_timestamp.is_some() {
            let name = p.metadata.name.clone().unwrap_or_default();
            let _ = pods.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
        }
    }
}

fn deployment(name: &str, replicas: i32, image: &str, cpu: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image,
                    "resources": {"requests": {"cpu": cpu}}}]},
            },
        },
    }))
    .expect("deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_out_scheduled_pods_and_rolls_forward_on_a_template_change() {
    let s = server().await;
    fake_node(&s.client, "node-a", "2").await;
    fake_node(&s.client, "node-b", "2").await;
    let deploys: Api<Deployment> = Api::namespaced(s.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(s.client.clone(), "default");
    deploys.create(&PostParams::default(), &deployment("web", 3, "busybox:1", "100m")).await.expect("create");

    let complete = |image: &'static str| {
        let (deploys, pods) = (deploys.clone(), pods.clone());
        async move {
            run_bound_pods(&pods).await;
            let d = deploys.get("web").await.ok()?;
            let st = d.status.clone()?;
            let cur_image = d.spec.as_ref()?.template.spec.as_ref()?.containers[0].image.clone()?;
            let progressing = st.conditions.iter().flatten().find(|c| c.type_ == "Progressing")?;
            (cur_image == image
                && st.observed_generation >= d.metadata.generation
                && st.updated_replicas == Some(3)
                && st.replicas == Some(3)
                && st.available_replicas == Some(3)
                && progressing.reason.as_deref() == Some("NewReplicaSetAvailable"))
            .then_some(d)
        }
    };
    let d = eventually("the first rollout to complete", 30, || complete("busybox:1")).await;
    assert_eq!(
        d.metadata.annotations.as_ref().and_then(|a| a.get("deployment.kubernetes.io/revision")).map(String::as_str),
        Some("1")
    );
    let list = pods.list(&ListParams::default().labels("app=web")).await.expect("pods");
    assert_eq!(list.items.len(), 3);
    for p in &list.items {
        assert!(p.metadata.name.as_deref().is_some_and(|n| n.starts_with("web-")));
        assert!(p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| n.starts_with("node-")));
        assert!(p.metadata.labels.as_ref().is_some_and(|l| l.contains_key("pod-template-hash")));
    }

    // A settled deployment is not rewritten over and over (no status churn between syncs).
    let rv = |d: &Deployment| d.metadata.resource_version.clone();
    let before_d = deploys.get("web").await.expect("get");
    let before_rs = sets.list(&ListParams::default()).await.expect("rs");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rv(&deploys.get("web").await.expect("get")), rv(&before_d), "deployment rewritten while settled");
    let after_rs = sets.list(&ListParams::default()).await.expect("rs");
    let rvs = |l: &kube::core::ObjectList<ReplicaSet>| {
        l.items.iter().map(|r| r.metadata.resource_version.clone()).collect::<Vec<_>>()
    };
    assert_eq!(rvs(&after_rs), rvs(&before_rs), "replica sets rewritten while settled");

    // A template change rolls forward to a second ReplicaSet.
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2",
        "resources": {"requests": {"cpu": "100m"}}}]}}}});
    deploys.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch image");
    let d = eventually("the second rollout to complete", 60, || complete("busybox:2")).await;
    assert_eq!(
        d.metadata.annotations.as_ref().and_then(|a| a.get("deployment.kubernetes.io/revision")).map(String::as_str),
        Some("2")
    );
    let rs = sets.list(&ListParams::default()).await.expect("replica sets");
    assert_eq!(rs.items.len(), 2, "one ReplicaSet per revision");
    let old_scaled_down = rs.items.iter().filter(|r| r.spec.as_ref().and_then(|s| s.replicas) == Some(0)).count();
    assert_eq!(old_scaled_down, 1);

    // Events kubectl describe shows.
    let events: Api<Event> = Api::namespaced(s.client.clone(), "default");
    let reasons = eventually("events", 10, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
            (reasons.iter().any(|r| r == "ScalingReplicaSet")
                && reasons.iter().any(|r| r == "SuccessfulCreate")
                && reasons.iter().any(|r| r == "Scheduled"))
            .then_some(reasons)
        }
    })
    .await;
    assert!(reasons.iter().any(|r| r == "SuccessfulDelete"), "{reasons:?}");

    // Deleting the Deployment takes its ReplicaSets and pods with it (garbage collection).
    deploys.delete("web", &DeleteParams::default()).await.expect("delete");
    eventually("the garbage collector to remove ReplicaSets and pods", 60, || {
        let (sets, pods) = (sets.clone(), pods.clone());
        async move {
            run_bound_pods(&pods).await;
            let rs = sets.list(&ListParams::default()).await.ok()?;
            let ps = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
            (rs.items.is_empty() && ps.items.is_empty()).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_fits_nowhere_is_marked_unschedulable_with_the_upstream_message() {
    let s = server().await;
    fake_node(&s.client, "small-a", "1").await;
    fake_node(&s.client, "small-b", "1").await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "huge"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "8"}}}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("create pod");
    let cond = eventually("the PodScheduled=False condition", 20, || {
        let pods = pods.clone();
        async move {
            let p = pods.get("huge").await.ok()?;
            // The scheduler may judge the pod before its cache has both nodes; it retries on
            // node changes, so wait for the verdict over both.
            p.status?.conditions?.into_iter().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.message.as_deref().is_some_and(|m| m.starts_with("0/2 "))
            })
        }
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        cond.message.as_deref(),
        Some("0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod..")
    );
    let events: Api<Event> = Api::namespaced(s.client.clone(), "default");
    let ev = eventually("a FailedScheduling event", 10, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| e.reason.as_deref() == Some("FailedScheduling"))
        }
    })
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(ev.source.and_then(|s| s.component).as_deref(), Some("default-scheduler"));

    // A bigger node arrives: the pod is retried and bound there.
    fake_node(&s.client, "big", "16").await;
    let node = eventually("the pod to be bound to the new node", 30, || {
        let pods = pods.clone();
        async move { pods.get("huge").await.ok()?.spec?.node_name }
    })
    .await;
    assert_eq!(node, "big");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_gets_its_own_pod_cidr() {
    let s = server().await;
    for n in ["n1", "n2", "n3"] {
        fake_node(&s.client, n, "1").await;
    }
    let nodes: Api<Node> = Api::all(s.client.clone());
    let cidrs = eventually("pod CIDRs on every node", 20, || {
        let nodes = nodes.clone();
        async move {
            let list = nodes.list(&ListParams::default()).await.ok()?;
            let cidrs: Vec<String> = list.items.iter().filter_map(|n| n.spec.as_ref()?.pod_cidr.clone()).collect();
            (cidrs.len() == list.items.len() && !cidrs.is_empty()).then_some(cidrs)
        }
    })
    .await;
    let mut unique = cidrs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), cidrs.len(), "{cidrs:?}");
    assert!(cidrs.iter().all(|c| c.starts_with("10.42.") && c.ends_with(".0/24")), "{cidrs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreground_and_orphan_deletion_are_finished_by_the_garbage_collector() {
    let s = server().await;
    fake_node(&s.client, "node-a", "4").await;
    let deploys: Api<Deployment> = Api::namespaced(s.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(s.client.clone(), "default");
    for name in ["fg", "orph"] {
        deploys.create(&PostParams::default(), &deployment(name, 2, "busybox:1", "10m")).await.expect("create");
    }
    eventually("both deployments' pods to run", 30, || {
        let pods = pods.clone();
        async move {
            run_bound_pods(&pods).await;
            let list = pods.list(&ListParams::default()).await.ok()?;
            let running = list
                .items
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
                .count();
            (running == 4).then_some(())
        }
    })
    .await;

    deploys.delete("fg", &DeleteParams::foreground()).await.expect("foreground delete");
    deploys.delete("orph", &DeleteParams::orphan()).await.expect("orphan delete");
    eventually("fg and its dependents to be gone, orph's ReplicaSet orphaned", 60, || {
        let (deploys, sets, pods) = (deploys.clone(), sets.clone(), pods.clone());
        async move {
            run_bound_pods(&pods).await;
            let d = deploys.list(&ListParams::default()).await.ok()?;
            let fg_pods = pods.list(&ListParams::default().labels("app=fg")).await.ok()?;
            let rs = sets.list(&ListParams::default()).await.ok()?;
            let fg_rs =
                rs.items.iter().filter(|r| r.metadata.name.as_deref().is_some_and(|n| n.starts_with("fg-"))).count();
            let orphaned = rs.items.iter().any(|r| {
                r.metadata.name.as_deref().is_some_and(|n| n.starts_with("orph-"))
                    && r.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty())
            });
            (d.items.is_empty() && fg_pods.items.is_empty() && fg_rs == 0 && orphaned).then_some(())
        }
    })
    .await;
    let orph_pods = pods.list(&ListParams::default().labels("app=orph")).await.expect("pods");
    assert_eq!(orph_pods.items.len(), 2, "orphaned ReplicaSet keeps its pods");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_candidate_leads_and_another_takes_over_when_it_stops() {
    use k8s_openapi::api::coordination::v1::Lease;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let s = server().await;
    // The server's own scheduler and controllers hold their leases.
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), "kube-system");
    for name in ["kube-scheduler", "kube-controller-manager"] {
        eventually("the component lease", 10, || {
            let leases = leases.clone();
            async move { leases.get(name).await.ok()?.spec?.holder_identity.filter(|h| !h.is_empty()) }
        })
        .await;
    }

    let working = Arc::new(AtomicUsize::new(0));
    let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
    let mut tasks = vec![];
    for (who, stop) in [("a", stop_a.clone()), ("b", stop_b.clone())] {
        let (client, working) = (s.client.clone(), working.clone());
        tasks.push(tokio::spawn(async move {
            skiff::controllers::leader::run_as(client, "test-lease", who, stop, move |term| {
                let working = working.clone();
                async move {
                    working.fetch_add(1, Ordering::SeqCst);
                    term.cancelled().await;
                    working.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .await
        }));
    }
    let leader = eventually("a leader", 10, || {
        let leases = leases.clone();
        async move { leases.get("test-lease").await.ok()?.spec?.holder_identity.filter(|h| !h.is_empty()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(working.load(Ordering::SeqCst), 1, "exactly one candidate works");
    // The leader steps down (releasing the lease); the other takes over.
    if leader == "a" {
        stop_a.cancel()
    } else {
        stop_b.cancel()
    }
    let next = eventually("the other candidate to take over", 10, || {
        let (leases, leader) = (leases.clone(), leader.clone());
        async move {
            let h = leases.get("test-lease").await.ok()?.spec?.holder_identity?;
            (!h.is_empty() && h != leader).then_some(h)
        }
    })
    .await;
    assert_ne!(next, leader);
    eventually("the new leader to work", 5, || {
        let working = working.clone();
        async move { (working.load(Ordering::SeqCst) == 1).then_some(()) }
    })
    .await;
    stop_a.cancel();
    stop_b.cancel();
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_starts_new_pods_only_after_old_ones_have_stopped() {
    let s = server().await;
    fake_node(&s.client, "node-a", "4").await;
    let deploys: Api<Deployment> = Api::namespaced(s.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");
    let mut d = deployment("rc", 2, "busybox:1", "10m");
    if let Some(spec) = d.spec.as_mut() {
        spec.strategy = serde_json::from_value(json!({"type": "Recreate"})).ok();
    }
    deploys.create(&PostParams::default(), &d).await.expect("create");
    let count_running = |pods: Api<Pod>| async move {
        kubelet(&pods, false).await;
        let list = pods.list(&ListParams::default().labels("app=rc")).await.ok()?;
        Some(list.items)
    };
    eventually("two running pods", 30, || {
        let pods = pods.clone();
        async move {
            let items = count_running(pods).await?;
            (items.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count()
                == 2)
                .then_some(())
        }
    })
    .await;
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}}}});
    deploys.patch("rc", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch");
    // Old pods are marked for deletion but (no kubelet finishing them) keep running.
    eventually("old pods to be terminating", 30, || {
        let pods = pods.clone();
        async move {
            let items = count_running(pods).await?;
            (items.len() == 2 && items.iter().all(|p| p.metadata.deletion_timestamp.is_some())).then_some(())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let items = count_running(pods.clone()).await.unwrap_or_default();
    assert_eq!(
        items.len(),
        2,
        "no new pod while old ones still run: {:?}",
        items.iter().map(|p| p.metadata.name.clone()).collect::<Vec<_>>()
    );
    // Once they stop, the new revision comes up.
    eventually("the new revision's pods", 30, || {
        let pods = pods.clone();
        async move {
            run_bound_pods(&pods).await;
            let list = pods.list(&ListParams::default().labels("app=rc")).await.ok()?;
            let fresh = list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count();
            (list.items.len() == 2 && fresh == 2).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_gets_endpoints_and_slices_of_its_ready_pods_and_loses_them_when_deleted() {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let s = server().await;
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");
    let services: Api<Service> = Api::namespaced(s.client.clone(), "default");
    let endpoints: Api<Endpoints> = Api::namespaced(s.client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(s.client.clone(), "default");
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .expect("service");
    services.create(&PostParams::default(), &svc).await.expect("create service");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox",
            "ports": [{"name": "http", "containerPort": 8080}]}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod).await.expect("create pod");
    let status = json!({"status": {"phase": "Running", "podIP": "10.42.0.5",
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status("web-1", &PatchParams::default(), &Patch::Merge(&status)).await.expect("pod status");

    let ep = eventually("ready endpoints", 20, || {
        let endpoints = endpoints.clone();
        async move {
            let ep = endpoints.get("web").await.ok()?;
            let subset = ep.subsets.clone()?.into_iter().next()?;
            (subset.addresses.as_ref()?.first()?.ip == "10.42.0.5").then_some(subset)
        }
    })
    .await;
    assert_eq!(ep.ports.and_then(|p| p.first().map(|p| p.port)), Some(8080));
    let slice = eventually("an endpoint slice", 20, || {
        let slices = slices.clone();
        async move {
            let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.ok()?;
            list.items.into_iter().find(|s| !s.endpoints.is_empty())
        }
    })
    .await;
    assert_eq!(slice.endpoints[0].addresses, ["10.42.0.5"]);
    assert_eq!(slice.endpoints[0].conditions.as_ref().and_then(|c| c.ready), Some(true));

    services.delete("web", &DeleteParams::default()).await.expect("delete service");
    eventually("endpoints and slices to go with the service", 20, || {
        let (endpoints, slices) = (endpoints.clone(), slices.clone());
        async move {
            let ep = endpoints.get_opt("web").await.ok()?;
            let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await.ok()?;
            (ep.is_none() && list.items.is_empty()).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_a_default_service_account_and_the_root_ca_configmap() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
    let s = server().await;
    let namespaces: Api<Namespace> = Api::all(s.client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
            .expect("namespace");
    namespaces.create(&PostParams::default(), &ns).await.expect("create namespace");
    let sas: Api<ServiceAccount> = Api::namespaced(s.client.clone(), "shop");
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "shop");
    eventually("the default ServiceAccount", 20, || {
        let sas = sas.clone();
        async move { sas.get_opt("default").await.ok()? }
    })
    .await;
    let ca = eventually("kube-root-ca.crt", 20, || {
        let cms = cms.clone();
        async move { cms.get_opt("kube-root-ca.crt").await.ok()??.data?.get("ca.crt").cloned() }
    })
    .await;
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    // The server's CA is the one in the client's kubeconfig: every namespace gets the same one.
    let kube_system: Api<ConfigMap> = Api::namespaced(s.client.clone(), "kube-system");
    let ks = eventually("kube-root-ca.crt in kube-system", 20, || {
        let kube_system = kube_system.clone();
        async move { kube_system.get_opt("kube-root-ca.crt").await.ok()??.data?.get("ca.crt").cloned() }
    })
    .await;
    assert_eq!(ks, ca);

    // Deleted or tampered with, both come back.
    sas.delete("default", &DeleteParams::default()).await.expect("delete sa");
    let patch = json!({"data": {"ca.crt": "garbage"}});
    cms.patch("kube-root-ca.crt", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("tamper");
    eventually("the account to be recreated and the CA restored", 20, || {
        let (sas, cms, ca) = (sas.clone(), cms.clone(), ca.clone());
        async move {
            sas.get_opt("default").await.ok()??;
            let got = cms.get_opt("kube-root-ca.crt").await.ok()??.data?.get("ca.crt").cloned()?;
            (got == ca).then_some(())
        }
    })
    .await;
}

/// Keeps `node`'s kube-node-lease Lease renewed every 300 ms until `stop` fires, as a kubelet does.
fn renew_lease(client: kube::Client, node: &str, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let node = node.to_string();
    tokio::spawn(async move {
        let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
        loop {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": now}});
            if leases.get_opt(&node).await.ok().flatten().is_some() {
                let _ = leases.patch(&node, &PatchParams::default(), &Patch::Merge(&lease)).await;
            } else if let Ok(l) = serde_json::from_value::<Lease>(lease) {
                let _ = leases.create(&PostParams::default(), &l).await;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_node_whose_lease_stops_are_evicted_and_replaced_elsewhere() {
    use skiff::controllers::node_lifecycle::{self, Timings};
    // The server's own node lifecycle controller waits 40 s; run one with test timings instead.
    let s = server_with(&["--disable", "nodelifecycle"]).await;
    let timings = Timings { grace: Duration::from_secs(3), period: Duration::from_millis(300) };
    let informers = skiff::controllers::informer::Informers::start(&s.client, &s.shutdown);
    let nlc = tokio::spawn(node_lifecycle::run(s.client.clone(), informers, timings, s.shutdown.clone()));
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    fake_node(&s.client, "node-a", "2").await;
    let lease_a = renew_lease(s.client.clone(), "node-a", stop_a.clone());
    let deploys: Api<Deployment> = Api::namespaced(s.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");
    let nodes: Api<Node> = Api::all(s.client.clone());
    let mut d = deployment("ev", 2, "busybox:1", "100m");
    if let Some(tpl) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        // Short toleration so the test need not wait upstream's default 300 s.
        tpl.tolerations = serde_json::from_value(json!([{"key": "node.kubernetes.io/unreachable",
            "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}]))
        .ok();
    }
    deploys.create(&PostParams::default(), &d).await.expect("create");
    let on = |node: &'static str| {
        let pods = pods.clone();
        async move {
            kubelet(&pods, false).await;
            let list = pods.list(&ListParams::default().labels("app=ev")).await.ok()?;
            let running = list
                .items
                .iter()
                .filter(|p| {
                    p.metadata.deletion_timestamp.is_none()
                        && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .count();
            (running == 2).then_some(list.items)
        }
    };
    eventually("two pods running on node-a", 30, || on("node-a")).await;
    fake_node(&s.client, "node-b", "2").await;
    let lease_b = renew_lease(s.client.clone(), "node-b", stop_b.clone());
    // A healthy node stays untouched for longer than the grace period.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let a = nodes.get("node-a").await.expect("node-a");
    assert!(a.spec.and_then(|s| s.taints).unwrap_or_default().is_empty(), "a renewing node is not tainted");

    // node-a's kubelet goes quiet.
    stop_a.cancel();
    let _ = lease_a.await;
    let a = eventually("node-a to turn Unknown and be tainted unreachable", 20, || {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get("node-a").await.ok()?;
            let taints = n.spec.as_ref()?.taints.clone()?;
            let tainted =
                |effect: &str| taints.iter().any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == effect);
            (tainted("NoExecute") && tainted("NoSchedule")).then_some(n)
        }
    })
    .await;
    let ready = a
        .status
        .and_then(|s| s.conditions)
        .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
        .expect("Ready condition");
    assert_eq!(ready.status, "Unknown");
    assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
    assert_eq!(ready.message.as_deref(), Some("Kubelet stopped posting node status."));

    // After the 2 s toleration the pods are deleted and their ReplicaSet replaces them on node-b.
    let items = eventually("replacement pods running on node-b", 40, || on("node-b")).await;
    let evicted: Vec<&Pod> =
        items.iter().filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("node-a")).collect();
    assert!(evicted.iter().all(|p| p.metadata.deletion_timestamp.is_some()), "node-a's pods are terminating");
    assert!(evicted.iter().all(|p| {
        p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
            c.iter().any(|c| c.type_ == "DisruptionTarget" && c.reason.as_deref() == Some("DeletionByTaintManager"))
        })
    }));
    let events: Api<Event> = Api::namespaced(s.client.clone(), "default");
    eventually("TaintManagerEviction events", 10, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.iter().any(|e| e.reason.as_deref() == Some("TaintManagerEviction")).then_some(())
        }
    })
    .await;

    // The kubelet comes back: the taints go.
    let stop_a2 = CancellationToken::new();
    let lease_a2 = renew_lease(s.client.clone(), "node-a", stop_a2.clone());
    eventually("node-a's unreachable taints to be removed", 20, || {
        let nodes = nodes.clone();
        async move {
            let n = nodes.get("node-a").await.ok()?;
            let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
            (!taints.iter().any(|t| t.key == "node.kubernetes.io/unreachable")).then_some(())
        }
    })
    .await;
    for stop in [stop_a2, stop_b] {
        stop.cancel();
    }
    let _ = tokio::join!(lease_a2, lease_b);
    s.shutdown.cancel();
    let _ = nlc.await;
}

/// The kubelet's part for run-to-completion pods: every bound, live pod ends in `phase`.
async fn finish_bound_pods(pods: &Api<Pod>, selector: &str, phase: &str) {
    let Ok(list) = pods.list(&ListParams::default().labels(selector)).await else { return };
    for p in list.items {
        let bound = p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty());
        let done = matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        if bound && !done && p.metadata.deletion_timestamp.is_none() {
            let status = json!({"status": {"phase": phase}});
            let name = p.metadata.name.clone().unwrap_or_default();
            let _ = pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_on_backoff_run_indexes_and_expire_after_their_ttl() {
    use k8s_openapi::api::batch::v1::Job;
    let s = server().await;
    fake_node(&s.client, "node-a", "4").await;
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");
    let job = |name: &str, extra: serde_json::Value| -> Job {
        let mut spec = json!({
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "10m"}}}]}},
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": spec}))
        .expect("job")
    };
    let condition = |j: &Job, t: &str| {
        j.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == t && c.status == "True").cloned()
    };

    // Three completions, two at a time.
    jobs.create(&PostParams::default(), &job("ok", json!({"completions": 3, "parallelism": 2}))).await.expect("create");
    let max_active = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = eventually("job ok to complete", 40, || {
        let (jobs, pods, max_active) = (jobs.clone(), pods.clone(), max_active.clone());
        async move {
            let live = pods.list(&ListParams::default().labels("job-name=ok")).await.ok()?;
            let running = live
                .items
                .iter()
                .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded")))
                .count();
            max_active.fetch_max(running, std::sync::atomic::Ordering::SeqCst);
            finish_bound_pods(&pods, "job-name=ok", "Succeeded").await;
            let j = jobs.get("ok").await.ok()?;
            condition(&j, "Complete").map(|c| (j, c))
        }
    })
    .await;
    let (j, complete) = done;
    let max_active = max_active.load(std::sync::atomic::Ordering::SeqCst);
    assert!(max_active <= 2, "parallelism 2 exceeded: {max_active}");
    assert_eq!(complete.reason.as_deref(), Some("CompletionsReached"));
    let st = j.status.clone().expect("status");
    assert_eq!((st.succeeded, st.active.unwrap_or(0)), (Some(3), 0));
    assert!(st.start_time.is_some() && st.completion_time.is_some());
    assert!(condition(&j, "SuccessCriteriaMet").is_some());
    let list = pods.list(&ListParams::default().labels("batch.kubernetes.io/job-name=ok")).await.expect("pods");
    assert_eq!(list.items.len(), 3, "exactly three pods ran");

    // Every pod fails: backoffLimit 1 allows one retry, then the Job fails.
    jobs.create(&PostParams::default(), &job("bad", json!({"backoffLimit": 1}))).await.expect("create");
    let failed = eventually("job bad to fail", 40, || {
        let (jobs, pods) = (jobs.clone(), pods.clone());
        async move {
            finish_bound_pods(&pods, "job-name=bad", "Failed").await;
            let j = jobs.get("bad").await.ok()?;
            condition(&j, "Failed").map(|c| (j, c))
        }
    })
    .await;
    assert_eq!(failed.1.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(failed.0.status.and_then(|s| s.failed), Some(2));

    // Indexed: one pod per index, each labelled with it.
    jobs.create(
        &PostParams::default(),
        &job("idx", json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"})),
    )
    .await
    .expect("create");
    let j = eventually("job idx to complete", 40, || {
        let (jobs, pods) = (jobs.clone(), pods.clone());
        async move {
            finish_bound_pods(&pods, "job-name=idx", "Succeeded").await;
            let j = jobs.get("idx").await.ok()?;
            condition(&j, "Complete").map(|_| j)
        }
    })
    .await;
    assert_eq!(j.status.and_then(|s| s.completed_indexes).as_deref(), Some("0-2"));
    let list = pods.list(&ListParams::default().labels("job-name=idx")).await.expect("pods");
    let mut ix: Vec<String> = list
        .items
        .iter()
        .filter_map(|p| p.metadata.annotations.as_ref()?.get("batch.kubernetes.io/job-completion-index").cloned())
        .collect();
    ix.sort();
    assert_eq!(ix, ["0", "1", "2"]);

    let events: Api<Event> = Api::namespaced(s.client.clone(), "default");
    eventually("job events", 10, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let has = |r: &str| {
                list.items
                    .iter()
                    .any(|e| e.reason.as_deref() == Some(r) && e.involved_object.kind.as_deref() == Some("Job"))
            };
            (has("SuccessfulCreate") && has("Completed") && has("BackoffLimitExceeded")).then_some(())
        }
    })
    .await;

    // ttlSecondsAfterFinished: the finished Job and its pods go.
    jobs.patch("ok", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"ttlSecondsAfterFinished": 1}})))
        .await
        .expect("set ttl");
    eventually("job ok and its pods to be deleted after the TTL", 30, || {
        let (jobs, pods) = (jobs.clone(), pods.clone());
        async move {
            kubelet(&pods, true).await;
            let gone = jobs.get_opt("ok").await.ok()?.is_none();
            let left = pods.list(&ListParams::default().labels("job-name=ok")).await.ok()?;
            (gone && left.items.is_empty()).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cronjob_forbids_overlap_then_starts_a_job_for_a_missed_time_and_records_success() {
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    let s = server().await;
    fake_node(&s.client, "node-a", "4").await;
    let cronjobs: Api<CronJob> = Api::namespaced(s.client.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(s.client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(s.client.clone(), "default");
    let events: Api<Event> = Api::namespaced(s.client.clone(), "default");
    let template = json!({"spec": {"template": {"spec": {"restartPolicy": "Never",
        "containers": [{"name": "c", "image": "busybox"}]}}}});
    let cj: CronJob = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Forbid", "timeZone": "Etc/UTC",
            "jobTemplate": template},
    }))
    .expect("cronjob");
    let cj = cronjobs.create(&PostParams::default(), &cj).await.expect("create");
    // An earlier run still going: a Job of this CronJob for minute 1.
    let old: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "tick-1", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob",
            "name": "tick", "uid": cj.metadata.uid, "controller": true, "blockOwnerDeletion": true}]},
        "spec": template["spec"],
    }))
    .expect("job");
    jobs.create(&PostParams::default(), &old).await.expect("create old job");
    // Pretend the last run was three minutes ago: the most recent missed minute is due at once
    // (a real `* * * * *` schedule would make the test wait up to a minute).
    let t = k8s_openapi::jiff::Timestamp::now().as_second() - 180;
    let back = json!({"status": {"lastScheduleTime":
        k8s_openapi::jiff::Timestamp::from_second(t).expect("ts").to_string()}});
    cronjobs.patch_status("tick", &PatchParams::default(), &Patch::Merge(&back)).await.expect("status");

    // Forbid: while tick-1 runs, no second job.
    eventually("a JobAlreadyActive event", 20, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.iter().any(|e| e.reason.as_deref() == Some("JobAlreadyActive")).then_some(())
        }
    })
    .await;
    assert_eq!(jobs.list(&ListParams::default()).await.expect("jobs").items.len(), 1);

    // tick-1 finishes: the missed minute runs now.
    let job = eventually("a job for the current minute", 40, || {
        let (jobs, pods) = (jobs.clone(), pods.clone());
        async move {
            finish_bound_pods(&pods, "job-name=tick-1", "Succeeded").await;
            let list = jobs.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|j| j.metadata.name.as_deref() != Some("tick-1"))
        }
    })
    .await;
    let name = job.metadata.name.clone().unwrap_or_default();
    let minute = k8s_openapi::jiff::Timestamp::now().as_second() / 60;
    assert!(name == format!("tick-{minute}") || name == format!("tick-{}", minute - 1), "{name}");
    assert!(job
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("batch.kubernetes.io/cronjob-scheduled-timestamp")));
    eventually("the new job in status.active", 10, || {
        let (cronjobs, name) = (cronjobs.clone(), name.clone());
        async move {
            let c = cronjobs.get("tick").await.ok()?;
            let st = c.status?;
            st.last_schedule_time?;
            st.active?.iter().any(|r| r.name.as_deref() == Some(&name)).then_some(())
        }
    })
    .await;

    // Its pod succeeds: the CronJob records the success and drops it from active.
    eventually("lastSuccessfulTime and an empty active list", 40, || {
        let (cronjobs, pods, name) = (cronjobs.clone(), pods.clone(), name.clone());
        async move {
            finish_bound_pods(&pods, &format!("job-name={name}"), "Succeeded").await;
            let st = cronjobs.get("tick").await.ok()?.status?;
            st.last_successful_time?;
            st.active.is_none_or(|a| a.is_empty()).then_some(())
        }
    })
    .await;
    eventually("SuccessfulCreate and SawCompletedJob events", 10, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let has = |r: &str| {
                list.items
                    .iter()
                    .any(|e| e.reason.as_deref() == Some(r) && e.involved_object.kind.as_deref() == Some("CronJob"))
            };
            (has("SuccessfulCreate") && has("SawCompletedJob")).then_some(())
        }
    })
    .await;

    // Deleting the CronJob takes its Jobs and their pods with it (garbage collection).
    cronjobs.delete("tick", &DeleteParams::default()).await.expect("delete cronjob");
    eventually("the jobs and pods to be collected", 60, || {
        let (jobs, pods) = (jobs.clone(), pods.clone());
        async move {
            kubelet(&pods, true).await;
            let j = jobs.list(&ListParams::default()).await.ok()?;
            let p = pods.list(&ListParams::default()).await.ok()?;
            (j.items.is_empty() && p.items.is_empty()).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_balancer_service_gets_the_ready_nodes_addresses_as_its_ingress() {
    use k8s_openapi::api::core::v1::Service;
    let s = server().await;
    let nodes: Api<Node> = Api::all(s.client.clone());
    for (name, ip) in [("node-a", "192.0.2.11"), ("node-b", "192.0.2.10")] {
        fake_node(&s.client, name, "2").await;
        let addrs = json!({"status": {"addresses": [{"type": "InternalIP", "address": ip}]}});
        nodes.patch_status(name, &PatchParams::default(), &Patch::Strategic(addrs)).await.expect("addresses");
    }
    let services: Api<Service> = Api::namespaced(s.client.clone(), "default");
    let svc = |name: &str, extra: serde_json::Value| -> Service {
        let mut spec = json!({"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": 80}]});
        if let (Some(sp), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            sp.extend(e.clone());
        }
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}))
            .expect("service")
    };
    services.create(&PostParams::default(), &svc("web", json!({}))).await.expect("create web");
    services
        .create(&PostParams::default(), &svc("other", json!({"loadBalancerClass": "example.com/lb"})))
        .await
        .expect("create other");
    let ingress = |svc: &Service| -> Vec<String> {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone())
            .collect()
    };
    let got = eventually("web's load-balancer ingress", 20, || {
        let services = services.clone();
        async move {
            let ing = ingress(&services.get("web").await.ok()?);
            (!ing.is_empty()).then_some(ing)
        }
    })
    .await;
    assert_eq!(got, ["192.0.2.10", "192.0.2.11"]);
    // A node that stops being ready stops carrying traffic.
    let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": "fake"}]}});
    nodes.patch_status("node-a", &PatchParams::default(), &Patch::Strategic(not_ready)).await.expect("not ready");
    eventually("node-a's address to leave the ingress", 20, || {
        let services = services.clone();
        async move { (ingress(&services.get("web").await.ok()?) == ["192.0.2.10"]).then_some(()) }
    })
    .await;
    // Another implementation's Service is left alone.
    let other = services.get("other").await.expect("other");
    assert!(ingress(&other).is_empty(), "{:?}", other.status);
}
