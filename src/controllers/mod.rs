//! The controllers (kube-controller-manager's duties), one reconciler per file, each an API
//! client built on kube-rs' runtime.
//!
//! - `replicaset.rs`: pods for each ReplicaSet; `deployment.rs`: ReplicaSets for each
//!   Deployment, rollouts and their status; `node_ipam.rs`: a pod CIDR per node; `gc.rs`:
//!   background garbage collection by ownerReferences.
//! - `events.rs` writes the core/v1 Events `kubectl describe` shows; `podutil.rs` holds the pure
//!   helpers (readiness, selectors, owner references) the workload controllers share.

pub mod deployment;
pub mod events;
pub mod gc;
pub mod node_ipam;
pub mod podutil;
pub mod replicaset;

use crate::config::Cidr;
use tokio_util::sync::CancellationToken;

/// What the controllers need to know about the cluster.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Pod network; node IPAM hands out one /24 of it per node.
    pub cluster_cidr: Cidr,
}

/// Runs every controller until `shutdown` fires.
///
/// Leader election seam: in an HA group only one server may run these (upstream
/// kube-controller-manager holds the `kube-controller-manager` Lease in `kube-system`). The
/// intended shape is for this function to acquire a coordination.k8s.io Lease first, call
/// [`run_all`] with a child token, and cancel that token when the lease is lost. Until HA lands,
/// every server runs them directly.
pub async fn run(client: kube::Client, cfg: ControllerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_all(client, cfg, shutdown).await;
    Ok(())
}

/// Runs the controllers unconditionally (the caller holds leadership) until `shutdown` fires.
pub async fn run_all(client: kube::Client, cfg: ControllerConfig, shutdown: CancellationToken) {
    tokio::join!(
        replicaset::run(client.clone(), shutdown.clone()),
        deployment::run(client.clone(), shutdown.clone()),
        node_ipam::run(client.clone(), cfg.cluster_cidr, shutdown.clone()),
        gc::run(client, shutdown.clone()),
    );
}
