//! Objects every cluster has from its first start: the `default`, `kube-system`,
//! `kube-public` and `kube-node-lease` namespaces, and the `kubernetes` Service in `default`
//! with its Endpoints pointing at the API server, and the default `local-path` StorageClass.

use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::api::handlers::{self, Req};
use crate::api::{objects, ApiState};
use crate::config::ServerConfig;
use crate::registry;

fn req(st: &Arc<ApiState>, plural: &str, ns: Option<&str>) -> anyhow::Result<Req> {
    let group = match plural {
        "priorityclasses" => "scheduling.k8s.io",
        p if p.starts_with("cluster") => "rbac.authorization.k8s.io",
        _ => "",
    };
    Ok(Req {
        st: st.clone(),
        r: registry::find(group, "v1", plural).ok_or_else(|| anyhow::anyhow!("{plural} not registered"))?.into(),
        ns: ns.map(String::from),
        name: None,
        sub: None,
        q: Default::default(),
        headers: Default::default(),
        method: axum::http::Method::POST,
    })
}

async fn ensure(st: &Arc<ApiState>, plural: &str, ns: Option<&str>, obj: Value) -> anyhow::Result<()> {
    let r = req(st, plural, ns)?;
    // Already there (a restart, or a server joining an existing cluster): creating it again
    // would fail in admission (its ClusterIP is taken) before the 409.
    let name = obj.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("");
    if objects::get(st.store.as_ref(), &r.r, ns, name).await.is_ok() {
        return Ok(());
    }
    match handlers::create_object(&r, obj).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn ensure_storage_class(st: &Arc<ApiState>) -> anyhow::Result<()> {
    let r = registry::find("storage.k8s.io", "v1", "storageclasses")
        .ok_or_else(|| anyhow::anyhow!("storageclasses not registered"))?;
    if objects::get(st.store.as_ref(), r, None, crate::controllers::local_path::CLASS).await.is_ok() {
        return Ok(());
    }
    let req = Req { r: registry::dynamic::ResRef::Builtin(r), ..req(st, "namespaces", None)? };
    match handlers::create_object(&req, crate::controllers::local_path::storage_class()).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub async fn objects(st: &Arc<ApiState>, cfg: &ServerConfig, service_ip: Ipv4Addr, port: u16) -> anyhow::Result<()> {
    let (roles, bindings) = crate::api::auth::defaults::objects();
    for r in roles {
        ensure(st, "clusterroles", None, r).await?;
    }
    for b in bindings {
        ensure(st, "clusterrolebindings", None, b).await?;
    }
    // Upstream's built-in PriorityClasses (the Priority admission plugin creates them).
    for (name, value, what) in [
        ("system-node-critical", 2000001000, "Used for system critical pods that must not be moved from their current node."),
        ("system-cluster-critical", 2000000000, "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary."),
    ] {
        let pc = json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
            "value": value, "globalDefault": false, "description": what, "preemptionPolicy": "PreemptLowerPriority"});
        ensure(st, "priorityclasses", None, pc).await?;
    }
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure(st, "namespaces", None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await?;
    }
    ensure(
        st,
        "services",
        Some("default"),
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": service_ip.to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}}),
    )
    .await?;
    // The default StorageClass of the built-in local-path provisioner (k3s ships the same, and
    // skips it with `--disable local-storage`).
    if !cfg.disable.iter().any(|d| d == "local-storage") {
        ensure_storage_class(st).await?;
    }
    // Endpoints always point at this server's advertised address (one server for now).
    let ep = json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": cfg.advertise_address.to_string()}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]});
    let r = req(st, "endpoints", Some("default"))?;
    match objects::get(st.store.as_ref(), &r.r, Some("default"), "kubernetes").await {
        Ok(cur) => {
            if cur.obj.get("subsets") != ep.get("subsets") {
                let mut new = cur.obj.clone();
                new["subsets"] = ep["subsets"].clone();
                objects::update(st.store.as_ref(), &r.r, Some("default"), "kubernetes", new, cur.rev, None).await?;
            }
        }
        Err(_) => ensure(st, "endpoints", Some("default"), ep).await?,
    }
    Ok(())
}

/// Whether an error is the store being briefly unavailable (no Raft leader, a quorum being
/// re-formed), so trying again later can succeed: the store's own `Unavailable`, or an API
/// answer of 503/504.
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<crate::store::StoreError>(), Some(crate::store::StoreError::Unavailable(_)))
            || c.downcast_ref::<crate::api::errors::ApiError>().is_some_and(|a| a.code == 503 || a.code == 504)
    })
}
