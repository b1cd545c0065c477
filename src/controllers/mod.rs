//! The controllers (kube-controller-manager's duties), one reconciler per file, each an API
//! client built on kube-rs' runtime.
//!
//! - `replicaset.rs`: pods for each ReplicaSet; `deployment.rs`: ReplicaSets for each
//!   Deployment, rollouts and their status; `endpoints.rs`: Endpoints and EndpointSlices for
//!   each Service; `node_ipam.rs`: a pod CIDR per node; `gc.rs`:
//!   background garbage collection by ownerReferences.
//! - `leader.rs`: Lease-based leader election, so one server of an HA group runs them.
//! - `events.rs` writes the core/v1 Events `kubectl describe` shows; `podutil.rs` holds the pure
//!   helpers (readiness, selectors, owner references) the workload controllers share.

pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod leader;
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

/// Runs every controller until `shutdown` fires, while this server holds the
/// `kube-system/kube-controller-manager` Lease (upstream kube-controller-manager's lock): in an HA
/// group the others stand by and take over within the lease duration when the leader dies.
pub async fn run(client: kube::Client, cfg: ControllerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let c = client.clone();
    leader::run_as_leader(client, "kube-controller-manager", shutdown, move |term| {
        run_all(c.clone(), cfg.clone(), term)
    })
    .await;
    Ok(())
}

/// Runs the controllers unconditionally (the caller holds leadership) until `shutdown` fires.
pub async fn run_all(client: kube::Client, cfg: ControllerConfig, shutdown: CancellationToken) {
    tokio::join!(
        replicaset::run(client.clone(), shutdown.clone()),
        deployment::run(client.clone(), shutdown.clone()),
        endpoints::run(client.clone(), shutdown.clone()),
        node_ipam::run(client.clone(), cfg.cluster_cidr, shutdown.clone()),
        gc::run(client, shutdown.clone()),
    );
}
