//! ControllerRevision history shared by the StatefulSet and DaemonSet controllers (upstream
//! `pkg/controller/history`): each distinct pod template is snapshotted as a ControllerRevision
//! named `<parent>-<hash>`, labelled with the template's labels and `controller-revision-hash`,
//! numbered by `revision`, and holding the strategic merge patch that restores it
//! (`{"spec":{"template":{…,"$patch":"replace"}}}`), which is exactly what
//! `kubectl rollout undo` sends back to the parent and what `kubectl rollout history` decodes.
//!
//! The pure parts ([`template_patch`], [`hash_revision`], [`revision_name`], [`template_of`],
//! [`history_to_prune`]) decide; [`sync`] reads and writes revisions through the API.

use super::podutil::{claim, controller_ref};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

/// The label carrying a revision's hash (on revisions; on pods, see each controller).
pub const HASH_LABEL: &str = "controller-revision-hash";

/// What can go wrong while syncing history.
#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    /// A call to the API server failed.
    #[error("{action}: {source}")]
    Api {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
    /// A revision with the new name exists with other data: the caller bumps
    /// `status.collisionCount` so the next hash differs (upstream behaviour).
    #[error("controller revision {0} already exists with different data")]
    Collision(String),
}

/// The patch that restores `template` on the parent (upstream `getPatch`).
pub fn template_patch(template: &PodTemplateSpec) -> Value {
    let mut t = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The pod template a revision restores (upstream `ApplyRevision` for a replace patch).
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

/// FNV-1 (32 bit), as Go's `hash/fnv.New32`.
fn fnv32(data: &[u8], mut h: u32) -> u32 {
    for b in data {
        h = h.wrapping_mul(16_777_619);
        h ^= u32::from(*b);
    }
    h
}

/// Upstream `rand.SafeEncodeString`.
fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes().map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char).collect()
}

/// Upstream `HashControllerRevision`: FNV-1 over the data, then the collision count in
/// decimal, printed in decimal and safe-encoded. `serde_json` writes maps sorted, so equal
/// data always hashes equally.
pub fn hash_revision(data: &Value, collision_count: Option<i32>) -> String {
    let bytes = serde_json::to_vec(data).unwrap_or_default();
    let mut h = fnv32(&bytes, 2_166_136_261);
    if let Some(c) = collision_count {
        h = fnv32(c.to_string().as_bytes(), h);
    }
    safe_encode(&h.to_string())
}

/// Upstream `ControllerRevisionName`: the parent's name cut to 223 characters, a dash, the hash.
pub fn revision_name(parent: &str, hash: &str) -> String {
    let prefix: String = parent.chars().take(223).collect();
    format!("{prefix}-{hash}")
}

/// A new revision of `parent` (upstream `NewControllerRevision`).
pub fn new_revision<K: Resource<DynamicType = ()>>(
    parent: &K,
    template: &PodTemplateSpec,
    revision: i64,
    collision_count: Option<i32>,
) -> ControllerRevision {
    let data = template_patch(template);
    let hash = hash_revision(&data, collision_count);
    let mut labels: BTreeMap<String, String> =
        template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.clone());
    let m = parent.meta();
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(m.name.as_deref().unwrap_or_default(), &hash)),
            namespace: m.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![controller_ref(parent)]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision,
    }
}

/// The hash label of a revision.
pub fn hash_of(rev: &ControllerRevision) -> Option<&str> {
    rev.metadata.labels.as_ref()?.get(HASH_LABEL).map(String::as_str)
}

/// Whether two revisions restore the same template (upstream `EqualRevision`).
pub fn equal_data(a: &ControllerRevision, b: &ControllerRevision) -> bool {
    a.data.as_ref().map(|d| &d.0) == b.data.as_ref().map(|d| &d.0)
}

/// Revisions to delete beyond `limit` (upstream `truncateHistory`): never one still in use
/// (`live` names), oldest revision number first.
pub fn history_to_prune(revs: &[ControllerRevision], live: &HashSet<String>, limit: i32) -> Vec<String> {
    let mut unused: Vec<&ControllerRevision> =
        revs.iter().filter(|r| !live.contains(&r.name_any()) && r.metadata.deletion_timestamp.is_none()).collect();
    let excess = unused.len() as i64 - i64::from(limit.max(0));
    if excess <= 0 {
        return vec![];
    }
    unused.sort_by_key(|r| (r.revision, r.name_any()));
    unused.iter().take(excess as usize).map(|r| r.name_any()).collect()
}

/// The outcome of [`sync`].
#[derive(Debug, Clone)]
pub struct History {
    /// Every revision the parent owns, after the sync.
    pub revisions: Vec<ControllerRevision>,
    /// The revision of the parent's current template.
    pub update: ControllerRevision,
}

