//! CustomResourceDefinitions in the API server: the status the server keeps on a CRD
//! (naming and establishing, set on every write), the loop that keeps the registry in step with
//! the CRDs in the store (every server of an HA group runs it, so all of them serve the same
//! resources), the scale subresource of custom resources, and the cleanup of a deleted CRD's
//! objects behind the `customresourcecleanup.apiextensions.k8s.io` finalizer.

use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::errors::{ApiError, ApiResult};
use super::handlers::{self, Req};
use super::objects;
use super::ApiState;
use crate::registry::custom::{self, ScalePaths, CLEANUP_FINALIZER, CRD_PREFIX};
use crate::registry::{self, ResRef, Resource};
use crate::store::{RangeRequest, Store, WatchMessage};

fn is_crd(r: &Resource) -> bool {
    r.group == "apiextensions.k8s.io" && r.kind == "CustomResourceDefinition"
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn all_crds(store: &dyn Store) -> ApiResult<(Vec<Value>, i64)> {
    let resp = store.range(RangeRequest { prefix: CRD_PREFIX.as_bytes().to_vec(), ..Default::default() }).await?;
    let mut out = Vec::new();
    for kv in &resp.kvs {
        match objects::decode(kv) {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!(error = %e, "skipping an undecodable CustomResourceDefinition"),
        }
    }
    Ok((out, resp.revision))
}

/// Called on every create and update of an object before it is stored: for CRDs, checks the
/// update rules and sets the status the naming and establishing controllers keep.
pub async fn on_write(req: &Req, old: Option<&Value>, obj: &mut Value) -> ApiResult<()> {
    if !is_crd(&req.r) {
        return Ok(());
    }
    let name = obj.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
    if let Some(old) = old {
        let reported = custom::validate_crd_replacing(obj, Some(old));
        let causes: Vec<_> =
            custom::validate_crd_update(old, obj).into_iter().filter(|c| !reported.contains(c)).collect();
        if !causes.is_empty() {
            return Err(ApiError::invalid(&req.r, &name, &causes));
        }
        // A status write keeps storedVersions it is given; others keep the stored status.
    }
    let (crds, _) = all_crds(req.st.store.as_ref()).await?;
    let others: Vec<Value> =
        crds.into_iter().filter(|c| c.pointer("/metadata/name").and_then(|n| n.as_str()) != Some(&name)).collect();
    let status = custom::compute_status(obj, &others, &now());
    obj["status"] = status;
    Ok(())
}

/// The `autoscaling/v1` Scale of a custom resource, from its CRD's scale paths.
pub fn scale_of(sc: &ScalePaths, o: &Value) -> Value {
    let first = |p: &str| custom::json_path(o, p).first().map(|v| (*v).clone());
    let selector =
        sc.label_selector.as_deref().and_then(&first).and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": o.pointer("/metadata/name"),
            "namespace": o.pointer("/metadata/namespace"),
            "uid": o.pointer("/metadata/uid"),
            "resourceVersion": o.pointer("/metadata/resourceVersion"),
            "creationTimestamp": o.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": first(&sc.spec_replicas).unwrap_or(json!(0))},
        "status": {"replicas": first(&sc.status_replicas).unwrap_or(json!(0)), "selector": selector},
    })
}

/// Adds the cleanup finalizer when a CRD is deleted (upstream's CRD storage does the same).
pub fn add_cleanup_finalizer(r: &Resource, finalizers: &mut Vec<Value>) {
    if is_crd(r) && !finalizers.contains(&json!(CLEANUP_FINALIZER)) {
        finalizers.push(json!(CLEANUP_FINALIZER));
    }
}

/// Marks a CRD being deleted as Terminating (status condition).
pub fn mark_terminating(r: &Resource, obj: &mut Value) {
    if is_crd(r) {
        obj["status"] = custom::compute_status(obj, &[], &now());
        // compute_status with no others keeps names accepted; the condition list now has
        // Terminating=True because deletionTimestamp is set.
    }
}

/// Loads the CRDs into the registry and keeps it current from a watch on the CRD keys.
/// Returns once the first load is done, so the server starts with every CRD served.
pub async fn start(st: Arc<ApiState>) -> ApiResult<()> {
    let (crds, rev) = all_crds(st.store.as_ref()).await?;
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    apply(&st, &crds, &running);
    tokio::spawn(async move {
        let mut from = rev;
        loop {
            let mut w = match st.store.watch(CRD_PREFIX.as_bytes().to_vec(), from).await {
                Ok(w) => w,
                Err(e) => {
                    if Arc::strong_count(&st) == 1 {
                        return;
                    }
                    tracing::debug!(error = %e, "CRD watch failed; re-listing");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match all_crds(st.store.as_ref()).await {
                        Ok((crds, rev)) => {
                            apply(&st, &crds, &running);
                            from = rev;
                        }
                        Err(e) => tracing::warn!(error = %e, "listing CRDs failed"),
                    }
                    continue;
                }
            };
            while let Some(m) = w.next().await {
                match m {
                    Ok(WatchMessage::Events(evs)) => {
                        from = from.max(evs.last().map(|e| e.kv.mod_revision).unwrap_or(from));
                        match all_crds(st.store.as_ref()).await {
                            Ok((crds, _)) => apply(&st, &crds, &running),
                            Err(e) => tracing::warn!(error = %e, "reloading CRDs failed"),
                        }
                    }
                    Ok(WatchMessage::Progress(r)) => from = from.max(r),
                    Err(_) => break,
                }
            }
            // The stream ended (lagged, compacted, leader change): catch up by listing.
            if let Ok((crds, rev)) = all_crds(st.store.as_ref()).await {
                apply(&st, &crds, &running);
                from = rev;
            }
            if Arc::strong_count(&st) == 1 {
                return;
            }
        }
    });
    Ok(())
}

