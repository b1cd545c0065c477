//! The PersistentVolume controller (upstream `pkg/controller/volume/persistentvolume`): binds
//! Pending claims to Available volumes, keeps the phases of both up to date, releases a volume
//! whose claim is gone and applies its reclaim policy, and hands claims that need a new volume
//! to their class's provisioner (the built-in local-path one, see `local_path.rs`).
//!
//! Matching ([`find_match`]) is upstream `findMatchingVolume`: a volume pre-bound to the claim
//! (its `claimRef` names it) wins; otherwise the smallest Available, unclaimed volume of the
//! claim's class whose access modes, volume mode, label selector and capacity fit. A claim of a
//! `WaitForFirstConsumer` class is left alone until the scheduler annotates it with
//! `volume.kubernetes.io/selected-node`; volumes are then matched against that node's labels
//! (their `nodeAffinity`), and a new one is provisioned on that node.
//!
//! Binding writes in upstream's order — the volume's `claimRef`, the volume's phase, the
//! claim's `volumeName` and annotations (`pv.kubernetes.io/bind-completed`,
//! `pv.kubernetes.io/bound-by-controller`), the claim's status — each write pinned to the
//! resourceVersion it was decided on, so a decision made on a stale cache fails with a conflict
//! and is retaken on the next pass instead of binding one volume twice.

use super::events::{object_ref, Recorder};
use super::local_path;
use super::passes;
use super::podutil::selector_matches;
use crate::agent::kubelet::resources::parse_quantity;
use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, ObjectReference, PersistentVolume, PersistentVolumeClaim,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const COMPONENT: &str = "persistentvolume-controller";
pub const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const ANN_BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The pre-`storageClassName` way of naming a class, still honoured upstream.
const ANN_BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";
/// Upstream's resync period of the PV controller.
const RESYNC: Duration = Duration::from_secs(15);

/// What can stop a pass over one object; the next pass retries.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    /// A call to the API server failed (a conflict means the cache was stale).
    #[error("{action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
}

fn api_err(action: &'static str, object: &str) -> impl FnOnce(kube::Error) -> BindingError {
    let object = object.to_string();
    move |source| BindingError::Api { action, object, source }
}

// ---------------------------------------------------------------------------------------------
// Pure helpers.

/// The claim's class: `spec.storageClassName`, else the beta annotation, else "" (upstream
/// `GetPersistentVolumeClaimClass`).
pub fn claim_class(c: &PersistentVolumeClaim) -> String {
    if let Some(a) = c.annotations().get(ANN_BETA_CLASS) {
        return a.clone();
    }
    c.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default()
}

/// The volume's class (upstream `GetPersistentVolumeClass`).
pub fn volume_class(v: &PersistentVolume) -> String {
    if let Some(a) = v.annotations().get(ANN_BETA_CLASS) {
        return a.clone();
    }
    v.spec.as_ref().and_then(|s| s.storage_class_name.clone()).unwrap_or_default()
}

/// Requested storage in bytes (0 when unset or unparsable: the API validates it).
pub fn requested_bytes(c: &PersistentVolumeClaim) -> f64 {
    c.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .and_then(|q| parse_quantity(&q.0))
        .unwrap_or(0.0)
}

/// The volume's capacity in bytes.
pub fn capacity_bytes(v: &PersistentVolume) -> f64 {
    v.spec
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .and_then(|q| parse_quantity(&q.0))
        .unwrap_or(0.0)
}

