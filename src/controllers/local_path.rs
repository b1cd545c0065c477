//! The built-in local-path provisioner (k3s' `rancher.io/local-path`): the default StorageClass
//! `local-path` (WaitForFirstConsumer, reclaimPolicy Delete), and for each claim of a class with
//! that provisioner a `hostPath` PersistentVolume `pvc-<claim uid>` on the claim's node, at
//! `<storage dir>/pvc-<uid>_<namespace>_<name>` (type DirectoryOrCreate: the kubelet creates
//! the directory at the first mount), pinned to the node by a required nodeAffinity on
//! `kubernetes.io/hostname`.
//!
//! The storage dir is `<data-dir>/storage` on each node (k3s: `/var/lib/rancher/k3s/storage`),
//! so `/var/lib/skiff/storage` by default. A node's agent announces its own in the annotation
//! [`ANN_STORAGE_DIR`] on its Node; a node without it gets the server's `<data-dir>/storage`.
//!
//! Deletion (reclaim policy Delete of a Released volume): the controller deletes the PV object;
//! the directory lives on the node, and the node's agent (`agent/kubelet/local_path.rs`)
//! removes every `pvc-<uid>_<ns>_<name>` directory of its storage dir whose PersistentVolume no
//! longer exists. A node may read PVs but not delete them, so this split needs no extra RBAC.

use super::events::object_ref;
use super::volume_binding::{BindingError, Context, ANN_PROVISIONED_BY};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::ResourceExt;
use serde_json::{json, Value};
use std::path::Path;

pub const PROVISIONER: &str = "rancher.io/local-path";
pub const CLASS: &str = "local-path";
/// Annotation on a Node: the absolute path of that node's local-path storage directory.
pub const ANN_STORAGE_DIR: &str = "skiff.io/local-path-storage-dir";
/// k3s' provisioner records the node on the volume too.
pub const ANN_LP_SELECTED_NODE: &str = "local.path.provisioner/selected-node";

/// The default StorageClass created at bootstrap.
pub fn storage_class() -> Value {
    json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer"})
}

/// `pvc-<claim uid>`, the volume's name (as every CSI and external provisioner names them).
pub fn volume_name(c: &PersistentVolumeClaim) -> String {
    format!("pvc-{}", c.metadata.uid.as_deref().unwrap_or_default())
}

/// `pvc-<uid>_<namespace>_<name>`, the directory's name (k3s' layout).
pub fn dir_name(c: &PersistentVolumeClaim) -> String {
    format!("{}_{}_{}", volume_name(c), c.namespace().unwrap_or_default(), c.name_any())
}

/// The (volume name, claim namespace, claim name) a directory name stands for, or None for
/// anything that is not a local-path volume directory. Namespaces and names are DNS labels or
/// subdomains, so they hold no `_`.
pub fn parse_dir_name(s: &str) -> Option<(String, String, String)> {
    let mut parts = s.split('_');
    let (pv, ns, name) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !pv.starts_with("pvc-") || pv.len() <= 4 || ns.is_empty() || name.is_empty() {
        return None;
    }
    Some((pv.to_string(), ns.to_string(), name.to_string()))
}

/// The PersistentVolume for claim `c` of `class` on `node`, pre-bound to the claim.
pub fn volume_for(c: &PersistentVolumeClaim, class: &StorageClass, node: &str, storage_dir: &Path) -> PersistentVolume {
    let spec = c.spec.clone().unwrap_or_default();
    let request = spec.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("storage")).cloned();
    let path = storage_dir.join(dir_name(c));
    let v = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": volume_name(c),
            "annotations": {ANN_PROVISIONED_BY: PROVISIONER, ANN_LP_SELECTED_NODE: node}},
        "spec": {
            "capacity": {"storage": request.map(|q| q.0).unwrap_or_else(|| "0".into())},
            "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": class.reclaim_policy.clone().unwrap_or_else(|| "Delete".into()),
            "storageClassName": class.name_any(),
            "volumeMode": spec.volume_mode.unwrap_or_else(|| "Filesystem".into()),
            "mountOptions": class.mount_options,
            "hostPath": {"path": path.to_string_lossy(), "type": "DirectoryOrCreate"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
            "claimRef": super::volume_binding::claim_ref(c),
        }
    });
    serde_json::from_value(v).unwrap_or_default()
}

fn ready(n: &Node) -> bool {
    let unschedulable = n.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    let ready = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready && !unschedulable
}

/// The node an Immediate-mode claim is provisioned on (skiff's choice; k3s' provisioner refuses
/// claims without a selected node): the first Ready, schedulable node by name.
pub fn pick_node(nodes: &[std::sync::Arc<Node>]) -> Option<String> {
    let mut ready: Vec<String> = nodes.iter().filter(|n| ready(n)).map(|n| n.name_any()).collect();
    ready.sort();
    ready.into_iter().next()
}

