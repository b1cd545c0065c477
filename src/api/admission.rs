//! Admission steps that need the store: ClusterIP and NodePort allocation for Services.
//! Each allocated IP or port is a key under `/registry/ranges/…` created with a
//! create-if-absent transaction, so concurrent creates can never get the same one.

use rand::Rng;
use serde_json::{json, Value};
use std::net::Ipv4Addr;

use super::errors::{ApiError, ApiResult};
use super::handlers::Req;
use crate::store::{txn, Store};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

async fn reserve(store: &dyn Store, key: String, owner: &str) -> ApiResult<bool> {
    Ok(store.txn(txn::create(key.as_bytes(), owner.as_bytes().to_vec(), None)).await?.succeeded)
}

async fn release(store: &dyn Store, key: String) {
    let _ = store
        .txn(crate::store::Txn {
            success: vec![crate::store::Op::Delete { key: key.into_bytes() }],
            ..Default::default()
        })
        .await;
}

fn owner(o: &Value) -> String {
    format!(
        "{}/{}",
        o.pointer("/metadata/namespace").and_then(|v| v.as_str()).unwrap_or(""),
        o.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or("")
    )
}

fn svc_invalid(o: &Value, field: &str, msg: String) -> ApiError {
    let r = crate::registry::find("", "v1", "services");
    match r {
        Some(r) => ApiError::invalid(
            r,
            o.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or(""),
            &[crate::registry::validation::Cause { reason: "FieldValueInvalid", field: field.into(), message: msg }],
        ),
        None => ApiError::bad_request(msg),
    }
}

/// The ServiceAccount admission plugin's token volume: a projected volume with a bound token,
/// the cluster CA and the namespace, mounted read-only at the well-known path in every
/// container, unless the pod or its ServiceAccount opts out with
/// `automountServiceAccountToken: false`. Unlike upstream, a ServiceAccount that does not exist
/// yet does not reject the pod (the kubelet waits for the token instead), which avoids the
/// well-known race with freshly created namespaces.
pub async fn service_account_token_volume(req: &Req, o: &mut Value) -> ApiResult<()> {
    const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
    if o.pointer("/spec/automountServiceAccountToken") == Some(&Value::Bool(false)) {
        return Ok(());
    }
    let already = o.pointer("/spec/containers").and_then(|c| c.as_array()).into_iter().flatten().any(|c| {
        c.get("volumeMounts").and_then(|m| m.as_array()).into_iter().flatten().any(|m| m["mountPath"] == MOUNT)
    });
    if already {
        return Ok(());
    }
    let sa = o.pointer("/spec/serviceAccountName").and_then(|s| s.as_str()).unwrap_or("default").to_string();
    if let Some(sar) = crate::registry::find("", "v1", "serviceaccounts") {
        if let Ok(s) = super::objects::get_serializable(req.st.store.as_ref(), sar, req.ns.as_deref(), &sa).await {
            if s.obj.get("automountServiceAccountToken") == Some(&Value::Bool(false)) {
                return Ok(());
            }
        }
    }
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5).map(|_| CHARS[rand::thread_rng().gen_range(0..CHARS.len())] as char).collect();
    let name = format!("kube-api-access-{suffix}");
    let volume = json!({"name": name, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
    ]}});
    match o.pointer_mut("/spec/volumes").and_then(|v| v.as_array_mut()) {
        Some(v) => v.push(volume),
        None => o["spec"]["volumes"] = json!([volume]),
    }
    for key in ["containers", "initContainers"] {
        for c in o.pointer_mut(&format!("/spec/{key}")).and_then(|c| c.as_array_mut()).into_iter().flatten() {
            let m = json!({"name": name, "mountPath": MOUNT, "readOnly": true});
            match c.get_mut("volumeMounts").and_then(|v| v.as_array_mut()) {
                Some(v) => v.push(m),
                None => c["volumeMounts"] = json!([m]),
            }
        }
    }
    Ok(())
}