fn phase_pv(v: &PersistentVolume) -> &str {
    v.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn phase_pvc(c: &PersistentVolumeClaim) -> &str {
    c.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn volume_mode_pv(v: &PersistentVolume) -> &str {
    v.spec.as_ref().and_then(|s| s.volume_mode.as_deref()).unwrap_or("Filesystem")
}

fn volume_mode_pvc(c: &PersistentVolumeClaim) -> &str {
    c.spec.as_ref().and_then(|s| s.volume_mode.as_deref()).unwrap_or("Filesystem")
}

/// Every access mode the claim asks for is offered by the volume (upstream `CheckAccessModes`).
pub fn access_modes_fit(c: &PersistentVolumeClaim, v: &PersistentVolume) -> bool {
    let offered: HashSet<&str> =
        v.spec.as_ref().and_then(|s| s.access_modes.as_ref()).into_iter().flatten().map(String::as_str).collect();
    c.spec.as_ref().and_then(|s| s.access_modes.as_ref()).into_iter().flatten().all(|m| offered.contains(m.as_str()))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) =
                (value.and_then(|v| v.parse::<i64>().ok()), values.first().and_then(|b| b.parse::<i64>().ok()))
            else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether the volume may be used on `node` (its required `nodeAffinity`; none means anywhere).
pub fn node_affinity_fits(v: &PersistentVolume, node: &Node) -> bool {
    let Some(req) = v.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.as_ref()) else {
        return true;
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.name_any();
    req.node_selector_terms.iter().any(|t| {
        let exprs = t.match_expressions.iter().flatten();
        let fields = t.match_fields.iter().flatten();
        let empty = t.match_expressions.as_ref().is_none_or(|e| e.is_empty())
            && t.match_fields.as_ref().is_none_or(|f| f.is_empty());
        !empty
            && exprs.clone().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
            && fields.clone().all(|r| {
                let v = (r.key == "metadata.name").then_some(name.as_str());
                requirement_matches(r, v)
            })
    })
}

/// Whether `v.spec.claimRef` names this claim (and, when it carries a uid, this very claim).
pub fn bound_to(v: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else { return false };
    r.name.as_deref() == c.metadata.name.as_deref()
        && r.namespace.as_deref() == c.metadata.namespace.as_deref()
        && r.uid.as_deref().is_none_or(|u| u.is_empty() || Some(u) == c.metadata.uid.as_deref())
}

/// Why `v` cannot serve `c` (class, access modes, volume mode, size), or None when it can
/// (upstream `checkVolumeSatisfyClaim`).
pub fn unsatisfied(c: &PersistentVolumeClaim, v: &PersistentVolume) -> Option<String> {
    if capacity_bytes(v) < requested_bytes(c) {
        return Some("requested PV is too small".into());
    }
    if volume_class(v) != claim_class(c) {
        return Some("storageClassName does not match".into());
    }
    if volume_mode_pv(v) != volume_mode_pvc(c) {
        return Some("incompatible volumeMode".into());
    }
    if !access_modes_fit(c, v) {
        return Some("incompatible accessMode".into());
    }
    None
}

/// The volume to bind `c` to (upstream `findMatchingVolume`): a volume pre-bound to the claim
/// first, else the smallest fitting Available volume not in `taken`. With `delay_binding`
/// (WaitForFirstConsumer) only a claim with a selected `node` is matched, and only to volumes
/// whose node affinity admits that node.
pub fn find_match<'a>(
    c: &PersistentVolumeClaim,
    volumes: &'a [Arc<PersistentVolume>],
    node: Option<&Node>,
    delay_binding: bool,
    taken: &HashSet<String>,
) -> Option<&'a Arc<PersistentVolume>> {
    let selector = c.spec.as_ref().and_then(|s| s.selector.as_ref());
    let mut best: Option<&Arc<PersistentVolume>> = None;
    for v in volumes {
        if v.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if bound_to(v, c) {
            if volume_mode_pv(v) != volume_mode_pvc(c) {
                continue;
            }
            if let Some(n) = node {
                if !node_affinity_fits(v, n) {
                    continue;
                }
            }
            return Some(v);
        }
        if delay_binding && node.is_none() {
            continue;
        }
        let unclaimed = v.spec.as_ref().is_none_or(|s| s.claim_ref.is_none());
        if phase_pv(v) != "Available" || !unclaimed || taken.contains(&v.name_any()) {
            continue;
        }
        if let Some(sel) = selector {
            if !selector_matches(sel, v.metadata.labels.as_ref()) {
                continue;
            }
        }
        if unsatisfied(c, v).is_some() {
            continue;
        }
        if let Some(n) = node {
            if !node_affinity_fits(v, n) {
                continue;
            }
        }
        if best.is_none_or(|b| capacity_bytes(v) < capacity_bytes(b)) {
            best = Some(v);
        }
    }
    best
}