/// Creates the volume for `c` (upstream external provisioner's `provisionClaimOperation`).
pub async fn provision(
    ctx: &Context,
    c: &PersistentVolumeClaim,
    class: &StorageClass,
    node: Option<&Node>,
) -> Result<(), BindingError> {
    let name = volume_name(c);
    if ctx.volumes.state().iter().any(|v| v.name_any() == name) {
        return Ok(()); // Provisioned; the binder binds it.
    }
    let node_name = match node {
        Some(n) => n.name_any(),
        None => match pick_node(&ctx.nodes.state()) {
            Some(n) => n,
            None => {
                ctx.provisioner_recorder.warning(
                    object_ref(c),
                    "ProvisioningFailed",
                    "failed to provision volume with StorageClass \"local-path\": no Ready node to put the volume on"
                        .into(),
                );
                return Ok(());
            }
        },
    };
    let dir = ctx
        .nodes
        .state()
        .iter()
        .find(|n| n.name_any() == node_name)
        .and_then(|n| n.annotations().get(ANN_STORAGE_DIR).cloned())
        .filter(|d| Path::new(d).is_absolute())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ctx.local_path_dir.clone());
    let ns = c.namespace().unwrap_or_default();
    ctx.provisioner_recorder.normal(
        object_ref(c),
        "Provisioning",
        format!("External provisioner is provisioning volume for claim \"{ns}/{}\"", c.name_any()),
    );
    let pv = volume_for(c, class, &node_name, &dir);
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    match api.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::info!(volume = %name, node = %node_name, dir = %dir.display(), "provisioned a local-path volume");
            ctx.provisioner_recorder.normal(
                object_ref(c),
                "ProvisioningSucceeded",
                format!("Successfully provisioned volume {name}"),
            );
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => {
            ctx.provisioner_recorder.warning(
                object_ref(c),
                "ProvisioningFailed",
                format!("failed to provision volume with StorageClass {:?}: {e}", class.name_any()),
            );
            Err(BindingError::Api { action: "creating persistentvolume", object: name, source: e })
        }
    }
}

/// Deletes a Released volume we provisioned (reclaim policy Delete). Its directory is removed
/// by the node's agent once the object is gone.
pub async fn delete(ctx: &Context, v: &PersistentVolume) -> Result<(), BindingError> {
    let name = v.name_any();
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: v.metadata.uid.clone(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(&name, &dp).await {
        Ok(_) => {
            tracing::info!(volume = %name, "deleted a released local-path volume");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => {
            ctx.provisioner_recorder.warning(object_ref(v), "VolumeFailedDelete", format!("{e}"));
            Err(BindingError::Api { action: "deleting persistentvolume", object: name, source: e })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "shop", "uid": "1234-abcd"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}},
                     "storageClassName": "local-path"}
        }))
        .unwrap()
    }

    #[test]
    fn the_volume_is_a_host_path_on_the_node_pre_bound_to_the_claim() {
        let class: StorageClass = serde_json::from_value(storage_class()).unwrap();
        let v = volume_for(&claim(), &class, "n1", Path::new("/var/lib/skiff/storage"));
        assert_eq!(v.metadata.name.as_deref(), Some("pvc-1234-abcd"));
        assert_eq!(v.annotations().get(ANN_PROVISIONED_BY).map(String::as_str), Some(PROVISIONER));
        let spec = v.spec.unwrap();
        let hp = spec.host_path.unwrap();
        assert_eq!(hp.path, "/var/lib/skiff/storage/pvc-1234-abcd_shop_data");
        assert_eq!(hp.type_.as_deref(), Some("DirectoryOrCreate"));
        assert_eq!(spec.capacity.unwrap()["storage"].0, "2Gi");
        assert_eq!(spec.persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
        assert_eq!(spec.storage_class_name.as_deref(), Some("local-path"));
        let r = spec.claim_ref.unwrap();
        assert_eq!(
            (r.namespace.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("shop"), Some("data"), Some("1234-abcd"))
        );
        let term = &spec.node_affinity.unwrap().required.unwrap().node_selector_terms[0];
        let e = &term.match_expressions.as_ref().unwrap()[0];
        assert_eq!((e.key.as_str(), e.values.as_deref()), ("kubernetes.io/hostname", Some(&["n1".to_string()][..])));
    }

    #[test]
    fn directory_names_round_trip_and_strangers_are_ignored() {
        assert_eq!(parse_dir_name(&dir_name(&claim())), Some(("pvc-1234-abcd".into(), "shop".into(), "data".into())));
        for s in ["lost+found", "pvc-_a_b", "pvc-x_a", "pvc-x_a_b_c", "other_a_b", "pvc-x__b"] {
            assert_eq!(parse_dir_name(s), None, "{s}");
        }
    }

    #[test]
    fn immediate_claims_go_to_the_first_ready_schedulable_node() {
        let n = |name: &str, ready: &str, unsched: bool| {
            std::sync::Arc::new(
                serde_json::from_value::<Node>(json!({"metadata": {"name": name},
                "spec": {"unschedulable": unsched},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
                .unwrap(),
            )
        };
        let nodes = vec![n("c", "True", false), n("a", "False", false), n("b", "True", true), n("d", "True", false)];
        assert_eq!(pick_node(&nodes).as_deref(), Some("c"));
        assert_eq!(pick_node(&[]), None);
    }
}
