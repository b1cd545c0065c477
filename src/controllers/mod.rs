//! The controllers (kube-controller-manager's duties), one reconciler per file, each an API
//! client built on kube-rs' runtime.

pub mod events;

use crate::config::Cidr;
use tokio_util::sync::CancellationToken;

/// What the controllers need to know about the cluster.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Pod network; node IPAM hands out one /24 of it per node.
    pub cluster_cidr: Cidr,
}

/// Runs every controller until `shutdown` fires.
pub async fn run(client: kube::Client, cfg: ControllerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = (client, cfg);
    shutdown.cancelled().await;
    Ok(())
}
