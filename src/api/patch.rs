//! The three patch formats of PATCH requests: JSON patch (RFC 6902) and JSON merge patch
//! (RFC 7386) through the `json-patch` crate, and Kubernetes strategic merge patch, written
//! here on `serde_json::Value`: lists with a merge key merge element-wise, and the directives
//! kubectl sends (`$patch`, `$retainKeys`, `$setElementOrder/…`, `$deleteFromPrimitiveList/…`)
//! are honoured (k8s.io/apimachinery/pkg/util/strategicpatch).

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<PatchKind> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(PatchKind::Apply),
            _ => None,
        }
    }
}

/// Applies a JSON patch or merge patch.
pub fn apply_standard(kind: PatchKind, target: &mut Value, patch: &Value) -> Result<(), String> {
    match kind {
        PatchKind::Json => {
            let p: json_patch::Patch =
                serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
            json_patch::patch(target, &p).map_err(|e| e.to_string())
        }
        PatchKind::Merge => {
            json_patch::merge(target, patch);
            Ok(())
        }
        PatchKind::Strategic | PatchKind::Apply => strategic_merge(target, patch),
    }
}

/// The merge key of a list field, as the Kubernetes types declare with `patchMergeKey`;
/// None means the list is replaced whole. `item_type` is the element's schema name when known
/// (from OpenAPI) or "" (from data): it separates same-named fields of different types.
pub fn list_merge_key(field: &str, item_type: &str) -> Option<&'static str> {
    let typed = |suffix: &str| item_type.is_empty() || item_type.ends_with(suffix);
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "secrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" if typed("Condition") => "type",
        "addresses" if typed("NodeAddress") => "type",
        "ownerReferences" => "uid",
        "taints" if typed("Taint") => "key",
        "topologySpreadConstraints" => "topologyKey",
        "readinessGates" => "conditionType",
        // Container ports merge on containerPort, Service ports on port.
        "ports" if item_type.ends_with("ContainerPort") => "containerPort",
        "ports" if item_type.ends_with("ServicePort") || item_type.is_empty() => "port",
        _ => return None,
    })
}

/// The merge key of a list field judged from its elements.
pub fn merge_key(field: &str, elems: &[&Value]) -> Option<&'static str> {
    let hint =
        if field == "ports" && elems.iter().any(|e| e.get("containerPort").is_some()) { "ContainerPort" } else { "" };
    list_merge_key(field, hint)
}

/// Primitive lists whose patch strategy is `merge` (union) rather than replace.
pub fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), String> {
    merge_value(target, patch, "")
}

