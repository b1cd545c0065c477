//! The controllers (kube-controller-manager's duties), one reconciler per file, each an API
//! client built on kube-rs' runtime.
//!
//! - `replicaset.rs`: pods for each ReplicaSet; `deployment.rs`: ReplicaSets for each
//!   Deployment, rollouts and their status; `endpoints.rs`: Endpoints and EndpointSlices for
//!   each Service; `node_ipam.rs`: a pod CIDR per node; `gc.rs`:
//!   background garbage collection by ownerReferences; `serviceaccount.rs`: the `default`
//!   ServiceAccount and `kube-root-ca.crt` ConfigMap in every namespace; `node_lifecycle.rs`:
//!   unreachable nodes tainted and their pods evicted; `job.rs`: Jobs and their TTL;
//!   `cronjob.rs` (with `cron_schedule.rs`): Jobs on a cron schedule; `statefulset.rs` and
//!   `daemonset.rs` with their ControllerRevision history in `revision.rs`;
//!   `replicationcontroller.rs`: the ReplicaSet logic behind an equality selector;
//!   `resourcequota.rs`: quota `status.used`; `volume_binding.rs`: PersistentVolume/Claim
//!   binding and reclaim, with the built-in local-path provisioner in `local_path.rs`;
//!   `disruption.rs`: PodDisruptionBudget status; `csr.rs`: the signer of approved
//!   CertificateSigningRequests; `hpa.rs`: HorizontalPodAutoscalers from metrics.k8s.io. `passes.rs` holds the cache-and-wake loop the last ones share.
//! - `leader.rs`: Lease-based leader election, so one server of an HA group runs them.
//! - `events.rs` writes the core/v1 Events `kubectl describe` shows; `podutil.rs` holds the pure
//!   helpers (readiness, selectors, owner references) the workload controllers share.

pub mod cron_schedule;
pub mod cronjob;
pub mod csr;
pub mod csr_approval;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod hpa;
pub mod informer;
pub mod job;
pub mod leader;
pub mod local_path;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod passes;
pub mod podutil;
pub mod replicaset;
pub mod replicationcontroller;
pub mod resourcequota;
pub mod revision;
pub mod service_lb;
pub mod serviceaccount;
pub mod statefulset;
pub mod volume_binding;
pub mod volume_protection;

use crate::config::Cidr;
use tokio_util::sync::CancellationToken;

/// What the controllers need to know about the cluster.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Pod network; node IPAM hands out one /24 of it per node.
    pub cluster_cidr: Cidr,
    /// PEM of the CA that signs the API server's serving certificate, published in every
    /// namespace as `kube-root-ca.crt`.
    pub server_ca_pem: String,
    /// Controllers not to run (`--disable NAME`, upstream's `--controllers=-NAME`), by the
    /// names in [`NAMES`]; other names (add-ons the server skips) are ignored here.
    pub disabled: Vec<String>,
    /// Node monitor grace period and period (upstream's 40 s and 5 s).
    pub node_lifecycle: node_lifecycle::Timings,
    /// The local-path storage directory of nodes that do not announce their own
    /// (`<data-dir>/storage`).
    pub local_path_dir: std::path::PathBuf,
    /// The CA keys the CSR signer issues certificates with; without them the signer is off.
    pub csr_signing: Option<std::sync::Arc<csr::SigningKeys>>,
    /// How often each HorizontalPodAutoscaler is synced (upstream's 15 s).
    pub hpa_sync_period: std::time::Duration,
}

/// The names `--disable` accepts for controllers (upstream kube-controller-manager's).
pub const NAMES: &[&str] = &[
    "replicaset",
    "deployment",
    "endpoint",
    "nodeipam",
    "garbagecollector",
    "serviceaccount",
    "root-ca-cert-publisher",
    "nodelifecycle",
    "job",
    "cronjob",
    "resourcequota",
    "persistentvolume-binder",
    "disruption",
    "csrsigning",
    "statefulset",
    "daemonset",
    "replicationcontroller",
    "horizontalpodautoscaling",
];

impl ControllerConfig {
    /// The configuration with every controller enabled.
    pub fn new(cluster_cidr: Cidr, server_ca_pem: String, disabled: Vec<String>) -> ControllerConfig {
        ControllerConfig {
            cluster_cidr,
            server_ca_pem,
            disabled,
            node_lifecycle: node_lifecycle::Timings::default(),
            local_path_dir: std::path::PathBuf::from("/var/lib/skiff/storage"),
            csr_signing: None,
            hpa_sync_period: hpa::DEFAULT_SYNC_PERIOD,
        }
    }

