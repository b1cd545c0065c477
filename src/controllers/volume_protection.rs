//! Storage object in-use protection (upstream `pkg/controller/volume/pvcprotection` and
//! `pvprotection`, with the `StorageObjectInUseProtection` admission plugin in
//! `api/admission.rs`): every claim is created with the `kubernetes.io/pvc-protection`
//! finalizer and every volume with `kubernetes.io/pv-protection`. Deleting one only marks it;
//! these controllers remove the finalizer once nothing uses the object any more:
//!
//! - a claim, once no scheduled pod of its namespace that has not finished (phase neither
//!   Succeeded nor Failed) names it in a `persistentVolumeClaim` volume or owns it as a generic
//!   ephemeral volume (`<pod>-<volume>`);
//! - a volume, once it is not Bound to a claim.
//!
//! So `kubectl delete pvc` of a mounted claim leaves it `Terminating` until its pods are gone,
//! instead of pulling the storage from under them.

use super::passes;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub const PVC_FINALIZER: &str = "kubernetes.io/pvc-protection";
pub const PV_FINALIZER: &str = "kubernetes.io/pv-protection";
pub const COMPONENT: &str = "pvc-protection-controller";
const RESYNC: Duration = Duration::from_secs(30);

/// Whether `pod` keeps `claim` (in the pod's namespace) from being deleted.
pub fn pod_uses_claim(pod: &Pod, claim: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    // The kubelet never starts a pod whose claim is being deleted, so unscheduled pods do not
    // hold it; finished pods no longer use their volumes.
    if spec.node_name.as_deref().unwrap_or("").is_empty() {
        return false;
    }
    if matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")) {
        return false;
    }
    let pod_name = pod.name_any();
    spec.volumes.iter().flatten().any(|v| {
        v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == claim)
            || (v.ephemeral.is_some() && format!("{pod_name}-{}", v.name) == claim)
    })
}

fn deleting_with<K: Resource>(o: &K, finalizer: &str) -> bool {
    o.meta().deletion_timestamp.is_some()
        && o.meta().finalizers.as_ref().is_some_and(|f| f.iter().any(|x| x == finalizer))
}

/// Removes `finalizer` from `o` with a merge patch carrying the resourceVersion the decision was
/// made on, so a decision taken on a stale cache fails with a conflict and is retaken.
async fn remove_finalizer<K>(api: &Api<K>, o: &K, finalizer: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let fs = o.meta().finalizers.clone().unwrap_or_default();
    if !fs.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let rest: Vec<&String> = fs.iter().filter(|f| *f != finalizer).collect();
    let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": o.meta().resource_version}});
    match api.patch(&o.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        // Gone already, or changed since: the next pass decides again.
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs both protection controllers until shutdown.
pub async fn run(client: kube::Client, informers: super::informer::Informers, shutdown: CancellationToken) {
    let notify = Arc::new(Notify::new());
    let claims: Store<PersistentVolumeClaim> =
        passes::cache(Api::all(client.clone()), notify.clone(), shutdown.clone(), COMPONENT);
    let volumes: Store<PersistentVolume> =
        passes::cache(Api::all(client.clone()), notify.clone(), shutdown.clone(), COMPONENT);
    // A pod frees its claims when it is deleted or finishes: only those events wake the loop.
    let pods: Store<Pod> = informers.pods.store();
    let mut pod_events = informers.pods.subscribe();
    let (n2, sd2) = (notify.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let ev = tokio::select! {
                _ = sd2.cancelled() => return,
                ev = pod_events.recv() => match ev { Some(ev) => ev, None => return },
            };
            let finished =
                |p: &Pod| matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
            match ev {
                super::informer::Event::Delete(_) => n2.notify_one(),
                super::informer::Event::Apply(p) if finished(&p) => n2.notify_one(),
                super::informer::Event::Apply(_) => {}
            }
        }
    });
    if !passes::ready(
        &shutdown,
        vec![passes::when_ready(&claims), passes::when_ready(&volumes), passes::when_ready(&pods)],
    )
    .await
    {
        return;
    }
    loop {
        let deleting: Vec<_> =
            claims.state().into_iter().filter(|c| deleting_with(c.as_ref(), PVC_FINALIZER)).collect();
        let pod_list = if deleting.is_empty() { vec![] } else { pods.state() };
        for c in &deleting {
            let ns = c.namespace().unwrap_or_default();
            let name = c.name_any();
            let used =
                pod_list.iter().any(|p| p.namespace().as_deref() == Some(ns.as_str()) && pod_uses_claim(p, &name));
            if used {
                continue;
            }
            // Upstream re-checks with a live list before releasing: the cache may lag a pod
            // that was just created.
            let live: Api<Pod> = Api::namespaced(client.clone(), &ns);
            match live.list(&Default::default()).await {
                Ok(l) if l.items.iter().any(|p| pod_uses_claim(p, &name)) => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(claim = %format!("{ns}/{name}"), error = %e, "listing pods for claim protection failed; retrying");
                    continue;
                }
            }
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            match remove_finalizer(&api, c.as_ref(), PVC_FINALIZER).await {
                Ok(()) => {
                    tracing::info!(claim = %format!("{ns}/{name}"), "claim no longer in use; removed its protection finalizer")
                }
                Err(e) => {
                    tracing::warn!(claim = %format!("{ns}/{name}"), error = %e, "removing the claim's protection finalizer failed; retrying")
                }
            }
        }
        for v in volumes.state().iter().filter(|v| deleting_with(v.as_ref(), PV_FINALIZER)) {
            if v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound") {
                continue;
            }
            let api: Api<PersistentVolume> = Api::all(client.clone());
            if let Err(e) = remove_finalizer(&api, v.as_ref(), PV_FINALIZER).await {
                tracing::warn!(volume = %v.name_any(), error = %e, "removing the volume's protection finalizer failed; retrying");
            }
        }
        if !passes::next(&notify, RESYNC, &shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: Option<&str>, phase: Option<&str>, volumes: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}], "volumes": volumes},
            "status": {"phase": phase},
        }))
        .expect("pod")
    }

    #[test]
    fn running_scheduled_pods_hold_their_claims_and_finished_or_unscheduled_ones_do_not() {
        let vols = json!([
            {"name": "data", "persistentVolumeClaim": {"claimName": "data-claim"}},
            {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
        ]);
        let running = pod(Some("n1"), Some("Running"), vols.clone());
        assert!(pod_uses_claim(&running, "data-claim"));
        assert!(pod_uses_claim(&running, "web-scratch"), "generic ephemeral volume claim");
        assert!(!pod_uses_claim(&running, "other"));
        assert!(pod_uses_claim(&pod(Some("n1"), Some("Pending"), vols.clone()), "data-claim"));
        assert!(!pod_uses_claim(&pod(None, Some("Pending"), vols.clone()), "data-claim"), "not scheduled");
        assert!(!pod_uses_claim(&pod(Some("n1"), Some("Succeeded"), vols.clone()), "data-claim"));
        assert!(!pod_uses_claim(&pod(Some("n1"), Some("Failed"), vols), "data-claim"));
    }
}
