//! The scheduler's newer plugins end to end: an in-process `skiff server` with no agent, fake
//! Node objects (capacity, labels, Ready) and real kubectl 1.32 applying the workloads. The test
//! plays the kubelet where one is needed (finishing graceful deletions).

mod common;

use common::{require_kubectl, TestServer};
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

/// A server (the node lifecycle controller off: fake nodes renew no Lease) and an admin client.
async fn start() -> (TestServer, kube::Client) {
    let s = tokio::task::block_in_place(|| TestServer::start(&["--disable", "nodelifecycle"]));
    let kc = kube::config::Kubeconfig::read_from(&s.kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("client config");
    let client = kube::Client::try_from(cfg).expect("client");
    (s, client)
}

/// kubectl run off the async runtime's worker (it blocks on the child process).
fn kubectl(s: &TestServer, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    tokio::task::block_in_place(|| s.kubectl_stdin(args, stdin))
}

fn apply(s: &TestServer, manifest: &serde_json::Value) {
    let (ok, out, err) = kubectl(s, &["apply", "-f", "-"], Some(&manifest.to_string()));
    assert!(ok, "kubectl apply failed:\nstdout: {out}\nstderr: {err}");
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Ready node with `cpu` allocatable and the given labels (plus the hostname label).
async fn fake_node(client: &kube::Client, name: &str, cpu: &str, labels: &[(&str, &str)]) {
    fake_node_sized(client, name, cpu, "8Gi", labels).await
}

/// [`fake_node`] with `memory` allocatable too.
async fn fake_node_sized(client: &kube::Client, name: &str, cpu: &str, memory: &str, labels: &[(&str, &str)]) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut l: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    l.insert("kubernetes.io/hostname".into(), name.into());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": l},
    }))
    .expect("node");
    nodes.create(&PostParams::default(), &node).await.expect("create node");
    let status = json!({"status": {
        "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
        "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake"}],
    }});
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("node status");
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty())
}

fn unschedulable_message(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?
        .message
        .clone()
}

async fn events(client: &kube::Client, reason: &str, object: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    list.into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason) && e.involved_object.name.as_deref() == Some(object))
        .collect()
}