fn merge_value(orig: &mut Value, patch: &Value, field: &str) -> Result<(), String> {
    let Some(p) = patch.as_object() else {
        *orig = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(|d| d.as_str()) {
        Some("replace") => {
            let mut clean = p.clone();
            clean.remove("$patch");
            *orig = Value::Object(clean);
            return Ok(());
        }
        Some("delete") => {
            *orig = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other:?} in {field}")),
    }
    if !orig.is_object() {
        *orig = Value::Object(Map::new());
    }
    let Some(o) = orig.as_object_mut() else { return Ok(()) };
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(f) = k.strip_prefix("$setElementOrder/") {
            orders.push((f.to_string(), v.as_array().cloned().unwrap_or_default()));
            continue;
        }
        if let Some(f) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove: Vec<Value> = v.as_array().cloned().unwrap_or_default();
            if let Some(list) = o.get_mut(f).and_then(|l| l.as_array_mut()) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        match v {
            Value::Null => {
                o.remove(k);
            }
            Value::Object(_) => {
                let cur = o.entry(k.clone()).or_insert(Value::Null);
                merge_value(cur, v, k)?;
                if cur.is_null() {
                    o.remove(k);
                }
            }
            Value::Array(items) => {
                let cur = o.remove(k).unwrap_or(Value::Null);
                o.insert(k.clone(), merge_list(cur, items, k)?);
            }
            _ => {
                o.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(keep) = p.get("$retainKeys").and_then(|r| r.as_array()) {
        let keep: Vec<&str> = keep.iter().filter_map(|k| k.as_str()).collect();
        o.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (f, order) in orders {
        if let Some(list) = o.get_mut(&f).and_then(|l| l.as_array_mut()) {
            reorder(list, &order, &f);
        }
    }
    Ok(())
}

fn merge_list(orig: Value, patch: &[Value], field: &str) -> Result<Value, String> {
    // A list-level `{"$patch": "replace"}` element replaces the whole list with the rest.
    if patch.iter().any(|e| e.get("$patch").and_then(|d| d.as_str()) == Some("replace")) {
        return Ok(Value::Array(patch.iter().filter(|e| e.get("$patch").is_none()).cloned().collect()));
    }
    let mut cur = match orig {
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    let all: Vec<&Value> = cur.iter().chain(patch.iter()).collect();
    if patch.iter().all(|e| e.is_object()) && !patch.is_empty() {
        if let Some(key) = merge_key(field, &all) {
            for e in patch {
                let id = e.get(key).cloned().unwrap_or(Value::Null);
                let pos = cur.iter().position(|c| c.get(key) == Some(&id));
                if e.get("$patch").and_then(|d| d.as_str()) == Some("delete") {
                    if let Some(i) = pos {
                        cur.remove(i);
                    }
                    continue;
                }
                match pos {
                    Some(i) => merge_value(&mut cur[i], e, field)?,
                    None => {
                        let mut fresh = Value::Null;
                        merge_value(&mut fresh, e, field)?;
                        cur.push(fresh);
                    }
                }
            }
            return Ok(Value::Array(cur));
        }
    }
    if merges_primitives(field) {
        for e in patch {
            if !cur.contains(e) {
                cur.push(e.clone());
            }
        }
        return Ok(Value::Array(cur));
    }
    Ok(Value::Array(patch.to_vec()))
}

/// Orders `list` as `order` says (elements or merge-key stubs); others keep their place after.
fn reorder(list: &mut Vec<Value>, order: &[Value], field: &str) {
    let all: Vec<&Value> = list.iter().collect();
    let key = merge_key(field, &all);
    let id = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let wanted: Vec<Value> = order.iter().map(&id).collect();
    let mut ordered: Vec<Value> = Vec::with_capacity(list.len());
    for w in &wanted {
        if let Some(i) = list.iter().position(|e| &id(e) == w) {
            ordered.push(list.remove(i));
        }
    }
    ordered.append(list);
    *list = ordered;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_others_replace() {
        let mut d = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}],
            "tolerations": [{"key": "t"}]}});
        strategic_merge(
            &mut d,
            &json!({"spec": {"containers": [{"name": "b", "image": "z"}], "tolerations": [{"key": "u"}]}}),
        )
        .unwrap();
        assert_eq!(d["spec"]["containers"], json!([{"name": "a", "image": "x"}, {"name": "b", "image": "z"}]));
        assert_eq!(d["spec"]["tolerations"], json!([{"key": "u"}]));
    }

    #[test]
    fn delete_directives_remove_elements_and_fields() {
        let mut d = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        strategic_merge(
            &mut d,
            &json!({"metadata": {"labels": {"a": null}, "$deleteFromPrimitiveList/finalizers": ["x"]},
                "spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
        )
        .unwrap();
        assert_eq!(d["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(d["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(d["spec"]["containers"], json!([{"name": "b"}]));
    }

    #[test]
    fn set_element_order_and_retain_keys_are_honoured() {
        let mut d = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}],
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        strategic_merge(
            &mut d,
            &json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": null}}}),
        )
        .unwrap();
        assert_eq!(d["spec"]["containers"], json!([{"name": "b"}, {"name": "a"}]));
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn ports_merge_on_the_right_key() {
        let mut svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}]}});
        strategic_merge(&mut svc, &json!({"spec": {"ports": [{"port": 443, "name": "https"}]}})).unwrap();
        assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 2);
        let mut c = json!({"ports": [{"containerPort": 80}]});
        strategic_merge(&mut c, &json!({"ports": [{"containerPort": 80, "protocol": "TCP"}]})).unwrap();
        assert_eq!(c["ports"], json!([{"containerPort": 80, "protocol": "TCP"}]));
    }

    #[test]
    fn json_and_merge_patches_apply() {
        let mut d = json!({"a": 1, "b": {"c": 2}});
        apply_standard(PatchKind::Merge, &mut d, &json!({"b": {"c": null, "d": 3}})).unwrap();
        assert_eq!(d, json!({"a": 1, "b": {"d": 3}}));
        apply_standard(PatchKind::Json, &mut d, &json!([{"op": "replace", "path": "/a", "value": 5}])).unwrap();
        assert_eq!(d["a"], 5);
        assert!(apply_standard(PatchKind::Json, &mut d, &json!([{"op": "test", "path": "/a", "value": 6}])).is_err());
    }
}
