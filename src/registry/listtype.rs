//! List and map topology of structural schemas: `x-kubernetes-list-type` (`atomic`, `set`, `map`
//! with `x-kubernetes-list-map-keys`) and `x-kubernetes-map-type` (`granular`, `atomic`).
//!
//! Validation of objects as apiextensions' `listtype.ValidateListSetsAndMaps`: a repeated
//! element of a set, or a repeated key of a map list, is `Duplicate value` at the repeat, with the
//! value printed as Go's `%#v` prints it (`map[string]interface {}{"name":"a"}`), as kubectl
//! users see it from upstream. The checks a CRD's schema must pass (apiextensions' CRD
//! validation: keys are scalar properties that are required or defaulted, set items are atomic)
//! and the helpers server-side apply uses to key map-list elements live here too.

use serde_json::{json, Value};

use super::validation::Cause;

/// The list type of an array schema (`atomic` when unset).
pub fn list_type(s: &Value) -> &str {
    s.get("x-kubernetes-list-type").and_then(|t| t.as_str()).unwrap_or("atomic")
}

/// The `x-kubernetes-list-map-keys` of a map list.
pub fn map_keys(s: &Value) -> Vec<String> {
    s.get("x-kubernetes-list-map-keys")
        .and_then(|k| k.as_array())
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(String::from))
        .collect()
}

/// Whether two elements of a map list have the same key (absent keys compare equal).
pub fn same_keys(a: &Value, b: &Value, keys: &[String]) -> bool {
    keys.iter().all(|k| a.get(k) == b.get(k))
}

/// Go's `%#v` of a JSON value as apimachinery's unstructured decoding holds it.
pub fn go_syntax(v: &Value) -> String {
    match v {
        Value::Null => "interface {}(nil)".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(n) => super::cel::library::format_g(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(go_syntax).collect();
            format!("[]interface {{}}{{{}}}", items.join(", "))
        }
        Value::Object(m) => {
            // fmt prints map keys sorted.
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let items: Vec<String> = keys.iter().map(|k| format!("{:?}:{}", k, go_syntax(&m[*k]))).collect();
            format!("map[string]interface {{}}{{{}}}", items.join(", "))
        }
    }
}

/// How field.Duplicate shows a value: simple types plainly (strings quoted), others as `%#v`.
fn duplicate(field: String, v: &Value) -> Cause {
    let shown = match v {
        Value::Null => "\"null\"".to_string(),
        Value::String(s) => format!("{s:?}"),
        other => go_syntax(other),
    };
    Cause { reason: "FieldValueDuplicate", field, message: format!("Duplicate value: {shown}") }
}

/// Finds repeated `set` elements and repeated `map` keys in `v` (valid against `schema`).
pub fn validate(schema: &Value, v: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    walk(schema, v, "", &mut out);
    out
}