/// The Priority admission plugin: resolves `spec.priorityClassName` (or the `globalDefault`
/// PriorityClass with the highest value, or 0) into `spec.priority` and `spec.preemptionPolicy`.
/// An unknown class, or a pod that sets a different priority or policy itself, is Forbidden
/// with upstream's messages.
pub async fn pod_priority(req: &Req, o: &mut Value) -> ApiResult<()> {
    let Some(pcr) = crate::registry::find("scheduling.k8s.io", "v1", "priorityclasses") else { return Ok(()) };
    let store = req.st.store.as_ref();
    let pod = o.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string();
    let forbidden = |msg: String| ApiError::forbidden(format!("pods \"{pod}\" is forbidden: {msg}"));
    let class_name = o.pointer("/spec/priorityClassName").and_then(|c| c.as_str()).unwrap_or("").to_string();
    let (name, value, policy) = if class_name.is_empty() {
        let range = crate::store::RangeRequest {
            prefix: pcr.key_prefix().into_bytes(),
            serializable: true,
            ..Default::default()
        };
        let classes = store.range(range).await?;
        let default = classes
            .kvs
            .iter()
            .filter_map(|kv| super::objects::decode(kv).ok())
            .filter(|c| c["globalDefault"] == Value::Bool(true))
            .max_by_key(|c| c["value"].as_i64().unwrap_or(0));
        match default {
            Some(c) => (
                c.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or("").to_string(),
                c["value"].as_i64().unwrap_or(0),
                c["preemptionPolicy"].as_str().unwrap_or("PreemptLowerPriority").to_string(),
            ),
            None => (String::new(), 0, "PreemptLowerPriority".to_string()),
        }
    } else {
        match super::objects::get_serializable(store, pcr, None, &class_name).await {
            Ok(c) => (
                class_name.clone(),
                c.obj["value"].as_i64().unwrap_or(0),
                c.obj["preemptionPolicy"].as_str().unwrap_or("PreemptLowerPriority").to_string(),
            ),
            Err(e) if e.code == 404 => {
                return Err(forbidden(format!("no PriorityClass with name {class_name} was found")));
            }
            Err(e) => return Err(e),
        }
    };
    // A client may repeat what the class resolves to, never state something else.
    if let Some(p) = o.pointer("/spec/priority").and_then(|p| p.as_i64()) {
        if p != value {
            return Err(forbidden(format!("the integer value of priority ({p}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name")));
        }
    }
    if let Some(p) = o.pointer("/spec/preemptionPolicy").and_then(|p| p.as_str()) {
        if p != policy {
            return Err(forbidden(format!("the string value of PreemptionPolicy ({p}) must not be provided in pod spec; priority admission controller computed {policy} from the given PriorityClass name")));
        }
    }
    if let Some(spec) = o.get_mut("spec").and_then(|s| s.as_object_mut()) {
        if !name.is_empty() {
            spec.insert("priorityClassName".into(), json!(name));
        }
        spec.insert("priority".into(), json!(value));
        spec.insert("preemptionPolicy".into(), json!(policy));
    }
    Ok(())
}

/// StorageObjectInUseProtection: claims and volumes are born with the finalizer that the
/// pvc-/pv-protection controllers remove once nothing uses them (`controllers::volume_protection`).
fn in_use_protection(o: &mut Value, volume: bool) {
    let f = if volume {
        crate::controllers::volume_protection::PV_FINALIZER
    } else {
        crate::controllers::volume_protection::PVC_FINALIZER
    };
    let Some(meta) = o.get_mut("metadata").and_then(|m| m.as_object_mut()) else { return };
    let list = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(l) = list.as_array_mut() {
        if !l.iter().any(|x| x.as_str() == Some(f)) {
            l.push(json!(f));
        }
    }
}

/// Pod affinity `matchLabelKeys`/`mismatchLabelKeys` (on by default since 1.31): on create, the
/// API server looks up each key in the new pod's labels and adds `key In (value)` (or `NotIn`)
/// to the term's labelSelector, so the scheduler and later readers see one selector. Keys the pod
/// lacks, and terms without a labelSelector, are left alone.
fn merge_affinity_label_keys(o: &mut Value) {
    let labels = o.pointer("/metadata/labels").and_then(|l| l.as_object()).cloned().unwrap_or_default();
    let Some(aff) = o.pointer_mut("/spec/affinity") else { return };
    for kind in ["podAffinity", "podAntiAffinity"] {
        let Some(k) = aff.get_mut(kind).and_then(|k| k.as_object_mut()) else { continue };
        let mut terms: Vec<&mut Value> = vec![];
        for (field, list) in k.iter_mut() {
            let Value::Array(list) = list else { continue };
            match field.as_str() {
                "requiredDuringSchedulingIgnoredDuringExecution" => terms.extend(list.iter_mut()),
                "preferredDuringSchedulingIgnoredDuringExecution" => {
                    terms.extend(list.iter_mut().filter_map(|w| w.get_mut("podAffinityTerm")))
                }
                _ => {}
            }
        }
        for t in terms {
            let mut adds = vec![];
            for (field, op) in [("matchLabelKeys", "In"), ("mismatchLabelKeys", "NotIn")] {
                for key in t.get(field).and_then(|k| k.as_array()).into_iter().flatten().filter_map(|k| k.as_str()) {
                    if let Some(v) = labels.get(key) {
                        adds.push(json!({"key": key, "operator": op, "values": [v]}));
                    }
                }
            }
            let Some(sel) = t.get_mut("labelSelector").and_then(|s| s.as_object_mut()) else { continue };
            if adds.is_empty() {
                continue;
            }
            let exprs = sel.entry("matchExpressions").or_insert_with(|| json!([]));
            if let Some(e) = exprs.as_array_mut() {
                e.extend(adds);
            }
        }
    }
}

