//! The kubelet: registers the Node and keeps its Lease and status fresh, runs the pods bound to
//! this node through the [`Runtime`], writes their status, and serves container logs to the API
//! server.
//!
//! Pure logic lives in its own files (`container_spec`, `pod_status`, `node_status`, `backoff`,
//! `cri_log`, `resources`); `pod_sync` decides against the `Runtime` trait only; `node`,
//! `pod_workers`, `events` and `server` do the API and network I/O.

pub mod backoff;
pub mod channel_protocol;
pub mod container_spec;
pub mod cri_log;
pub mod events;
#[cfg(test)]
mod fake_api;
pub mod fake_runtime;
pub mod host_info;
pub mod local_path;
pub mod node;
pub mod node_status;
pub mod objects;
pub mod pod_status;
pub mod pod_sync;
pub mod pod_workers;
pub mod portforward;
pub mod portforward_ws;
pub mod probes;
pub mod resources;
pub mod server;
pub mod service_env;
pub mod serving_cert;
pub mod stats;
pub mod streaming;
pub mod termination;
pub mod volumes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::runtime::Runtime;
use crate::config::NodeConfig;
use node_status::Health;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The kubelet port is taken or the node IP is not on this machine.
    #[error("binding the kubelet API on {addr}: {source} (is another kubelet running? check --node-ip and the kubelet port)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The serving certificate or the client CA could not be set up.
    #[error(transparent)]
    Cert(#[from] serving_cert::CertError),
    /// The Node could not be registered or watched.
    #[error(transparent)]
    Node(#[from] node::NodeError),
    /// The pod watch failed for good.
    #[error(transparent)]
    PodWorkers(#[from] pod_workers::PodWorkerError),
}

/// A kubelet for one node. Build it with [`Kubelet::new`], adjust with the `with_*` methods,
/// then [`Kubelet::run`] it until shutdown.
pub struct Kubelet {
    node: NodeConfig,
    client: kube::Client,
    runtime: Arc<dyn Runtime>,
    log_root: PathBuf,
    client_ca_pem: Option<String>,
    runtime_version: String,
    cluster_domain: String,
}

impl Kubelet {
    pub fn new(node: NodeConfig, client: kube::Client, runtime: Arc<dyn Runtime>) -> Self {
        Kubelet {
            node,
            client,
            runtime,
            log_root: PathBuf::from(container_spec::DEFAULT_LOG_ROOT),
            client_ca_pem: None,
            // The Runtime trait does not report a version yet.
            runtime_version: "containerd://unknown".into(),
            cluster_domain: container_spec::CLUSTER_DOMAIN.into(),
        }
    }

    /// Where container logs go (default `/var/log/pods`; tests use a temporary directory).
    pub fn with_log_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.log_root = root.into();
        self
    }

    /// The CA whose client certificates the kubelet API accepts. Without one the kubelet API
    /// is not served at all (it never runs unauthenticated).
    pub fn with_client_ca(mut self, pem: impl Into<String>) -> Self {
        self.client_ca_pem = Some(pem.into());
        self
    }

    /// `status.nodeInfo.containerRuntimeVersion`, e.g. `containerd://1.6.20`.
    pub fn with_runtime_version(mut self, v: impl Into<String>) -> Self {
        self.runtime_version = v.into();
        self
    }

    /// Binds the kubelet API on `<node IP>:<kubelet port>` and runs until shutdown.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KubeletError> {
        let listener = if self.client_ca_pem.is_some() {
            let addr = SocketAddr::new(self.node.node_ip, self.node.kubelet_port);
            Some(TcpListener::bind(addr).await.map_err(|source| KubeletError::Bind { addr, source })?)
        } else {
            None
        };
        self.run_with_listener(listener, shutdown).await
    }

    /// Runs with an already-bound kubelet API listener (convention 3: tests bind port 0).
    pub async fn run_with_listener(
        self,
        listener: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> Result<(), KubeletError> {
        // Everything below stops when this function returns, whatever the reason.
        let tasks = shutdown.child_token();
        let _stop = tasks.clone().drop_guard();
        let cfg = &self.node;

        match (listener, &self.client_ca_pem) {
            (Some(l), Some(ca)) => {
                let (dir, ip, name) = (cfg.data_dir.clone(), cfg.node_ip, cfg.node_name.clone());
                let (crt, key) = tokio::task::spawn_blocking(move || serving_cert::load_or_create(&dir, ip, &name))
                    .await
                    .unwrap_or_else(|e| Err(serving_cert::CertError::Pem(format!("certificate task failed: {e}"))))?;
                let tls = serving_cert::server_config(&crt, &key, ca)?;
                let stats = Arc::new(stats::StatsProvider::new(&cfg.node_name, &cfg.cgroup_root, self.runtime.clone()));
                tokio::spawn(stats.clone().run_sampler(tasks.clone()));
                let state = server::ServerState {
                    log_root: self.log_root.clone(),
                    liveness: Arc::new(server::RuntimeLiveness(self.runtime.clone())),
                    runtime: Some(self.runtime.clone()),
                    stats: Some(stats),
                };
                tracing::info!(addr = ?l.local_addr().ok(), "kubelet API listening");
                tokio::spawn(server::serve(l, tls, state, tasks.clone()));
            }
            _ => tracing::warn!("no kubelet client CA: the kubelet API (logs) is not served"),
        }

        let recorder: Arc<dyn events::EventSink> =
            Arc::new(events::Recorder::spawn(self.client.clone(), cfg.node_name.clone(), tasks.clone()));

        let Some(registered) = node::register_until_done(&self.client, cfg, &tasks).await else { return Ok(()) };
        let uid = registered.metadata.uid.clone().ok_or_else(|| node::NodeError::NoUid(cfg.node_name.clone()))?;
        let (health_tx, health_rx) = watch::channel(Health {
            runtime_version: self.runtime_version.clone(),
            network_ready: false,
            runtime_ready: true,
        });
        tokio::spawn(node::lease_loop(self.client.clone(), cfg.node_name.clone(), uid, tasks.clone()));
        // The node's half of the local-path provisioner (storage dir, volume directory cleanup).
        tokio::spawn(local_path::run(self.client.clone(), cfg.node_name.clone(), cfg.data_dir.clone(), tasks.clone()));
        tokio::spawn(node::status_loop(
            self.client.clone(),
            self.runtime.clone(),
            cfg.clone(),
            registered.status.clone(),
            health_rx,
            tasks.clone(),
        ));

        // Pods need the pod network: wait for the node IPAM controller's podCIDR first.
        let Some(cidr) = node::wait_for_pod_cidr(self.client.clone(), &cfg.node_name, &tasks).await? else {
            return Ok(());
        };
        loop {
            match self.runtime.set_pod_cidr(cidr).await {
                Ok(()) => break,
                Err(e) => tracing::warn!(%cidr, error = %e, "configuring the pod network failed; retrying"),
            }
            tokio::select! {
                _ = tasks.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        tracing::info!(%cidr, "pod network ready");
        health_tx.send_modify(|h| h.network_ready = true);

        let host = {
            let dir = cfg.data_dir.clone();
            tokio::task::spawn_blocking(move || host_info::gather(&dir)).await.unwrap_or_default()
        };
        let sync_cfg = pod_sync::SyncConfig {
            node_ip: cfg.node_ip,
            cluster_dns: cfg.cluster_dns,
            cluster_domain: self.cluster_domain.clone(),
            log_root: self.log_root.clone(),
            pods_dir: cfg.data_dir.join("agent").join("pods"),
            node_cpu_millis: host.cpu_cores * 1000,
            node_memory_bytes: host.memory_bytes,
        };
        pod_workers::run(self.client.clone(), self.runtime.clone(), sync_cfg, &cfg.node_name, recorder, tasks.clone())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::fake_api::FakeApi;
    use super::fake_runtime::{Call, FakeRuntime};
    use super::*;
    use serde_json::{json, Value};
    use std::future::Future;

    fn node_config(data_dir: &std::path::Path) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.to_path_buf(),
            node_name: "n1".into(),
            node_ip: "127.0.0.1".parse().unwrap(),
            labels: vec![("tier".into(), "edge".into())],
            taints: vec![],
            container_runtime_endpoint: None,
            containerd_namespace: "skiff-test".into(),
            kubelet_port: 10250,
            cgroup_root: "skiff".into(),
            cluster_cidr: crate::config::Cidr::parse("10.42.0.0/16").unwrap(),
            cluster_dns: "10.43.0.10".parse().unwrap(),
            flannel_backend: "vxlan".into(),
        }
    }

    async fn eventually<F, Fut>(what: &str, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        for _ in 0..200 {
            if f().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn condition(obj: &Option<Value>, type_: &str) -> Option<String> {
        obj.as_ref()?["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .and_then(|c| c["status"].as_str().map(str::to_string))
    }

    #[tokio::test]
    async fn a_kubelet_registers_runs_a_pod_reports_its_status_and_finishes_its_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let api = FakeApi::start().await;
        let rt = Arc::new(FakeRuntime::new());
        let shutdown = CancellationToken::new();
        let kubelet = Kubelet::new(node_config(dir.path()), api.client(), rt.clone())
            .with_log_root(dir.path().join("pods"))
            .with_runtime_version("containerd://fake");
        let run = tokio::spawn(kubelet.run_with_listener(None, shutdown.clone()));

        // Registered, NotReady until the pod CIDR arrives, with a lease.
        eventually("node registered", || async {
            condition(&api.get("nodes", "", "n1"), "Ready").as_deref() == Some("False")
        })
        .await;
        let node = api.get("nodes", "", "n1").unwrap();
        assert_eq!(node["metadata"]["labels"]["tier"], "edge");
        assert_eq!(node["status"]["nodeInfo"]["containerRuntimeVersion"], "containerd://fake");
        eventually("lease", || async { api.get("leases", "kube-node-lease", "n1").is_some() }).await;
        let lease = api.get("leases", "kube-node-lease", "n1").unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "n1");
        assert_eq!(lease["metadata"]["ownerReferences"][0]["uid"], node["metadata"]["uid"]);

        let mut with_cidr = node.clone();
        with_cidr["spec"]["podCIDR"] = json!("10.42.7.0/24");
        api.put("nodes", "", "n1", with_cidr);
        eventually("pod CIDR handed to the runtime", || async { rt.pod_cidr().is_some() }).await;
        assert_eq!(rt.pod_cidr().unwrap().to_string(), "10.42.7.0/24");
        eventually("node Ready", || async {
            condition(&api.get("nodes", "", "n1"), "Ready").as_deref() == Some("True")
        })
        .await;

        // A pod bound to this node runs and its status comes back.
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "uid": "pod-uid-1"},
            "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 30,
                     "containers": [{"name": "app", "image": "localhost/busybox:1"}]},
            "status": {"phase": "Pending"}
        });
        api.put("pods", "default", "web", pod);
        eventually("pod Running", || async {
            api.get("pods", "default", "web").is_some_and(|p| p["status"]["phase"] == "Running")
        })
        .await;
        let p = api.get("pods", "default", "web").unwrap();
        assert_eq!(p["status"]["podIP"], "10.42.0.2");
        assert_eq!(p["status"]["hostIP"], "127.0.0.1");
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
        eventually("events posted", || async {
            let reasons: Vec<Value> = api.list("events").iter().map(|e| e["reason"].clone()).collect();
            reasons.contains(&json!("Started")) && reasons.contains(&json!("Created"))
        })
        .await;

        // A container exit reported by the runtime triggers a prompt re-sync (well before the
        // periodic one): under restartPolicy Always the first crash restarts at once.
        let first = rt.container("pod-uid-1", "app").unwrap().id;
        rt.exit(&first, 1);
        let t0 = std::time::Instant::now();
        eventually("restart reported", || async {
            api.get("pods", "default", "web").is_some_and(|p| p["status"]["containerStatuses"][0]["restartCount"] == 1)
        })
        .await;
        assert!(t0.elapsed() < Duration::from_secs(5), "restarted on the runtime event, not the resync");
        let p = api.get("pods", "default", "web").unwrap();
        assert_eq!(p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 1);

        // Graceful deletion: containers stopped with the pod's grace period, then the pod object
        // deleted with gracePeriodSeconds=0 and a UID precondition.
        let mut deleting = api.get("pods", "default", "web").unwrap();
        deleting["metadata"]["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
        deleting["metadata"]["deletionGracePeriodSeconds"] = json!(5);
        api.put("pods", "default", "web", deleting);
        eventually("pod deleted", || async { api.get("pods", "default", "web").is_none() }).await;
        assert!(rt.calls().iter().any(|c| matches!(c, Call::StopContainer(_, g) if *g == Duration::from_secs(5))));
        let delete = api.requests().into_iter().find(|r| r.0 == "DELETE").unwrap();
        let body: Value = serde_json::from_str(&delete.2).unwrap();
        assert_eq!(body["gracePeriodSeconds"], 0);
        assert_eq!(body["preconditions"]["uid"], "pod-uid-1");
        eventually("runtime cleaned", || async { rt.container_count() == 0 && rt.sandbox_count() == 0 }).await;

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn containers_of_pods_gone_from_the_api_are_cleaned_up_after_the_first_list() {
        let dir = tempfile::tempdir().unwrap();
        let api = FakeApi::start().await;
        let rt = Arc::new(FakeRuntime::new());
        let stale =
            crate::agent::runtime::PodRef { uid: "old".into(), namespace: "default".into(), name: "gone".into() };
        let kept =
            crate::agent::runtime::PodRef { uid: "kept-uid".into(), namespace: "default".into(), name: "kept".into() };
        for (p, id) in [(&stale, "c-old"), (&kept, "c-kept")] {
            rt.insert(
                crate::agent::runtime::Sandbox { pod: p.clone(), ip: Some("10.42.0.9".parse().unwrap()) },
                crate::agent::runtime::ContainerStatus {
                    id: id.into(),
                    pod: p.clone(),
                    name: "app".into(),
                    image: crate::agent::runtime::ImageRef {
                        name: "localhost/busybox:1".into(),
                        id: "sha256:1".into(),
                    },
                    state: crate::agent::runtime::ContainerState::Running { started_at: std::time::SystemTime::now() },
                    restart_count: 0,
                    log_path: dir.path().join("x.log"),
                },
            );
        }
        // The API knows the node (with a CIDR) and the kept pod only.
        api.put(
            "nodes",
            "",
            "n1",
            json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "uid": "node-uid"}, "spec": {"podCIDR": "10.42.0.0/24"}}),
        );
        api.put(
            "pods",
            "default",
            "kept",
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "kept", "namespace": "default", "uid": "kept-uid"},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "localhost/busybox:1"}]},
            "status": {"phase": "Running"}}),
        );
        let shutdown = CancellationToken::new();
        let kubelet =
            Kubelet::new(node_config(dir.path()), api.client(), rt.clone()).with_log_root(dir.path().join("pods"));
        let run = tokio::spawn(kubelet.run_with_listener(None, shutdown.clone()));
        eventually("orphan removed", || async { rt.container("old", "app").is_none() }).await;
        assert!(rt.container("kept-uid", "app").is_some(), "the adopted container is left running");
        assert!(!rt.calls().iter().any(|c| matches!(c, Call::StartContainer { .. })), "nothing restarted");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), run).await.unwrap().unwrap().unwrap();
    }
}