/// A claim reference for `v.spec.claimRef`.
pub fn claim_ref(c: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        name: c.metadata.name.clone(),
        namespace: c.metadata.namespace.clone(),
        uid: c.metadata.uid.clone(),
        resource_version: c.metadata.resource_version.clone(),
        ..Default::default()
    }
}

fn key(c: &PersistentVolumeClaim) -> String {
    format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any())
}

// ---------------------------------------------------------------------------------------------
// The controller.

pub struct Context {
    pub client: kube::Client,
    pub volumes: Store<PersistentVolume>,
    pub claims: Store<PersistentVolumeClaim>,
    pub classes: Store<StorageClass>,
    pub nodes: Store<Node>,
    pub recorder: Recorder,
    pub provisioner_recorder: Recorder,
    /// The storage directory local-path volumes use on nodes that do not announce their own.
    pub local_path_dir: PathBuf,
    /// Last "waiting" event per object uid, so a claim that keeps waiting is not re-announced on
    /// every pass (upstream's correlator would only bump a count).
    announced: Mutex<HashMap<String, String>>,
}

impl Context {
    /// Records an event unless the same reason was the last one recorded for this object.
    fn once(&self, r: &Recorder, obj: ObjectReference, warning: bool, reason: &str, message: String) {
        let uid = obj.uid.clone().unwrap_or_default();
        let tag = format!("{reason}\n{message}");
        {
            let mut a = self.announced.lock().unwrap_or_else(|e| e.into_inner());
            if a.get(&uid) == Some(&tag) {
                return;
            }
            if a.len() > 4096 {
                a.clear();
            }
            a.insert(uid, tag);
        }
        if warning {
            r.warning(obj, reason, message);
        } else {
            r.normal(obj, reason, message);
        }
    }

    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.classes.state().into_iter().find(|c| c.name_any() == name)
    }

    fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.state().into_iter().find(|n| n.name_any() == name)
    }
}

