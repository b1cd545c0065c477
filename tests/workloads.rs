//! StatefulSet, DaemonSet and ReplicationController controllers end to end: an in-process
//! `skiff server` with no agent, fake Node objects, real kubectl 1.32, and the test playing the
//! kubelet (marking bound pods Running and Ready, finishing graceful deletions).

mod common;

use common::TestServer;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolumeClaim, Pod, ReplicationController};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn client(ts: &TestServer) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&ts.kubeconfig).expect("kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.expect("client config");
    kube::Client::try_from(cfg).expect("client")
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

/// A Ready node with room for pods, optional labels and taints.
async fn fake_node(client: &kube::Client, name: &str, labels: serde_json::Value, taints: serde_json::Value) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut l = labels.as_object().cloned().unwrap_or_default();
    l.insert("kubernetes.io/hostname".into(), json!(name));
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": l},
        "spec": {"taints": taints},
    }))
    .expect("node");
    nodes.create(&PostParams::default(), &node).await.expect("create node");
    let status = json!({"status": {
        "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "fake"}],
    }});
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("node status");
}

fn bound(p: &Pod) -> bool {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| !n.is_empty())
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// The kubelet's part for one pod: Running and Ready.
async fn start_pod(pods: &Api<Pod>, name: &str) {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
    }});
    let _ = pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await;
}

/// The kubelet's part for every pod: bound pods start, terminating pods go away.
async fn kubelet_pass(pods: &Api<Pod>) {
    let Ok(list) = pods.list(&ListParams::default()).await else { return };
    for p in list.items {
        let name = p.metadata.name.clone().unwrap_or_default();
        if p.metadata.deletion_timestamp.is_some() {
            let _ = pods.delete(&name, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await;
        } else if bound(&p) && !running(&p) {
            start_pod(pods, &name).await;
        }
    }
}

/// A background kubelet for the namespace until the returned guard is dropped.
struct Kubelet(tokio::task::JoinHandle<()>);

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn kubelet(pods: Api<Pod>) -> Kubelet {
    Kubelet(tokio::spawn(async move {
        loop {
            kubelet_pass(&pods).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}

/// Runs kubectl off the async threads (it may block for a while, e.g. `rollout status`).
async fn kubectl(ts: &Arc<TestServer>, args: &[&str]) -> (bool, String, String) {
    let ts = ts.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        ts.kubectl(&a)
    })
    .await
    .expect("kubectl task")
}

async fn kubectl_ok(ts: &Arc<TestServer>, args: &[&str]) -> String {
    let (ok, out, err) = kubectl(ts, args).await;
    assert!(ok, "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}");
    out
}

async fn apply(ts: &Arc<TestServer>, manifest: serde_json::Value) {
    let ts2 = ts.clone();
    let body = manifest.to_string();
    tokio::task::spawn_blocking(move || ts2.ok_stdin(&["apply", "-f", "-"], &body)).await.expect("apply task");
}

fn label<'a>(p: &'a Pod, k: &str) -> Option<&'a str> {
    p.metadata.labels.as_ref()?.get(k).map(String::as_str)
}

fn image(p: &Pod) -> String {
    p.spec.as_ref().and_then(|s| s.containers.first()).and_then(|c| c.image.clone()).unwrap_or_default()
}

fn names(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter().filter_map(|p| p.metadata.name.clone()).collect()
}

async fn pods_of(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(selector)).await.map(|l| l.items).unwrap_or_default()
}

fn statefulset(name: &str, replicas: i32, image: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "replicas": replicas,
        "serviceName": name,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "c", "image": image}]},
        },
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": "default"},
        "spec": spec})
}

