//! The node agent: kubelet (node registration, lease, pod workers, log server), the containerd
//! runtime layer, the pod network, and later the service proxy and cluster DNS.

pub mod network;
pub mod runtime;

use crate::config::{AgentConfig, NodeConfig};
use tokio_util::sync::CancellationToken;

/// What the agent needs from the control plane to run a node.
#[derive(Clone)]
pub struct AgentCredentials {
    /// API client configuration: server URL, cluster CA, and the node's client certificate
    /// (CN `system:node:<name>`, O `system:nodes`).
    pub kube: kube::Config,
    /// PEM of the CA whose client certificates the kubelet API accepts (the API server's
    /// kubelet-client certificate is signed by it).
    pub kubelet_client_ca_pem: String,
}

/// Runs the agent of a server's own node, with API credentials the server issued in-process.
pub async fn run(node: NodeConfig, creds: AgentCredentials, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = (node, creds);
    shutdown.cancelled().await;
    Ok(())
}

/// `skiff agent`: joins a remote server with a token (the distribution issue builds this).
pub async fn run_standalone(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = shutdown;
    anyhow::bail!("joining {} as a separate agent is not implemented yet", cfg.server)
}