async fn set_pv_phase(
    ctx: &Context,
    v: &PersistentVolume,
    phase: &str,
    message: Option<&str>,
) -> Result<(), BindingError> {
    if phase_pv(v) == phase {
        return Ok(());
    }
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let name = v.name_any();
    let patch = json!({"status": {"phase": phase, "message": message,
        "lastPhaseTransitionTime": Timestamp::now().to_string()}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err("setting the phase of persistentvolume", &name))?;
    tracing::info!(volume = %name, phase, "persistent volume phase changed");
    Ok(())
}

async fn set_pvc_phase(ctx: &Context, c: &PersistentVolumeClaim, phase: &str) -> Result<(), BindingError> {
    if phase_pvc(c) == phase {
        return Ok(());
    }
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    let patch = json!({"status": {"phase": phase}});
    api.patch_status(&c.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err("setting the phase of claim", &key(c)))?;
    Ok(())
}

/// Binds `v` and `c` (upstream `bind`): volume claimRef, volume phase, claim volumeName and
/// annotations, claim status.
async fn bind(ctx: &Context, v: &PersistentVolume, c: &PersistentVolumeClaim) -> Result<(), BindingError> {
    let name = v.name_any();
    let ns = c.namespace().unwrap_or_default();
    let pv_api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams::default();

    // 1. The volume's claimRef (with the claim's uid).
    let has_uid_ref =
        v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some_and(|r| r.uid.is_some() && r.uid == c.metadata.uid);
    let v = if has_uid_ref {
        v.clone()
    } else {
        let mut meta = json!({"resourceVersion": v.metadata.resource_version});
        if v.spec.as_ref().is_none_or(|s| s.claim_ref.is_none()) {
            meta["annotations"] = json!({ANN_BOUND_BY_CONTROLLER: "yes"});
        }
        let patch = json!({"metadata": meta, "spec": {"claimRef": claim_ref(c)}});
        pv_api.patch(&name, &pp, &Patch::Merge(&patch)).await.map_err(api_err("binding persistentvolume", &name))?
    };
    // 2. The volume's phase.
    set_pv_phase(ctx, &v, "Bound", None).await?;
    // 3. The claim's volumeName and annotations.
    let spec_vn = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()).unwrap_or("");
    let c = if spec_vn != name || !c.annotations().contains_key(ANN_BIND_COMPLETED) {
        let mut ann = json!({ANN_BIND_COMPLETED: "yes"});
        if spec_vn.is_empty() {
            ann[ANN_BOUND_BY_CONTROLLER] = json!("yes");
        }
        let patch = json!({"metadata": {"resourceVersion": c.metadata.resource_version, "annotations": ann},
            "spec": {"volumeName": name}});
        pvc_api.patch(&c.name_any(), &pp, &Patch::Merge(&patch)).await.map_err(api_err("binding claim", &key(c)))?
    } else {
        c.clone()
    };
    // 4. The claim's status.
    let spec = v.spec.clone().unwrap_or_default();
    let st = c.status.clone().unwrap_or_default();
    if st.phase.as_deref() != Some("Bound") || st.capacity != spec.capacity || st.access_modes != spec.access_modes {
        let patch = json!({"status": {"phase": "Bound", "capacity": spec.capacity, "accessModes": spec.access_modes}});
        pvc_api
            .patch_status(&c.name_any(), &pp, &Patch::Merge(&patch))
            .await
            .map_err(api_err("setting the status of claim", &key(&c)))?;
        tracing::info!(claim = %key(&c), volume = %name, "claim bound");
    }
    Ok(())
}

/// One pass over a volume (upstream `syncVolume`).
/// A volume being deleted is still synced: its pv-protection finalizer waits for it to be
/// released.
async fn sync_volume(ctx: &Context, v: &PersistentVolume) -> Result<(), BindingError> {
    let Some(r) = v.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
        // Unused: Available (a Released volume whose claimRef an admin removed becomes
        // Available again, as upstream).
        if phase_pv(v) != "Failed" {
            set_pv_phase(ctx, v, "Available", None).await?;
        }
        return Ok(());
    };
    let uid = r.uid.clone().unwrap_or_default();
    let (ns, cname) = (r.namespace.clone().unwrap_or_default(), r.name.clone().unwrap_or_default());
    if uid.is_empty() {
        // Pre-bound by an admin to a claim name: Available until that claim comes.
        return set_pv_phase(ctx, v, "Available", None).await;
    }
    let cached =
        ctx.claims.state().into_iter().find(|c| c.namespace().as_deref() == Some(ns.as_str()) && c.name_any() == cname);
    let claim = match cached.filter(|c| c.metadata.uid.as_deref() == Some(uid.as_str())) {
        Some(c) => Some(c),
        None => {
            // Check with the API server before releasing (upstream does the same: the cache
            // may simply not have seen the claim yet).
            let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            match api.get_opt(&cname).await.map_err(api_err("reading claim", &format!("{ns}/{cname}")))? {
                Some(c) if c.metadata.uid.as_deref() == Some(uid.as_str()) => Some(Arc::new(c)),
                _ => None,
            }
        }
    };
    match claim {
        Some(c) => {
            let vn = c.spec.as_ref().and_then(|s| s.volume_name.as_deref()).unwrap_or("");
            if vn == v.name_any() {
                set_pv_phase(ctx, v, "Bound", None).await?;
            } else if !vn.is_empty() && v.annotations().contains_key(ANN_BOUND_BY_CONTROLLER) {
                // The claim went to another volume: undo our half of this binding.
                let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
                let patch = json!({"metadata": {"resourceVersion": v.metadata.resource_version,
                    "annotations": {ANN_BOUND_BY_CONTROLLER: null}}, "spec": {"claimRef": null}});
                api.patch(&v.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api_err("unbinding persistentvolume", &v.name_any()))?;
            }
            // An empty volumeName: the claim's sync finishes the binding.
            Ok(())
        }
        None => release(ctx, v).await,
    }
}

