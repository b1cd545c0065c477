//! The resource metrics API, `metrics.k8s.io/v1beta1` (NodeMetrics, PodMetrics), served by the
//! API server itself instead of an aggregated metrics-server: `kubectl top` and the HPA
//! controller read it.
//!
//! The numbers come from each node's kubelet `/stats/summary` (the Summary API), fetched with
//! the API server's kubelet client (the same one `pods/log` uses) with a short timeout per node,
//! and kept for [`CACHE_TTL`] (metrics-server scrapes every 15 s). A node whose kubelet does not
//! answer is left out, as metrics-server leaves it out; so are pods whose containers have no
//! CPU rate yet.

use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::auth::rbac::Attributes;
use super::errors::{ApiError, ApiResult};
use super::handlers::json_response;
use super::selector::{FieldSelector, LabelSelector};
use super::{ApiState, User};
use crate::registry;

pub const GROUP: &str = "metrics.k8s.io";
pub const VERSION: &str = "v1beta1";
/// How long a node's Summary is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// How long one kubelet gets to answer.
const KUBELET_TIMEOUT: Duration = Duration::from_secs(5);
/// The window metrics are averaged over (the kubelet's sampling period).
const WINDOW: &str = "10s";

/// A node's Summary and when it was fetched (None: the kubelet did not answer).
type Cached = (Instant, Option<Arc<Value>>);

/// Summaries by node name.
#[derive(Default)]
pub struct MetricsCache {
    nodes: Mutex<HashMap<String, Cached>>,
}

// ---------------------------------------------------------------------------------------------
// Discovery

/// The two resources, as APIResourceList entries.
fn resources() -> Value {
    json!([
        {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
        {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
    ])
}

/// The group's entry in `/apis` (APIGroupList) and `/apis/metrics.k8s.io` (APIGroup).
pub fn group_entry() -> Value {
    let gv = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({"name": GROUP, "versions": [gv.clone()], "preferredVersion": gv})
}

/// The group's item in aggregated discovery (`/apis`, apidiscovery.k8s.io/v2).
pub fn aggregated_item() -> Value {
    let res = |plural: &str, kind: &str, scope: &str| {
        json!({
            "resource": plural,
            "responseKind": {"group": GROUP, "version": VERSION, "kind": kind},
            "scope": scope,
            "singularResource": "",
            "verbs": ["get", "list"],
        })
    };
    json!({
        "metadata": {"name": GROUP},
        "versions": [{
            "version": VERSION,
            "resources": [res("nodes", "NodeMetrics", "Cluster"), res("pods", "PodMetrics", "Namespaced")],
            "freshness": "Current",
        }],
    })
}

// ---------------------------------------------------------------------------------------------
// Quantities and objects (pure)

/// CPU in nanocores as a Kubernetes quantity (`12345n`, `250m` when whole millicores, `0`).
pub fn cpu_quantity(nanocores: u64) -> String {
    match nanocores {
        0 => "0".into(),
        n if n % 1_000_000 == 0 => format!("{}m", n / 1_000_000),
        n => format!("{n}n"),
    }
}

/// Memory in bytes as a quantity (`1024Ki` when whole KiB, else plain bytes).
pub fn memory_quantity(bytes: u64) -> String {
    match bytes {
        0 => "0".into(),
        b if b % 1024 == 0 => format!("{}Ki", b / 1024),
        b => b.to_string(),
    }
}

fn usage(stats: &Value) -> Option<Value> {
    let cpu = stats.pointer("/cpu/usageNanoCores")?.as_u64()?;
    let mem = stats.pointer("/memory/workingSetBytes").and_then(Value::as_u64).unwrap_or(0);
    Some(json!({"cpu": cpu_quantity(cpu), "memory": memory_quantity(mem)}))
}

fn timestamp(stats: &Value) -> Value {
    stats.pointer("/cpu/time").cloned().unwrap_or_else(|| json!(now()))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// NodeMetrics for `node` (a Node object) from its Summary; None without a CPU rate.
pub fn node_metrics(node: &Value, summary: &Value) -> Option<Value> {
    let stats = summary.get("node")?;
    Some(json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {
            "name": node.pointer("/metadata/name").cloned().unwrap_or_default(),
            "labels": node.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            "creationTimestamp": now(),
        },
        "timestamp": timestamp(stats),
        "window": WINDOW,
        "usage": usage(stats)?,
    }))
}

/// PodMetrics for `pod` (a Pod object) from its node's Summary; None when the Summary does not
/// have the pod or some container of it has no CPU rate yet (metrics-server drops those too).
pub fn pod_metrics(pod: &Value, summary: &Value) -> Option<Value> {
    let uid = pod.pointer("/metadata/uid")?.as_str()?;
    let stats = summary
        .get("pods")?
        .as_array()?
        .iter()
        .find(|p| p.pointer("/podRef/uid").and_then(Value::as_str) == Some(uid))?;
    let containers: Vec<Value> = stats
        .get("containers")?
        .as_array()?
        .iter()
        .map(|c| Some(json!({"name": c.get("name")?.clone(), "usage": usage(c)?})))
        .collect::<Option<_>>()?;
    if containers.is_empty() {
        return None;
    }
    let ts = stats.pointer("/containers/0/cpu/time").cloned().unwrap_or_else(|| json!(now()));
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {
            "name": pod.pointer("/metadata/name").cloned().unwrap_or_default(),
            "namespace": pod.pointer("/metadata/namespace").cloned().unwrap_or_default(),
            "labels": pod.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            "creationTimestamp": now(),
        },
        "timestamp": ts,
        "window": WINDOW,
        "containers": containers,
    }))
}