fn join(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

fn walk(s: &Value, v: &Value, path: &str, out: &mut Vec<Cause>) {
    match v {
        Value::Object(m) => {
            if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, x) in m {
                    walk(a, x, &format!("{path}[{k}]"), out);
                }
            }
            if let Some(props) = s.get("properties").and_then(|p| p.as_object()) {
                for (k, x) in m {
                    if let Some(ps) = props.get(k) {
                        walk(ps, x, &join(path, k), out);
                    }
                }
            }
        }
        Value::Array(a) => {
            match list_type(s) {
                "set" => {
                    for i in repeats(a.iter()) {
                        out.push(duplicate(format!("{path}[{i}]"), &a[i]));
                    }
                }
                "map" => {
                    if let Some((i, x)) = a.iter().enumerate().find(|(_, x)| !x.is_object() && !x.is_null()) {
                        out.push(Cause::invalid(
                            format!("{path}[{i}]"),
                            x,
                            "must be an object for an array of list-type map",
                        ));
                    } else {
                        let keys = map_keys(s);
                        let ids: Vec<Value> = a
                            .iter()
                            .map(|x| {
                                let mut id = serde_json::Map::new();
                                for k in &keys {
                                    if let Some(kv) = x.get(k) {
                                        id.insert(k.clone(), kv.clone());
                                    }
                                }
                                Value::Object(id)
                            })
                            .collect();
                        for i in repeats(ids.iter()) {
                            out.push(duplicate(format!("{path}[{i}]"), &ids[i]));
                        }
                    }
                }
                _ => {}
            }
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    walk(items, x, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Indices of the second appearance of each repeated value (upstream reports each value once).
fn repeats<'a>(items: impl Iterator<Item = &'a Value>) -> Vec<usize> {
    let mut seen: Vec<(&Value, usize)> = Vec::new();
    let mut out = Vec::new();
    for (i, x) in items.enumerate() {
        match seen.iter_mut().find(|(y, _)| *y == x) {
            Some((_, n)) => {
                *n += 1;
                if *n == 2 {
                    out.push(i);
                }
            }
            None => seen.push((x, 1)),
        }
    }
    out
}

/// Checks the list-type and map-type extensions of a CRD schema node, pushing causes.
pub fn check_schema(s: &Value, path: &str, out: &mut Vec<Cause>) {
    let ty = s.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if let Some(mt) = s.get("x-kubernetes-map-type") {
        if ty != "object" {
            out.push(type_cause(path, ty, "must be object if x-kubernetes-map-type is specified"));
        }
        if !matches!(mt.as_str(), Some("atomic" | "granular")) {
            out.push(Cause::not_supported(format!("{path}.x-kubernetes-map-type"), mt, &["atomic", "granular"]));
        }
    }
    let lt = s.get("x-kubernetes-list-type");
    if let Some(lt) = lt {
        if ty != "array" {
            out.push(type_cause(path, ty, "must be array if x-kubernetes-list-type is specified"));
        } else if lt.as_str() == Some("set") {
            let is = s.get("items").unwrap_or(&Value::Null);
            match is.get("type").and_then(|t| t.as_str()) {
                Some("array") if is.get("x-kubernetes-list-type").is_some_and(|x| x.as_str() != Some("atomic")) => out
                    .push(Cause::invalid(
                        format!("{path}.items.x-kubernetes-list-type"),
                        &is["x-kubernetes-list-type"],
                        "must be atomic as item of a list with x-kubernetes-list-type=set",
                    )),
                Some("object") if is.get("x-kubernetes-map-type").and_then(|x| x.as_str()) != Some("atomic") => {
                    // Upstream shows the item's list type here, which is unset: "null".
                    out.push(Cause::invalid(
                        format!("{path}.items.x-kubernetes-map-type"),
                        &json!("null"),
                        "must be atomic as item of a list with x-kubernetes-list-type=set",
                    ))
                }
                _ => {}
            }
        }
        if !matches!(lt.as_str(), Some("atomic" | "set" | "map")) {
            out.push(Cause::not_supported(format!("{path}.x-kubernetes-list-type"), lt, &["atomic", "set", "map"]));
        }
    }
    let keys = map_keys(s);
    if !keys.is_empty() {
        match lt.and_then(|l| l.as_str()) {
            None => out.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{path}.x-kubernetes-list-type"),
                message: "Required value: must be map if x-kubernetes-list-map-keys is non-empty".into(),
            }),
            Some("map") => {}
            Some(_) => out.push(Cause::invalid(
                format!("{path}.x-kubernetes-list-type"),
                &s["x-kubernetes-list-type"],
                "must be map if x-kubernetes-list-map-keys is non-empty",
            )),
        }
    }
    if lt.and_then(|l| l.as_str()) == Some("map") {
        let go_keys = format!("[]string{{{}}}", keys.iter().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", "));
        if keys.is_empty() {
            out.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{path}.x-kubernetes-list-map-keys"),
                message: "Required value: must not be empty if x-kubernetes-list-type is map".into(),
            });
        }
        match s.get("items") {
            None => out.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{path}.items"),
                message: "Required value: must have a schema if x-kubernetes-list-type is map".into(),
            }),
            Some(items) if items.get("type").and_then(|t| t.as_str()) != Some("object") => out.push(Cause::invalid(
                format!("{path}.items.type"),
                items.get("type").unwrap_or(&json!("")),
                "must be object if parent array's x-kubernetes-list-type is map",
            )),
            Some(items) => {
                let props = items.get("properties");
                let required: Vec<&str> = items
                    .get("required")
                    .and_then(|r| r.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str())
                    .collect();
                let mut seen = Vec::new();
                for k in &keys {
                    match props.and_then(|p| p.get(k)) {
                        Some(ps) => {
                            if matches!(ps.get("type").and_then(|t| t.as_str()), Some("array" | "object")) {
                                out.push(Cause::invalid(
                                    format!("{path}.items.properties[{k}].type"),
                                    &json!("object"),
                                    "must be a scalar type if parent array's x-kubernetes-list-type is map",
                                ));
                            }
                            if !required.contains(&k.as_str()) && ps.get("default").is_none() {
                                out.push(Cause {
                                    reason: "FieldValueRequired",
                                    field: format!("{path}.items.properties[{k}].default"),
                                    message: "Required value: this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property".into(),
                                });
                            }
                            if ps.get("nullable") == Some(&Value::Bool(true)) {
                                out.push(Cause {
                                    reason: "FieldValueForbidden",
                                    field: format!("{path}.items.properties[{k}].nullable"),
                                    message: "Forbidden: this property is in x-kubernetes-list-map-keys, so it cannot be nullable".into(),
                                });
                            }
                        }
                        None => out.push(Cause::invalid_shown(
                            format!("{path}.x-kubernetes-list-map-keys"),
                            &go_keys,
                            "entries must all be names of item properties",
                        )),
                    }
                    if seen.contains(&k) {
                        out.push(Cause::invalid_shown(
                            format!("{path}.x-kubernetes-list-map-keys"),
                            &go_keys,
                            "must not contain duplicate entries",
                        ));
                    }
                    seen.push(k);
                }
            }
        }
    }
    if matches!(lt.and_then(|l| l.as_str()), Some("set" | "map"))
        && s.pointer("/items/nullable") == Some(&Value::Bool(true))
    {
        out.push(Cause {
            reason: "FieldValueForbidden",
            field: format!("{path}.items.nullable"),
            message: format!("Forbidden: cannot be nullable when x-kubernetes-list-type is {}", list_type(s)),
        });
    }
}