/// The claim is gone: Released, then the reclaim policy (upstream `reclaimVolume`).
async fn release(ctx: &Context, v: &PersistentVolume) -> Result<(), BindingError> {
    let name = v.name_any();
    if phase_pv(v) == "Failed" {
        return Ok(());
    }
    if phase_pv(v) != "Released" {
        set_pv_phase(ctx, v, "Released", None).await?;
    }
    let policy = v.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()).unwrap_or("Retain");
    match policy {
        "Retain" => Ok(()),
        "Delete" => {
            let by = v.annotations().get(ANN_PROVISIONED_BY).cloned().unwrap_or_default();
            if by == local_path::PROVISIONER {
                local_path::delete(ctx, v).await
            } else if !by.is_empty() {
                // An external provisioner deletes what it provisioned.
                Ok(())
            } else {
                let msg = format!(
                    "error getting deleter volume plugin for volume {name:?}: no deletable volume plugin matched"
                );
                ctx.recorder.warning(object_ref(v), "VolumeFailedDelete", msg.clone());
                set_pv_phase(ctx, v, "Failed", Some(&msg)).await
            }
        }
        other => {
            let msg = format!("no volume plugin matched for reclaim policy {other:?}");
            ctx.recorder.warning(object_ref(v), "VolumeFailedRecycle", msg.clone());
            set_pv_phase(ctx, v, "Failed", Some(&msg)).await
        }
    }
}

