//! Start-up of a node's runtime in one call: a managed containerd when the node has no
//! `--container-runtime-endpoint`, the connection, and the import of
//! `<data-dir>/agent/images/*.tar` (so air-gapped nodes run pods with nothing but those tars).

use super::managed::ManagedContainerd;
use super::{ContainerdRuntime, Result, RuntimeError, RuntimeOptions};
use crate::config::NodeConfig;
use tokio_util::sync::CancellationToken;

/// A node's runtime and, when skiff manages it, its containerd.
pub struct NodeRuntime {
    pub runtime: ContainerdRuntime,
    /// `Some` when skiff started containerd; stop it with [`NodeRuntime::shutdown`] (or by
    /// cancelling the token given to [`start`]).
    pub managed: Option<ManagedContainerd>,
    /// Images present after the start-up import.
    pub imported: Vec<String>,
}

impl NodeRuntime {
    /// Stops the managed containerd, if any. Containers keep running in their shims.
    pub async fn shutdown(self) {
        if let Some(m) = self.managed {
            m.stop().await;
        }
    }
}

/// Starts (or connects to) containerd for `node` and imports the node's image tarballs.
pub async fn start(node: &NodeConfig, shutdown: CancellationToken) -> Result<NodeRuntime> {
    let (socket, managed) = match &node.container_runtime_endpoint {
        Some(s) => (s.clone(), None),
        None => {
            let m = ManagedContainerd::start(&node.data_dir, None, shutdown)
                .await
                .map_err(|e| RuntimeError::Containerd(e.to_string()))?;
            (m.socket().to_path_buf(), Some(m))
        }
    };
    let opts = RuntimeOptions::new(&socket, &node.containerd_namespace, &node.data_dir, &node.cgroup_root);
    let runtime = match ContainerdRuntime::new(opts).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(m) = managed {
                m.stop().await;
            }
            return Err(e);
        }
    };
    let imported = runtime.import_images().await;
    Ok(NodeRuntime { runtime, managed, imported })
}