fn deployment(name: &str, replicas: i32, pod_spec_extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"containers": [{"name": "c", "image": "registry.local/app:1",
        "resources": {"requests": {"cpu": "100m"}}}]});
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), pod_spec_extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec}},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_spreads_replicas_one_per_node_and_leaves_the_fourth_pending() {
    if require_kubectl().is_none() {
        return;
    }
    let (s, client) = start().await;
    for n in ["n1", "n2", "n3"] {
        fake_node(&client, n, "4", &[]).await;
    }
    apply(
        &s,
        &deployment(
            "web",
            4,
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}
            ]}}}),
        ),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let (placed, pending) = eventually("three pods bound and one judged unschedulable over 3 nodes", 60, || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?.items;
            let placed: Vec<String> = list.iter().filter_map(node_of).collect();
            let pending: Vec<&Pod> = list.iter().filter(|p| node_of(p).is_none()).collect();
            let verdict = pending.first().and_then(|p| unschedulable_message(p)).filter(|m| m.starts_with("0/3 "));
            (list.len() == 4 && placed.len() == 3 && pending.len() == 1 && verdict.is_some())
                .then(|| (placed, pending[0].clone()))
        }
    })
    .await;
    let distinct: BTreeSet<&String> = placed.iter().collect();
    assert_eq!(distinct.len(), 3, "one replica per node: {placed:?}");
    let want = "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
                preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod..";
    assert_eq!(unschedulable_message(&pending).as_deref(), Some(want));
    let name = pending.metadata.name.clone().unwrap_or_default();
    let ev = eventually("the FailedScheduling event", 20, || {
        let (client, name) = (client.clone(), name.clone());
        async move {
            let evs = events(&client, "FailedScheduling", &name).await;
            evs.into_iter().find(|e| e.message.as_deref() == Some(want))
        }
    })
    .await;
    assert_eq!(ev.message.as_deref(), Some(want));
    assert_eq!(ev.type_.as_deref(), Some("Warning"));

    // A fourth node makes room: the pending replica lands there.
    fake_node(&client, "n4", "4", &[]).await;
    let node = eventually("the fourth replica to be bound", 30, || {
        let (pods, name) = (pods.clone(), name.clone());
        async move { pods.get(&name).await.ok().as_ref().and_then(node_of) }
    })
    .await;
    assert_eq!(node, "n4");
    kubectl(&s, &["delete", "deployment", "web"], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_spread_balances_replicas_across_zones_and_skips_unlabelled_nodes() {
    if require_kubectl().is_none() {
        return;
    }
    let (s, client) = start().await;
    let zone = "topology.kubernetes.io/zone";
    fake_node(&client, "a1", "8", &[(zone, "zone-a")]).await;
    fake_node(&client, "a2", "8", &[(zone, "zone-a")]).await;
    fake_node(&client, "a3", "8", &[(zone, "zone-a")]).await;
    fake_node(&client, "b1", "8", &[(zone, "zone-b")]).await;
    fake_node(&client, "bare", "64", &[]).await;
    apply(
        &s,
        &deployment(
            "spread",
            6,
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": zone,
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]}),
        ),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let placed = eventually("six replicas bound", 60, || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app=spread")).await.ok()?.items;
            let placed: Vec<String> = list.iter().filter_map(node_of).collect();
            (placed.len() == 6).then_some(placed)
        }
    })
    .await;
    let in_a = placed.iter().filter(|n| n.starts_with('a')).count();
    let in_b = placed.iter().filter(|n| *n == "b1").count();
    assert_eq!((in_a, in_b), (3, 3), "zone-a has three nodes, zone-b one, yet the zones are even: {placed:?}");
    assert!(!placed.iter().any(|n| n == "bare"), "a node without the zone label is not a domain");
    kubectl(&s, &["delete", "deployment", "spread"], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_pod_preempts_a_low_priority_one() {
    if require_kubectl().is_none() {
        return;
    }
    let (s, client) = start().await;
    fake_node(&client, "only", "1", &[]).await;
    // The built-in classes exist; an unknown class is refused like upstream's admission.
    let out = kubectl(&s, &["get", "priorityclass", "system-cluster-critical", "-o", "jsonpath={.value}"], None);
    assert_eq!(out.1, "2000000000", "{out:?}");
    apply(
        &s,
        &json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "high"}, "value": 1000}),
    );
    let pod = |name: &str, class: Option<&str>| {
        let mut spec = json!({"containers": [{"name": "c", "image": "registry.local/app:1",
            "resources": {"requests": {"cpu": "800m"}}}]});
        if let Some(c) = class {
            spec["priorityClassName"] = json!(c);
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
    };
    let (ok, _, err) = kubectl(&s, &["apply", "-f", "-"], Some(&pod("typo", Some("nope")).to_string()));
    assert!(!ok);
    assert!(err.contains("no PriorityClass with name nope was found"), "{err}");

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    apply(&s, &pod("low", None));
    eventually("the low-priority pod to be bound", 30, || {
        let pods = pods.clone();
        async move { pods.get("low").await.ok().as_ref().and_then(node_of) }
    })
    .await;
    apply(&s, &pod("high", Some("high")));
    let high = pods.get("high").await.expect("high");
    assert_eq!(high.spec.as_ref().and_then(|s| s.priority), Some(1000));
    assert_eq!(high.spec.as_ref().and_then(|s| s.preemption_policy.as_deref()), Some("PreemptLowerPriority"));

    // The victim is deleted gracefully, marked DisruptionTarget, and told why.
    let low = eventually("the low-priority pod to be preempted", 30, || {
        let pods = pods.clone();
        async move { pods.get("low").await.ok().filter(|p| p.metadata.deletion_timestamp.is_some()) }
    })
    .await;
    let cond = low
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionTarget").cloned());
    assert_eq!(cond.as_ref().and_then(|c| c.reason.as_deref()), Some("PreemptionByScheduler"));
    let nominated = eventually("the preemptor's nominated node", 20, || {
        let pods = pods.clone();
        async move { pods.get("high").await.ok()?.status?.nominated_node_name }
    })
    .await;
    assert_eq!(nominated, "only");
    let ev = eventually("the Preempted event", 20, || {
        let client = client.clone();
        async move { events(&client, "Preempted", "low").await.into_iter().next() }
    })
    .await;
    let uid = high.metadata.uid.clone().unwrap_or_default();
    assert_eq!(ev.message, Some(format!("Preempted by pod {uid} on node only")));

    // The kubelet's part: the victim's containers stop and the pod object goes.
    pods.delete("low", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.expect("finish");
    let node = eventually("the preemptor to be bound", 30, || {
        let pods = pods.clone();
        async move { pods.get("high").await.ok().as_ref().and_then(node_of) }
    })
    .await;
    assert_eq!(node, "only");
    kubectl(&s, &["delete", "pod", "high", "--grace-period=0", "--force"], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_first_consumer_claim_gets_the_chosen_node_and_an_immediate_one_blocks() {
    if require_kubectl().is_none() {
        return;
    }
    let (s, client) = start().await;
    fake_node(&client, "n1", "4", &[]).await;
    fake_node(&client, "n2", "4", &[]).await;
    apply(
        &s,
        &json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "later"},
        "provisioner": "example.com/fake", "volumeBindingMode": "WaitForFirstConsumer"}),
    );
    apply(
        &s,
        &json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "now"},
        "provisioner": "example.com/fake", "volumeBindingMode": "Immediate"}),
    );
    let claim = |name: &str, class: &str| {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "default"},
            "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}})
    };
    let pod = |name: &str, claim: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "registry.local/app:1"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})
    };
    apply(&s, &claim("data-later", "later"));
    apply(&s, &claim("data-now", "now"));
    apply(&s, &pod("consumer", "data-later"));
    apply(&s, &pod("blocked", "data-now"));

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let node = eventually("the consumer to be bound", 30, || {
        let pods = pods.clone();
        async move { pods.get("consumer").await.ok().as_ref().and_then(node_of) }
    })
    .await;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pvc = pvcs.get("data-later").await.expect("claim");
    let selected = pvc.metadata.annotations.unwrap_or_default().get("volume.kubernetes.io/selected-node").cloned();
    assert_eq!(selected, Some(node));

    let msg = eventually("the verdict on the pod with an unbound immediate claim", 30, || {
        let pods = pods.clone();
        async move {
            pods.get("blocked").await.ok().as_ref().and_then(unschedulable_message).filter(|m| m.starts_with("0/2 "))
        }
    })
    .await;
    assert_eq!(
        msg,
        "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims. \
         preemption: 0/2 nodes are available: 2 No preemption victims found for incoming pod.."
    );
    for p in ["consumer", "blocked"] {
        kubectl(&s, &["delete", "pod", p, "--grace-period=0", "--force"], None);
    }
    kubectl(&s, &["delete", "pvc", "data-later", "data-now"], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployments_replicas_spread_over_hostnames_and_zones_with_no_constraints_of_their_own() {
    if require_kubectl().is_none() {
        return;
    }
    let (s, client) = start().await;
    let zone = "topology.kubernetes.io/zone";
    // Resource scoring alone would stack every replica on the big node.
    fake_node_sized(&client, "big", "64", "128Gi", &[(zone, "zone-a")]).await;
    fake_node_sized(&client, "a2", "2", "4Gi", &[(zone, "zone-a")]).await;
    fake_node_sized(&client, "b1", "2", "4Gi", &[(zone, "zone-b")]).await;
    fake_node_sized(&client, "b2", "2", "4Gi", &[(zone, "zone-b")]).await;
    // The ReplicaSet exists before any pod, as after a rollout: the scheduler knows the
    // selector of the pods' controller by the time it sees them.
    apply(&s, &deployment("web", 0, json!({})));
    eventually("the Deployment's ReplicaSet", 30, || async {
        let (ok, out, _) = kubectl(&s, &["get", "rs", "-l", "app=web", "-o", "name"], None);
        (ok && out.contains("replicaset")).then_some(())
    })
    .await;
    kubectl(&s, &["scale", "deployment", "web", "--replicas=4"], None);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let placed = eventually("four replicas bound", 60, || {
        let pods = pods.clone();
        async move {
            let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?.items;
            let placed: Vec<String> = list.iter().filter_map(node_of).collect();
            (placed.len() == 4).then_some(placed)
        }
    })
    .await;
    let distinct: BTreeSet<&String> = placed.iter().collect();
    assert_eq!(distinct.len(), 4, "one replica per hostname: {placed:?}");
    let in_a = placed.iter().filter(|n| *n == "big" || *n == "a2").count();
    assert_eq!(in_a, 2, "two replicas per zone: {placed:?}");
    kubectl(&s, &["delete", "deployment", "web"], None);
}

/// A PriorityClass `high` (1000) and a pod manifest with 100m cpu, the given labels and extras.
fn priority_pod(
    name: &str,
    class: Option<&str>,
    labels: serde_json::Value,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut spec = json!({"containers": [{"name": "c", "image": "registry.local/app:1",
        "resources": {"requests": {"cpu": "100m"}}}]});
    if let Some(c) = class {
        spec["priorityClassName"] = json!(c);
    }
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels}, "spec": spec})
}