fn start() -> Option<Arc<TestServer>> {
    common::require_kubectl()?;
    Some(Arc::new(TestServer::start(&[])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_set_starts_pods_in_order_with_claims_and_scales_down_in_reverse() {
    let Some(ts) = start() else { return };
    let c = client(&ts).await;
    fake_node(&c, "node-a", json!({}), json!([])).await;
    fake_node(&c, "node-b", json!({}), json!([])).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    let vct = json!({"volumeClaimTemplates": [{
        "metadata": {"name": "data"},
        "spec": {"storageClassName": "local-path", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}},
    }]});
    apply(&ts, statefulset("web", 3, "busybox:1", vct)).await;

    // OrderedReady: web-0 alone until it is Running and Ready, then web-1, then web-2.
    for n in 0..3 {
        let want: BTreeSet<String> = (0..=n).map(|i| format!("web-{i}")).collect();
        let got = eventually(&format!("web-{n} to be created and bound"), 30, || {
            let pods = pods.clone();
            async move {
                let list = pods_of(&pods, "app=web").await;
                let got = names(&list);
                assert!(got.is_subset(&(0..3).map(|i| format!("web-{i}")).collect()), "{got:?}");
                (list.iter().all(bound) && got.len() == n + 1).then_some(got)
            }
        })
        .await;
        assert_eq!(got, want, "pods are created in ordinal order");
        // Nothing further starts while the newest pod is not ready.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(names(&pods_of(&pods, "app=web").await), want, "web-{} waited for web-{n}", n + 1);
        start_pod(&pods, &format!("web-{n}")).await;
    }

    // Identity and storage.
    let p = pods.get("web-1").await.expect("web-1");
    let spec = p.spec.clone().expect("spec");
    assert_eq!(spec.hostname.as_deref(), Some("web-1"));
    assert_eq!(spec.subdomain.as_deref(), Some("web"));
    assert_eq!(label(&p, "statefulset.kubernetes.io/pod-name"), Some("web-1"));
    assert_eq!(label(&p, "apps.kubernetes.io/pod-index"), Some("1"));
    let vol = spec.volumes.iter().flatten().find(|v| v.name == "data").expect("data volume");
    assert_eq!(vol.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()), Some("data-web-1"));
    for i in 0..3 {
        let claim = claims.get(&format!("data-web-{i}")).await.expect("claim from the template");
        assert_eq!(claim.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str), Some("web"));
    }
    let s = eventually("status with 3 ready replicas", 20, || {
        let sets = sets.clone();
        async move {
            let s = sets.get("web").await.ok()?;
            let st = s.status.clone()?;
            (st.ready_replicas == Some(3) && st.available_replicas == Some(3)).then_some(s)
        }
    })
    .await;
    let st = s.status.clone().expect("status");
    assert_eq!(st.replicas, 3);
    assert_eq!(st.current_replicas, Some(3));
    assert_eq!(st.updated_replicas, Some(3));
    assert_eq!(st.observed_generation, s.metadata.generation);
    let rev = st.update_revision.clone().expect("updateRevision");
    assert_eq!(st.current_revision.as_deref(), Some(rev.as_str()));
    assert_eq!(label(&p, "controller-revision-hash"), Some(rev.as_str()));
    let out = kubectl_ok(&ts, &["rollout", "status", "sts/web", "--timeout=30s"]).await;
    assert!(out.contains("partitioned roll out complete: 3 new pods have been updated"), "{out}");

    // Scale down: web-2 goes first, and web-1 only once web-2 is gone.
    kubectl_ok(&ts, &["scale", "sts/web", "--replicas=1"]).await;
    for n in [2, 1] {
        let doomed = format!("web-{n}");
        eventually(&format!("{doomed} to be terminating"), 20, || {
            let pods = pods.clone();
            let doomed = doomed.clone();
            async move { pods.get(&doomed).await.ok()?.metadata.deletion_timestamp.map(|_| ()) }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let others = pods_of(&pods, "app=web").await;
        for p in others.iter().filter(|p| p.metadata.name.as_deref() != Some(doomed.as_str())) {
            assert!(p.metadata.deletion_timestamp.is_none(), "{:?} deleted before {doomed}", p.metadata.name);
        }
        pods.delete(&doomed, &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
            .await
            .expect("finish deletion");
    }
    eventually("one replica left", 20, || {
        let sets = sets.clone();
        async move { (sets.get("web").await.ok()?.status?.replicas == 1).then_some(()) }
    })
    .await;
    assert_eq!(names(&pods_of(&pods, "app=web").await), BTreeSet::from(["web-0".to_string()]));
    // whenScaled defaults to Retain: the claims stay for a later scale-up.
    for i in 0..3 {
        assert!(claims.get(&format!("data-web-{i}")).await.is_ok(), "data-web-{i} retained");
    }

    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let msgs: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("StatefulSet"))
        .filter_map(|e| e.message)
        .collect();
    for m in [
        "create Pod web-0 in StatefulSet web successful",
        "create Claim data-web-0 Pod web-0 in StatefulSet web success",
        "delete Pod web-2 in StatefulSet web successful",
    ] {
        assert!(msgs.iter().any(|x| x == m), "missing event {m:?} in {msgs:?}");
    }

    // Deleting the set takes its pods (garbage collection); Retain keeps the claims.
    let _kubelet = kubelet(pods.clone());
    kubectl_ok(&ts, &["delete", "sts/web"]).await;
    eventually("the pods to be collected", 30, || {
        let pods = pods.clone();
        async move { pods_of(&pods, "app=web").await.is_empty().then_some(()) }
    })
    .await;
    for i in 0..3 {
        assert!(claims.get(&format!("data-web-{i}")).await.is_ok(), "data-web-{i} retained after deletion");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_set_rolls_out_by_partition_and_rolls_back_with_kubectl() {
    let Some(ts) = start() else { return };
    let c = client(&ts).await;
    fake_node(&c, "node-a", json!({}), json!([])).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let revs: Api<ControllerRevision> = Api::namespaced(c.clone(), "default");
    let _kubelet = kubelet(pods.clone());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    let extra = json!({
        "podManagementPolicy": "Parallel",
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"},
        "volumeClaimTemplates": [{
            "metadata": {"name": "data"},
            "spec": {"storageClassName": "local-path", "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}},
        }],
    });
    apply(&ts, statefulset("db", 3, "busybox:1", extra)).await;
    kubectl_ok(&ts, &["rollout", "status", "sts/db", "--timeout=60s"]).await;

    // Only ordinals >= partition move to the new revision.
    kubectl_ok(
        &ts,
        &[
            "patch",
            "sts/db",
            "--type=merge",
            "-p",
            r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}},
                "template":{"spec":{"containers":[{"name":"c","image":"busybox:2"}]}}}}"#,
        ],
    )
    .await;
    let out = kubectl_ok(&ts, &["rollout", "status", "sts/db", "--timeout=60s"]).await;
    assert!(out.contains("partitioned roll out complete: 1 new pods have been updated"), "{out}");
    let images = |list: &[Pod]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> =
            list.iter().map(|p| (p.metadata.name.clone().unwrap_or_default(), image(p))).collect();
        v.sort();
        v
    };
    let list = pods_of(&pods, "app=db").await;
    assert_eq!(
        images(&list),
        [("db-0".into(), "busybox:1".into()), ("db-1".into(), "busybox:1".into()), ("db-2".into(), "busybox:2".into())]
    );

    // Partition 0: everything updates, highest ordinal first.
    kubectl_ok(
        &ts,
        &["patch", "sts/db", "--type=merge", "-p", r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#],
    )
    .await;
    kubectl_ok(&ts, &["rollout", "status", "sts/db", "--timeout=60s"]).await;
    eventually("every pod on busybox:2", 30, || {
        let pods = pods.clone();
        async move {
            let list = pods_of(&pods, "app=db").await;
            (list.len() == 3 && list.iter().all(|p| image(p) == "busybox:2")).then_some(())
        }
    })
    .await;
    let s: StatefulSet = Api::namespaced(c.clone(), "default").get("db").await.expect("sts");
    let st = s.status.expect("status");
    assert_eq!(st.current_revision, st.update_revision, "a finished rollout makes the update revision current");
    assert_eq!(st.updated_replicas, Some(3));

    let history = kubectl_ok(&ts, &["rollout", "history", "sts/db"]).await;
    let lines: Vec<&str> = history.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).collect();
    assert_eq!(lines.len(), 2, "two revisions:\n{history}");
    let owned = revs.list(&ListParams::default().labels("app=db")).await.expect("revisions").items;
    assert_eq!(owned.iter().map(|r| r.revision).collect::<BTreeSet<_>>(), BTreeSet::from([1, 2]));

    // Undo goes back to busybox:1 as revision 3.
    kubectl_ok(&ts, &["rollout", "undo", "sts/db"]).await;
    kubectl_ok(&ts, &["rollout", "status", "sts/db", "--timeout=60s"]).await;
    eventually("every pod back on busybox:1", 30, || {
        let pods = pods.clone();
        async move {
            let list = pods_of(&pods, "app=db").await;
            (list.len() == 3 && list.iter().all(|p| image(p) == "busybox:1")).then_some(())
        }
    })
    .await;
    let owned = revs.list(&ListParams::default().labels("app=db")).await.expect("revisions").items;
    assert_eq!(owned.iter().map(|r| r.revision).collect::<BTreeSet<_>>(), BTreeSet::from([2, 3]));

    // whenDeleted=Delete: the set owns its claims.
    let claim = claims.get("data-db-0").await.expect("data-db-0");
    let owner = claim.metadata.owner_references.and_then(|o| o.into_iter().next()).expect("claim owner");
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("StatefulSet", "db"));
    // whenScaled=Delete: a scaled-down pod takes its claim with it.
    kubectl_ok(&ts, &["scale", "sts/db", "--replicas=2"]).await;
    eventually("data-db-2 to be deleted with db-2", 30, || {
        let claims = claims.clone();
        async move { claims.get_opt("data-db-2").await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert!(claims.get("data-db-1").await.is_ok(), "claims of remaining pods stay");
    // Deleting the set removes pods, revisions and (whenDeleted=Delete) claims.
    kubectl_ok(&ts, &["delete", "sts/db"]).await;
    eventually("pods, revisions and claims to be collected", 30, || {
        let (pods, revs, claims) = (pods.clone(), revs.clone(), claims.clone());
        async move {
            let p = pods_of(&pods, "app=db").await;
            let r = revs.list(&ListParams::default().labels("app=db")).await.ok()?.items;
            let c = claims.list(&ListParams::default().labels("app=db")).await.ok()?.items;
            (p.is_empty() && r.is_empty() && c.is_empty()).then_some(())
        }
    })
    .await;
}

fn daemonset(image: &str) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "default"},
    "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {
            "metadata": {"labels": {"app": "agent"}},
            "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": image}]},
        },
    }})
}