    /// Whether the controller called `name` (one of [`NAMES`]) should run.
    pub fn enabled(&self, name: &str) -> bool {
        !self.disabled.iter().any(|d| d == name)
    }
}

/// Runs every controller until `shutdown` fires, while this server holds the
/// `kube-system/kube-controller-manager` Lease (upstream kube-controller-manager's lock): in an HA
/// group the others stand by and take over within the lease duration when the leader dies.
/// Pods come from the process's shared pod informer (`hub`), which the scheduler uses too.
pub async fn run(
    client: kube::Client,
    cfg: ControllerConfig,
    hub: std::sync::Arc<informer::PodHub>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let c = client.clone();
    leader::run_as_leader(client, "kube-controller-manager", shutdown, move |term| {
        run_all(c.clone(), cfg.clone(), informer::Informers::from_hub(&hub), term)
    })
    .await;
    Ok(())
}

/// Runs the controllers unconditionally (the caller holds leadership) until `shutdown` fires.
pub async fn run_all(
    client: kube::Client,
    cfg: ControllerConfig,
    inf: informer::Informers,
    shutdown: CancellationToken,
) {
    use futures::future::{BoxFuture, FutureExt};
    let c = || client.clone();
    let sd = || shutdown.clone();
    let i = || inf.clone();
    let all: Vec<(&str, BoxFuture<'static, ()>)> = vec![
        ("replicaset", replicaset::run(c(), i(), sd()).boxed()),
        ("deployment", deployment::run(c(), sd()).boxed()),
        ("endpoint", endpoints::run(c(), i(), sd()).boxed()),
        ("nodeipam", node_ipam::run(c(), cfg.cluster_cidr, sd()).boxed()),
        ("garbagecollector", gc::run(c(), i(), sd()).boxed()),
        // One loop does both upstream duties; disabling either name stops it.
        ("serviceaccount", serviceaccount::run(c(), cfg.server_ca_pem.clone(), sd()).boxed()),
        ("job", job::run(c(), i(), sd()).boxed()),
        ("cronjob", cronjob::run(c(), sd()).boxed()),
        ("nodelifecycle", node_lifecycle::run(c(), i(), cfg.node_lifecycle, sd()).boxed()),
        ("resourcequota", resourcequota::run(c(), i(), sd()).boxed()),
        ("persistentvolume-binder", volume_binding::run(c(), cfg.local_path_dir.clone(), sd()).boxed()),
        ("disruption", disruption::run(c(), i(), sd()).boxed()),
        ("statefulset", statefulset::run(c(), i(), sd()).boxed()),
        ("daemonset", daemonset::run(c(), i(), sd()).boxed()),
        ("replicationcontroller", replicationcontroller::run(c(), i(), sd()).boxed()),
        ("horizontalpodautoscaling", hpa::run_with_period(c(), cfg.hpa_sync_period, sd()).boxed()),
    ];
    let mut all = all;
    all.push(("csrapproving", csr_approval::run(c(), sd()).boxed()));
    // The cloud-controller-manager's load-balancer duty, named as k3s names it (`--disable servicelb`).
    all.push(("servicelb", service_lb::run(c(), sd()).boxed()));
    // One loop does both upstream duties; disabling either name stops it.
    all.push(("pvc-protection", volume_protection::run(c(), i(), sd()).boxed()));
    if let Some(keys) = cfg.csr_signing.clone() {
        all.push(("csrsigning", csr::run(c(), keys, sd()).boxed()));
    }
    let sa_on = cfg.enabled("serviceaccount") && cfg.enabled("root-ca-cert-publisher");
    let protection_on = cfg.enabled("pvc-protection") && cfg.enabled("pv-protection");
    let run: Vec<_> = all
        .into_iter()
        .filter(|(name, _)| match *name {
            "serviceaccount" => sa_on,
            "pvc-protection" => protection_on,
            _ => cfg.enabled(name),
        })
        .map(|(_, f)| f)
        .collect();
    // Each controller is its own task: polled together (one join_all), every event any one of
    // them received woke and polled all twenty. A JoinSet also aborts them if this is dropped.
    let mut tasks = tokio::task::JoinSet::new();
    for f in run {
        tasks.spawn(f);
    }
    while tasks.join_next().await.is_some() {}
}
