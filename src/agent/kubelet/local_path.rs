//! The node's half of the local-path provisioner (`controllers/local_path.rs`): the node
//! announces its storage directory (`<data-dir>/storage`) in the annotation
//! `skiff.io/local-path-storage-dir` on its Node, and removes the directories of volumes that
//! are gone.
//!
//! Upstream's local-path-provisioner deletes a volume's directory with a helper pod and then the
//! PV object. Here the controller deletes the PV object once it is Released with reclaim policy
//! Delete, and this loop removes every `pvc-<uid>_<namespace>_<name>` directory of the storage
//! dir whose PersistentVolume `pvc-<uid>` no longer exists — asked of the API server at sweep
//! time, after listing the directory, so a volume being provisioned is never mistaken for a
//! deleted one (the kubelet only creates a directory for a volume it has read). A node may read
//! PersistentVolumes (Node authorizer), so this needs no permission a kubelet lacks. A directory
//! still used by a pod on this node (a claim deleted under a running pod) is kept until the pod
//! is gone. The sweep (and the announcement) run when a PersistentVolume is deleted and every
//! minute.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::controllers::local_path::{parse_dir_name, ANN_STORAGE_DIR};

const PERIOD: Duration = Duration::from_secs(60);

/// `<data-dir>/storage`, the node's local-path storage directory (k3s:
/// `/var/lib/rancher/k3s/storage`).
pub fn storage_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("storage")
}

/// The volume directories in `dir` that a sweep may remove: named like local-path volumes,
/// whose volume is not in `existing`, and whose claim (namespace, name) no live pod of this
/// node uses.
pub fn removable(entries: &[String], existing: &HashSet<String>, in_use: &HashSet<(String, String)>) -> Vec<String> {
    entries
        .iter()
        .filter(|e| match parse_dir_name(e) {
            Some((pv, ns, name)) => !existing.contains(&pv) && !in_use.contains(&(ns, name)),
            None => false,
        })
        .cloned()
        .collect()
}

fn list_dir(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

/// One sweep; returns the directories removed.
pub async fn sweep(client: &kube::Client, node_name: &str, dir: &Path) -> Result<Vec<PathBuf>, kube::Error> {
    let entries = list_dir(dir);
    if entries.iter().all(|e| parse_dir_name(e).is_none()) {
        return Ok(vec![]);
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let mut existing = HashSet::new();
    for e in &entries {
        if let Some((pv, _, _)) = parse_dir_name(e) {
            if pvs.get_opt(&pv).await?.is_some() {
                existing.insert(pv);
            }
        }
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default().fields(&format!("spec.nodeName={node_name}"));
    let mut in_use = HashSet::new();
    for p in pods.list(&lp).await?.items {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
        if matches!(phase, "Succeeded" | "Failed") {
            continue;
        }
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        for v in p.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(c) = &v.persistent_volume_claim {
                in_use.insert((ns.clone(), c.claim_name.clone()));
            }
        }
    }
    let mut removed = Vec::new();
    for name in removable(&entries, &existing, &in_use) {
        let path = dir.join(&name);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed the directory of a deleted local-path volume");
                removed.push(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "removing a local-path volume directory failed")
            }
        }
    }
    Ok(removed)
}

async fn announce(client: &kube::Client, node_name: &str, dir: &Path) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let current = nodes.get(node_name).await?;
    let want = dir.to_string_lossy().into_owned();
    if current.metadata.annotations.as_ref().and_then(|a| a.get(ANN_STORAGE_DIR)) == Some(&want) {
        return Ok(());
    }
    let patch = serde_json::json!({"metadata": {"annotations": {ANN_STORAGE_DIR: want}}});
    nodes.patch(node_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Announces the storage dir, then sweeps on PersistentVolume deletions and every minute.
pub async fn run(client: kube::Client, node_name: String, data_dir: PathBuf, shutdown: CancellationToken) {
    let dir = storage_dir(&data_dir);
    loop {
        match announce(&client, &node_name, &dir).await {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "announcing the local-path storage dir on the Node failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    let events = watcher(Api::<PersistentVolume>::all(client.clone()), watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut tick = tokio::time::interval(PERIOD);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            ev = events.next() => match ev {
                None => return,
                Some(Ok(watcher::Event::Delete(_))) => {}
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "persistent volume watch failed; retrying");
                    continue;
                }
            },
        }
        // Re-announce now and then: a Node deleted and registered again starts without it.
        if let Err(e) = announce(&client, &node_name, &dir).await {
            tracing::debug!(error = %e, "announcing the local-path storage dir failed; retrying");
        }
        if let Err(e) = sweep(&client, &node_name, &dir).await {
            tracing::warn!(error = %e, "sweeping local-path volume directories failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_of_deleted_unused_volumes_are_removed() {
        let entries: Vec<String> = ["pvc-a_ns_one", "pvc-b_ns_two", "pvc-c_ns_three", "lost+found", "mine"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let existing: HashSet<String> = ["pvc-a".to_string()].into();
        let in_use: HashSet<(String, String)> = [("ns".to_string(), "three".to_string())].into();
        assert_eq!(removable(&entries, &existing, &in_use), vec!["pvc-b_ns_two".to_string()]);
    }
}