fn high_priority_class(s: &TestServer) {
    apply(
        s,
        &json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
        "metadata": {"name": "high"}, "value": 1000}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_pod_with_required_anti_affinity_preempts_the_low_priority_pod_it_repels() {
    if require_kubectl().is_none() {
        return;
    }
    let (s, client) = start().await;
    // Plenty of room: only the anti-affinity keeps the pod out.
    fake_node(&client, "only", "8", &[]).await;
    high_priority_class(&s);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    apply(&s, &priority_pod("batch", None, json!({"app": "batch"}), json!({})));
    eventually("the low-priority pod to be bound", 30, || {
        let pods = pods.clone();
        async move { pods.get("batch").await.ok().as_ref().and_then(node_of) }
    })
    .await;
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "batch"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    apply(&s, &priority_pod("web", Some("high"), json!({"app": "web"}), anti));

    let victim = eventually("the repelled pod to be preempted", 30, || {
        let pods = pods.clone();
        async move { pods.get("batch").await.ok().filter(|p| p.metadata.deletion_timestamp.is_some()) }
    })
    .await;
    let cond = victim
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionTarget").cloned());
    assert_eq!(cond.as_ref().and_then(|c| c.reason.as_deref()), Some("PreemptionByScheduler"));
    let nominated = eventually("the preemptor's nominated node", 20, || {
        let pods = pods.clone();
        async move { pods.get("web").await.ok()?.status?.nominated_node_name }
    })
    .await;
    assert_eq!(nominated, "only");
    // Until the victim is gone the preemptor is unschedulable for the filter's reason, with no
    // "preemption:" part (the preemption succeeded).
    let want = "0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules.";
    eventually("the preemptor's FailedScheduling event", 20, || {
        let client = client.clone();
        async move {
            events(&client, "FailedScheduling", "web").await.into_iter().find(|e| e.message.as_deref() == Some(want))
        }
    })
    .await;

    // The kubelet's part: the victim's containers stop and the pod object goes.
    pods.delete("batch", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.expect("finish");
    let node = eventually("the preemptor to be bound", 30, || {
        let pods = pods.clone();
        async move { pods.get("web").await.ok().as_ref().and_then(node_of) }
    })
    .await;
    assert_eq!(node, "only");
    kubectl(&s, &["delete", "pod", "web", "--grace-period=0", "--force"], None);
    kubectl(&s, &["delete", "priorityclass", "high"], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_only_a_taint_keeps_out_preempts_nothing() {
    if require_kubectl().is_none() {
        return;
    }
    let (s, client) = start().await;
    fake_node(&client, "tainted", "1", &[]).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let taint = json!({"spec": {"taints": [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}]}});
    nodes.patch("tainted", &PatchParams::default(), &Patch::Merge(&taint)).await.expect("taint the node");
    high_priority_class(&s);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let tolerates = json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "batch",
        "effect": "NoSchedule"}]});
    apply(&s, &priority_pod("batch", None, json!({"app": "batch"}), tolerates));
    eventually("the tolerating low-priority pod to be bound", 30, || {
        let pods = pods.clone();
        async move { pods.get("batch").await.ok().as_ref().and_then(node_of) }
    })
    .await;
    apply(&s, &priority_pod("web", Some("high"), json!({"app": "web"}), json!({})));
    let msg = eventually("the verdict on the high-priority pod", 30, || {
        let pods = pods.clone();
        async move { pods.get("web").await.ok().as_ref().and_then(unschedulable_message) }
    })
    .await;
    assert_eq!(
        msg,
        "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: batch}. \
         preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling.."
    );
    let batch = pods.get("batch").await.expect("the low-priority pod is still there");
    assert!(batch.metadata.deletion_timestamp.is_none(), "nothing was preempted");
    let web = pods.get("web").await.expect("web");
    assert_eq!(web.status.and_then(|s| s.nominated_node_name), None);
    assert!(events(&client, "Preempted", "batch").await.is_empty());
    for p in ["web", "batch"] {
        kubectl(&s, &["delete", "pod", p, "--grace-period=0", "--force"], None);
    }
    kubectl(&s, &["delete", "priorityclass", "high"], None);
}