/// One pass over a claim (upstream `syncClaim`). `taken` holds volumes given out this pass.
async fn sync_claim(ctx: &Context, c: &PersistentVolumeClaim, taken: &mut HashSet<String>) -> Result<(), BindingError> {
    if c.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let volumes = ctx.volumes.state();
    let vn = c.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
    if c.annotations().contains_key(ANN_BIND_COMPLETED) && !vn.is_empty() {
        // Bound (upstream `syncBoundClaim`).
        match volumes.iter().find(|v| v.name_any() == vn) {
            None => {
                set_pvc_phase(ctx, c, "Lost").await?;
                ctx.once(
                    &ctx.recorder,
                    object_ref(c),
                    true,
                    "ClaimLost",
                    "Bound claim has lost its PersistentVolume. Data on the volume is lost!".into(),
                );
            }
            Some(v) if bound_to(v, c) => bind(ctx, v, c).await?,
            Some(v) if v.spec.as_ref().is_none_or(|s| s.claim_ref.is_none()) => bind(ctx, v, c).await?,
            Some(_) => {
                set_pvc_phase(ctx, c, "Lost").await?;
                ctx.once(
                    &ctx.recorder,
                    object_ref(c),
                    true,
                    "ClaimMisbound",
                    "Two claims are bound to the same volume, this one is bound incorrectly".into(),
                );
            }
        }
        return Ok(());
    }
    if phase_pvc(c).is_empty() {
        set_pvc_phase(ctx, c, "Pending").await?;
    }
    if !vn.is_empty() {
        // The user asked for a particular volume.
        let Some(v) = volumes.iter().find(|v| v.name_any() == vn) else { return Ok(()) };
        if bound_to(v, c) {
            return bind(ctx, v, c).await;
        }
        if v.spec.as_ref().is_some_and(|s| s.claim_ref.is_some()) {
            ctx.once(
                &ctx.recorder,
                object_ref(c),
                true,
                "FailedBinding",
                format!("volume {vn:?} already bound to a different claim."),
            );
            return Ok(());
        }
        if let Some(why) = unsatisfied(c, v) {
            ctx.once(
                &ctx.recorder,
                object_ref(c),
                true,
                "VolumeMismatch",
                format!("Cannot bind to requested volume {vn:?}: {why}"),
            );
            return Ok(());
        }
        taken.insert(vn);
        return bind(ctx, v, c).await;
    }

    let class_name = claim_class(c);
    let class = (!class_name.is_empty()).then(|| ctx.class(&class_name)).flatten();
    let delay = class.as_ref().and_then(|s| s.volume_binding_mode.as_deref()) == Some("WaitForFirstConsumer");
    let selected = c.annotations().get(ANN_SELECTED_NODE).cloned();
    let node = selected.as_deref().and_then(|n| ctx.node(n));
    // A class with WaitForFirstConsumer matches against the selected node; a node that is not
    // (yet) in the cache is waited for.
    if let (true, Some(name), None) = (delay, selected.as_deref(), node.as_ref()) {
        ctx.once(
            &ctx.recorder,
            object_ref(c),
            true,
            "ProvisioningFailed",
            format!("failed to get target node: node {name:?} not found"),
        );
        return Ok(());
    }
    // Volumes named by other claims' volumeName are theirs.
    let mut reserved = taken.clone();
    for other in ctx.claims.state() {
        if other.metadata.uid != c.metadata.uid {
            if let Some(n) = other.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|n| !n.is_empty()) {
                reserved.insert(n);
            }
        }
    }
    if let Some(v) = find_match(c, &volumes, node.as_deref(), delay, &reserved) {
        taken.insert(v.name_any());
        return bind(ctx, v, c).await;
    }
    if class_name.is_empty() {
        ctx.once(
            &ctx.recorder,
            object_ref(c),
            false,
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set".into(),
        );
        return Ok(());
    }
    let Some(class) = class else {
        ctx.once(
            &ctx.recorder,
            object_ref(c),
            true,
            "ProvisioningFailed",
            format!("storageclass.storage.k8s.io {class_name:?} not found"),
        );
        return Ok(());
    };
    if delay && node.is_none() {
        ctx.once(
            &ctx.recorder,
            object_ref(c),
            false,
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding".into(),
        );
        return Ok(());
    }
    if class.provisioner == "kubernetes.io/no-provisioner" {
        ctx.once(
            &ctx.recorder,
            object_ref(c),
            false,
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set".into(),
        );
        return Ok(());
    }
    // Provisioning (upstream `provisionClaim`): announce the provisioner on the claim.
    if c.annotations().get(ANN_STORAGE_PROVISIONER) != Some(&class.provisioner) {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
        let patch = json!({"metadata": {"annotations": {
            ANN_STORAGE_PROVISIONER: class.provisioner, ANN_BETA_STORAGE_PROVISIONER: class.provisioner}}});
        api.patch(&c.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err("annotating claim", &key(c)))?;
    }
    if class.provisioner == local_path::PROVISIONER {
        return local_path::provision(ctx, c, &class, node.as_deref()).await;
    }
    ctx.once(
        &ctx.recorder,
        object_ref(c),
        false,
        "ExternalProvisioning",
        format!(
            "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.",
            class.provisioner
        ),
    );
    Ok(())
}

async fn pass(ctx: &Context) {
    let mut volumes = ctx.volumes.state();
    volumes.sort_by_key(|v| v.name_any());
    for v in &volumes {
        if let Err(e) = sync_volume(ctx, v).await {
            tracing::debug!(error = %e, "persistentvolume-controller: volume sync failed; retrying");
        }
    }
    let mut claims = ctx.claims.state();
    // Oldest first, as upstream's queue roughly does; the smallest-fit choice is per claim.
    claims.sort_by_key(|c| (c.metadata.creation_timestamp.as_ref().map(|t| t.0), key(c)));
    let mut taken = HashSet::new();
    for c in &claims {
        if let Err(e) = sync_claim(ctx, c, &mut taken).await {
            tracing::debug!(error = %e, "persistentvolume-controller: claim sync failed; retrying");
        }
    }
}

