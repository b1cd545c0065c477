//! The Node's life in the API: registration (create, or reconcile an existing Node), status
//! posts (on change and at least every 5 minutes, checked every 10 s — upstream's
//! `nodeStatusUpdateFrequency` and `nodeStatusReportFrequency`), the `kube-node-lease` Lease
//! renewed every 10 s, and waiting for the node IPAM controller to set `spec.podCIDR`.

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::host_info::{gather, HostInfo};
use super::node_status::{meaningfully_changed, missing_taints, new_node, node_labels, node_status, Health};
use crate::agent::runtime::Runtime;
use crate::config::{Cidr, NodeConfig};

/// Where node leases live (upstream `kube-node-lease`).
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Upstream `nodeLeaseDurationSeconds`; renewed every quarter of it.
pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const LEASE_RENEW_INTERVAL: Duration = Duration::from_secs(10);
pub const STATUS_UPDATE_INTERVAL: Duration = Duration::from_secs(10);
pub const STATUS_REPORT_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The API server refused or failed a call; the loop retries.
    #[error("API server: {0}")]
    Api(#[from] kube::Error),
    /// The API returned a Node without a uid (the Lease's ownerReference needs one).
    #[error("the API server returned node {0:?} without metadata.uid")]
    NoUid(String),
    /// `spec.podCIDR` is not an IPv4 CIDR this agent can use.
    #[error("node spec.podCIDR {0:?} is not an IPv4 CIDR like 10.42.0.0/24")]
    BadPodCidr(String),
    /// The node watch ended (shutdown).
    #[error("watch on node {0:?} ended")]
    WatchEnded(String),
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Creates the Node, or brings an existing one's labels and taints up to date
/// (`registerWithAPIServer` → `tryRegisterWithAPIServer` → `reconcileExistingNode`).
pub async fn register(client: &Client, cfg: &NodeConfig, host: &HostInfo) -> Result<Node, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    match api.create(&PostParams::default(), &new_node(cfg, host)).await {
        Ok(n) => {
            tracing::info!(node = %cfg.node_name, "registered node");
            return Ok(n);
        }
        Err(e) if is_status(&e, 409) => {}
        Err(e) => {
            tracing::warn!(node = %cfg.node_name, error = %e, "registering node failed");
            return Err(e.into());
        }
    }
    let existing = api.get(&cfg.node_name).await?;
    let mut patch = json!({ "metadata": { "labels": node_labels(cfg, host) } });
    let have = existing.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    let add = missing_taints(cfg, &have);
    if !add.is_empty() {
        let mut all = have;
        all.extend(add);
        patch["spec"] = json!({ "taints": all });
    }
    let n = api.patch(&cfg.node_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::info!(node = %cfg.node_name, "node already registered; labels and taints reconciled");
    Ok(n)
}

/// Registers, retrying with back-off (1 s doubling to 7 s, as upstream) until it works or the
/// agent shuts down.
pub async fn register_until_done(client: &Client, cfg: &NodeConfig, shutdown: &CancellationToken) -> Option<Node> {
    let mut delay = Duration::from_millis(500);
    loop {
        let host = host_info(cfg.data_dir.clone()).await;
        match register(client, cfg, &host).await {
            Ok(n) => return Some(n),
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "node registration failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(7));
    }
}

async fn host_info(data_dir: PathBuf) -> HostInfo {
    // statvfs and /proc reads block; keep them off the async workers.
    tokio::task::spawn_blocking(move || gather(&data_dir)).await.unwrap_or_default()
}

/// The node's Lease, owned by the Node so it goes when the Node does (upstream
/// `setNodeOwnerFunc`).
pub fn lease_object(node_name: &str, node_uid: &str, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(node_name.into()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node_name.into(),
                uid: node_uid.into(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node_name.into()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// One renewal: update the cached Lease (PUT, so a conflicting writer is noticed), or fetch /
/// create it when there is none cached (upstream `leaseController.sync`).
pub async fn renew_lease(
    api: &Api<Lease>,
    cached: &mut Option<Lease>,
    node_name: &str,
    node_uid: &str,
) -> Result<(), NodeError> {
    let now = Timestamp::now();
    let desired = lease_object(node_name, node_uid, now);
    let mut base = match cached.take() {
        Some(l) => l,
        None => match api.get_opt(node_name).await? {
            Some(l) => l,
            None => {
                match api.create(&PostParams::default(), &desired).await {
                    Ok(l) => {
                        *cached = Some(l);
                        return Ok(());
                    }
                    // Someone created it meanwhile: update it next round.
                    Err(e) if is_status(&e, 409) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
        },
    };
    base.spec = desired.spec;
    if base.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()) {
        base.metadata.owner_references = desired.metadata.owner_references;
    }
    let updated = api.replace(node_name, &PostParams::default(), &base).await?;
    *cached = Some(updated);
    Ok(())
}

/// Renews the Lease every 10 s until shutdown; after a failure it retries within a second.
pub async fn lease_loop(client: Client, node_name: String, node_uid: String, shutdown: CancellationToken) {
    let api: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let mut cached = None;
    loop {
        let next = match renew_lease(&api, &mut cached, &node_name, &node_uid).await {
            Ok(()) => LEASE_RENEW_INTERVAL,
            Err(e) => {
                tracing::warn!(node = %node_name, error = %e, "renewing node lease failed");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// Posts the node status whenever it changes and at least every 5 minutes; `health` changes
/// (the pod network becoming ready) post at once.
pub async fn status_loop(
    client: Client,
    runtime: Arc<dyn Runtime>,
    cfg: NodeConfig,
    initial: Option<NodeStatus>,
    mut health: watch::Receiver<Health>,
    shutdown: CancellationToken,
) {
    let api: Api<Node> = Api::all(client);
    let mut base = initial;
    let mut posted: Option<NodeStatus> = None;
    let mut last_post: Option<Instant> = None;
    loop {
        let mut h = health.borrow_and_update().clone();
        // A cheap call tells whether the runtime answers (upstream: the CRI `Status` check).
        h.runtime_ready = match tokio::time::timeout(Duration::from_secs(5), runtime.list_sandboxes()).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "container runtime check failed");
                false
            }
            Err(_) => {
                tracing::warn!("container runtime did not answer within 5 s");
                false
            }
        };
        let host = host_info(cfg.data_dir.clone()).await;
        // The node lifecycle controller marks a node whose lease lapsed (a server restart, a
        // network cut) Ready=Unknown; the kubelet puts its own view back at once rather than at
        // the next periodic report, as upstream's kubelet does by diffing against the Node it
        // reads.
        let on_server = api.get(&cfg.node_name).await.ok().and_then(|n| n.status);
        let drifted = on_server.as_ref().is_some_and(|s| ready_of(s) != ready_of_posted(posted.as_ref()));
        let prev = if drifted { on_server.as_ref() } else { posted.as_ref().or(base.as_ref()) };
        let status = node_status(&cfg, &host, &h, prev, Timestamp::now());
        let due = last_post.is_none_or(|t| t.elapsed() >= STATUS_REPORT_INTERVAL);
        let mut retry = false;
        if due || drifted || meaningfully_changed(posted.as_ref(), &status) {
            let patch = json!({ "status": status });
            match api.patch_status(&cfg.node_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(n) => {
                    base = n.status;
                    posted = Some(status);
                    last_post = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(node = %cfg.node_name, error = %e, "posting node status failed");
                    retry = true;
                }
            }
        }
        let wait = if retry { Duration::from_secs(2) } else { STATUS_UPDATE_INTERVAL };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            r = health.changed() => if r.is_err() { return },
        }
    }
}

/// The status of a node's Ready condition ("True", "False", "Unknown").
fn ready_of(s: &NodeStatus) -> Option<String> {
    s.conditions.iter().flatten().find(|c| c.type_ == "Ready").map(|c| c.status.clone())
}

fn ready_of_posted(s: Option<&NodeStatus>) -> Option<String> {
    s.and_then(ready_of)
}

/// Waits until the Node has `spec.podCIDR` (set by the node IPAM controller) and returns it;
/// `None` on shutdown.
pub async fn wait_for_pod_cidr(
    client: Client,
    node_name: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Cidr>, NodeError> {
    let api: Api<Node> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let stream = watcher(api, cfg).default_backoff().applied_objects();
    futures::pin_mut!(stream);
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            n = stream.next() => n,
        };
        match next {
            None => return Err(NodeError::WatchEnded(node_name.into())),
            Some(Err(e)) => tracing::warn!(node = node_name, error = %e, "watching own node failed; retrying"),
            Some(Ok(node)) => {
                if let Some(c) = node.spec.and_then(|s| s.pod_cidr) {
                    return Cidr::parse(&c).map(Some).ok_or(NodeError::BadPodCidr(c));
                }
                tracing::info!(node = node_name, "waiting for the node IPAM controller to set spec.podCIDR");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_is_held_by_the_node_and_owned_by_it() {
        let l = lease_object("n1", "uid-1", Timestamp::from_second(1_700_000_000).unwrap());
        assert_eq!(l.metadata.namespace.as_deref(), Some("kube-node-lease"));
        let spec = l.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        let owner = &l.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("Node", "n1", "uid-1"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_marked_unknown_by_the_controller_is_put_back_at_once() {
        use crate::agent::kubelet::fake_api::FakeApi;
        use crate::agent::kubelet::fake_runtime::FakeRuntime;
        let fake = FakeApi::start().await;
        let cfg = crate::agent::kubelet::node_status::tests::cfg();
        let mut data = cfg.clone();
        let dir = tempfile::tempdir().expect("tempdir");
        data.data_dir = dir.path().to_path_buf();
        fake.put(
            "nodes",
            "",
            &data.node_name,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": data.node_name}}),
        );
        let health = Health { runtime_version: "fake".into(), network_ready: true, runtime_ready: true };
        let (tx, rx) = watch::channel(health.clone());
        let shutdown = CancellationToken::new();
        let ready = |fake: &FakeApi| {
            fake.get("nodes", "", "n1").and_then(|n| {
                n.pointer("/status/conditions")?
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")
                    .and_then(|c| c["status"].as_str().map(String::from))
            })
        };
        let task =
            tokio::spawn(status_loop(fake.client(), Arc::new(FakeRuntime::new()), data, None, rx, shutdown.clone()));
        let wait_for = |want: &'static str| {
            let fake = &fake;
            async move {
                for _ in 0..100 {
                    if ready(fake).as_deref() == Some(want) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                false
            }
        };
        assert!(wait_for("True").await, "the first status is posted");
        // The node lifecycle controller's verdict after a lapsed lease.
        let mut node = fake.get("nodes", "", "n1").expect("node");
        for c in node["status"]["conditions"].as_array_mut().expect("conditions") {
            if c["type"] == "Ready" {
                c["status"] = json!("Unknown");
                c["reason"] = json!("NodeStatusUnknown");
            }
        }
        fake.put("nodes", "", "n1", node);
        // Nothing changed on the node itself; the next pass (woken here instead of waiting
        // the update interval) must still repost.
        tx.send_replace(health);
        assert!(wait_for("True").await, "the kubelet puts Ready=True back: {:?}", ready(&fake));
        shutdown.cancel();
        let _ = task.await;
    }
}
