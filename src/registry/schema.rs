//! The structural-schema engine for custom resources (OpenAPI v3 as CustomResourceDefinitions
//! carry it): pruning of unknown fields, defaulting from `default:`, and validation with the
//! field paths, reasons and messages kube-apiserver's validator (kube-openapi) gives:
//! `spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string"`.
//!
//! Order on every write, as upstream: prune → default → validate (this file), then the list-type
//! invariants (`listtype.rs`) and, when the object has no type errors, the CEL rules of
//! `x-kubernetes-validations` (`rules.rs`).

use serde_json::{json, Value};

use super::validation::Cause;

fn flag(s: &Value, k: &str) -> bool {
    s.get(k) == Some(&Value::Bool(true))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Whether a node keeps `apiVersion`, `kind` and `metadata` it does not list (the object root
/// and embedded resources).
fn is_resource_node(root: bool, s: &Value) -> bool {
    root || flag(s, "x-kubernetes-embedded-resource")
}

// ---------- pruning ----------

/// Drops fields the schema does not specify. Returns the dotted paths of the dropped fields.
pub fn prune(schema: &Value, v: &mut Value) -> Vec<String> {
    let mut out = Vec::new();
    prune_at(schema, v, "", true, &mut out);
    out
}

fn prune_at(s: &Value, v: &mut Value, path: &str, root: bool, out: &mut Vec<String>) {
    if s.is_null() {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(|p| p.as_object());
            let additional = s.get("additionalProperties");
            let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
            let resource = is_resource_node(root, s);
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                if resource && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    // metadata is the server's (ObjectMeta), never pruned by the schema.
                    continue;
                }
                let p = join(path, &k);
                if let Some(ps) = props.and_then(|ps| ps.get(&k)) {
                    if let Some(child) = m.get_mut(&k) {
                        prune_at(ps, child, &p, false, out);
                    }
                } else if let Some(a) = additional.filter(|a| a.is_object()) {
                    if let Some(child) = m.get_mut(&k) {
                        prune_at(a, child, &p, false, out);
                    }
                } else if additional == Some(&Value::Bool(true)) || preserve {
                    // kept as is
                } else {
                    m.remove(&k);
                    out.push(p);
                }
            }
        }
        Value::Array(a) => {
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter_mut().enumerate() {
                    prune_at(items, x, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        _ => {}
    }
}

// ---------- defaulting ----------

/// Fills in `default:` values of unset (or null, non-nullable) fields, recursively.
pub fn default(schema: &Value, v: &mut Value) {
    default_at(schema, v, true);
}

fn default_at(s: &Value, v: &mut Value, root: bool) {
    match v {
        Value::Object(m) => {
            if let Some(props) = s.get("properties").and_then(|p| p.as_object()) {
                for (k, ps) in props {
                    if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    let Some(d) = ps.get("default") else { continue };
                    match m.get(k) {
                        None => {
                            m.insert(k.clone(), d.clone());
                        }
                        Some(Value::Null) if !flag(ps, "nullable") => {
                            m.insert(k.clone(), d.clone());
                        }
                        _ => {}
                    }
                }
                for (k, ps) in props {
                    if root && k == "metadata" {
                        continue;
                    }
                    if let Some(child) = m.get_mut(k) {
                        default_at(ps, child, false);
                    }
                }
            } else if let Some(a) = s.get("additionalProperties").filter(|a| a.is_object()) {
                for (_, child) in m.iter_mut() {
                    default_at(a, child, false);
                }
            }
        }
        Value::Array(arr) => {
            if let Some(items) = s.get("items") {
                for x in arr.iter_mut() {
                    default_at(items, x, false);
                }
            }
        }
        _ => {}
    }
}

// ---------- validation ----------

/// The JSON type name kube-openapi reports for a value.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "" => true,
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        _ => true,
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn fmt_num(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn invalid(path: &str, v: &Value, detail: String) -> Cause {
    Cause::invalid(path, v, &detail)
}

fn field(path: &str) -> String {
    if path.is_empty() {
        "<root>".to_string()
    } else {
        path.to_string()
    }
}

/// Validates `v` against `schema`. Empty = valid. `metadata` is left to the ObjectMeta rules.
pub fn validate(schema: &Value, v: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    if !schema.is_null() {
        validate_at(schema, v, "", true, &mut out);
    }
    out
}

fn check_format(format: &str, s: &str) -> bool {
    match format {
        "date-time" | "datetime" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        "date" => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok(),
        "uuid" => uuid::Uuid::parse_str(s).is_ok(),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "hostname" => super::validation::is_dns1123_subdomain(s),
        "byte" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        _ => true,
    }
}

fn validate_at(s: &Value, v: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    let f = field(path);
    if v.is_null() {
        if flag(s, "nullable") || s.get("type").is_none() {
            return;
        }
        let ty = s.get("type").and_then(|t| t.as_str()).unwrap_or("");
        out.push(invalid(&f, &json!("null"), format!("{f} in body must be of type {ty}: \"null\"")));
        return;
    }
    let int_or_string = flag(s, "x-kubernetes-int-or-string");
    if int_or_string {
        if !(v.is_i64() || v.is_u64() || v.is_string()) {
            out.push(invalid(
                &f,
                &json!(type_name(v)),
                format!("{f} in body must be of type integer,string: {:?}", type_name(v)),
            ));
            return;
        }
    } else if let Some(ty) = s.get("type").and_then(|t| t.as_str()) {
        if !type_ok(ty, v) {
            out.push(invalid(
                &f,
                &json!(type_name(v)),
                format!("{f} in body must be of type {ty}: {:?}", type_name(v)),
            ));
            return;
        }
    }
    if let Some(e) = s.get("enum").and_then(|e| e.as_array()) {
        if !e.contains(v) {
            let list: Vec<String> = e.iter().map(|x| x.to_string()).collect();
            out.push(Cause {
                reason: "FieldValueNotSupported",
                field: f.clone(),
                message: format!("Unsupported value: {v}: supported values: {}", list.join(", ")),
            });
        }
    }
    match v {
        Value::String(st) => {
            let len = st.chars().count() as u64;
            if let Some(max) = s.get("maxLength").and_then(|m| m.as_u64()) {
                if len > max {
                    out.push(Cause {
                        reason: "FieldValueTooLong",
                        field: f.clone(),
                        message: format!("Too long: may not be more than {max} bytes"),
                    });
                }
            }
            if let Some(min) = s.get("minLength").and_then(|m| m.as_u64()) {
                if len < min {
                    out.push(invalid(&f, v, format!("{f} in body should be at least {min} chars long")));
                }
            }
            if let Some(p) = s.get("pattern").and_then(|p| p.as_str()) {
                match regex::Regex::new(p) {
                    Ok(re) if !re.is_match(st) => {
                        out.push(invalid(&f, v, format!("{f} in body should match '{p}'")));
                    }
                    _ => {}
                }
            }
            if let Some(fm) = s.get("format").and_then(|p| p.as_str()) {
                if !check_format(fm, st) {
                    out.push(invalid(&f, v, format!("{f} in body must be of type {fm}: {st:?}")));
                }
            }
        }
        Value::Number(_) => {
            let x = num(v).unwrap_or(0.0);
            if let Some(m) = s.get("minimum").filter(|m| m.is_number()) {
                let excl = flag(s, "exclusiveMinimum");
                let bad = if excl { x <= num(m).unwrap_or(0.0) } else { x < num(m).unwrap_or(0.0) };
                if bad {
                    let op = if excl { "greater than" } else { "greater than or equal to" };
                    out.push(invalid(&f, v, format!("{f} in body should be {op} {}", fmt_num(m))));
                }
            }
            if let Some(m) = s.get("maximum").filter(|m| m.is_number()) {
                let excl = flag(s, "exclusiveMaximum");
                let bad = if excl { x >= num(m).unwrap_or(0.0) } else { x > num(m).unwrap_or(0.0) };
                if bad {
                    let op = if excl { "less than" } else { "less than or equal to" };
                    out.push(invalid(&f, v, format!("{f} in body should be {op} {}", fmt_num(m))));
                }
            }
            if let Some(m) = s.get("multipleOf").and_then(num).filter(|m| *m != 0.0) {
                if (x / m).fract() != 0.0 {
                    out.push(invalid(
                        &f,
                        v,
                        format!("{f} in body should be a multiple of {}", fmt_num(&s["multipleOf"])),
                    ));
                }
            }
        }
        Value::Array(a) => {
            if let Some(min) = s.get("minItems").and_then(|m| m.as_u64()) {
                if (a.len() as u64) < min {
                    out.push(invalid(&f, v, format!("{f} in body should have at least {min} items")));
                }
            }
            if let Some(max) = s.get("maxItems").and_then(|m| m.as_u64()) {
                if a.len() as u64 > max {
                    out.push(Cause {
                        reason: "FieldValueTooMany",
                        field: f.clone(),
                        message: format!("Too many: {}: must have at most {max} items", a.len()),
                    });
                }
            }
            // x-kubernetes-list-type set and map are checked by listtype::validate.
            if flag(s, "uniqueItems") && s.get("x-kubernetes-list-type").is_none() {
                for (i, x) in a.iter().enumerate() {
                    if a[..i].contains(x) {
                        out.push(Cause::duplicate(format!("{f}[{i}]"), x));
                    }
                }
            }
            if let Some(items) = s.get("items") {
                for (i, x) in a.iter().enumerate() {
                    validate_at(items, x, &format!("{path}[{i}]"), false, out);
                }
            }
        }
        Value::Object(m) => {
            let resource = is_resource_node(root, s);
            if !root && flag(s, "x-kubernetes-embedded-resource") {
                for k in ["apiVersion", "kind"] {
                    if m.get(k).and_then(|x| x.as_str()).is_none_or(|x| x.is_empty()) {
                        out.push(Cause::required(join(&f, k)));
                    }
                }
            }
            for r in s.get("required").and_then(|r| r.as_array()).into_iter().flatten() {
                if let Some(k) = r.as_str() {
                    if resource && k == "metadata" {
                        continue;
                    }
                    if m.get(k).is_none() {
                        out.push(Cause::required(join(path, k)));
                    }
                }
            }
            if let Some(max) = s.get("maxProperties").and_then(|m| m.as_u64()) {
                if m.len() as u64 > max {
                    out.push(invalid(&f, v, format!("{f} in body should have at most {max} properties")));
                }
            }
            if let Some(min) = s.get("minProperties").and_then(|m| m.as_u64()) {
                if (m.len() as u64) < min {
                    out.push(invalid(&f, v, format!("{f} in body should have at least {min} properties")));
                }
            }
            let props = s.get("properties").and_then(|p| p.as_object());
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, x) in m {
                if resource && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let p = join(path, k);
                if let Some(ps) = props.and_then(|ps| ps.get(k)) {
                    validate_at(ps, x, &p, false, out);
                } else if let Some(a) = additional {
                    validate_at(a, x, &p, false, out);
                }
            }
        }
        _ => {}
    }
}

// ---------- structural checks on a CRD's schema ----------

/// Checks that a CRD's schema is structural (every specified node has a type, arrays have
/// items, defaults are allowed), pushing causes under `path`.
pub fn check_structural(s: &Value, path: &str, root: bool, out: &mut Vec<Cause>) {
    let Some(m) = s.as_object() else {
        out.push(Cause::invalid(path, s, "must be an object"));
        return;
    };
    let ty = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
    let int_or_string = flag(s, "x-kubernetes-int-or-string");
    let preserve = flag(s, "x-kubernetes-preserve-unknown-fields");
    if ty.is_empty() && !int_or_string && !(preserve && !m.contains_key("properties") && !m.contains_key("items")) {
        out.push(Cause {
            reason: "FieldValueRequired",
            field: format!("{path}.type"),
            message: "Required value: must not be empty for specified object fields".into(),
        });
    }
    if !ty.is_empty() && !matches!(ty, "object" | "array" | "string" | "integer" | "number" | "boolean") {
        out.push(Cause::not_supported(
            format!("{path}.type"),
            &m["type"],
            &["array", "boolean", "integer", "number", "object", "string"],
        ));
    }
    if ty == "array" && !m.contains_key("items") {
        out.push(Cause {
            reason: "FieldValueRequired",
            field: format!("{path}.items"),
            message: "Required value: must be specified".into(),
        });
    }
    if m.contains_key("properties") && m.get("additionalProperties").is_some_and(|a| a.is_object()) {
        out.push(Cause {
            reason: "FieldValueForbidden",
            field: format!("{path}.additionalProperties"),
            message: "Forbidden: additionalProperties and properties are mutual exclusive".into(),
        });
    }
    super::listtype::check_schema(s, path, out);
    if let Some(p) = m.get("pattern").and_then(|p| p.as_str()) {
        if regex::Regex::new(p).is_err() {
            out.push(Cause::invalid(format!("{path}.pattern"), &m["pattern"], "must be a valid regular expression"));
        }
    }
    if root {
        if let Some(meta) = m.get("properties").and_then(|p| p.get("metadata")).and_then(|x| x.get("properties")) {
            for k in meta.as_object().into_iter().flat_map(|o| o.keys()) {
                if k != "name" && k != "generateName" {
                    out.push(Cause {
                        reason: "FieldValueForbidden",
                        field: format!("{path}.properties[metadata].properties[{k}]"),
                        message: "Forbidden: must not be specified".into(),
                    });
                }
            }
        }
    }
    for (k, ps) in m.get("properties").and_then(|p| p.as_object()).into_iter().flatten() {
        if root && k == "metadata" {
            continue;
        }
        check_structural(ps, &format!("{path}.properties[{k}]"), false, out);
    }
    if let Some(items) = m.get("items") {
        check_structural(items, &format!("{path}.items"), false, out);
    }
    if let Some(a) = m.get("additionalProperties").filter(|a| a.is_object()) {
        check_structural(a, &format!("{path}.additionalProperties"), false, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["cronSpec"],
                    "properties": {
                        "cronSpec": {"type": "string", "pattern": "^(\\d+|\\*)(/\\d+)?(\\s+(\\d+|\\*)(/\\d+)?){4}$"},
                        "image": {"type": "string", "minLength": 2, "maxLength": 20},
                        "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
                        "mode": {"type": "string", "enum": ["fast", "slow"], "default": "slow"},
                        "port": {"x-kubernetes-int-or-string": true},
                        "when": {"type": "string", "format": "date-time"},
                        "note": {"type": "string", "nullable": true},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                        "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "integer", "default": 7}}}},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "template": {"type": "object", "x-kubernetes-embedded-resource": true, "x-kubernetes-preserve-unknown-fields": true}
                    }
                },
                "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}
            }
        })
    }

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "stable.example.com/v1", "kind": "CronTab", "metadata": {"name": "x", "labels": {"a": "b"}}, "spec": spec})
    }

    fn messages(v: &Value) -> Vec<String> {
        validate(&schema(), v).iter().map(|c| format!("{}: {}", c.field, c.message)).collect()
    }

    #[test]
    fn wrong_types_are_reported_in_upstream_wording() {
        let m = messages(&obj(json!({"cronSpec": "* * * * */5", "replicas": "string"})));
        assert_eq!(
            m,
            vec![r#"spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string""#]
        );
    }

    #[test]
    fn required_enum_pattern_bounds_and_lengths_are_checked() {
        let m = messages(&obj(json!({"image": "i", "replicas": 11, "mode": "medium"})));
        assert!(m.contains(&"spec.cronSpec: Required value".to_string()), "{m:?}");
        assert!(
            m.contains(
                &r#"spec.image: Invalid value: "i": spec.image in body should be at least 2 chars long"#.to_string()
            ),
            "{m:?}"
        );
        assert!(
            m.contains(
                &"spec.replicas: Invalid value: 11: spec.replicas in body should be less than or equal to 10"
                    .to_string()
            ),
            "{m:?}"
        );
        assert!(
            m.contains(&r#"spec.mode: Unsupported value: "medium": supported values: "fast", "slow""#.to_string()),
            "{m:?}"
        );
        let m =
            messages(&obj(json!({"cronSpec": "bad", "replicas": 0, "image": "x".repeat(21), "tags": ["a", "b", "c"]})));
        assert!(
            m.iter()
                .any(|x| x.starts_with("spec.cronSpec: Invalid value: \"bad\": spec.cronSpec in body should match")),
            "{m:?}"
        );
        assert!(
            m.contains(
                &"spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1"
                    .to_string()
            ),
            "{m:?}"
        );
        assert!(m.contains(&"spec.image: Too long: may not be more than 20 bytes".to_string()), "{m:?}");
        assert!(m.contains(&"spec.tags: Too many: 3: must have at most 2 items".to_string()), "{m:?}");
    }

    #[test]
    fn int_or_string_nullable_and_formats() {
        assert!(messages(&obj(json!({"cronSpec": "* * * * *", "port": 80}))).is_empty());
        assert!(messages(&obj(json!({"cronSpec": "* * * * *", "port": "http", "note": null}))).is_empty());
        let m = messages(&obj(json!({"cronSpec": "* * * * *", "port": true, "when": "yesterday", "image": null})));
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m.iter().any(|x| x.starts_with("spec.image: Invalid value: \"null\"")), "{m:?}");
        assert!(m.iter().any(|x| x.starts_with("spec.port: Invalid value: \"boolean\"")), "{m:?}");
        assert!(messages(&obj(json!({"cronSpec": "* * * * *", "when": "2024-01-02T03:04:05Z"}))).is_empty());
    }

    #[test]
    fn embedded_resources_need_apiversion_and_kind() {
        let m = messages(&obj(json!({"cronSpec": "* * * * *", "template": {"metadata": {"name": "p"}}})));
        assert_eq!(m, vec!["spec.template.apiVersion: Required value", "spec.template.kind: Required value"]);
    }

    #[test]
    fn unknown_fields_are_pruned_except_where_preserved() {
        let mut v = obj(json!({"cronSpec": "x", "bogus": 1, "free": {"any": {"thing": 1}},
            "items": [{"n": 1, "extra": true}], "labels": {"a": "b"},
            "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}}}));
        v["status"] = json!({"replicas": 1, "phase": "gone"});
        v["top"] = json!(1);
        let dropped = prune(&schema(), &mut v);
        assert_eq!(dropped, vec!["spec.bogus", "spec.items[0].extra", "status.phase", "top"]);
        assert_eq!(v["spec"]["free"]["any"]["thing"], 1);
        assert_eq!(v["spec"]["template"]["spec"]["x"], 1);
        assert_eq!(v["metadata"]["labels"]["a"], "b", "metadata is never pruned");
        assert_eq!(v["apiVersion"], "stable.example.com/v1");
    }

    #[test]
    fn defaults_fill_unset_fields_recursively() {
        let mut v = obj(json!({"cronSpec": "x", "items": [{}], "mode": "fast"}));
        default(&schema(), &mut v);
        assert_eq!(v["spec"]["replicas"], 1);
        assert_eq!(v["spec"]["mode"], "fast", "set values are kept");
        assert_eq!(v["spec"]["items"][0]["n"], 7);
        let mut v = obj(json!({"cronSpec": "x", "replicas": null}));
        default(&schema(), &mut v);
        assert_eq!(v["spec"]["replicas"], 1, "null in a non-nullable field takes the default");
    }

    #[test]
    fn non_structural_schemas_are_refused() {
        let mut out = Vec::new();
        check_structural(
            &json!({"type": "object", "properties": {"spec": {"properties": {"a": {"type": "array"}}}}}),
            "schema",
            true,
            &mut out,
        );
        let fields: Vec<&str> = out.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(fields, vec!["schema.properties[spec].type", "schema.properties[spec].properties[a].items"]);
        let mut out = Vec::new();
        check_structural(&schema(), "schema", true, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }
}