/// Claims the parent's revisions and makes sure one matches its current template, creating it
/// with the next revision number or renumbering an equal older one to the top (upstream
/// `getStatefulSetRevisions` / DaemonSet `constructHistory`).
pub async fn sync<K: Resource<DynamicType = ()>>(
    client: &kube::Client,
    parent: &K,
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    collision_count: Option<i32>,
) -> Result<History, RevisionError> {
    let m = parent.meta();
    let ns = m.namespace.clone().unwrap_or_default();
    let uid = m.uid.clone().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &ns);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| RevisionError::Api { action: "listing controller revisions", source })?;
    let c = claim(&uid, m.deletion_timestamp.is_some(), selector, &list.items, |r| &r.metadata);
    let mut revisions = c.owned;
    for r in c.adopt {
        let mut refs = r.metadata.owner_references.clone().unwrap_or_default();
        refs.push(controller_ref(parent));
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": r.metadata.resource_version}});
        match api.patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(a) => revisions.push(a),
            Err(e) => tracing::warn!(error = %e, revision = %r.name_any(), "could not adopt controller revision"),
        }
    }
    for r in c.release {
        let refs: Vec<_> = r.metadata.owner_references.iter().flatten().filter(|o| o.uid != uid).cloned().collect();
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": r.metadata.resource_version}});
        if let Err(e) = api.patch(&r.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::warn!(error = %e, revision = %r.name_any(), "could not release controller revision");
        }
    }
    revisions.sort_by_key(|r| (r.revision, r.name_any()));
    let max = revisions.iter().map(|r| r.revision).max().unwrap_or(0);
    let want = new_revision(parent, template, max + 1, collision_count);
    if let Some(i) = revisions.iter().position(|r| equal_data(r, &want)) {
        if revisions[i].revision == max {
            let update = revisions[i].clone();
            return Ok(History { revisions, update });
        }
        // A rollback to an older template: that revision becomes the newest again.
        let patch = json!({"revision": max + 1});
        let renumbered = api
            .patch(&revisions[i].name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| RevisionError::Api { action: "renumbering controller revision", source })?;
        revisions[i] = renumbered.clone();
        return Ok(History { revisions, update: renumbered });
    }
    match api.create(&PostParams::default(), &want).await {
        Ok(created) => {
            revisions.push(created.clone());
            Ok(History { revisions, update: created })
        }
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let name = want.name_any();
            let existing =
                api.get(&name).await.map_err(|source| RevisionError::Api { action: "reading revision", source })?;
            let mine = super::podutil::is_controlled_by(&existing.metadata, &uid);
            if mine && equal_data(&existing, &want) {
                revisions.push(existing.clone());
                Ok(History { revisions, update: existing })
            } else {
                Err(RevisionError::Collision(name))
            }
        }
        Err(source) => Err(RevisionError::Api { action: "creating controller revision", source }),
    }
}

/// Deletes revisions beyond `limit` that no pod uses.
pub async fn prune(client: &kube::Client, ns: &str, revs: &[ControllerRevision], live: &HashSet<String>, limit: i32) {
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    for name in history_to_prune(revs, live, limit) {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => tracing::warn!(error = %e, revision = %name, "could not delete old controller revision"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    fn template(image: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta { labels: Some([("app".into(), "db".into())].into()), ..Default::default() }),
            spec: Some(PodSpec {
                containers: vec![Container { name: "c".into(), image: Some(image.into()), ..Default::default() }],
                ..Default::default()
            }),
        }
    }

    fn parent() -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("default".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_revision_patch_replaces_the_whole_template_and_round_trips() {
        let t = template("busybox:1");
        let p = template_patch(&t);
        assert_eq!(p["spec"]["template"]["$patch"], "replace");
        let rev = new_revision(&parent(), &t, 1, None);
        assert_eq!(template_of(&rev), Some(t));
    }

    #[test]
    fn revision_hashes_are_stable_and_differ_by_template_and_collision_count() {
        let a = hash_revision(&template_patch(&template("busybox:1")), None);
        assert_eq!(a, hash_revision(&template_patch(&template("busybox:1")), None));
        assert_ne!(a, hash_revision(&template_patch(&template("busybox:2")), None));
        assert_ne!(a, hash_revision(&template_patch(&template("busybox:1")), Some(1)));
        assert!(a.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)), "{a}");
    }

    #[test]
    fn a_new_revision_is_named_labelled_numbered_and_owned() {
        let rev = new_revision(&parent(), &template("busybox:1"), 3, None);
        let hash = hash_of(&rev).map(String::from).unwrap_or_default();
        assert_eq!(rev.metadata.name, Some(format!("db-{hash}")));
        assert_eq!(rev.revision, 3);
        let labels = rev.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("db"));
        let owner = rev.metadata.owner_references.and_then(|o| o.into_iter().next()).unwrap_or_default();
        assert_eq!((owner.kind.as_str(), owner.controller), ("StatefulSet", Some(true)));
        assert_eq!(revision_name(&"x".repeat(300), "h").len(), 225);
    }

    #[test]
    fn pruning_keeps_live_revisions_and_the_newest_unused_ones() {
        let revs: Vec<ControllerRevision> =
            (1..=5).map(|i| new_revision(&parent(), &template(&format!("busybox:{i}")), i, None)).collect();
        let live: HashSet<String> = [revs[0].name_any(), revs[4].name_any()].into();
        // Unused: 2, 3, 4; keep the newest one of them.
        assert_eq!(history_to_prune(&revs, &live, 1), vec![revs[1].name_any(), revs[2].name_any()]);
        assert!(history_to_prune(&revs, &live, 10).is_empty());
    }
}