// ---------------------------------------------------------------------------------------------
// Serving

/// What a metrics path addresses.
#[derive(Debug, PartialEq)]
pub enum Path {
    Group,
    Version,
    Nodes { name: Option<String> },
    Pods { namespace: Option<String>, name: Option<String> },
    NotFound,
}

/// Parses a path under `/apis/metrics.k8s.io`; None for other paths.
pub fn parse(path: &str) -> Option<Path> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    if segs.len() < 2 || segs[0] != "apis" || segs[1] != GROUP {
        return None;
    }
    let name = |i: usize| segs.get(i).map(|s| s.to_string());
    Some(match &segs[2..] {
        [] => Path::Group,
        [v] if *v == VERSION => Path::Version,
        [v, ..] if *v != VERSION => Path::NotFound,
        [_, "nodes"] | [_, "nodes", _] => Path::Nodes { name: name(4) },
        [_, "pods"] => Path::Pods { namespace: None, name: None },
        [_, "namespaces", ns, "pods"] | [_, "namespaces", ns, "pods", _] => {
            Path::Pods { namespace: Some(ns.to_string()), name: name(6) }
        }
        _ => Path::NotFound,
    })
}

fn not_found() -> ApiError {
    ApiError::new(404, "NotFound", "the server could not find the requested resource")
}

