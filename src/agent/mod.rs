//! The node agent: kubelet (node registration, lease, pod workers, log server), the containerd
//! runtime layer, the pod network, and later the service proxy and cluster DNS.

pub mod runtime;

use crate::config::{AgentConfig, NodeConfig};
use tokio_util::sync::CancellationToken;

/// Runs the agent of a server's own node, with API credentials the server issued in-process.
pub async fn run(node: NodeConfig, api: kube::Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = (node, api);
    shutdown.cancelled().await;
    Ok(())
}

/// `skiff agent`: joins a remote server with a token (the distribution issue builds this).
pub async fn run_standalone(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = shutdown;
    anyhow::bail!("joining {} as a separate agent is not implemented yet", cfg.server)
}