/// The node each daemon pod is pinned to by its required node affinity.
fn pinned_node(p: &Pod) -> Option<String> {
    let terms = &p
        .spec
        .as_ref()?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let f = terms.first()?.match_fields.as_ref()?.first()?;
    (f.key == "metadata.name" && f.operator == "In").then(|| f.values.as_ref()?.first().cloned()).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_set_runs_on_eligible_nodes_follows_node_changes_and_rolls_out() {
    let Some(ts) = start() else { return };
    let c = client(&ts).await;
    fake_node(&c, "ssd-1", json!({"disk": "ssd"}), json!([])).await;
    fake_node(
        &c,
        "ssd-tainted",
        json!({"disk": "ssd"}),
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    )
    .await;
    fake_node(&c, "hdd-1", json!({"disk": "hdd"}), json!([])).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<DaemonSet> = Api::namespaced(c.clone(), "default");
    let nodes: Api<Node> = Api::all(c.clone());
    let _kubelet = kubelet(pods.clone());
    apply(&ts, daemonset("busybox:1")).await;

    let on_nodes = |want: &'static [&'static str]| {
        let pods = pods.clone();
        async move {
            let list = pods_of(&pods, "app=agent").await;
            let live: Vec<&Pod> = list.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
            let got: BTreeSet<String> = live.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()).collect();
            let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
            (live.len() == want.len() && got == want).then_some(list)
        }
    };
    let list = eventually("one pod on the only eligible node", 30, || on_nodes(&["ssd-1"])).await;
    let p = &list[0];
    assert_eq!(pinned_node(p).as_deref(), Some("ssd-1"), "pinned by matchFields, bound by the scheduler");
    let tols = p.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    for (key, effect) in [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        assert!(
            tols.iter().any(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect)),
            "missing toleration {key}:{effect}"
        );
    }
    let status = eventually("status for one node", 20, || {
        let sets = sets.clone();
        async move {
            let st = sets.get("agent").await.ok()?.status?;
            (st.number_available == Some(1)).then_some(st)
        }
    })
    .await;
    assert_eq!(
        (
            status.desired_number_scheduled,
            status.current_number_scheduled,
            status.number_ready,
            status.number_misscheduled
        ),
        (1, 1, 1, 0)
    );
    assert_eq!(status.updated_number_scheduled, Some(1));

    // A new matching node gets a pod.
    fake_node(&c, "ssd-2", json!({"disk": "ssd"}), json!([])).await;
    eventually("a pod on the new node", 30, || on_nodes(&["ssd-1", "ssd-2"])).await;
    kubectl_ok(&ts, &["rollout", "status", "ds/agent", "--timeout=60s"]).await;

    // Rolling update to a new image, one node at a time, then undo.
    kubectl_ok(&ts, &["set", "image", "ds/agent", "c=busybox:2"]).await;
    let out = kubectl_ok(&ts, &["rollout", "status", "ds/agent", "--timeout=60s"]).await;
    assert!(out.contains("daemon set \"agent\" successfully rolled out"), "{out}");
    let list = eventually("both pods on busybox:2", 30, || on_nodes(&["ssd-1", "ssd-2"])).await;
    assert!(list.iter().all(|p| image(p) == "busybox:2"), "every pod updated");
    let history = kubectl_ok(&ts, &["rollout", "history", "ds/agent"]).await;
    let lines = history.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).count();
    assert_eq!(lines, 2, "two revisions:\n{history}");
    kubectl_ok(&ts, &["rollout", "undo", "ds/agent"]).await;
    kubectl_ok(&ts, &["rollout", "status", "ds/agent", "--timeout=60s"]).await;
    eventually("both pods back on busybox:1", 30, || {
        let pods = pods.clone();
        async move {
            let list = pods_of(&pods, "app=agent").await;
            let live: Vec<&Pod> = list.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
            (live.len() == 2 && live.iter().all(|p| image(p) == "busybox:1")).then_some(())
        }
    })
    .await;

    // A node that stops matching loses its pod.
    nodes
        .patch("ssd-2", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"labels": {"disk": "hdd"}}})))
        .await
        .expect("relabel node");
    eventually("the pod to leave the relabelled node", 30, || on_nodes(&["ssd-1"])).await;
    eventually("status after relabelling", 20, || {
        let sets = sets.clone();
        async move {
            let st = sets.get("agent").await.ok()?.status?;
            (st.desired_number_scheduled == 1 && st.current_number_scheduled == 1 && st.number_misscheduled == 0)
                .then_some(st)
        }
    })
    .await;
    kubectl_ok(&ts, &["delete", "ds/agent"]).await;
    eventually("the daemon pods to be collected", 30, || {
        let pods = pods.clone();
        async move { pods_of(&pods, "app=agent").await.is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_controller_keeps_and_scales_its_replicas() {
    let Some(ts) = start() else { return };
    let c = client(&ts).await;
    fake_node(&c, "node-a", json!({}), json!([])).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let rcs: Api<ReplicationController> = Api::namespaced(c.clone(), "default");
    let _kubelet = kubelet(pods.clone());
    apply(
        &ts,
        json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "old", "namespace": "default"},
            "spec": {"replicas": 2, "selector": {"app": "old"},
                "template": {"metadata": {"labels": {"app": "old"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}}),
    )
    .await;
    let ready = |n: i32| {
        let (rcs, pods) = (rcs.clone(), pods.clone());
        async move {
            let st = rcs.get("old").await.ok()?.status?;
            let live = pods_of(&pods, "app=old").await.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none());
            (st.replicas == n
                && st.ready_replicas == Some(n)
                && st.available_replicas == Some(n)
                && live.count() == n as usize)
                .then_some(())
        }
    };
    eventually("2 ready replicas", 30, || ready(2)).await;
    let p = pods_of(&pods, "app=old").await.into_iter().next().expect("a pod");
    let owner = p.metadata.owner_references.and_then(|o| o.into_iter().next()).expect("owner");
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("ReplicationController", "old", Some(true))
    );

    kubectl_ok(&ts, &["scale", "rc/old", "--replicas=4"]).await;
    eventually("4 ready replicas", 30, || ready(4)).await;
    kubectl_ok(&ts, &["scale", "rc/old", "--replicas=1"]).await;
    eventually("1 ready replica", 30, || ready(1)).await;

    // A pod that vanishes is replaced (pick the live one: scaled-down pods may still be
    // terminating and vanish on their own).
    let p = pods_of(&pods, "app=old")
        .await
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .expect("a live pod");
    pods.delete(&p.metadata.name.unwrap_or_default(), &DeleteParams::default()).await.expect("delete pod");
    eventually("a replacement pod", 30, || {
        let pods = pods.clone();
        let old_uid = p.metadata.uid.clone();
        async move {
            let list = pods_of(&pods, "app=old").await;
            list.iter().any(|x| x.metadata.uid != old_uid && x.metadata.deletion_timestamp.is_none()).then_some(())
        }
    })
    .await;
    let gen = rcs.get("old").await.expect("rc").metadata.generation;
    eventually("observedGeneration", 20, || {
        let rcs = rcs.clone();
        async move { (rcs.get("old").await.ok()?.status?.observed_generation == gen).then_some(()) }
    })
    .await;
    kubectl_ok(&ts, &["delete", "rc/old"]).await;
    eventually("the pods to be collected", 30, || {
        let pods = pods.clone();
        async move { pods_of(&pods, "app=old").await.is_empty().then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_failure_policy_fails_a_job_on_a_matching_exit_code_and_ignores_disruptions() {
    use k8s_openapi::api::batch::v1::Job;
    let Some(ts) = start() else { return };
    let c = client(&ts).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    // Pods are bound first, so the scheduler has finished writing their status before the test
    // plays the kubelet.
    fake_node(&c, "node-a", json!({}), json!([])).await;
    apply(
        &ts,
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "calc", "namespace": "default"},
            "spec": {"backoffLimit": 0, "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            ]},
            "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox:1"}]}}}}),
    )
    .await;
    let first_pod = |exclude: Option<String>| {
        let pods = pods.clone();
        async move {
            pods_of(&pods, "job-name=calc").await.into_iter().find(|p| {
                p.metadata.name != exclude
                    && bound(p)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
            })
        }
    };
    // A disrupted pod is ignored (backoffLimit 0 would otherwise fail the Job) and replaced.
    let p = eventually("the job's pod", 20, || first_pod(None)).await;
    let name = p.metadata.name.clone().expect("name");
    let disrupted = json!({"status": {"phase": "Failed",
        "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&disrupted)).await.expect("disrupt");
    let p2 = eventually("a replacement pod", 20, || first_pod(Some(name.clone()))).await;
    let j = jobs.get("calc").await.expect("job");
    assert!(
        !j.status.and_then(|s| s.conditions).unwrap_or_default().iter().any(|c| c.type_ == "Failed"),
        "an ignored failure does not fail the job"
    );
    // Exit code 42 in container main fails the Job at once.
    let name2 = p2.metadata.name.clone().expect("name");
    let crashed = json!({"status": {"phase": "Failed", "containerStatuses": [{"name": "main", "image": "busybox:1",
        "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 42}}}]}});
    pods.patch_status(&name2, &PatchParams::default(), &Patch::Merge(&crashed)).await.expect("crash");
    let cond = eventually("the Failed condition", 20, || {
        let jobs = jobs.clone();
        async move { jobs.get("calc").await.ok()?.status?.conditions?.into_iter().find(|c| c.type_ == "Failed") }
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("PodFailurePolicy"));
    assert_eq!(
        cond.message,
        Some(format!(
            "Container main for pod default/{name2} failed with exit code 42 matching FailJob rule at index 1"
        ))
    );
    kubectl_ok(&ts, &["delete", "job/calc"]).await;
}

/// The images of the app's pods that are not being deleted.
async fn live_images(pods: &Api<Pod>, app: &str) -> BTreeSet<String> {
    pods_of(pods, &format!("app={app}"))
        .await
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(image)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_out_pauses_undoes_and_cascades_with_kubectl() {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    let Some(ts) = start() else { return };
    let c = client(&ts).await;
    fake_node(&c, "node-a", json!({}), json!([])).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let sets: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let _kubelet = kubelet(pods.clone());
    let rolled_out = |out: &str| out.contains("deployment \"web\" successfully rolled out");

    kubectl_ok(&ts, &["create", "deployment", "web", "--image=busybox:1", "--replicas=3"]).await;
    let out = kubectl_ok(&ts, &["rollout", "status", "deploy/web", "--timeout=60s"]).await;
    assert!(rolled_out(&out), "{out}");
    assert_eq!(pods_of(&pods, "app=web").await.len(), 3);

    kubectl_ok(&ts, &["set", "image", "deploy/web", "busybox=busybox:2"]).await;
    let out = kubectl_ok(&ts, &["rollout", "status", "deploy/web", "--timeout=60s"]).await;
    assert!(rolled_out(&out), "{out}");
    eventually("only busybox:2 pods", 30, || {
        let pods = pods.clone();
        async move { (live_images(&pods, "web").await == BTreeSet::from(["busybox:2".to_string()])).then_some(()) }
    })
    .await;
    let history = kubectl_ok(&ts, &["rollout", "history", "deploy/web"]).await;
    let revisions: Vec<&str> = history.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(revisions.contains(&"1") && revisions.contains(&"2"), "{history}");

    // Paused: a template change makes no new ReplicaSet until the rollout resumes.
    kubectl_ok(&ts, &["rollout", "pause", "deploy/web"]).await;
    kubectl_ok(&ts, &["set", "image", "deploy/web", "busybox=busybox:3"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n_sets = sets.list(&ListParams::default().labels("app=web")).await.expect("replicasets").items.len();
    assert_eq!(n_sets, 2, "a paused deployment does not roll out");
    kubectl_ok(&ts, &["rollout", "resume", "deploy/web"]).await;
    let out = kubectl_ok(&ts, &["rollout", "status", "deploy/web", "--timeout=60s"]).await;
    assert!(rolled_out(&out), "{out}");

    // Undo goes back to the previous template (busybox:2), reusing its ReplicaSet.
    kubectl_ok(&ts, &["rollout", "undo", "deploy/web"]).await;
    let out = kubectl_ok(&ts, &["rollout", "status", "deploy/web", "--timeout=60s"]).await;
    assert!(rolled_out(&out), "{out}");
    eventually("only busybox:2 pods after the undo", 30, || {
        let pods = pods.clone();
        async move { (live_images(&pods, "web").await == BTreeSet::from(["busybox:2".to_string()])).then_some(()) }
    })
    .await;
    let n_sets = sets.list(&ListParams::default().labels("app=web")).await.expect("replicasets").items.len();
    assert_eq!(n_sets, 3, "undo reuses the old ReplicaSet");

    // Restart: new pods from a new ReplicaSet with the same image.
    kubectl_ok(&ts, &["rollout", "restart", "deploy/web"]).await;
    let out = kubectl_ok(&ts, &["rollout", "status", "deploy/web", "--timeout=60s"]).await;
    assert!(rolled_out(&out), "{out}");
    let n_sets = sets.list(&ListParams::default().labels("app=web")).await.expect("replicasets").items.len();
    assert_eq!(n_sets, 4, "a restart rolls out a new ReplicaSet");

    // The three cascade modes of kubectl delete.
    for name in ["bg", "fg", "orph"] {
        kubectl_ok(&ts, &["create", "deployment", name, "--image=busybox:1", "--replicas=2"]).await;
        kubectl_ok(&ts, &["rollout", "status", &format!("deploy/{name}"), "--timeout=60s"]).await;
    }
    kubectl_ok(&ts, &["delete", "deploy", "bg", "--cascade=background"]).await;
    kubectl_ok(&ts, &["delete", "deploy", "fg", "--cascade=foreground"]).await;
    // kubectl waited for the foreground deletion: the ReplicaSet (and, through it, its pods)
    // went before its owner.
    let fg_sets = sets.list(&ListParams::default().labels("app=fg")).await.expect("replicasets").items;
    assert!(fg_sets.is_empty(), "{fg_sets:?}");
    kubectl_ok(&ts, &["delete", "deploy", "orph", "--cascade=orphan"]).await;
    for app in ["bg", "fg"] {
        eventually(&format!("{app}'s replica sets and pods to be gone"), 30, || {
            let (pods, sets) = (pods.clone(), sets.clone());
            async move {
                let sel = format!("app={app}");
                let s = sets.list(&ListParams::default().labels(&sel)).await.ok()?.items;
                (s.is_empty() && pods_of(&pods, &sel).await.is_empty()).then_some(())
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let orphans = sets.list(&ListParams::default().labels("app=orph")).await.expect("replicasets").items;
    assert_eq!(orphans.len(), 1, "the orphaned ReplicaSet stays");
    assert!(orphans[0].metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()), "and is released");
    let orphan_pods = pods_of(&pods, "app=orph").await;
    assert_eq!(orphan_pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).count(), 2);
}