/// Allocates what a new object needs. Runs after validation, before the write.
pub async fn on_create(req: &Req, o: &mut Value) -> ApiResult<()> {
    if req.r.group.is_empty() && (req.r.kind == "PersistentVolumeClaim" || req.r.kind == "PersistentVolume") {
        in_use_protection(o, req.r.kind == "PersistentVolume");
        return Ok(());
    }
    if req.r.kind == "Pod" {
        merge_affinity_label_keys(o);
        pod_priority(req, o).await?;
        return service_account_token_volume(req, o).await;
    }
    if req.r.kind != "Service" || req.q.dry_run()? {
        return Ok(());
    }
    let st = &req.st;
    let store = st.store.as_ref();
    let who = owner(o);
    let ty = o.pointer("/spec/type").and_then(|t| t.as_str()).unwrap_or("ClusterIP").to_string();
    if ty != "ExternalName" {
        let requested = o.pointer("/spec/clusterIP").and_then(|c| c.as_str()).unwrap_or("").to_string();
        if requested == "None" {
            o["spec"]["clusterIPs"] = json!(["None"]);
        } else if !requested.is_empty() {
            let ip: Ipv4Addr = requested.parse().map_err(|_| {
                svc_invalid(o, "spec.clusterIP", format!("Invalid value: {requested:?}: must be a valid IP address"))
            })?;
            if !st.service_cidr.contains(ip) {
                return Err(svc_invalid(o, "spec.clusterIPs", format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}", st.service_cidr)));
            }
            if !reserve(store, format!("{IP_PREFIX}{ip}"), &who).await? {
                return Err(svc_invalid(
                    o,
                    "spec.clusterIPs",
                    format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: provided IP is already allocated"),
                ));
            }
            o["spec"]["clusterIPs"] = json!([ip.to_string()]);
        } else {
            let size = st.service_cidr.size();
            let mut got = None;
            // Random probing, then a sweep, like upstream's bitmap allocator.
            for attempt in 0..(size + 64) {
                let n = if attempt < 64 {
                    rand::thread_rng().gen_range(2..size.saturating_sub(1).max(3))
                } else {
                    2 + (attempt - 64)
                };
                if n >= size.saturating_sub(1) {
                    break;
                }
                let Some(ip) = st.service_cidr.nth(n) else { continue };
                if st.reserved_ips.contains(&ip) {
                    continue;
                }
                if reserve(store, format!("{IP_PREFIX}{ip}"), &who).await? {
                    got = Some(ip);
                    break;
                }
            }
            let ip = got.ok_or_else(|| {
                ApiError::internal(format!("failed to allocate a serviceIP: range {} is full", st.service_cidr))
            })?;
            o["spec"]["clusterIP"] = json!(ip.to_string());
            o["spec"]["clusterIPs"] = json!([ip.to_string()]);
        }
    }
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        let (lo, hi) = st.node_port_range;
        let n_ports = o.pointer("/spec/ports").and_then(|p| p.as_array()).map(|p| p.len()).unwrap_or(0);
        for i in 0..n_ports {
            let want = o["spec"]["ports"][i].get("nodePort").and_then(|p| p.as_i64());
            let port = match want {
                Some(p) => {
                    if p < lo as i64 || p > hi as i64 {
                        undo_create(req, o).await;
                        return Err(svc_invalid(o, &format!("spec.ports[{i}].nodePort"), format!("Invalid value: {p}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}")));
                    }
                    if !reserve(store, format!("{PORT_PREFIX}{p}"), &who).await? {
                        undo_create(req, o).await;
                        return Err(svc_invalid(
                            o,
                            &format!("spec.ports[{i}].nodePort"),
                            format!("Invalid value: {p}: provided port is already allocated"),
                        ));
                    }
                    p
                }
                None => {
                    let mut got = None;
                    let span = (hi - lo) as u32 + 1;
                    for attempt in 0..(span + 64) {
                        let p = if attempt < 64 {
                            lo as u32 + rand::thread_rng().gen_range(0..span)
                        } else {
                            lo as u32 + (attempt - 64)
                        };
                        if p > hi as u32 {
                            break;
                        }
                        if reserve(store, format!("{PORT_PREFIX}{p}"), &who).await? {
                            got = Some(p as i64);
                            break;
                        }
                    }
                    match got {
                        Some(p) => p,
                        None => {
                            undo_create(req, o).await;
                            return Err(ApiError::internal(format!(
                                "failed to allocate a nodePort: range {lo}-{hi} is full"
                            )));
                        }
                    }
                }
            };
            o["spec"]["ports"][i]["nodePort"] = json!(port);
        }
    }
    Ok(())
}