fn type_cause(path: &str, ty: &str, msg: &str) -> Cause {
    if ty.is_empty() {
        Cause { reason: "FieldValueRequired", field: format!("{path}.type"), message: format!("Required value: {msg}") }
    } else {
        Cause::invalid(format!("{path}.type"), &json!(ty), msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["port", "protocol"],
                "items": {"type": "object", "required": ["port"], "properties": {
                    "port": {"type": "integer"}, "protocol": {"type": "string", "default": "TCP"}}}},
            "byName": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}
        }})
    }

    #[test]
    fn repeated_set_elements_and_map_keys_are_duplicates_in_upstream_form() {
        let v = json!({"tags": ["a", "b", "a", "a"],
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 80, "protocol": "UDP"}, {"port": 80, "protocol": "TCP"}],
            "byName": [{"name": "x"}, {"name": "x"}]});
        let m: Vec<String> =
            validate(&schema(), &v).into_iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        assert_eq!(
            m,
            vec![
                "tags[2]: Duplicate value: \"a\"",
                "ports[2]: Duplicate value: map[string]interface {}{\"port\":80, \"protocol\":\"TCP\"}",
                "byName[1]: Duplicate value: map[string]interface {}{\"name\":\"x\"}",
            ]
        );
    }

    #[test]
    fn schemas_with_bad_list_types_are_refused() {
        let mut out = Vec::new();
        check_schema(&schema()["properties"]["ports"], "p", &mut out);
        assert!(out.is_empty(), "{out:?}");
        let bad = json!({"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name", "missing"],
            "items": {"type": "object", "properties": {"name": {"type": "string"}}}});
        check_schema(&bad, "p", &mut out);
        let m: Vec<String> = out.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        assert_eq!(
            m,
            vec![
                "p.items.properties[name].default: Required value: this property is in x-kubernetes-list-map-keys, so it must have a default or be a required property",
                "p.x-kubernetes-list-map-keys: Invalid value: []string{\"name\", \"missing\"}: entries must all be names of item properties",
            ]
        );
        let mut out = Vec::new();
        check_schema(&json!({"type": "string", "x-kubernetes-list-type": "bag"}), "p", &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
    }
}
