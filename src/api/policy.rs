//! Admission plugins that read other objects: LimitRanger (container defaults and bounds),
//! DefaultStorageClass, and ResourceQuota (hard limits on counts and pod resources), as
//! kube-apiserver's default admission chain runs them on create.
//!
//! Quota usage: admission charges a quota's `status.used` with a compare-and-swap as it admits
//! an object (so concurrent creates cannot both take the last unit), and the resourcequota
//! controller recomputes `status.used` from the stored objects (releasing what deletions and
//! failed creates freed).

use serde_json::{json, Value};

use super::errors::{ApiError, ApiResult};
use super::handlers::Req;
use super::objects;
use crate::registry::{self, Resource};
use crate::store::RangeRequest;

/// A Kubernetes quantity in base units (cores, bytes, counts), e.g. `100m` → 0.1, `64Mi` → 67108864.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with('e') || s.starts_with('E') => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * mult)
}

fn qty(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// The objects of one kind in `ns`. `serializable`: from this server's applied state, for
/// admission lookups, which read informer caches upstream.
async fn list_in(req: &Req, group: &str, plural: &str, ns: &str, serializable: bool) -> ApiResult<Vec<Value>> {
    let Some(r) = registry::by_plural(plural).find(|r| r.group == group) else { return Ok(vec![]) };
    let resp = req
        .st
        .store
        .range(RangeRequest { prefix: r.key_prefix_in(Some(ns)).into_bytes(), serializable, ..Default::default() })
        .await?;
    resp.kvs.iter().map(objects::decode).collect()
}

fn forbidden(r: &Resource, name: &str, why: String) -> ApiError {
    ApiError::forbidden(format!("{} {name:?} is forbidden: {why}", r.qualified_plural()))
}

/// Mutating admission on create (after defaulting, before validation).
pub async fn mutate(req: &Req, o: &mut Value) -> ApiResult<()> {
    let ns = req.ns.clone().unwrap_or_default();
    match (&*req.r.group, &*req.r.kind) {
        ("", "Pod") => {
            for lr in list_in(req, "", "limitranges", &ns, true).await? {
                for item in lr.pointer("/spec/limits").and_then(|l| l.as_array()).into_iter().flatten() {
                    if item["type"] != "Container" {
                        continue;
                    }
                    for key in ["containers", "initContainers"] {
                        let Some(cs) = o.pointer_mut(&format!("/spec/{key}")).and_then(|c| c.as_array_mut()) else {
                            continue;
                        };
                        for c in cs.iter_mut() {
                            for (field, source) in [("limits", "default"), ("requests", "defaultRequest")] {
                                let Some(defaults) = item.get(source).and_then(|d| d.as_object()) else { continue };
                                for (res, val) in defaults {
                                    if c.pointer(&format!("/resources/{field}/{res}")).is_none() {
                                        if !c["resources"].is_object() {
                                            c["resources"] = json!({});
                                        }
                                        if !c["resources"][field].is_object() {
                                            c["resources"][field] = json!({});
                                        }
                                        c["resources"][field][res] = val.clone();
                                    }
                                }
                            }
                            // Upstream: a limit with no request makes the request equal the limit.
                            let limits =
                                c.pointer("/resources/limits").and_then(|l| l.as_object()).cloned().unwrap_or_default();
                            for (res, val) in limits {
                                if c.pointer(&format!("/resources/requests/{res}")).is_none() {
                                    if !c["resources"]["requests"].is_object() {
                                        c["resources"]["requests"] = json!({});
                                    }
                                    c["resources"]["requests"][res] = val;
                                }
                            }
                        }
                    }
                }
            }
        }
        ("", "PersistentVolumeClaim") if o.pointer("/spec/storageClassName").is_none() => {
            let Some(sc) = registry::find("storage.k8s.io", "v1", "storageclasses") else { return Ok(()) };
            let resp =
                req.st.store.range(RangeRequest { prefix: sc.key_prefix().into_bytes(), ..Default::default() }).await?;
            let default = resp.kvs.iter().filter_map(|kv| objects::decode(kv).ok()).find(|c| {
                c.pointer("/metadata/annotations/storageclass.kubernetes.io~1is-default-class").and_then(|v| v.as_str())
                    == Some("true")
            });
            if let Some(d) = default {
                o["spec"]["storageClassName"] = d["metadata"]["name"].clone();
            }
        }
        _ => {}
    }
    Ok(())
}

fn pod_resources(p: &Value) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    let mut add = |k: String, v: f64| match out.iter_mut().find(|(a, _)| *a == k) {
        Some(e) => e.1 += v,
        None => out.push((k, v)),
    };
    for c in p.pointer("/spec/containers").and_then(|c| c.as_array()).into_iter().flatten() {
        for field in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                if let Some(v) = qty(c.pointer(&format!("/resources/{field}/{res}"))) {
                    add(format!("{field}.{res}"), v);
                }
            }
        }
    }
    out
}