/// Serves a request under `/apis/metrics.k8s.io` (`dispatch` sends them here).
pub async fn serve(
    st: &Arc<ApiState>,
    user: &User,
    method: &Method,
    p: Path,
    query: Option<&str>,
) -> ApiResult<Response> {
    let q = super::query::Query::parse(query);
    let (resource, namespace, name) = match p {
        Path::Group => {
            let mut g = group_entry();
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            return Ok(json_response(StatusCode::OK, &g));
        }
        Path::Version => {
            let l = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"), "resources": resources()});
            return Ok(json_response(StatusCode::OK, &l));
        }
        Path::NotFound => return Err(not_found()),
        Path::Nodes { name } => ("nodes", None, name),
        Path::Pods { namespace, name } => ("pods", namespace, name),
    };
    let verb = match (method, &name) {
        (&Method::GET, _) if q.flag("watch") => {
            return Err(ApiError::method_not_allowed(
                "the server does not allow this method on the requested resource (watch)",
            ))
        }
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) => "list",
        (m, _) => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({m})"
            )))
        }
    };
    let a = Attributes {
        verb: verb.into(),
        group: GROUP.into(),
        resource: resource.into(),
        namespace: namespace.clone().unwrap_or_default(),
        name: name.clone().unwrap_or_default(),
        ..Default::default()
    };
    st.authz.authorize(st.store.as_ref(), user, &a).await?;

    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or("")).map_err(ApiError::bad_request)?;
    let fields = match q.get("fieldSelector") {
        Some(f) => Some(
            FieldSelector::parse(f, if resource == "nodes" { "Node" } else { "Pod" }).map_err(ApiError::bad_request)?,
        ),
        None => None,
    };
    let objects = list_objects(st, resource, namespace.as_deref()).await?;
    let objects: Vec<Value> = objects
        .into_iter()
        .filter(|o| name.as_deref().is_none_or(|n| o.pointer("/metadata/name").and_then(Value::as_str) == Some(n)))
        .filter(|o| labels.matches(o.pointer("/metadata/labels")))
        .filter(|o| fields.as_ref().is_none_or(|f| f.matches(o)))
        .collect();

    let node_of = |o: &Value| -> Option<String> {
        if resource == "nodes" {
            o.pointer("/metadata/name").and_then(Value::as_str).map(String::from)
        } else {
            o.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()).map(String::from)
        }
    };
    let wanted: BTreeSet<String> = objects.iter().filter_map(node_of).collect();
    let summaries = summaries(st, &wanted).await;
    let items: Vec<Value> = objects
        .iter()
        .filter_map(|o| {
            let s = summaries.get(&node_of(o)?)?;
            if resource == "nodes" {
                node_metrics(o, s)
            } else {
                pod_metrics(o, s)
            }
        })
        .collect();
    let kind = if resource == "nodes" { "NodeMetrics" } else { "PodMetrics" };
    match name {
        Some(n) => match items.into_iter().next() {
            Some(i) => Ok(json_response(StatusCode::OK, &i)),
            None => Err(ApiError::new(
                404,
                "NotFound",
                format!("{}.{GROUP} \"{n}\" not found", if resource == "nodes" { "nodemetrics" } else { "podmetrics" }),
            )),
        },
        None => Ok(json_response(
            StatusCode::OK,
            &json!({"kind": format!("{kind}List"), "apiVersion": format!("{GROUP}/{VERSION}"), "metadata": {}, "items": items}),
        )),
    }
}

/// Nodes or pods (in `ns`, or everywhere) from this server's store.
async fn list_objects(st: &ApiState, resource: &str, ns: Option<&str>) -> ApiResult<Vec<Value>> {
    let r =
        registry::find("", "v1", resource).ok_or_else(|| ApiError::internal(format!("{resource} not registered")))?;
    let resp = st
        .store
        .range(crate::store::RangeRequest {
            prefix: r.key_prefix_in(ns).into_bytes(),
            serializable: true,
            ..Default::default()
        })
        .await?;
    resp.kvs.iter().map(|kv| super::objects::decode_as(r, kv)).collect()
}

/// The Summaries of `nodes`, from the cache or fetched concurrently; nodes that did not answer
/// are missing from the map.
async fn summaries(st: &Arc<ApiState>, nodes: &BTreeSet<String>) -> HashMap<String, Arc<Value>> {
    let mut out = HashMap::new();
    let mut fetch = Vec::new();
    {
        let cache = st.metrics.nodes.lock().unwrap_or_else(|p| p.into_inner());
        for n in nodes {
            match cache.get(n) {
                Some((at, v)) if at.elapsed() < CACHE_TTL => {
                    if let Some(v) = v {
                        out.insert(n.clone(), v.clone());
                    }
                }
                _ => fetch.push(n.clone()),
            }
        }
    }
    let fetched = futures::future::join_all(fetch.into_iter().map(|n| {
        let st = st.clone();
        async move {
            let r = match tokio::time::timeout(KUBELET_TIMEOUT, fetch_summary(&st, &n)).await {
                Ok(Ok(v)) => Some(Arc::new(v)),
                Ok(Err(e)) => {
                    tracing::info!(node = %n, error = %e, "fetching the node's resource stats failed");
                    None
                }
                Err(_) => {
                    tracing::info!(node = %n, "the node's kubelet did not answer /stats/summary in time");
                    None
                }
            };
            (n, r)
        }
    }))
    .await;
    let mut cache = st.metrics.nodes.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL * 6);
    for (n, v) in fetched {
        cache.insert(n.clone(), (Instant::now(), v.clone()));
        if let Some(v) = v {
            out.insert(n, v);
        }
    }
    out
}

