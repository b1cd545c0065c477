//! The node agent: kubelet (node registration, lease, pod workers, log server), the containerd
//! runtime layer, the pod network, and later the service proxy and cluster DNS.

pub mod network;
pub mod runtime;

/// Declared apart from the other modules so branches adding siblings merge without conflict.
pub mod kubelet;

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
    let client = crate::client::new(creds.kube.clone())?;
    // Starts (or connects to) containerd and imports `<data-dir>/agent/images/*.tar`.
    let rt = runtime::node::start(&node, shutdown.clone()).await?;
    let version = match rt.runtime.client().version().version(()).await {
        Ok(v) => format!("containerd://{}", v.into_inner().version),
        Err(_) => "containerd://unknown".to_string(),
    };
    tracing::info!(node = %node.node_name, runtime = %version, images = ?rt.imported, "container runtime ready");
    let runtime: std::sync::Arc<dyn runtime::Runtime> = std::sync::Arc::new(rt.runtime.clone());
    let result = kubelet::Kubelet::new(node, client, runtime)
        .with_client_ca(creds.kubelet_client_ca_pem)
        .with_runtime_version(version)
        .run(shutdown)
        .await;
    // Containers keep running in their shims; only the managed containerd stops.
    if let Some(m) = rt.managed {
        m.stop().await;
    }
    result?;
    Ok(())
}

/// `skiff agent`: joins a remote server with a token (the distribution issue builds this).
pub async fn run_standalone(cfg: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = shutdown;
    anyhow::bail!("joining {} as a separate agent is not implemented yet", cfg.server)
}