fn terminal(p: &Value) -> bool {
    matches!(p.pointer("/status/phase").and_then(|s| s.as_str()), Some("Succeeded" | "Failed"))
}

fn show(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{}m", (v * 1000.0).round() as i64)
    }
}

/// Validating admission on create: LimitRange bounds and ResourceQuota.
pub async fn validate(req: &Req, o: &Value) -> ApiResult<()> {
    let ns = req.ns.clone().unwrap_or_default();
    if ns.is_empty() {
        return Ok(());
    }
    let name = o.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
    if req.r.kind == "Pod" {
        for lr in list_in(req, "", "limitranges", &ns, true).await? {
            for item in lr
                .pointer("/spec/limits")
                .and_then(|l| l.as_array())
                .into_iter()
                .flatten()
                .filter(|i| i["type"] == "Container")
            {
                for c in o.pointer("/spec/containers").and_then(|c| c.as_array()).into_iter().flatten() {
                    for res in ["cpu", "memory"] {
                        let limit = qty(c.pointer(&format!("/resources/limits/{res}")));
                        let request = qty(c.pointer(&format!("/resources/requests/{res}")));
                        if let (Some(max), Some(l)) = (qty(item.pointer(&format!("/max/{res}"))), limit) {
                            if l > max {
                                return Err(forbidden(
                                    &req.r,
                                    &name,
                                    format!(
                                        "maximum {res} usage per Container is {}, but limit is {}",
                                        item["max"][res].as_str().unwrap_or(""),
                                        c["resources"]["limits"][res].as_str().unwrap_or("")
                                    ),
                                ));
                            }
                        }
                        if let (Some(min), Some(r)) = (qty(item.pointer(&format!("/min/{res}"))), request) {
                            if r < min {
                                return Err(forbidden(
                                    &req.r,
                                    &name,
                                    format!(
                                        "minimum {res} usage per Container is {}, but request is {}",
                                        item["min"][res].as_str().unwrap_or(""),
                                        c["resources"]["requests"][res].as_str().unwrap_or("")
                                    ),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    if req.r.kind == "ResourceQuota" {
        return Ok(());
    }
    // Two creates racing for the last free unit of a quota must not both pass: each one
    // charges the quota's status.used with a compare-and-swap, and a lost race re-evaluates
    // against the winner's charge (upstream's quota admission does the same).
    for attempt in 0..8 {
        // After a lost race, read the winner's charge where it was made.
        let quotas = list_in(req, "", "resourcequotas", &ns, attempt == 0).await?;
        if quotas.is_empty() {
            return Ok(());
        }
        let charges = quota_charges(req, o, &name, &ns, quotas).await?;
        if charges.is_empty() || req.q.dry_run()? {
            return Ok(());
        }
        let Some(qr) = registry::find("", "v1", "resourcequotas") else { return Ok(()) };
        let mut lost = false;
        for q in charges {
            let qname = q.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
            let rev = q
                .pointer("/metadata/resourceVersion")
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            match objects::update(req.st.store.as_ref(), qr, Some(&ns), &qname, q, rev, None).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {
                    lost = true;
                    break;
                }
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        if !lost {
            return Ok(());
        }
    }
    Err(ApiError::new(
        409,
        "Conflict",
        format!("Operation cannot be fulfilled on resourcequotas in namespace {ns:?}: too many concurrent creates; try again"),
    ))
}

/// How much of each quota resource `kind` objects use in a namespace: counts and, for pods,
/// the sums of requests and limits (terminal pods excluded). `objects` are the namespace's
/// objects of that kind.
pub fn quota_usage(r: &Resource, objects: &[Value], hard_keys: &[String]) -> Vec<(String, f64)> {
    let live: Vec<&Value> = objects.iter().filter(|x| !(r.kind == "Pod" && terminal(x))).collect();
    let legacy = legacy_quota_name(&r.kind);
    let mut out = Vec::new();
    for k in hard_keys {
        let v = if *k == format!("count/{}", r.qualified_plural()) || legacy == Some(k.as_str()) {
            live.len() as f64
        } else if r.kind == "Pod" {
            live.iter()
                .map(|p| {
                    pod_resources(p)
                        .into_iter()
                        .filter(|(a, _)| a == k || format!("requests.{k}") == *a)
                        .map(|(_, v)| v)
                        .sum::<f64>()
                })
                .sum()
        } else if r.kind == "PersistentVolumeClaim" && k == "requests.storage" {
            live.iter().filter_map(|p| qty(p.pointer("/spec/resources/requests/storage"))).sum()
        } else if r.kind == "Service" && (k == "services.nodeports" || k == "services.loadbalancers") {
            let ty = if k == "services.nodeports" { "NodePort" } else { "LoadBalancer" };
            live.iter().filter(|s| s.pointer("/spec/type").and_then(|t| t.as_str()) == Some(ty)).count() as f64
        } else {
            continue;
        };
        out.push((k.clone(), v));
    }
    out
}

/// The pre-`count/` quota name of a kind (`pods`, `services`, …).
pub fn legacy_quota_name(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some("pods"),
        "Service" => Some("services"),
        "ConfigMap" => Some("configmaps"),
        "Secret" => Some("secrets"),
        "PersistentVolumeClaim" => Some("persistentvolumeclaims"),
        "ReplicationController" => Some("replicationcontrollers"),
        "ResourceQuota" => Some("resourcequotas"),
        _ => None,
    }
}

/// A quota quantity as upstream prints it: CPU-like values in cores or millicores, byte
/// values with the largest exact binary suffix, counts as integers.
pub fn format_quantity(key: &str, v: f64) -> String {
    if key.contains("memory") || key.contains("storage") {
        let b = v.round() as i64;
        for (suffix, m) in [("Ti", 1i64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if b != 0 && b % m == 0 {
                return format!("{}{suffix}", b / m);
            }
        }
        return b.to_string();
    }
    show(v)
}

/// Checks the object against every quota of its namespace; the quotas to write back (with
/// status.used charged) when it fits, a 403 naming what is exceeded otherwise.
async fn quota_charges(req: &Req, o: &Value, name: &str, ns: &str, quotas: Vec<Value>) -> ApiResult<Vec<Value>> {
    // What this object would add, per quota resource name.
    let mut adds: Vec<(String, f64)> = vec![(format!("count/{}", req.r.qualified_plural()), 1.0)];
    let legacy = legacy_quota_name(&req.r.kind);
    if let Some(l) = legacy {
        adds.push((l.to_string(), 1.0));
    }
    if req.r.kind == "Pod" {
        for (k, v) in pod_resources(o) {
            adds.push((k.clone(), v));
            if let Some(short) = k.strip_prefix("requests.") {
                adds.push((short.to_string(), v));
            }
        }
    }
    if req.r.kind == "PersistentVolumeClaim" {
        if let Some(v) = qty(o.pointer("/spec/resources/requests/storage")) {
            adds.push(("requests.storage".into(), v));
        }
    }
    if req.r.kind == "Service" {
        match o.pointer("/spec/type").and_then(|t| t.as_str()) {
            Some("NodePort") => adds.push(("services.nodeports".into(), 1.0)),
            Some("LoadBalancer") => adds.push(("services.loadbalancers".into(), 1.0)),
            _ => {}
        }
    }
    let existing = list_in(req, &req.r.group, &req.r.plural, ns, true).await?;
    let mut charges = Vec::new();
    for mut q in quotas {
        let qname = q.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
        let Some(hard) = q.pointer("/spec/hard").and_then(|h| h.as_object()).cloned() else { continue };
        // Pods must state what a quota on cpu/memory tracks.
        if req.r.kind == "Pod" {
            for key in hard.keys().filter(|k| {
                matches!(
                    k.as_str(),
                    "requests.cpu" | "requests.memory" | "limits.cpu" | "limits.memory" | "cpu" | "memory"
                )
            }) {
                let full = if key.contains('.') { key.clone() } else { format!("requests.{key}") };
                let (field, res) = full.split_once('.').unwrap_or(("requests", "cpu"));
                let missing: Vec<String> = o
                    .pointer("/spec/containers")
                    .and_then(|c| c.as_array())
                    .into_iter()
                    .flatten()
                    .filter(|c| c.pointer(&format!("/resources/{field}/{res}")).is_none())
                    .filter_map(|c| c["name"].as_str().map(String::from))
                    .collect();
                if !missing.is_empty() {
                    return Err(forbidden(
                        &req.r,
                        name,
                        format!("failed quota: {qname}: must specify {full} for: {}", missing.join(",")),
                    ));
                }
            }
        }
        let tracked: Vec<String> = adds.iter().map(|(k, _)| k.clone()).filter(|k| hard.contains_key(k)).collect();
        if tracked.is_empty() {
            continue;
        }
        let live = quota_usage(&req.r, &existing, &tracked);
        let mut requested = Vec::new();
        let mut used_s = Vec::new();
        let mut limited = Vec::new();
        let mut new_used = Vec::new();
        for (k, add) in &adds {
            let Some(h) = qty(hard.get(k)) else { continue };
            // The quota's own record counts objects admitted but maybe not stored yet.
            let recorded = qty(q.pointer(&format!("/status/used/{}", k.replace('~', "~0").replace('/', "~1"))));
            let counted = live.iter().find(|(a, _)| a == k).map(|(_, v)| *v).unwrap_or(0.0);
            let used = recorded.unwrap_or(0.0).max(counted);
            if used + add > h + 1e-9 {
                requested.push(format!("{k}={}", show(*add)));
                used_s.push(format!("{k}={}", show(used)));
                limited.push(format!(
                    "{k}={}",
                    hard.get(k).and_then(|v| v.as_str()).map(String::from).unwrap_or_else(|| show(h))
                ));
            }
            new_used.push((k.clone(), used + add));
        }
        if !requested.is_empty() {
            return Err(forbidden(
                &req.r,
                name,
                format!(
                    "exceeded quota: {qname}, requested: {}, used: {}, limited: {}",
                    requested.join(","),
                    used_s.join(","),
                    limited.join(",")
                ),
            ));
        }
        if !q["status"].is_object() {
            q["status"] = json!({});
        }
        q["status"]["hard"] = Value::Object(hard.clone());
        if !q["status"]["used"].is_object() {
            q["status"]["used"] = json!({});
        }
        for (k, v) in new_used {
            q["status"]["used"][k.as_str()] = json!(format_quantity(&k, v));
        }
        charges.push(q);
    }
    Ok(charges)
}

/// `POST pods/{name}/eviction`: deletes the pod unless a PodDisruptionBudget forbids it
/// (429, as upstream), consuming one allowed disruption.
pub async fn evict(req: &Req, body: &[u8]) -> ApiResult<axum::response::Response> {
    let ns = req.ns.clone().unwrap_or_default();
    let name = req.name.clone().unwrap_or_default();
    let pod = objects::get(req.st.store.as_ref(), &req.r, Some(&ns), &name).await?;
    let ev = if body.iter().all(|b| b.is_ascii_whitespace()) {
        json!({})
    } else {
        super::handlers::decode_body(
            req.headers.get("content-type").and_then(|c| c.to_str().ok()).unwrap_or("application/json"),
            body,
        )?
    };
    let labels = pod.obj.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    let pdbs = registry::find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("pdbs not registered"))?;
    let too_many = |msg: String, cause: &str| {
        let mut e = ApiError::new(429, "TooManyRequests", msg);
        e.details = Some(json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]}));
        e
    };
    if !terminal(&pod.obj) && pod.obj.pointer("/metadata/deletionTimestamp").is_none_or(|d| d.is_null()) {
        for pdb in list_in(req, "policy", "poddisruptionbudgets", &ns, false).await? {
            let sel = pdb.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            let empty = sel.as_object().is_none_or(|o| o.is_empty());
            if empty || !crate::registry::validation::selector_matches(&sel, &labels) {
                continue;
            }
            let pname = pdb.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
            let observed = pdb.pointer("/status/observedGeneration").and_then(|g| g.as_i64()).unwrap_or(0);
            let generation = pdb.pointer("/metadata/generation").and_then(|g| g.as_i64()).unwrap_or(1);
            if observed < generation {
                return Err(too_many(
                    format!("Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {pname} needs to be processed by the controller"),
                    &format!("The disruption budget {pname} is still being processed by the server."),
                ));
            }
            // Decide on a fresh read and write it back with compare-and-swap: concurrent
            // evictions (kubectl drain evicts in parallel) must not both spend one disruption.
            let mut spent = false;
            for _ in 0..10 {
                let cur = objects::get(req.st.store.as_ref(), pdbs, Some(&ns), &pname).await?;
                let allowed = cur.obj.pointer("/status/disruptionsAllowed").and_then(|a| a.as_i64()).unwrap_or(0);
                if allowed <= 0 {
                    let needed = cur.obj.pointer("/status/desiredHealthy").and_then(|a| a.as_i64()).unwrap_or(0);
                    let healthy = cur.obj.pointer("/status/currentHealthy").and_then(|a| a.as_i64()).unwrap_or(0);
                    return Err(too_many(
                        "Cannot evict pod as it would violate the pod's disruption budget.".into(),
                        &format!(
                            "The disruption budget {pname} needs {needed} healthy pods and has {healthy} currently"
                        ),
                    ));
                }
                let mut next = cur.obj.clone();
                next["status"]["disruptionsAllowed"] = json!(allowed - 1);
                next["status"]["disruptedPods"][&name] =
                    json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                match objects::update(req.st.store.as_ref(), pdbs, Some(&ns), &pname, next, cur.rev, None).await {
                    Ok(_) => {
                        spent = true;
                        break;
                    }
                    Err(e) if e.code == 409 => continue,
                    Err(e) => return Err(e),
                }
            }
            if !spent {
                return Err(ApiError::stale(pdbs, &pname));
            }
        }
    }
    let opts = ev.get("deleteOptions").cloned().unwrap_or(json!({}));
    let sub = Req {
        st: req.st.clone(),
        r: req.r.clone(),
        ns: req.ns.clone(),
        name: req.name.clone(),
        sub: None,
        q: req.q.clone(),
        headers: req.headers.clone(),
        method: axum::http::Method::DELETE,
    };
    super::handlers::delete(&sub, opts.to_string().as_bytes()).await?;
    Ok(super::handlers::json_response(
        axum::http::StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_in_base_units() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("64Mi"), Some(67108864.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("0.5"), Some(0.5));
        assert_eq!(parse_quantity("12Q"), None);
        assert_eq!(show(0.25), "250m");
        assert_eq!(show(3.0), "3");
    }
}