async fn fetch_summary(st: &ApiState, node: &str) -> Result<Value, String> {
    let nodes = registry::find("", "v1", "nodes").ok_or("nodes not registered")?;
    let n = super::objects::get_serializable(st.store.as_ref(), nodes, None, node).await.map_err(|e| e.message)?;
    let addrs = n.obj.pointer("/status/addresses").and_then(|a| a.as_array()).cloned().unwrap_or_default();
    let ip = ["InternalIP", "ExternalIP", "Hostname"]
        .iter()
        .find_map(|t| addrs.iter().find(|a| a["type"] == *t).and_then(|a| a["address"].as_str()).map(String::from))
        .ok_or_else(|| format!("node {node:?} has no address"))?;
    let port = n.obj.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(|p| p.as_i64()).unwrap_or(10250);
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
    let url = format!("https://{host}:{port}/stats/summary");
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let resp = st.kubelet.get(uri).await.map_err(|e| format!("Get \"{url}\": {e}"))?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("{url}: {status}: {}", String::from_utf8_lossy(&body).trim()));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not a Summary: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_in_the_units_metrics_server_uses() {
        assert_eq!(cpu_quantity(0), "0");
        assert_eq!(cpu_quantity(250_000_000), "250m");
        assert_eq!(cpu_quantity(1_234_567), "1234567n");
        assert_eq!(memory_quantity(2048), "2Ki");
        assert_eq!(memory_quantity(1000), "1000");
    }

    #[test]
    fn paths_under_the_group_parse() {
        assert_eq!(parse("/apis/metrics.k8s.io"), Some(Path::Group));
        assert_eq!(parse("/apis/metrics.k8s.io/v1beta1"), Some(Path::Version));
        assert_eq!(parse("/apis/metrics.k8s.io/v1beta1/nodes"), Some(Path::Nodes { name: None }));
        assert_eq!(parse("/apis/metrics.k8s.io/v1beta1/nodes/n1"), Some(Path::Nodes { name: Some("n1".into()) }));
        assert_eq!(parse("/apis/metrics.k8s.io/v1beta1/pods"), Some(Path::Pods { namespace: None, name: None }));
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web"),
            Some(Path::Pods { namespace: Some("default".into()), name: Some("web".into()) })
        );
        assert_eq!(parse("/apis/metrics.k8s.io/v1/nodes"), Some(Path::NotFound));
        assert_eq!(parse("/apis/metrics.k8s.io/v1beta1/services"), Some(Path::NotFound));
        assert_eq!(parse("/apis/apps/v1"), None);
    }

    #[test]
    fn pod_metrics_come_from_the_summary_entry_with_the_pods_uid() {
        let summary = json!({
            "node": {"nodeName": "n1", "cpu": {"time": "2026-01-01T00:00:00Z", "usageNanoCores": 500_000_000u64},
                     "memory": {"workingSetBytes": 4096}},
            "pods": [
                {"podRef": {"name": "web", "namespace": "default", "uid": "old"}, "containers": []},
                {"podRef": {"name": "web", "namespace": "default", "uid": "u1"}, "containers": [
                    {"name": "app", "cpu": {"time": "2026-01-01T00:00:01Z", "usageNanoCores": 1_500_000u64},
                     "memory": {"workingSetBytes": 1_048_576u64}}]},
                {"podRef": {"name": "new", "namespace": "default", "uid": "u2"}, "containers": [
                    {"name": "app", "cpu": {"time": "2026-01-01T00:00:01Z"}, "memory": {"workingSetBytes": 1}}]},
            ]
        });
        let pod = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u1", "labels": {"app": "web"}}});
        let m = pod_metrics(&pod, &summary).unwrap();
        assert_eq!(m["metadata"]["labels"]["app"], "web");
        assert_eq!(m["containers"][0], json!({"name": "app", "usage": {"cpu": "1500000n", "memory": "1024Ki"}}));
        assert_eq!(m["timestamp"], "2026-01-01T00:00:01Z");
        // No CPU rate yet, or not on the node at all: no metrics.
        assert!(pod_metrics(&json!({"metadata": {"uid": "u2"}}), &summary).is_none());
        assert!(pod_metrics(&json!({"metadata": {"uid": "u3"}}), &summary).is_none());

        let n = node_metrics(&json!({"metadata": {"name": "n1"}}), &summary).unwrap();
        assert_eq!(n["usage"], json!({"cpu": "500m", "memory": "4Ki"}));
        assert_eq!(n["kind"], "NodeMetrics");
    }
}