/// Checks an update against what allocation decided (ClusterIP is immutable).
pub fn on_update(req: &Req, old: &Value, new: &mut Value) -> ApiResult<()> {
    if req.r.kind != "Service" {
        return Ok(());
    }
    let old_ip = old.pointer("/spec/clusterIP").cloned().unwrap_or(Value::Null);
    match new.pointer("/spec/clusterIP") {
        None | Some(Value::Null) => {
            new["spec"]["clusterIP"] = old_ip;
            if let Some(ips) = old.pointer("/spec/clusterIPs") {
                new["spec"]["clusterIPs"] = ips.clone();
            }
        }
        Some(v) if *v == Value::String(String::new()) => {
            new["spec"]["clusterIP"] = old_ip;
            if let Some(ips) = old.pointer("/spec/clusterIPs") {
                new["spec"]["clusterIPs"] = ips.clone();
            }
        }
        Some(v) if *v != old_ip => {
            return Err(svc_invalid(new, "spec.clusterIPs[0]", format!("Invalid value: {v}: may not change once set")));
        }
        _ => {
            if new.pointer("/spec/clusterIPs").is_none() {
                if let Some(ips) = old.pointer("/spec/clusterIPs") {
                    new["spec"]["clusterIPs"] = ips.clone();
                }
            }
        }
    }
    // Keep allocated node ports when an update (e.g. kubectl apply) leaves them out.
    if let (Some(old_ports), Some(new_ports)) = (
        old.pointer("/spec/ports").and_then(|p| p.as_array()).cloned(),
        new.pointer_mut("/spec/ports").and_then(|p| p.as_array_mut()),
    ) {
        for np in new_ports.iter_mut() {
            if np.get("nodePort").is_none() {
                if let Some(op) =
                    old_ports.iter().find(|op| op.get("port") == np.get("port") && op.get("nodePort").is_some())
                {
                    np["nodePort"] = op["nodePort"].clone();
                }
            }
        }
    }
    Ok(())
}

/// Releases what `on_create` allocated when the write fails.
pub async fn undo_create(req: &Req, o: &Value) {
    if req.r.kind == "Service" && !req.q.dry_run().unwrap_or(true) {
        release_service(req.st.store.as_ref(), o).await;
    }
}

/// Releases what an object held once it is gone.
pub async fn on_delete(req: &Req, o: &Value) {
    if req.r.kind == "Service" {
        release_service(req.st.store.as_ref(), o).await;
    }
}

async fn release_service(store: &dyn Store, o: &Value) {
    if let Some(ip) = o.pointer("/spec/clusterIP").and_then(|c| c.as_str()).filter(|c| !c.is_empty() && *c != "None") {
        release(store, format!("{IP_PREFIX}{ip}")).await;
    }
    for p in o.pointer("/spec/ports").and_then(|p| p.as_array()).into_iter().flatten() {
        if let Some(n) = p.get("nodePort").and_then(|n| n.as_i64()) {
            release(store, format!("{PORT_PREFIX}{n}")).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_label_keys_merge_into_the_selector_from_the_pods_own_labels() {
        let mut pod = json!({
            "metadata": {"labels": {"app": "web", "pod-template-hash": "abc", "tenant": "t1"}},
            "spec": {"affinity": {
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                    "labelSelector": {"matchLabels": {"app": "web"}},
                    "topologyKey": "kubernetes.io/hostname",
                    "matchLabelKeys": ["pod-template-hash", "absent"],
                    "mismatchLabelKeys": ["tenant"],
                }]},
                "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "podAffinityTerm": {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
                        "topologyKey": "zone", "matchLabelKeys": ["app"]}},
                    {"weight": 1, "podAffinityTerm": {"topologyKey": "zone", "matchLabelKeys": ["app"]}},
                ]},
            }},
        });
        merge_affinity_label_keys(&mut pod);
        let anti = &pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(
            anti["labelSelector"]["matchExpressions"],
            json!([
                {"key": "pod-template-hash", "operator": "In", "values": ["abc"]},
                {"key": "tenant", "operator": "NotIn", "values": ["t1"]},
            ])
        );
        assert_eq!(anti["labelSelector"]["matchLabels"], json!({"app": "web"}));
        let pref = &pod["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
        assert_eq!(
            pref[0]["podAffinityTerm"]["labelSelector"]["matchExpressions"],
            json!([{"key": "app", "operator": "Exists"}, {"key": "app", "operator": "In", "values": ["web"]}])
        );
        assert!(pref[1]["podAffinityTerm"].get("labelSelector").is_none(), "no selector: nothing to narrow");
    }
}
