//! The scheduler: watches unbound pods and nodes through the API, filters and scores nodes
//! (pure functions in `filter.rs` and `score.rs`), and binds each pod with the `binding`
//! subresource, as kube-scheduler does.

use tokio_util::sync::CancellationToken;

/// Runs until `shutdown` fires.
pub async fn run(client: kube::Client, shutdown: CancellationToken) -> anyhow::Result<()> {
    let _ = client;
    shutdown.cancelled().await;
    Ok(())
}