/// Runs the binder (and the built-in local-path provisioner) until shutdown.
pub async fn run(client: kube::Client, local_path_dir: PathBuf, shutdown: CancellationToken) {
    let notify = Arc::new(Notify::new());
    let c = || client.clone();
    let (n, s) = (|| notify.clone(), || shutdown.clone());
    let ctx = Context {
        volumes: passes::cache(Api::<PersistentVolume>::all(c()), n(), s(), COMPONENT),
        claims: passes::cache(Api::<PersistentVolumeClaim>::all(c()), n(), s(), COMPONENT),
        classes: passes::cache(Api::<StorageClass>::all(c()), n(), s(), COMPONENT),
        nodes: passes::cache(Api::<Node>::all(c()), n(), s(), COMPONENT),
        recorder: Recorder::new(c(), COMPONENT, s()),
        provisioner_recorder: Recorder::new(c(), local_path::PROVISIONER, s()),
        local_path_dir,
        announced: Mutex::new(HashMap::new()),
        client,
    };
    let waits = vec![
        passes::when_ready(&ctx.volumes),
        passes::when_ready(&ctx.claims),
        passes::when_ready(&ctx.classes),
        passes::when_ready(&ctx.nodes),
    ];
    if !passes::ready(&shutdown, waits).await {
        return;
    }
    loop {
        pass(&ctx).await;
        if !passes::next(&notify, RESYNC, &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(name: &str, size: &str, class: &str, modes: &[&str]) -> Arc<PersistentVolume> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"disk": "ssd"}},
                "spec": {"capacity": {"storage": size}, "accessModes": modes, "storageClassName": class,
                         "hostPath": {"path": "/srv"}},
                "status": {"phase": "Available"}
            }))
            .unwrap(),
        )
    }

    fn pvc(size: &str, class: &str, modes: &[&str]) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data", "namespace": "ns", "uid": "claim-uid"},
            "spec": {"resources": {"requests": {"storage": size}}, "accessModes": modes, "storageClassName": class}
        }))
        .unwrap()
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})).unwrap()
    }

    fn names(v: Option<&Arc<PersistentVolume>>) -> Option<String> {
        v.map(|v| v.name_any())
    }

    #[test]
    fn the_smallest_fitting_volume_of_the_class_wins() {
        let vols = vec![
            pv("big", "10Gi", "", &["ReadWriteOnce"]),
            pv("small", "1Gi", "", &["ReadWriteOnce"]),
            pv("tiny", "500Mi", "", &["ReadWriteOnce"]),
            pv("other-class", "1Gi", "fast", &["ReadWriteOnce"]),
        ];
        let c = pvc("1Gi", "", &["ReadWriteOnce"]);
        assert_eq!(names(find_match(&c, &vols, None, false, &HashSet::new())), Some("small".into()));
        let taken: HashSet<String> = ["small".to_string()].into();
        assert_eq!(names(find_match(&c, &vols, None, false, &taken)), Some("big".into()));
        let c = pvc("1Gi", "fast", &["ReadWriteOnce"]);
        assert_eq!(names(find_match(&c, &vols, None, false, &HashSet::new())), Some("other-class".into()));
        let c = pvc("20Gi", "", &["ReadWriteOnce"]);
        assert_eq!(names(find_match(&c, &vols, None, false, &HashSet::new())), None);
    }

    #[test]
    fn access_modes_selector_phase_and_volume_mode_must_fit() {
        let vols = vec![pv("rwo", "1Gi", "", &["ReadWriteOnce"])];
        let c = pvc("1Gi", "", &["ReadWriteMany"]);
        assert!(find_match(&c, &vols, None, false, &HashSet::new()).is_none());
        let c = pvc("1Gi", "", &["ReadWriteOnce"]);
        let mut sel = c.clone();
        sel.spec.as_mut().unwrap().selector =
            Some(serde_json::from_value(json!({"matchLabels": {"disk": "hdd"}})).unwrap());
        assert!(find_match(&sel, &vols, None, false, &HashSet::new()).is_none());
        sel.spec.as_mut().unwrap().selector =
            Some(serde_json::from_value(json!({"matchLabels": {"disk": "ssd"}})).unwrap());
        assert!(find_match(&sel, &vols, None, false, &HashSet::new()).is_some());
        let mut block = c.clone();
        block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        assert!(find_match(&block, &vols, None, false, &HashSet::new()).is_none());
        let mut released = (*vols[0]).clone();
        released.status.as_mut().unwrap().phase = Some("Released".into());
        assert!(find_match(&c, &[Arc::new(released)], None, false, &HashSet::new()).is_none());
    }

    #[test]
    fn a_volume_pre_bound_to_the_claim_wins_and_one_bound_elsewhere_is_skipped() {
        let mut mine = (*pv("mine", "5Gi", "other", &["ReadOnlyMany"])).clone();
        mine.spec.as_mut().unwrap().claim_ref =
            Some(ObjectReference { name: Some("data".into()), namespace: Some("ns".into()), ..Default::default() });
        let mut theirs = (*pv("theirs", "1Gi", "", &["ReadWriteOnce"])).clone();
        theirs.spec.as_mut().unwrap().claim_ref =
            Some(ObjectReference { name: Some("x".into()), namespace: Some("ns".into()), ..Default::default() });
        let c = pvc("1Gi", "", &["ReadWriteOnce"]);
        let vols = vec![Arc::new(theirs), Arc::new(mine)];
        assert_eq!(names(find_match(&c, &vols, None, false, &HashSet::new())), Some("mine".into()));
        // A claimRef with another uid is another claim of the same name.
        let mut stale = (*vols[1]).clone();
        stale.spec.as_mut().unwrap().claim_ref.as_mut().unwrap().uid = Some("old-uid".into());
        assert!(!bound_to(&stale, &c));
    }

    #[test]
    fn wait_for_first_consumer_claims_match_only_with_a_node_and_its_affinity() {
        let mut local = (*pv("local", "1Gi", "local", &["ReadWriteOnce"])).clone();
        local.spec.as_mut().unwrap().node_affinity = Some(
            serde_json::from_value(json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]}]}}))
            .unwrap(),
        );
        let vols = vec![Arc::new(local)];
        let c = pvc("1Gi", "local", &["ReadWriteOnce"]);
        assert!(find_match(&c, &vols, None, true, &HashSet::new()).is_none());
        assert!(find_match(&c, &vols, Some(&node("n2")), true, &HashSet::new()).is_none());
        assert!(find_match(&c, &vols, Some(&node("n1")), true, &HashSet::new()).is_some());
        assert!(find_match(&c, &vols, None, false, &HashSet::new()).is_some(), "immediate binding ignores nodes");
    }

    #[test]
    fn node_affinity_operators() {
        let r = |op: &str, vals: &[&str]| NodeSelectorRequirement {
            key: "k".into(),
            operator: op.into(),
            values: Some(vals.iter().map(|s| s.to_string()).collect()),
        };
        assert!(requirement_matches(&r("In", &["a"]), Some("a")));
        assert!(!requirement_matches(&r("In", &["a"]), None));
        assert!(requirement_matches(&r("NotIn", &["a"]), None));
        assert!(requirement_matches(&r("Exists", &[]), Some("x")));
        assert!(requirement_matches(&r("DoesNotExist", &[]), None));
        assert!(requirement_matches(&r("Gt", &["3"]), Some("4")));
        assert!(!requirement_matches(&r("Lt", &["3"]), Some("4")));
    }

    #[test]
    fn unsatisfied_says_why() {
        let v = pv("v", "1Gi", "", &["ReadWriteOnce"]);
        assert_eq!(unsatisfied(&pvc("2Gi", "", &["ReadWriteOnce"]), &v).as_deref(), Some("requested PV is too small"));
        assert_eq!(unsatisfied(&pvc("1Gi", "", &["ReadWriteMany"]), &v).as_deref(), Some("incompatible accessMode"));
        assert!(unsatisfied(&pvc("1G", "", &["ReadWriteOnce"]), &v).is_none());
    }
}
