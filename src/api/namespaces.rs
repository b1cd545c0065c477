//! Namespace deletion: once a namespace is marked for deletion, every object in it is
//! deleted (pods gracefully, through their kubelet), then the `kubernetes` finalizer is
//! removed and the namespace goes — what upstream's namespace controller does. It runs in the
//! API server for now; the controllers issue moves it behind leader election.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

use super::handlers::{self, Req};
use super::objects;
use super::ApiState;
use crate::registry;

/// Starts finalising namespace `name` in the background.
pub fn finalize_later(st: Arc<ApiState>, name: String) {
    tokio::spawn(async move {
        for round in 0..600u32 {
            match finalize_round(&st, &name).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(namespace = %name, error = %e, "namespace deletion: round failed; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(if round < 10 { 200 } else { 1000 })).await;
        }
        tracing::warn!(namespace = %name, "namespace deletion did not finish in 10 minutes; it resumes on restart");
    });
}

/// Resumes finalisation of namespaces left terminating by a restart.
pub async fn resume(st: Arc<ApiState>) {
    let Some(r) = registry::find("", "v1", "namespaces") else { return };
    let Ok(resp) =
        st.store.range(crate::store::RangeRequest { prefix: r.key_prefix().into_bytes(), ..Default::default() }).await
    else {
        return;
    };
    for kv in resp.kvs {
        if let Ok(o) = objects::decode(&kv) {
            if o.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) {
                if let Some(n) = o.pointer("/metadata/name").and_then(|n| n.as_str()) {
                    finalize_later(st.clone(), n.to_string());
                }
            }
        }
    }
}

/// One pass: delete what is left; returns true once the namespace itself is gone.
async fn finalize_round(st: &Arc<ApiState>, ns: &str) -> Result<bool, super::errors::ApiError> {
    let mut remaining = 0;
    // Every namespaced kind, custom ones once (their versions share one storage prefix).
    let mut kinds: Vec<crate::registry::ResRef> = Vec::new();
    for r in st.registry.all().into_iter().filter(|r| r.namespaced) {
        if !kinds.iter().any(|k| k.group == r.group && k.plural == r.plural) {
            kinds.push(r);
        }
    }
    for r in kinds {
        let prefix = r.key_prefix_in(Some(ns));
        let resp =
            st.store.range(crate::store::RangeRequest { prefix: prefix.into_bytes(), ..Default::default() }).await?;
        for kv in resp.kvs {
            remaining += 1;
            let o = objects::decode(&kv)?;
            if o.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) {
                continue;
            }
            let name = o.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
            let req = Req {
                st: st.clone(),
                r: r.clone(),
                ns: Some(ns.to_string()),
                name: Some(name),
                sub: None,
                q: super::query::Query::default(),
                headers: Default::default(),
                method: axum::http::Method::DELETE,
            };
            if let Err(e) = handlers::delete(&req, b"").await {
                if e.code != 404 {
                    tracing::debug!(namespace = %ns, error = %e, "namespace deletion: delete failed");
                }
            }
        }
    }
    if remaining > 0 {
        return Ok(false);
    }
    let Some(r) = registry::find("", "v1", "namespaces") else { return Ok(true) };
    let cur = match objects::get(st.store.as_ref(), r, None, ns).await {
        Ok(c) => c,
        Err(e) if e.code == 404 => return Ok(true),
        Err(e) => return Err(e),
    };
    let mut o = cur.obj.clone();
    let fins: Vec<serde_json::Value> = o
        .pointer("/spec/finalizers")
        .and_then(|f| f.as_array())
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != "kubernetes")
        .collect();
    if !fins.is_empty() {
        o["spec"]["finalizers"] = json!(fins);
        objects::update(st.store.as_ref(), r, None, ns, o, cur.rev, None).await?;
        return Ok(false);
    }
    let meta_fins = o.pointer("/metadata/finalizers").and_then(|f| f.as_array()).is_some_and(|f| !f.is_empty());
    if meta_fins {
        return Ok(false);
    }
    objects::delete(st.store.as_ref(), r, None, ns, cur.rev).await?;
    Ok(true)
}