fn apply(st: &Arc<ApiState>, crds: &[Value], running: &Arc<Mutex<HashSet<String>>>) {
    if st.registry.set_crds(crds) {
        tracing::debug!(generation = st.registry.generation(), "served custom resources changed");
    }
    for c in crds {
        let terminating = c.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null());
        let ours = c
            .pointer("/metadata/finalizers")
            .and_then(|f| f.as_array())
            .is_some_and(|f| f.contains(&json!(CLEANUP_FINALIZER)));
        let Some(name) = c.pointer("/metadata/name").and_then(|n| n.as_str()) else { continue };
        if !(terminating && ours) {
            continue;
        }
        let fresh = match running.lock() {
            Ok(mut g) => g.insert(name.to_string()),
            Err(_) => false,
        };
        if fresh {
            let (st, running, name, crd) = (st.clone(), running.clone(), name.to_string(), c.clone());
            tokio::spawn(async move {
                cleanup(&st, &name, &crd).await;
                if let Ok(mut g) = running.lock() {
                    g.remove(&name);
                }
            });
        }
    }
}

/// The resource a CRD's objects are stored under (its storage version, served or not).
fn storage_resource(crd: &Value) -> Option<ResRef> {
    let mut c = crd.clone();
    // Build as if established and every version served, so a half-set-up CRD still cleans up.
    if let Some(vs) = c.pointer_mut("/spec/versions").and_then(|v| v.as_array_mut()) {
        for v in vs {
            v["served"] = json!(true);
        }
    }
    c["status"] = custom::compute_status(&c, &[], "t");
    let storage = custom::resources_from_crd(&c)
        .into_iter()
        .find(|r| r.custom.as_ref().is_some_and(|i| i.storage_version == *r.version))?;
    Some(ResRef::Custom(Arc::new(storage)))
}

/// Deletes every object of a CRD being deleted, then drops the cleanup finalizer (and with
/// it the CRD). Objects with finalizers of their own are waited for.
async fn cleanup(st: &Arc<ApiState>, name: &str, crd: &Value) {
    let Some(r) = storage_resource(crd) else {
        tracing::warn!(crd = %name, "cannot work out where this CRD's objects are stored; removing the finalizer");
        let _ = remove_finalizer(st, name).await;
        return;
    };
    for round in 0..3600u32 {
        match delete_round(st, &r).await {
            Ok(0) => break,
            Ok(n) => tracing::debug!(crd = %name, remaining = n, "waiting for custom resources to go"),
            Err(e) => tracing::warn!(crd = %name, error = %e, "deleting custom resources failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(if round < 10 { 200 } else { 1000 })).await;
    }
    if let Err(e) = remove_finalizer(st, name).await {
        tracing::warn!(crd = %name, error = %e, "removing the CRD cleanup finalizer failed");
    }
}

/// Deletes what is left; returns how many objects remained at the start of the round.
async fn delete_round(st: &Arc<ApiState>, r: &ResRef) -> ApiResult<usize> {
    let resp = st.store.range(RangeRequest { prefix: r.key_prefix().into_bytes(), ..Default::default() }).await?;
    let n = resp.kvs.len();
    for kv in &resp.kvs {
        let o = objects::decode(kv)?;
        if o.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) {
            continue;
        }
        let req = Req {
            st: st.clone(),
            r: r.clone(),
            ns: o.pointer("/metadata/namespace").and_then(|n| n.as_str()).map(String::from),
            name: o.pointer("/metadata/name").and_then(|n| n.as_str()).map(String::from),
            sub: None,
            q: Default::default(),
            headers: Default::default(),
            method: axum::http::Method::DELETE,
        };
        match handlers::delete(&req, b"").await {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

async fn remove_finalizer(st: &Arc<ApiState>, name: &str) -> ApiResult<()> {
    let crds = registry::find("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        .ok_or_else(|| ApiError::internal("customresourcedefinitions not registered"))?;
    for _ in 0..10 {
        let old = match objects::get(st.store.as_ref(), crds, None, name).await {
            Ok(o) => o,
            Err(e) if e.code == 404 => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut f: Vec<Value> =
            old.obj.pointer("/metadata/finalizers").and_then(|f| f.as_array()).cloned().unwrap_or_default();
        f.retain(|x| x != &json!(CLEANUP_FINALIZER));
        let res = if f.is_empty() {
            objects::delete(st.store.as_ref(), crds, None, name, old.rev).await.map(|_| ())
        } else {
            let mut new = old.obj.clone();
            new["metadata"]["finalizers"] = json!(f);
            objects::update(st.store.as_ref(), crds, None, name, new, old.rev, None).await.map(|_| ())
        };
        match res {
            Ok(()) => return Ok(()),
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::stale(crds, name))
}
